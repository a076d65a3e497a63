//! The raw `rdkafka` baselines: what a user would write without xkafka.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use xkafka::raw::rdkafka::config::FromClientConfigAndContext;
use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer};
use xkafka::raw::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use xkafka::raw::rdkafka::message::Message as _;
use xkafka::raw::rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext,
    ThreadedProducer,
};
use xkafka::raw::rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::clock::Clock;
use crate::transform as eos;
use crate::vocab::{
    now_micros, open_loop, payload, producer_settings, unique, until, BoxResult, Sizes, RUN_TIMEOUT,
};

/// What the raw loop does with each message.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Work {
    /// What xkafka does: copy key and payload into owned bytes, store the
    /// offset.
    CopyAndStore,
    /// Poll and count.
    Bare,
}

fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        // xkafka's consumer default (librdkafka's is 1000): the same
        // settings on both sides. With librdkafka's, a raw run past
        // `queued.min.messages` stalls for up to a second (BENCHMARKS.md,
        // "The fetch queue backoff") and the ratio would measure that.
        .set("fetch.queue.backoff.ms", "10");
    config
}

/// A `BaseConsumer` poll loop; messages per second.
pub(crate) fn consume(brokers: &str, topic: &str, messages: u64, work: Work) -> BoxResult<f64> {
    let consumer: BaseConsumer = consumer_config(brokers, &unique("raw")).create()?;
    consumer.subscribe(&[topic])?;
    let clock = Clock::steady(messages);
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !clock.done() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Work::CopyAndStore = work {
                    let key = m.key().map(Bytes::copy_from_slice);
                    let value = m.payload().map(Bytes::copy_from_slice);
                    std::hint::black_box((key, value));
                    consumer.store_offset_from_message(&m)?;
                }
                clock.tick(1);
            }
            Some(Err(e)) => eprintln!("raw consumer error: {e}"),
            None => {}
        }
    }
    Ok(clock.rate()?)
}

struct Counting {
    clock: Arc<Clock>,
    failed: Arc<AtomicU64>,
    /// Set while the warm-up message is in flight: its report is not counted.
    warming: AtomicBool,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if !self.warming.swap(false, Ordering::AcqRel) {
            self.clock.tick(1);
        }
    }
}

fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in producer_settings() {
        config.set(k, v);
    }
    config
}

