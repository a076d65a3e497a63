//! Go xkafka's PR #73, as a regression test on Apache Kafka: with
//! `ManualCommit` and `Concurrency > 1`, each Go worker stored its offset
//! and then committed "what is stored"; a worker whose store found nothing
//! new (another worker's commit had covered it, or a rebalance had cleared
//! the store) got librdkafka's `Local: No offset stored` as a commit
//! error, which stopped the consumer.
//!
//! Here [`CommitMode::Manual`] commits explicit offsets, only those it just
//! stored, so a rebalance in the middle of a stream with handlers running
//! on several lanes must give the error handler nothing, lose nothing, and
//! leave the group's committed offsets at the end of the log.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::ClientConfig;
use xkafka::{Ack, CommitMode, Decision, Message};

const PARTITIONS: i32 = 6;
/// Published after the second member left: the first one takes its
/// partitions over from what it committed.
const ROUND_ONE: usize = 300;

/// The end offset of each partition of `topic`.
fn ends(topic: &str) -> BTreeMap<i32, i64> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let (_, high) = client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (p, high)
        })
        .collect()
}

/// Member A consumes a stream with `CommitMode::Manual` and 8 lanes whose
/// handlers await a few milliseconds; member B (same settings) joins while
/// they run, consumes, and leaves; A takes over and finishes.
async fn manual_commit_across_a_rebalance(assignor: &str) {
    let _heavy = exclusive().await;
    let topic = topic("manual-rebalance", PARTITIONS).await;
    let producer = producer();
    // The stream flows until B has joined and consumed, so that the test
    // does not depend on how fast the group rebalances.
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let (producer, topic) = (producer.clone(), topic.clone());
        let (stop, published) = (stop_publishing.clone(), published.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let i = published.load(Ordering::Relaxed);
                let msg = Message::builder(topic.as_str())
                    .key(format!("r0-{i}"))
                    .value("v")
                    .build();
                producer.publish_async(msg).await.unwrap();
                published.fetch_add(1, Ordering::Relaxed);
                if i % 10 == 9 {
                    // About 500 messages a second.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });

    let group = unique("manual-rebalance-g");
    let seen: Arc<Mutex<HashMap<(i32, i64), usize>>> = Arc::default();
    let by_member: Arc<Mutex<HashMap<&'static str, usize>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let start_member = |name: &'static str| {
        let (seen, by_member) = (seen.clone(), by_member.clone());
        let errors = errors.clone();
        let consumer = consumer(&group, &topic)
            .config("partition.assignment.strategy", assignor)
            .config("client.id", name)
            .commit_mode(CommitMode::Manual)
            .concurrency(8)
            .error_handler(move |err| {
                errors.lock().unwrap().push(format!("{name}: {err}"));
                Decision::Continue
            })
            .handler(move |m: Message| {
                let (seen, by_member) = (seen.clone(), by_member.clone());
                async move {
                    // Handlers still running when the rebalance comes.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    *seen
                        .lock()
                        .unwrap()
                        .entry((m.partition().unwrap(), m.offset().unwrap()))
                        .or_default() += 1;
                    *by_member.lock().unwrap().entry(name).or_default() += 1;
                    Ack::Success
                }
            })
            .build()
            .unwrap();
        let handle = consumer.shutdown_handle();
        (handle, tokio::spawn(consumer.run(std::future::pending())))
    };
    let consumed_by = |name| by_member.lock().unwrap().get(name).copied().unwrap_or(0);

    let (a_stop, a) = start_member("member-a");
    until(|| consumed_by("member-a") >= 100, Duration::from_secs(30)).await;
    assert!(consumed_by("member-a") >= 100, "member a never consumed");
    let (b_stop, b) = start_member("member-b");
    until(|| consumed_by("member-b") >= 100, Duration::from_secs(45)).await;
    assert!(consumed_by("member-b") >= 100, "member b never consumed");
    stop_publishing.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    b_stop.shutdown();
    let b_summary = b.await.unwrap().expect("member b");
    for i in 0..ROUND_ONE {
        let msg = Message::builder(topic.as_str())
            .key(format!("r1-{i}"))
            .value("v")
            .build();
        producer.publish_async(msg).await.unwrap();
    }
    producer.close().await;
    let expected = published.load(Ordering::Relaxed) + ROUND_ONE;
    let ends = ends(&topic);
    assert_eq!(ends.values().sum::<i64>() as usize, expected);
    let total = || seen.lock().unwrap().len();
    until(|| total() >= expected, Duration::from_secs(45)).await;
    // A commits after each message: once all are handled, its last commit
    // is at most one round trip away.
    let at_end = || (0..PARTITIONS).all(|p| committed(&group, &topic, p) == Some(ends[&p]));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !at_end() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a_stop.shutdown();
    let a_summary = a.await.unwrap().expect("member a");

    let errors = errors.lock().unwrap().clone();
    let seen = seen.lock().unwrap().clone();
    let twice = seen.values().filter(|&&n| n > 1).count();
    println!(
        "{assignor}: {expected} messages, {twice} handled twice, member b handled {}, \
         assignments a={} b={}, errors {errors:?}",
        b_summary.succeeded, a_summary.assignments, b_summary.assignments
    );
    assert!(
        errors.is_empty(),
        "the error handler saw (Go xkafka's #73 is `Local: No offset stored`): {errors:?}"
    );
    let lost: Vec<(i32, i64)> = ends
        .iter()
        .flat_map(|(&p, &end)| (0..end).map(move |o| (p, o)))
        .filter(|k| !seen.contains_key(k))
        .collect();
    assert!(lost.is_empty(), "never handled: {lost:?}");
    assert!(a_summary.assignments >= 2, "member a saw the rebalance");
    assert!(b_summary.succeeded >= 100, "member b took part");
    let committed: BTreeMap<i32, Option<i64>> = (0..PARTITIONS)
        .map(|p| (p, committed(&group, &topic, p)))
        .collect();
    let ends: BTreeMap<i32, Option<i64>> = ends.into_iter().map(|(p, e)| (p, Some(e))).collect();
    assert_eq!(
        committed, ends,
        "committed offsets end at the end of the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_commit_with_concurrency_across_an_eager_rebalance() {
    manual_commit_across_a_rebalance("range").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_commit_with_concurrency_across_a_cooperative_rebalance() {
    manual_commit_across_a_rebalance("cooperative-sticky").await;
}
