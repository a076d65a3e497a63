//! One hung handler under `Order::PerKey`: the other keys flow until the
//! partition's tracking bound, then the partition pauses (memory stays
//! bounded), the stall is reported with the held message's offset, and
//! everything resumes and commits once the handler returns. And ordinary
//! backpressure (a message waiting its turn behind its key) is no stall.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
#[cfg(feature = "metrics")]
use xkafka::metrics::Metrics;
use xkafka::{Ack, Decision, Error, Message, Order};

/// The partition's tracking bound (`max_in_flight_per_partition`).
const BOUND: usize = 100;
/// Messages one poll round may take from librdkafka before the pause of a
/// full partition is applied (the poll loop's `POLL_BATCH`).
const POLL_ROUND: usize = 512;
const AFTER: usize = 3_000;

/// A reported stall: topic, partition, offset, finished messages behind it.
type Stall = (String, i32, i64, usize);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_pauses_its_partition_at_the_bound_and_reports_the_stall() {
    let topic = topic("stall", 1).await;
    let producer = producer();
    let publish = |key: Option<String>| {
        let msg = Message::builder(topic.as_str()).partition(0).value("v");
        let msg = match key {
            Some(key) => msg.key(key),
            None => msg,
        };
        producer.publish_async(msg.build())
    };
    for i in 0..5 {
        publish(Some(format!("k{i}"))).await.unwrap();
    }
    // Keyless: alone in its lane, so nothing queues behind it there and the
    // count of unfinished messages never exceeds one.
    publish(None).await.unwrap();
    for i in 0..AFTER {
        publish(Some(format!("k{}", 5 + i))).await.unwrap();
    }
    assert_eq!(producer.close().await.undelivered, 0);
    // Offsets 0..=4, the stuck one at 5, then AFTER more.
    let stuck_offset = 5;
    let end = (5 + 1 + AFTER) as i64;

    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let handled: Arc<Mutex<Vec<i64>>> = Arc::default();
    let stalls: Arc<Mutex<Vec<Stall>>> = Arc::default();
    #[cfg(feature = "metrics")]
    let metrics = Metrics::new();
    let (r, h, s) = (release.clone(), handled.clone(), stalls.clone());
    let consumer = consumer(&unique("stall-g"), &topic)
        .order(Order::PerKey)
        .concurrency(4)
        .max_in_flight_per_partition(BOUND)
        .stall_after(Duration::from_secs(1));
    #[cfg(feature = "metrics")]
    let consumer = consumer.metrics(&metrics);
    let consumer = consumer
        .error_handler(move |err| {
            match err {
                Error::Stalled {
                    topic,
                    partition,
                    offset,
                    behind,
                } => s
                    .lock()
                    .unwrap()
                    .push((topic.to_string(), *partition, *offset, *behind)),
                other => panic!("unexpected: {other}"),
            }
            Decision::Continue
        })
        .handler(move |m: Message| {
            let (r, h) = (r.clone(), h.clone());
            async move {
                if m.key().is_none() {
                    let _ = r.acquire().await.unwrap();
                }
                h.lock().unwrap().push(m.offset().unwrap());
                Ack::Success
            }
        })
        .build()
        .unwrap();
    let probe = handled.clone();
    let run = tokio::spawn(consumer.run(until(
        move || probe.lock().unwrap().len() as i64 >= end,
        Duration::from_secs(120),
    )));

    // The stall is reported, naming the held message.
    let probe = stalls.clone();
    until(
        move || !probe.lock().unwrap().is_empty(),
        Duration::from_secs(60),
    )
    .await;
    let reported = stalls.lock().unwrap().clone();
    assert_eq!(reported.len(), 1, "one report per stall: {reported:?}");
    let (t, p, offset, behind) = reported[0].clone();
    assert_eq!((t.as_str(), p, offset), (topic.as_str(), 0, stuck_offset));
    // Tracked: the held one and those behind it, at most the bound plus the
    // rest of the poll round in which it was reached.
    assert!(
        (1..BOUND + POLL_ROUND).contains(&behind),
        "finished messages held behind it: {behind}"
    );
    #[cfg(feature = "metrics")]
    let series =
        format!("xkafka_stalled_offset{{partition=\"0\",topic=\"{topic}\"}} {stuck_offset}");
    #[cfg(feature = "metrics")]
    assert!(metrics.render().contains(&series), "{}", metrics.render());

    // Paused: what was handled stays below the bound (plus the poll round
    // in which the bound was reached) and stops growing. Without the bound
    // every other key flows: over 2,000 messages.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = handled.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        handled.lock().unwrap().len(),
        during,
        "the partition is paused"
    );
    assert!(
        during <= 5 + BOUND + POLL_ROUND,
        "{during} handled while one message hung"
    );
    assert!(!handled.lock().unwrap().contains(&stuck_offset));
    eprintln!(
        "stalled at {offset} with {behind} finished behind it; {during} handled while it hung"
    );

    // The handler returns: everything flows, and commits past it.
    release.add_permits(1);
    let summary = run.await.unwrap().unwrap();
    let mut handled = handled.lock().unwrap().clone();
    handled.sort_unstable();
    handled.dedup();
    assert_eq!(handled.len() as i64, end, "every message handled once");
    let committed = summary
        .committed
        .iter()
        .find(|(tp, _)| tp.partition == 0)
        .map(|(_, c)| *c);
    assert_eq!(committed, Some(end), "committed past the stalled message");
    #[cfg(feature = "metrics")]
    assert!(
        !metrics.render().contains("xkafka_stalled_offset{"),
        "the stall cleared: {}",
        metrics.render()
    );
}

