//! The rebalance scenario under each group protocol: the classic protocol
//! with an eager assignor (`range`), the classic protocol with
//! `cooperative-sticky`, and the next-generation protocol of KIP-848
//! (`group.protocol=consumer`, the broker assigns; the suite's Apache Kafka
//! enables it).
//!
//! One member joins (join time: start to first message handled, the topic
//! already full), a second joins under load (rebalance time: its start to its
//! first message), the second leaves (takeover time: its shutdown to the
//! first member handling one of its partitions), the first shuts down. Checks:
//! every message handled, the two members never hold a partition at once,
//! a leaving member drains and commits (what the other re-reads is bounded by
//! what was in flight), and at the end the committed offsets are the end
//! offsets.
//!
//! Under KIP-848 librdkafka refuses `session.timeout.ms`,
//! `heartbeat.interval.ms` and `partition.assignment.strategy` (the broker
//! owns them), so these consumers are built without `common::consumer`, which
//! sets `session.timeout.ms`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{brokers, producer, topic, unique};
use xkafka::{Ack, Consumer, Decision, Message, Order, ShutdownHandle, Summary};

const PARTITIONS: i32 = 6;
const CONCURRENCY: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Protocol {
    ClassicEager,
    ClassicCooperative,
    Kip848,
}

impl Protocol {
    fn config(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Protocol::ClassicEager => vec![
                ("group.protocol", "classic"),
                ("partition.assignment.strategy", "range"),
                ("session.timeout.ms", "6000"),
                // At most a third of the session (xkafka refuses more).
                ("heartbeat.interval.ms", "2000"),
            ],
            Protocol::ClassicCooperative => vec![
                ("group.protocol", "classic"),
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("session.timeout.ms", "6000"),
                // At most a third of the session (xkafka refuses more).
                ("heartbeat.interval.ms", "2000"),
            ],
            Protocol::Kip848 => vec![("group.protocol", "consumer")],
        }
    }
}

/// (member, partition, offset, when) of every message handled.
type Log = Arc<Mutex<Vec<(&'static str, i32, i64, Instant)>>>;

fn member(
    protocol: Protocol,
    group: &str,
    topic: &str,
    name: &'static str,
    log: &Log,
    errors: &Arc<Mutex<Vec<String>>>,
) -> (
    ShutdownHandle,
    tokio::task::JoinHandle<Result<Summary, xkafka::Error>>,
) {
    common::init_tracing();
    let log = log.clone();
    let errors = errors.clone();
    let consumer = Consumer::builder(group)
        .brokers([brokers()])
        .topics([topic])
        .config("auto.offset.reset", "earliest")
        .config("client.id", name)
        .configs(protocol.config())
        .concurrency(CONCURRENCY)
        .order(Order::PerKey)
        .shutdown_timeout(Duration::from_secs(10))
        .error_handler(move |err| {
            errors.lock().unwrap().push(format!("{name}: {err}"));
            Decision::Continue
        })
        .handler(move |m: Message| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push((
                    name,
                    m.partition().unwrap(),
                    m.offset().unwrap(),
                    Instant::now(),
                ));
                Ack::Success
            }
        })
        .build()
        .unwrap_or_else(|e| panic!("{protocol:?}: {e}"));
    let handle = consumer.shutdown_handle();
    (handle, tokio::spawn(consumer.run(std::future::pending())))
}

