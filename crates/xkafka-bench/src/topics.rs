//! The topics every comparison reads or writes: created, prefilled once per
//! target and read again from the start by every round.

use std::time::Duration;

use indicatif::ProgressBar;
use xkafka::raw::rdkafka::producer::DefaultProducerContext;
use xkafka::raw::rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use xkafka::raw::rdkafka::ClientConfig;

use crate::vocab::{payload, unique, BoxResult, Sizes, Target};

/// The prefilled topics of a target.
pub(crate) struct Topics {
    /// 100-byte messages, 6 partitions.
    pub(crate) small: String,
    /// 1 KiB messages, 6 partitions.
    pub(crate) large: String,
    /// 100-byte messages with 1,000 distinct keys, 6 partitions.
    pub(crate) keyed: String,
    /// Where the publish comparisons write.
    pub(crate) sink: String,
}

/// Creates topic `name` on `target` with `partitions` partitions.
pub(crate) async fn create(target: &Target, name: &str, partitions: i32) -> BoxResult<()> {
    match target.mock() {
        // The mock cluster has no admin API.
        Some(mock) => mock.create_topic(name, partitions)?,
        None => {
            let topics = [(name, partitions)];
            xkafka::admin::ensure_topics(
                &target.brokers,
                &topics,
                &xkafka::Config::new(),
                Duration::from_secs(30),
            )
            .await?
        }
    }
    Ok(())
}

/// How a prefilled topic's messages are spread over its partitions.
#[derive(Clone, Copy)]
pub(crate) enum Spread {
    /// Round robin: every partition gets the same number, so the batch
    /// consumer's batches are all full (a trailing partial batch would wait
    /// for its window, which would then weigh on a sub-second run).
    Even,
    /// By key (1,000 keys): the per-key concurrency runs need real keys.
    ByKey,
    /// Round robin over this many partitions (the sweep's topics).
    EvenOver(i32),
}

/// Publishes `messages` values of `size` bytes to `topic` (keys `key-0` to
/// `key-999`), spread as `spread` says.
pub(crate) fn fill(
    brokers: &str,
    topic: &str,
    messages: u64,
    size: usize,
    spread: Spread,
) -> BoxResult<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .create()?;
    let value = payload(size);
    for i in 0..messages {
        let key = format!("key-{}", i % 1000);
        let mut record = BaseRecord::<String, Vec<u8>>::to(topic)
            .key(&key)
            .payload(&value);
        let round_robin = match spread {
            Spread::Even => Some(PARTITIONS),
            Spread::EvenOver(partitions) => Some(partitions),
            Spread::ByKey => None,
        };
        if let Some(partitions) = round_robin {
            record = record.partition((i % partitions as u64) as i32);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    if producer.in_flight_count() > 0 {
        return Err(format!("could not fill {topic}").into());
    }
    Ok(())
}

/// Partitions of every prefilled topic.
pub(crate) const PARTITIONS: i32 = 6;

/// Creates and fills the topics every round reads again from the start.
pub(crate) async fn prepare(
    target: &Target,
    sizes: &Sizes,
    bar: &ProgressBar,
) -> BoxResult<Topics> {
    let topics = Topics {
        small: unique("bench-100b"),
        large: unique("bench-1k"),
        keyed: unique("bench-keyed"),
        sink: unique("bench-sink"),
    };
    for name in [&topics.small, &topics.large, &topics.keyed, &topics.sink] {
        create(target, name, PARTITIONS).await?;
    }
    bar.set_message("filling topics");
    fill(
        &target.brokers,
        &topics.small,
        sizes.consume,
        100,
        Spread::Even,
    )?;
    fill(
        &target.brokers,
        &topics.large,
        sizes.consume_1k,
        1024,
        Spread::Even,
    )?;
    fill(
        &target.brokers,
        &topics.keyed,
        sizes.concurrent.max(sizes.sequential_slow),
        100,
        Spread::ByKey,
    )?;
    Ok(topics)
}

/// A new topic (latency runs must not see each other's messages).
pub(crate) async fn fresh_topic(target: &Target) -> BoxResult<String> {
    let name = unique("bench-latency");
    create(target, &name, 1).await?;
    Ok(name)
}
