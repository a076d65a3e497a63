//! Helpers of the exactly-once tests: transactional producers, reading a
//! topic back to its end offsets with an isolation level, counting outputs.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, brokers, producer, unique};
use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::message::{Message as _, OwnedMessage};
use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use xkafka::{Ack, BoxError, Message, Producer};

pub fn txn_producer(id: &str) -> Producer {
    Producer::builder("xkafka-tests-txn")
        .brokers([brokers()])
        .transactional_id(id)
        .transaction_timeout(Duration::from_secs(10))
        .error_handler(|err| eprintln!("transactional producer error: {err}"))
        .build()
        .expect("transactional producer")
}

/// Every record of `topic` as (key, value), read from the beginning to the
/// end offsets with `isolation` (`read_committed` skips aborted records).
pub fn read_all(topic: &str, isolation: &str) -> Vec<(String, String)> {
    read_records(topic, isolation)
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )
        })
        .collect()
}

/// Every record of `topic`, headers included, read as [`read_all`] does.
pub fn read_records(topic: &str, isolation: &str) -> Vec<OwnedMessage> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("reader");
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        let (_, high) = client
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        ends.insert(p, high);
    }
    client.assign(&tpl).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Done once every partition's position reached its end offset
        // (transaction markers and aborted records move it too).
        let position = client.position().expect("position");
        let done = ends.iter().all(|(&p, &end)| {
            end == 0
                || matches!(position.find_partition(topic, p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= end)
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reading {topic} ({isolation}) did not reach the end offsets {ends:?}"
        );
        if let Some(Ok(m)) = client.poll(Duration::from_millis(100)) {
            records.push(m.detach());
        }
    }
    records
}

/// How many times each value appears.
pub fn counts(records: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, value) in records {
        *counts.entry(value.clone()).or_insert(0) += 1;
    }
    counts
}

/// Publishes `count` messages round-robin over `partitions`, values `v0..`,
/// keys `k{i % 17}`.
pub async fn fill_spread(topic: &str, partitions: i32, count: usize) {
    let p = producer();
    for i in 0..count {
        let msg = Message::builder(topic)
            .partition(i as i32 % partitions)
            .key(format!("k{}", i % 17))
            .value(format!("v{i}"))
            .build();
        // Without waiting for each acknowledgement (an idempotent producer
        // keeps their order); all of them are checked at the close.
        p.publish_async(msg).await.expect("publish input");
    }
    assert_eq!(p.close().await.undelivered, 0, "every input acknowledged");
}

/// A handler that publishes the input's value, uppercased, to `output`
/// through `producer`, and counts its calls.
pub fn transform(
    producer: &Producer,
    output: &str,
    calls: &Arc<AtomicUsize>,
) -> impl Fn(Message) -> BoxFuture<Result<Ack, BoxError>> + Clone + Send + Sync + 'static {
    let producer = producer.clone();
    let output: Arc<str> = output.into();
    let calls = calls.clone();
    move |m: Message| {
        let producer = producer.clone();
        let output = output.clone();
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let out = Message::builder(output)
                .key(m.key().cloned().unwrap_or_default())
                .value(m.value_str().unwrap_or_default().to_uppercase())
                .build();
            producer.publish(out).await?;
            Ok(Ack::Success)
        })
    }
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The group's committed offsets equal the input's end offsets.
pub async fn wait_committed(group: &str, topic: &str, partitions: i32, ends: &[i64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let committed: Vec<Option<i64>> = (0..partitions)
            .map(|p| common::committed(group, topic, p))
            .collect();
        if committed
            .iter()
            .zip(ends)
            .all(|(c, e)| *e == 0 || *c == Some(*e))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed:?}, expected {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn end_offsets(topic: &str, partitions: i32) -> Vec<i64> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// Creates `name` (one partition) refusing records over `bytes`
/// (`max.message.bytes`): a record the broker rejects for good, which leaves
/// the transaction holding it abortable.
pub async fn topic_refusing_records_over(name: &str, bytes: usize) {
    use xkafka::raw::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use xkafka::raw::rdkafka::client::DefaultClientContext;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let limit = bytes.to_string();
    let created =
        admin
            .create_topics(
                [&NewTopic::new(name, 1, TopicReplication::Fixed(1))
                    .set("max.message.bytes", &limit)],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
}