/// A `ThreadedProducer` with a delivery callback; messages per second
/// from the first send to the last delivery report.
pub(crate) fn publish_async(brokers: &str, topic: &str, messages: u64) -> BoxResult<f64> {
    let clock = Arc::new(Clock::new(messages));
    let failed = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<Counting> = ThreadedProducer::from_config_and_context(
        &producer_config(brokers),
        Counting {
            clock: clock.clone(),
            failed: failed.clone(),
            warming: AtomicBool::new(true),
        },
    )?;
    let value = payload(100);
    // Warm up as ours does: connected, producer id, metadata.
    producer
        .send(BaseRecord::<(), _>::to(topic).payload(&value))
        .map_err(|(e, _)| e)?;
    producer.flush(Duration::from_secs(30))?;
    clock.start();
    for i in 0..messages {
        let key = format!("k{}", i % 1000);
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !clock.done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    producer.flush(Duration::from_secs(10))?;
    if failed.load(Ordering::Relaxed) > 0 {
        return Err(format!("{} deliveries failed", failed.load(Ordering::Relaxed)).into());
    }
    Ok(clock.rate()?)
}

/// A `FutureProducer` awaited with 64 in flight.
pub(crate) async fn publish_sync(brokers: &str, topic: &str, messages: u64) -> BoxResult<f64> {
    let producer: FutureProducer = producer_config(brokers).create()?;
    let value = payload(100);
    let started = Instant::now();
    let results: Vec<_> = stream::iter(0..messages)
        .map(|i| {
            let producer = &producer;
            let value = &value;
            async move {
                let key = format!("k{}", i % 1000);
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(value),
                        Duration::from_secs(30),
                    )
                    .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    if let Some(Err((e, _))) = results.iter().find(|r| r.is_err()) {
        return Err(format!("send failed: {e}").into());
    }
    Ok(messages as f64 / secs)
}

/// Open-loop end-to-end latency with a raw producer and a raw poll loop:
/// p99 in milliseconds.
pub(crate) async fn latency(brokers: &str, topic: &str, sizes: &Sizes) -> BoxResult<f64> {
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let expected = sizes.latency_rate * sizes.latency_secs;
    let warm = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let consumer_thread = {
        let (histogram, warm, stop, seen) =
            (histogram.clone(), warm.clone(), stop.clone(), seen.clone());
        let mut config = consumer_config(brokers, &unique("raw-latency"));
        config.set("fetch.wait.max.ms", "10");
        let consumer: BaseConsumer = config.create()?;
        consumer.subscribe(&[topic])?;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let now = now_micros();
                let value = m.payload().map(Bytes::copy_from_slice);
                let _ = consumer.store_offset_from_message(&m);
                match value
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                {
                    Some(0) | None => warm.store(true, Ordering::Relaxed),
                    Some(sent) => {
                        let _ = histogram
                            .lock()
                            .unwrap()
                            .record(now.saturating_sub(sent).max(1));
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut config = producer_config(brokers);
    config.set("linger.ms", "0");
    let producer: FutureProducer = config.create()?;
    producer
        .send(
            FutureRecord::<(), _>::to(topic).payload("0"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    let probe = warm.clone();
    until(move || probe.load(Ordering::Relaxed)).await;
    open_loop(sizes, |sent| {
        let text = sent.to_string();
        let result = producer
            .send_result(FutureRecord::<(), _>::to(topic).payload(&text))
            .map(|_delivery| ())
            .map_err(|(e, _)| e.to_string());
        async move { result }
    })
    .await?;
    let probe = seen.clone();
    until(move || probe.load(Ordering::Relaxed) >= expected).await;
    stop.store(true, Ordering::Relaxed);
    let _ = consumer_thread.join();
    producer.flush(Duration::from_secs(10))?;
    let p99 = histogram.lock().unwrap().value_at_quantile(0.99) as f64 / 1_000.0;
    Ok(p99)
}

/// Counts delivery reports (acknowledged and failed).
struct Delivered {
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.acked.fetch_add(1, Ordering::Release);
    }
}

/// The raw consume-transform-produce loop, what a user would write with
/// rdkafka alone: a `BaseConsumer` poll loop producing one record per input
/// (value uppercased, same key) through a `ThreadedProducer`.
///
/// Transactional: begin; produce per message, remembering each partition's
/// next offset; once `interval` passed since the transaction's first
/// message, `send_offsets_to_transaction` with `consumer.group_metadata()`,
/// `commit_transaction`, `begin_transaction`. The poll timeout never runs
/// past the interval. At-least-once: auto commit every
/// [`eos::ALO_COMMIT_INTERVAL_MS`] ms, the offset stored once the output is
/// queued. Timed by [`eos::Watch`] until everything is committed.
pub(crate) fn transform(job: &eos::Job<'_>, mode: eos::Mode) -> BoxResult<eos::Outcome> {
    const OP_TIMEOUT: Duration = Duration::from_secs(30);
    let group = unique("raw-eos");
    let clock = Clock::new(job.messages);
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut config = producer_config(job.brokers);
    let interval = match mode {
        eos::Mode::Transactional(interval) => {
            config.set("transactional.id", unique("bench-raw-txn"));
            Some(interval)
        }
        eos::Mode::AtLeastOnce => None,
    };
    let producer: ThreadedProducer<Delivered> = ThreadedProducer::from_config_and_context(
        &config,
        Delivered {
            acked: acked.clone(),
            failed: failed.clone(),
        },
    )?;
    if interval.is_some() {
        producer.init_transactions(OP_TIMEOUT)?;
        producer.begin_transaction()?;
    }
    let mut config = consumer_config(job.brokers, &group);
    match mode {
        eos::Mode::Transactional(_) => config.set("enable.auto.commit", "false"),
        eos::Mode::AtLeastOnce => config.set("enable.auto.commit", "true").set(
            "auto.commit.interval.ms",
            eos::ALO_COMMIT_INTERVAL_MS.to_string(),
        ),
    };
    let consumer: BaseConsumer = config.create()?;
    consumer.subscribe(&[job.input])?;
    let watch = eos::Watch::start(job, &group, acked)?;
    // The open transaction: when its first message came, and the next
    // offset of each partition it read.
    let mut opened: Option<Instant> = None;
    let mut next: std::collections::BTreeMap<i32, i64> = Default::default();
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !watch.done() && Instant::now() < deadline {
        let timeout = match (interval, opened) {
            (Some(interval), Some(at)) => interval.saturating_sub(at.elapsed()),
            _ => Duration::from_millis(100),
        }
        .min(Duration::from_millis(100));
        match consumer.poll(timeout) {
            Some(Ok(m)) => {
                let value = m.payload().map(<[u8]>::to_ascii_uppercase);
                let mut record = BaseRecord::<[u8], [u8]>::to(job.output);
                if let Some(key) = m.key() {
                    record = record.key(key);
                }
                if let Some(value) = &value {
                    record = record.payload(value.as_slice());
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err((e, _)) => return Err(e.into()),
                    }
                }
                if interval.is_some() {
                    next.insert(m.partition(), m.offset() + 1);
                    opened.get_or_insert_with(Instant::now);
                } else {
                    consumer.store_offset_from_message(&m)?;
                }
                clock.tick(1);
            }
            Some(Err(e)) => eprintln!("raw consumer error: {e}"),
            None => {}
        }
        if let (Some(interval), Some(at)) = (interval, opened) {
            if at.elapsed() >= interval {
                let mut offsets = TopicPartitionList::with_capacity(next.len());
                for (&partition, &offset) in &next {
                    offsets.add_partition_offset(job.input, partition, Offset::Offset(offset))?;
                }
                let metadata = consumer
                    .group_metadata()
                    .ok_or("the consumer has no group metadata")?;
                producer.send_offsets_to_transaction(&offsets, &metadata, OP_TIMEOUT)?;
                if job.raw_drain {
                    while producer.in_flight_count() > 0 && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                producer.commit_transaction(OP_TIMEOUT)?;
                producer.begin_transaction()?;
                next.clear();
                opened = None;
            }
        }
    }
    let committed_at = watch.finish();
    if interval.is_some() {
        // Nothing is open any more (every input was committed); closes the
        // empty transaction begun last.
        let _ = producer.abort_transaction(OP_TIMEOUT);
    }
    producer.flush(Duration::from_secs(10))?;
    if failed.load(Ordering::Relaxed) > 0 {
        return Err(format!("{} deliveries failed", failed.load(Ordering::Relaxed)).into());
    }
    eos::Outcome::of(&clock, committed_at)
}
