//! The batch consumer on the real broker: size and time triggers,
//! per-message outcomes holding back the watermark, offset-0 partitions.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use xkafka::{Ack, Batch, BatchConsumer, BoxError, ConsumerBuilder, Decision, Message, Order};

fn batch_consumer(group: &str, topic: &str) -> ConsumerBuilder<xkafka::consumer::Batching> {
    init_tracing();
    BatchConsumer::builder(group)
        .brokers([brokers()])
        .topics([topic])
        .config("auto.offset.reset", "earliest")
        .config("session.timeout.ms", "6000")
        .config("heartbeat.interval.ms", "2000")
        .config("fetch.wait.max.ms", "10")
        .shutdown_timeout(Duration::from_secs(5))
}

type Batches = Arc<Mutex<Vec<(Instant, Vec<(i32, i64)>)>>>;

fn recording(
    batches: &Batches,
) -> impl Fn(Batch) -> std::future::Ready<()> + Clone + Send + Sync + 'static {
    let batches = batches.clone();
    move |batch: Batch| {
        let seen = batch
            .iter()
            .map(|m| (m.partition().unwrap(), m.offset().unwrap()))
            .collect();
        batches.lock().unwrap().push((Instant::now(), seen));
        std::future::ready(())
    }
}

fn handled(batches: &Batches) -> usize {
    batches.lock().unwrap().iter().map(|(_, b)| b.len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_close_at_the_size() {
    let topic = topic("batch-size", 1).await;
    let producer = producer();
    fill(&producer, &topic, 0, 30).await;
    producer.close().await;
    let batches: Batches = Arc::default();
    let consumer = batch_consumer(&unique("batch-size-g"), &topic)
        .batch_size(10)
        .batch_timeout(Duration::from_secs(30))
        .error_handler(|err| panic!("unexpected: {err}"))
        .handler(recording(&batches))
        .build()
        .unwrap();
    let probe = batches.clone();
    // Gives up before the 30 s window could close any batch: whatever was
    // handled was closed by its size.
    let summary = consumer
        .run(until(
            move || handled(&probe) >= 30,
            Duration::from_secs(25),
        ))
        .await
        .unwrap();
    assert_eq!(
        summary.succeeded, 30,
        "all handled before any window expired"
    );
    let sizes: Vec<usize> = batches
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.len())
        .collect();
    assert_eq!(sizes, [10, 10, 10], "closed by size");
    let all: Vec<i64> = batches
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, b)| b.iter().map(|(_, o)| *o))
        .collect();
    assert_eq!(all, (0..30).collect::<Vec<_>>(), "in offset order");
}

