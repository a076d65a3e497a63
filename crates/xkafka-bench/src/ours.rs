//! The xkafka side of each comparison.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use xkafka::{
    Ack, Batch, BatchConsumer, BoxError, Consumer, Decision, Delivery, Error, Message, Order,
    Producer,
};

use crate::clock::Clock;
use crate::transform as eos;
use crate::vocab::{
    now_micros, open_loop, payload, producer_settings, unique, until, BoxResult, Sizes,
};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Handler {
    Noop,
    Sleep1ms,
}

fn quiet(err: &Error) -> Decision {
    eprintln!("consumer error: {err}");
    Decision::Continue
}

/// Streaming consumer throughput (messages per second).
pub(crate) async fn consume(
    brokers: &str,
    topic: &str,
    messages: u64,
    handler: Handler,
    concurrency: usize,
    order: Order,
) -> BoxResult<f64> {
    let clock = Arc::new(Clock::steady(messages));
    let ticks = clock.clone();
    // Handler-bound runs (their rate is compared with N × the sequential
    // rate, both measured here): a broker that answers a fetch for one
    // partition at a time and holds each for fetch.wait.max.ms (500 ms by
    // default; Tansu did) starves the concurrent runs between bursts but not
    // the sequential one. Kept on Apache Kafka so the figures stay comparable.
    let fetch_wait = match handler {
        Handler::Sleep1ms => "10",
        Handler::Noop => "500",
    };
    let consumer = Consumer::builder(unique("ours"))
        .brokers([brokers])
        .topics([topic])
        .config("auto.offset.reset", "earliest")
        .config("fetch.wait.max.ms", fetch_wait)
        // The whole topic may be buffered, as the raw loop never pauses
        // either: slow handlers would otherwise reach the per-partition
        // bound and pause, which the baseline does not pay for.
        .max_in_flight_per_partition(1_000_000)
        .max_in_flight(10_000_000)
        .concurrency(concurrency)
        .order(order)
        .error_handler(quiet)
        .handler(move |_m: Message| {
            ticks.tick(1);
            async move {
                if let Handler::Sleep1ms = handler {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ack::Success
            }
        })
        .build()?;
    let probe = clock.clone();
    consumer.run(until(move || probe.done())).await?;
    Ok(clock.rate()?)
}

/// Batch consumer throughput, batches of 1,000.
pub(crate) async fn consume_batch(brokers: &str, topic: &str, messages: u64) -> BoxResult<f64> {
    let clock = Arc::new(Clock::steady(messages));
    let ticks = clock.clone();
    let consumer = BatchConsumer::builder(unique("ours-batch"))
        .brokers([brokers])
        .topics([topic])
        .config("auto.offset.reset", "earliest")
        .batch_size(1_000)
        // A prefilled topic ends (and, on a broker that serves it in bursts,
        // pauses between fetches) with partial batches that wait out their
        // window; in a sub-second run a 100 ms window would be measured as
        // throughput. 10 ms keeps that tail small next to the run.
        .batch_timeout(Duration::from_millis(10))
        // The whole topic may be buffered: the run measures handling, not
        // backpressure (the raw loop never pauses).
        .max_in_flight_per_partition(1_000_000)
        .max_in_flight(10_000_000)
        .error_handler(quiet)
        .handler(move |b: Batch| {
            ticks.tick(b.len() as u64);
            async { Ack::Success }
        })
        .build()?;
    let probe = clock.clone();
    consumer.run(until(move || probe.done())).await?;
    Ok(clock.rate()?)
}

/// `publish_async` with a delivery callback: messages per second from the
/// first publish to the last callback.
pub(crate) async fn publish_async(brokers: &str, topic: &str, messages: u64) -> BoxResult<f64> {
    let clock = Arc::new(Clock::new(messages));
    let ticks = clock.clone();
    let failed = Arc::new(AtomicU64::new(0));
    let failures = failed.clone();
    let producer = Producer::builder("bench-ours")
        .brokers([brokers])
        .configs(producer_settings())
        .error_handler(|err| eprintln!("producer error: {err}"))
        .on_delivery(move |report: &Result<Delivery, Error>| {
            if report.is_err() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            ticks.tick(1);
        })
        .build()?;
    let value = bytes::Bytes::from(payload(100));
    // One shared topic name, as a service publishing to a fixed topic would
    // keep it (a `&str` would allocate it for every message).
    let topic: std::sync::Arc<str> = topic.into();
    // Connected, with a producer id (idempotence) and the topic's metadata:
    // the clock measures publishing, not start-up.
    producer
        .publish(Message::builder(topic.clone()).value(value.clone()).build())
        .await?;
    clock.start();
    for i in 0..messages {
        let msg = Message::builder(topic.clone())
            .key(format!("k{}", i % 1000))
            .value(value.clone())
            .build();
        producer.publish_async(msg).await?;
    }
    let probe = clock.clone();
    until(move || probe.done()).await;
    producer.close().await;
    if failed.load(Ordering::Relaxed) > 0 {
        return Err(format!("{} deliveries failed", failed.load(Ordering::Relaxed)).into());
    }
    Ok(clock.rate()?)
}

/// `publish` awaited with 64 in flight.
pub(crate) async fn publish_sync(brokers: &str, topic: &str, messages: u64) -> BoxResult<f64> {
    let producer = Producer::builder("bench-ours-sync")
        .brokers([brokers])
        .configs(producer_settings())
        .error_handler(|err| eprintln!("producer error: {err}"))
        .build()?;
    let value = bytes::Bytes::from(payload(100));
    let topic: std::sync::Arc<str> = topic.into();
    let started = Instant::now();
    let results: Vec<Result<Delivery, Error>> = stream::iter(0..messages)
        .map(|i| {
            let msg = Message::builder(topic.clone())
                .key(format!("k{}", i % 1000))
                .value(value.clone())
                .build();
            producer.publish(msg)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    producer.close().await;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return Err(format!("publish failed: {e}").into());
    }
    Ok(messages as f64 / secs)
}

/// Open-loop end-to-end latency: p99 in milliseconds.
pub(crate) async fn latency(brokers: &str, topic: &str, sizes: &Sizes) -> BoxResult<f64> {
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let record = histogram.clone();
    let warm = Arc::new(AtomicU64::new(0));
    let warmed = warm.clone();
    let expected = sizes.latency_rate * sizes.latency_secs;
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let consumer = Consumer::builder(unique("ours-latency"))
        .brokers([brokers])
        .topics([topic])
        .config("auto.offset.reset", "earliest")
        .config("fetch.wait.max.ms", "10")
        .error_handler(quiet)
        .handler(move |m: Message| {
            let now = now_micros();
            match m.value_str().and_then(|v| v.parse::<u64>().ok()) {
                Some(0) | None => {
                    warmed.fetch_add(1, Ordering::Relaxed);
                }
                Some(sent) => {
                    let _ = record
                        .lock()
                        .unwrap()
                        .record(now.saturating_sub(sent).max(1));
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            async { Ack::Success }
        })
        .build()?;
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    let producer = Producer::builder("bench-ours-latency")
        .brokers([brokers])
        .configs(producer_settings())
        .config("linger.ms", "0")
        .error_handler(|err| eprintln!("producer error: {err}"))
        .build()?;
    // Warm up: the consumer has joined once it saw this.
    producer
        .publish(Message::builder(topic).value("0").build())
        .await?;
    let probe = warm.clone();
    until(move || probe.load(Ordering::Relaxed) > 0).await;
    open_loop(sizes, |sent| {
        let producer = producer.clone();
        let topic = topic.to_owned();
        async move {
            let msg = Message::builder(topic.as_str())
                .value(sent.to_string())
                .build();
            producer.publish_async(msg).await.map_err(|e| e.to_string())
        }
    })
    .await?;
    let probe = seen.clone();
    until(move || probe.load(Ordering::Relaxed) >= expected).await;
    stop.shutdown();
    let _ = run.await;
    producer.close().await;
    let p99 = histogram.lock().unwrap().value_at_quantile(0.99) as f64 / 1_000.0;
    Ok(p99)
}

/// Consume-transform-produce: each input's value uppercased, published with
/// its key to `job.output` with `publish_async`; transactional (ours
/// begins and commits, every `interval`) or at-least-once. Timed by
/// [`eos::Watch`] until everything is committed.
pub(crate) async fn transform(job: &eos::Job<'_>, mode: eos::Mode) -> BoxResult<eos::Outcome> {
    let group = unique("ours-eos");
    let clock = Arc::new(Clock::new(job.messages));
    let ticks = clock.clone();
    let delivered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (acks, failures) = (delivered.clone(), failed.clone());
    let mut producer = Producer::builder("bench-ours-eos")
        .brokers([job.brokers])
        .configs(producer_settings())
        .error_handler(|err| eprintln!("producer error: {err}"))
        .on_delivery(move |report: &Result<Delivery, Error>| {
            if report.is_err() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            acks.fetch_add(1, Ordering::Release);
        });
    if let eos::Mode::Transactional(_) = mode {
        producer = producer.transactional_id(unique("bench-ours-txn"));
    }
    let producer = producer.build()?;
    let watch = eos::Watch::start(job, &group, delivered)?;
    let mut consumer = Consumer::builder(group)
        .brokers([job.brokers])
        .topics([job.input])
        .config("auto.offset.reset", "earliest")
        .error_handler(quiet);
    consumer = match mode {
        eos::Mode::Transactional(interval) => consumer
            .transactional(producer.clone())
            .transaction_interval(interval)
            // Transactions end on time only, as in the raw loop.
            .transaction_max_messages(usize::MAX),
        eos::Mode::AtLeastOnce => consumer.config(
            "auto.commit.interval.ms",
            eos::ALO_COMMIT_INTERVAL_MS.to_string(),
        ),
    };
    let output: Arc<str> = job.output.into();
    let publisher = producer.clone();
    let consumer = consumer
        .handler(move |m: Message| {
            ticks.tick(1);
            let producer = publisher.clone();
            let out = Message::builder(output.clone())
                .key(m.key().cloned().unwrap_or_default())
                .value(
                    m.value()
                        .map(|v| v.to_ascii_uppercase())
                        .unwrap_or_default(),
                )
                .build();
            async move {
                producer.publish_async(out).await?;
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()?;
    consumer.run(until(watch.probe())).await?;
    producer.close().await;
    let committed_at = watch.finish();
    if failed.load(Ordering::Relaxed) > 0 {
        return Err(format!("{} deliveries failed", failed.load(Ordering::Relaxed)).into());
    }
    eos::Outcome::of(&clock, committed_at)
}