async fn wait_for(what: &str, timeout: Duration, done: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

async fn join_rebalance_leave(protocol: Protocol) {
    let _heavy = common::exclusive().await;
    let topic = topic("proto", PARTITIONS).await;
    let group = unique("proto-g");
    let producer = producer();
    // The topic already holds messages: the first member's join time is the
    // time to its first message.
    for i in 0..600 {
        let msg = Message::builder(topic.as_str())
            .key(format!("k{}", i % 50))
            .value("v")
            .build();
        producer.publish_async(msg).await.unwrap();
    }
    let log: Log = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let handled_by =
        |name: &str| -> usize { log.lock().unwrap().iter().filter(|h| h.0 == name).count() };

    let a_started = Instant::now();
    let (a_stop, a) = member(protocol, &group, &topic, "member-a", &log, &errors);
    let join = wait_for("member a's first message", Duration::from_secs(60), || {
        handled_by("member-a") > 0
    })
    .await;

    // Publishing under way while the second member joins and leaves.
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(600));
    let publisher = tokio::spawn({
        let (producer, topic) = (producer.clone(), topic.clone());
        let (stop, published) = (stop_publishing.clone(), published.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let i = published.load(Ordering::Relaxed);
                let msg = Message::builder(topic.as_str())
                    .key(format!("k{}", i % 50))
                    .value("v")
                    .build();
                producer.publish_async(msg).await.unwrap();
                published.fetch_add(1, Ordering::Relaxed);
                if i % 10 == 9 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });

    let b_started = Instant::now();
    let (b_stop, b) = member(protocol, &group, &topic, "member-b", &log, &errors);
    let rebalance = wait_for("member b's first message", Duration::from_secs(60), || {
        handled_by("member-b") > 0
    })
    .await;
    // Both consume for a while; then b leaves.
    wait_for("member b's 100th message", Duration::from_secs(60), || {
        handled_by("member-b") >= 100
    })
    .await;
    let b_leaves = Instant::now();
    b_stop.shutdown();
    let b_summary = b.await.unwrap().expect("member b");
    let b_partitions: BTreeSet<i32> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.0 == "member-b")
        .map(|h| h.1)
        .collect();
    let takeover = wait_for(
        "member a on member b's partitions",
        Duration::from_secs(60),
        || {
            log.lock()
                .unwrap()
                .iter()
                .any(|h| h.0 == "member-a" && h.3 > b_leaves && b_partitions.contains(&h.1))
        },
    )
    .await;
    stop_publishing.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    producer.close().await;
    let expected = published.load(Ordering::Relaxed);
    let distinct = || {
        log.lock()
            .unwrap()
            .iter()
            .map(|h| (h.1, h.2))
            .collect::<BTreeSet<_>>()
            .len()
    };
    wait_for("every message", Duration::from_secs(120), || {
        distinct() >= expected
    })
    .await;
    a_stop.shutdown();
    let a_summary = a.await.unwrap().expect("member a");

    let log = log.lock().unwrap().clone();
    let mut count: HashMap<(i32, i64), usize> = HashMap::new();
    for h in &log {
        *count.entry((h.1, h.2)).or_default() += 1;
    }
    let twice = count.values().filter(|&&n| n > 1).count();
    // While both were members (b's first to last message), no partition was
    // handled by both.
    let b_first = log.iter().find(|h| h.0 == "member-b").unwrap().3;
    let b_last = log.iter().rev().find(|h| h.0 == "member-b").unwrap().3;
    let a_during: BTreeSet<i32> = log
        .iter()
        .filter(|h| h.0 == "member-a" && h.3 > b_first && h.3 < b_last)
        .map(|h| h.1)
        .collect();
    let a_during_but_b: Vec<i32> = a_during.intersection(&b_partitions).copied().collect();
    let mut committed_short = Vec::new();
    for p in 0..PARTITIONS {
        let end = count
            .keys()
            .filter(|k| k.0 == p)
            .map(|k| k.1)
            .max()
            .map(|o| o + 1);
        let committed = common::committed(&group, &topic, p);
        if committed != end {
            committed_short.push((p, committed, end));
        }
    }
    println!(
        "PROTOCOL {protocol:?}: join {} ms, rebalance (b joins) {} ms, takeover (b leaves) {} \
         ms; {expected} messages, {twice} handled twice; assignments a={} b={}; a started \
         {:?} before b",
        join.as_millis(),
        rebalance.as_millis(),
        takeover.as_millis(),
        a_summary.assignments,
        b_summary.assignments,
        b_started - a_started,
    );
    let errors = errors.lock().unwrap().clone();
    assert_eq!(count.len(), expected, "every message handled");
    assert!(
        a_during_but_b.is_empty(),
        "partitions {a_during_but_b:?} were handled by both members at once"
    );
    assert!(
        twice <= CONCURRENCY,
        "re-read beyond what was in flight when b left: {twice}"
    );
    assert!(
        committed_short.is_empty(),
        "committed != end offset (partition, committed, end): {committed_short:?}"
    );
    assert!(a_summary.closed_cleanly && b_summary.closed_cleanly);
    assert!(
        errors
            .iter()
            .all(|e| !e.contains("rroneous state") && !e.contains("storing an offset")),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_under_classic_eager() {
    join_rebalance_leave(Protocol::ClassicEager).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_under_classic_cooperative_sticky() {
    join_rebalance_leave(Protocol::ClassicCooperative).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_under_kip848_consumer_protocol() {
    join_rebalance_leave(Protocol::Kip848).await;
}

/// librdkafka refuses the properties the broker owns under KIP-848: a clear
/// error at build or run time, not a silent misconfiguration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip848_refuses_session_timeout_set_by_the_client() {
    let topic = topic("proto-refuse", 1).await;
    let built = Consumer::builder(unique("proto-refuse"))
        .brokers([brokers()])
        .topics([topic.as_str()])
        .config("group.protocol", "consumer")
        .config("session.timeout.ms", "6000")
        .error_handler(|_| Decision::Continue)
        .handler(|_m: Message| async { Ack::Success })
        .build();
    let err = match built {
        Err(e) => e.to_string(),
        Ok(consumer) => match tokio::time::timeout(
            Duration::from_secs(20),
            consumer.run(tokio::time::sleep(Duration::from_secs(5))),
        )
        .await
        {
            Ok(Err(e)) => e.to_string(),
            other => panic!("session.timeout.ms accepted under KIP-848: {other:?}"),
        },
    };
    println!("KIP-848 with session.timeout.ms: {err}");
    assert!(err.contains("session.timeout.ms"), "{err}");
}