/// Issue 27 ("`Error::Stalled` fires under ordinary backpressure"): per-key
/// order, a 3 ms handler, a small bound: the partition fills its bound
/// while its oldest message merely waits behind its key, over and over.
/// Before, each time was reported as a stall (dozens in a run); a stall is
/// a message unfinished for `stall_after`, and none is here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_behind_a_key_is_not_a_stall() {
    const MESSAGES: usize = 3_000;
    let topic = topic("stall-bp", 2).await;
    let producer = producer();
    for i in 0..MESSAGES {
        let msg = Message::builder(topic.as_str())
            .partition((i % 2) as i32)
            // Few keys: messages queue behind their key's lane.
            .key(format!("k{}", i % 5))
            .value("v")
            .build();
        producer.publish_async(msg).await.unwrap();
    }
    assert_eq!(producer.close().await.undelivered, 0);
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stalls: Arc<Mutex<Vec<String>>> = Arc::default();
    let paused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (h, s) = (handled.clone(), stalls.clone());
    let consumer = consumer(&unique("stall-bp-g"), &topic)
        .order(Order::PerKey)
        .concurrency(8)
        .max_in_flight_per_partition(BOUND)
        .stall_after(Duration::from_secs(2))
        .error_handler(move |err| {
            s.lock().unwrap().push(err.to_string());
            Decision::Continue
        })
        .handler(move |_m: Message| {
            let h = h.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(3)).await;
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ack::Success
            }
        })
        .build()
        .unwrap();
    let status = consumer.status_handle();
    let (probe, seen_paused) = (handled.clone(), paused.clone());
    let summary = consumer
        .run(until(
            move || {
                // Backpressure did happen: a partition paused at its bound.
                if status
                    .snapshot()
                    .partitions
                    .iter()
                    .any(|p| p.paused.is_some())
                {
                    seen_paused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                probe.load(std::sync::atomic::Ordering::SeqCst) >= MESSAGES
            },
            Duration::from_secs(120),
        ))
        .await
        .unwrap();
    assert_eq!(summary.succeeded as usize, MESSAGES);
    assert!(
        paused.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the bound was reached (the partitions paused)"
    );
    let stalls = stalls.lock().unwrap().clone();
    assert!(stalls.is_empty(), "{} reported: {stalls:?}", stalls.len());
}