/// The window of a partial batch opens when its first message is fetched.
/// That moment is not observable here, but it lies between two that are:
/// after publishing began, and (give or take `fetch.wait.max.ms`) after
/// the broker acknowledged the messages. So the batch must come at least
/// one window after the first, and within one window (plus the consumer's
/// own fetch and scheduling delay) after the second — measured from
/// before publishing, the upper bound would include the producer's round
/// trip as well, which a loaded machine can stretch past any window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_is_handled_when_its_window_expires() {
    const WINDOW: Duration = Duration::from_millis(500);
    /// Fetching (`fetch.wait.max.ms` = 10) and handing over the batch on a
    /// busy machine; a consumer that waited for more messages or a second
    /// window would exceed it.
    const DELAY: Duration = Duration::from_millis(500);
    let topic = topic("batch-time", 1).await;
    let producer = producer();
    let batches: Batches = Arc::default();
    let consumer = batch_consumer(&unique("batch-time-g"), &topic)
        .batch_size(1_000)
        .batch_timeout(WINDOW)
        .error_handler(|err| panic!("unexpected: {err}"))
        .handler(recording(&batches))
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    // Warm up: once this one is handled, the consumer is assigned and
    // fetching, so that the window below does not include the group join.
    fill(&producer, &topic, 0, 1).await;
    until(|| handled(&batches) >= 1, Duration::from_secs(30)).await;
    assert_eq!(handled(&batches), 1);

    let message = |i: usize| {
        Message::builder(topic.as_str())
            .partition(0)
            .value(format!("m{i}"))
            .build()
    };
    let sent = Instant::now();
    // Published together (one produce request): one fetch, one batch.
    let (a, b, c) = tokio::join!(
        producer.publish(message(0)),
        producer.publish(message(1)),
        producer.publish(message(2)),
    );
    let acked = Instant::now();
    for delivery in [a, b, c] {
        delivery.expect("published");
    }
    until(|| handled(&batches) >= 4, Duration::from_secs(10)).await;
    let (at, batch) = batches.lock().unwrap()[1].clone();
    assert_eq!(batch.len(), 3, "one batch of the three messages");
    let (since_sent, since_acked) = (at - sent, at.saturating_duration_since(acked));
    println!(
        "3-message batch handled {since_sent:?} after publishing began, {since_acked:?} after \
         the broker acknowledged them (window {WINDOW:?}; publishing took {:?})",
        acked - sent
    );
    assert!(
        since_sent >= WINDOW - Duration::from_millis(20),
        "closed before its window expired: {since_sent:?} after publishing began"
    );
    assert!(
        since_acked <= WINDOW + DELAY,
        "window not honoured: {since_acked:?} after the messages were on the broker"
    );
    stop.shutdown();
    run.await.unwrap().unwrap();
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_in_a_batch_holds_back_the_watermark() {
    let topic = topic("batch-fail", 1).await;
    let producer = producer();
    fill(&producer, &topic, 0, 10).await;
    producer.close().await;
    let group = unique("batch-fail-g");
    let consumer = batch_consumer(&group, &topic)
        .batch_size(10)
        .batch_timeout(Duration::from_secs(1))
        .error_handler(|_| Decision::Stop)
        .handler(|batch: Batch| async move {
            for (i, m) in batch.iter().enumerate() {
                match m.offset() {
                    Some(4) => batch.fail(i, "bad record"),
                    Some(7) => batch.ack(i, Ack::Skip),
                    _ => {}
                }
            }
            Ok::<(), BoxError>(())
        })
        .build()
        .unwrap();
    let err = consumer.run(std::future::pending()).await.unwrap_err();
    assert_eq!(err.message_location(), Some((topic.as_str(), 0, 4)));
    assert_eq!(
        committed(&group, &topic, 0),
        Some(4),
        "committed up to the failed message, not past it"
    );
    let again = consume(&group, &topic, 6, Duration::from_secs(30)).await;
    assert_eq!(
        again.first().and_then(Message::offset),
        Some(4),
        "the failed message comes again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_whose_messages_are_all_at_offset_zero_are_committed() {
    let topic = topic("batch-zero", 3).await;
    let producer = producer();
    for p in 0..3 {
        fill(&producer, &topic, p, 1).await;
    }
    producer.close().await;
    let group = unique("batch-zero-g");
    let batches: Batches = Arc::default();
    let consumer = batch_consumer(&group, &topic)
        .concurrency(3)
        .order(Order::Unordered)
        .batch_size(100)
        .batch_timeout(Duration::from_millis(300))
        .error_handler(|err| panic!("unexpected: {err}"))
        .handler(recording(&batches))
        .build()
        .unwrap();
    let probe = batches.clone();
    consumer
        .run(until(move || handled(&probe) >= 3, Duration::from_secs(30)))
        .await
        .unwrap();
    for p in 0..3 {
        assert_eq!(committed(&group, &topic, p), Some(1), "partition {p}");
    }
}

/// Batches whose handler finishes at once run on the poll thread; one that
/// waits continues in its lane. Mixing both must keep each partition's
/// batches in offset order, run partitions in parallel and handle each
/// message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_wait_keep_partition_order() {
    let topic = topic("batch-wait", 3).await;
    let producer = producer();
    for p in 0..3 {
        fill(&producer, &topic, p, 60).await;
    }
    producer.close().await;
    let batches: Batches = Arc::default();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (record, run, top) = (batches.clone(), running.clone(), peak.clone());
    let consumer = batch_consumer(&unique("batch-wait-g"), &topic)
        .batch_size(7)
        .batch_timeout(Duration::from_millis(50))
        .concurrency(3)
        .order(Order::PerPartition)
        .error_handler(|err| panic!("unexpected: {err}"))
        .handler(move |batch: Batch| {
            let seen: Vec<(i32, i64)> = batch
                .iter()
                .map(|m| (m.partition().unwrap(), m.offset().unwrap()))
                .collect();
            // Every other batch (by its first offset) waits.
            let waits = seen[0].1 % 2 == 0;
            let (record, run, top) = (record.clone(), run.clone(), top.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let now = run.fetch_add(1, SeqCst) + 1;
                top.fetch_max(now, SeqCst);
                if waits {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                record.lock().unwrap().push((Instant::now(), seen));
                run.fetch_sub(1, SeqCst);
            }
        })
        .build()
        .unwrap();
    let probe = batches.clone();
    let summary = consumer
        .run(until(
            move || handled(&probe) >= 180,
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    assert_eq!(summary.succeeded, 180);
    let batches = batches.lock().unwrap();
    for p in 0..3 {
        let offsets: Vec<i64> = batches
            .iter()
            .flat_map(|(_, b)| b.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o))
            .collect();
        assert_eq!(
            offsets,
            (0..60).collect::<Vec<_>>(),
            "partition {p}: once each, in offset order"
        );
    }
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=3).contains(&peak),
        "partitions in parallel, within Concurrency(3): peak {peak}"
    );
}
