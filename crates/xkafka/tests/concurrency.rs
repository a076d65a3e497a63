//! Concurrency with ordering guarantees, liveness under slow handlers, and
//! offsets that stay correct under both.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use xkafka::{BoxError, Decision, Message, Order, Producer};

const MESSAGES: usize = 20_000;
const KEYS: usize = 1_000;
const WAIT: Duration = Duration::from_secs(30);

/// Publishes `MESSAGES` messages with `KEYS` distinct keys over the topic's
/// partitions; returns the end offset of each partition.
async fn keyed_topic(prefix: &str) -> (String, BTreeMap<i32, i64>) {
    let topic = topic(prefix, 6).await;
    let producer = Producer::builder("xkafka-tests-keyed")
        .brokers([brokers()])
        .config("linger.ms", "5")
        .error_handler(|err| eprintln!("producer error: {err}"))
        .build()
        .unwrap();
    let ends: Arc<Mutex<BTreeMap<i32, i64>>> = Arc::default();
    for i in 0..MESSAGES {
        let ends = ends.clone();
        let msg = Message::builder(topic.as_str())
            .key(format!("key-{}", i % KEYS))
            .value(i.to_string())
            .build();
        producer
            .publish_async_with(msg, move |report| {
                let d = report.expect("delivered");
                let mut ends = ends.lock().unwrap();
                let end = ends.entry(d.partition).or_insert(0);
                *end = (*end).max(d.offset + 1);
            })
            .await
            .unwrap();
    }
    assert_eq!(producer.close().await.undelivered, 0);
    let ends = ends.lock().unwrap().clone();
    (topic, ends)
}

#[derive(Default)]
struct Observed {
    /// (partition, offset, key) in the order handlers started.
    started: Vec<(i32, i64, String)>,
    in_flight: HashMap<i32, usize>,
    peak_same_partition: usize,
    peak_total: usize,
}

async fn run_ordered(order: Order) -> (Observed, BTreeMap<i32, i64>, BTreeMap<i32, Option<i64>>) {
    let _heavy = exclusive().await;
    let (topic, ends) = keyed_topic("order").await;
    let group = unique("order-g");
    let observed: Arc<Mutex<Observed>> = Arc::default();
    let recorder = observed.clone();
    let consumer = consumer(&group, &topic)
        .concurrency(16)
        .order(order)
        .error_handler(|err| panic!("unexpected error: {err}"))
        .handler(move |m: Message| {
            let recorder = recorder.clone();
            async move {
                let p = m.partition().unwrap();
                let offset = m.offset().unwrap();
                {
                    let mut o = recorder.lock().unwrap();
                    o.started.push((p, offset, m.key_str().unwrap().to_owned()));
                    let n = o.in_flight.entry(p).or_default();
                    *n += 1;
                    let n = *n;
                    o.peak_same_partition = o.peak_same_partition.max(n);
                    let total = o.in_flight.values().sum();
                    o.peak_total = o.peak_total.max(total);
                }
                // Random 0-5 ms, from the offset so that it is reproducible.
                let delay = (offset as u64).wrapping_mul(2_654_435_761) % 6;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                *recorder.lock().unwrap().in_flight.get_mut(&p).unwrap() -= 1;
            }
        })
        .build()
        .unwrap();
    let probe = observed.clone();
    let summary = consumer
        .run(until(
            move || {
                probe.lock().unwrap().started.len() >= MESSAGES
                    && probe.lock().unwrap().in_flight.values().all(|&n| n == 0)
            },
            Duration::from_secs(120),
        ))
        .await
        .unwrap();
    assert_eq!(summary.succeeded as usize, MESSAGES);
    let committed = ends
        .keys()
        .map(|&p| (p, committed(&group, &topic, p)))
        .collect();
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    (observed, ends, committed)
}

fn assert_each_once_and_committed(
    o: &Observed,
    ends: &BTreeMap<i32, i64>,
    committed: &BTreeMap<i32, Option<i64>>,
) {
    let distinct: HashSet<(i32, i64)> = o.started.iter().map(|(p, off, _)| (*p, *off)).collect();
    assert_eq!(o.started.len(), MESSAGES, "handled count");
    assert_eq!(
        distinct.len(),
        MESSAGES,
        "every message handled exactly once"
    );
    for (p, end) in ends {
        assert_eq!(
            committed[p],
            Some(*end),
            "partition {p}: committed offset equals the end offset"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_partition_order_under_concurrency_16() {
    let (o, ends, committed) = run_ordered(Order::PerPartition).await;
    let mut last: HashMap<i32, i64> = HashMap::new();
    for (p, offset, _) in &o.started {
        if let Some(prev) = last.insert(*p, *offset) {
            assert!(
                *offset > prev,
                "partition {p}: {offset} handled after {prev}"
            );
        }
    }
    assert_eq!(
        o.peak_same_partition, 1,
        "one message per partition at a time"
    );
    assert!(
        o.peak_total > 1,
        "partitions ran in parallel (peak {})",
        o.peak_total
    );
    assert_each_once_and_committed(&o, &ends, &committed);
    println!(
        "per-partition: peak in flight {} (same partition {})",
        o.peak_total, o.peak_same_partition
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_under_concurrency_16() {
    let (o, ends, committed) = run_ordered(Order::PerKey).await;
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (_, offset, key) in &o.started {
        if let Some(prev) = last.insert(key, *offset) {
            assert!(*offset > prev, "key {key}: {offset} handled after {prev}");
        }
    }
    assert!(
        o.peak_same_partition >= 2,
        "keys of one partition ran in parallel (peak {})",
        o.peak_same_partition
    );
    assert!(
        o.peak_total <= 16,
        "never more than the concurrency: {}",
        o.peak_total
    );
    assert_each_once_and_committed(&o, &ends, &committed);
    println!(
        "per-key: peak in flight {} (same partition {})",
        o.peak_total, o.peak_same_partition
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_under_concurrency_holds_back_only_its_partition() {
    const K: i64 = 50;
    let topic = topic("conc-fail", 6).await;
    let producer = producer();
    let mut ends = BTreeMap::new();
    for p in 0..6 {
        ends.insert(p, fill(&producer, &topic, p, 200).await.len() as i64);
    }
    producer.close().await;
    let group = unique("conc-fail-g");
    let handled: Arc<Mutex<HashSet<(i32, i64)>>> = Arc::default();
    let record = handled.clone();
    let consumer = consumer(&group, &topic)
        .concurrency(16)
        .order(Order::PerKey)
        .error_handler(|_| Decision::Stop)
        .handler(move |m: Message| {
            let record = record.clone();
            async move {
                let (p, o) = (m.partition().unwrap(), m.offset().unwrap());
                if p == 2 && o == K {
                    return Err::<(), BoxError>("poison".into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                record.lock().unwrap().insert((p, o));
                Ok(())
            }
        })
        .build()
        .unwrap();
    let err = consumer.run(std::future::pending()).await.unwrap_err();
    assert_eq!(err.message_location(), Some((topic.as_str(), 2, K)));
    let first_run = handled.lock().unwrap().clone();
    let c2 = committed(&group, &topic, 2);
    assert!(
        c2.is_some_and(|c| c <= K) || c2.is_none(),
        "partition 2 committed {c2:?} > {K}"
    );
    // Only partition 2 is held back: every partition (2 included, below K)
    // is committed up to the first offset it had not handled when the
    // consumer stopped — handlers still running at the stop are drained.
    for p in ends.keys() {
        let handled_prefix = (0..).find(|o| !first_run.contains(&(*p, *o))).unwrap();
        assert_eq!(
            committed(&group, &topic, *p).unwrap_or(0),
            handled_prefix,
            "partition {p}: committed up to what it handled without a gap"
        );
    }

    // Restart: exactly what lies past the committed offsets comes again,
    // K included, and nothing of any partition is missing overall.
    let remaining: i64 = ends
        .iter()
        .map(|(p, end)| end - committed(&group, &topic, *p).unwrap_or(0))
        .sum();
    let again = consume(&group, &topic, remaining as usize, Duration::from_secs(60)).await;
    assert!(
        again
            .iter()
            .any(|m| m.partition() == Some(2) && m.offset() == Some(K)),
        "message {K} of partition 2 is delivered again"
    );
    let mut all = first_run.clone();
    all.extend(
        again
            .iter()
            .map(|m| (m.partition().unwrap(), m.offset().unwrap())),
    );
    let duplicates = again
        .iter()
        .filter(|m| first_run.contains(&(m.partition().unwrap(), m.offset().unwrap())))
        .count();
    println!(
        "failure at K: {} handled before the stop, {duplicates} handled again after the restart",
        first_run.len()
    );
    for (p, end) in &ends {
        for o in 0..*end {
            assert!(all.contains(&(*p, o)), "{p}@{o} lost");
        }
    }
}

/// Partition 0's first message is handled for longer than
/// `max.poll.interval.ms`. Meanwhile the other partitions get messages that
/// were published only after it started: all of them must be handled before
/// it ends (the consumer still polls and dispatches), and the member must
/// keep its assignment (it still polls the broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_max_poll_interval_does_not_stall_or_evict() {
    const BLOCK: Duration = Duration::from_secs(8);
    const LATER: usize = 30;
    let cluster = embedded_with("live", 3, 0).await;
    let producer = Producer::builder("p")
        .brokers([cluster.bootstrap_servers()])
        .error_handler(|_| {})
        .build()
        .unwrap();
    let publish = |p: i32, i: usize| {
        let msg = Message::builder("live")
            .partition(p)
            .key(format!("{p}-{i}"))
            .build();
        producer.publish(msg)
    };
    for i in 0..LATER {
        publish(0, i).await.unwrap();
    }

    // Order, not a clock: `blocked` once partition 0's first message is
    // being handled, `unblocked` once it finished; a message of another
    // partition counts if it was handled in between.
    let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let unblocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during_block = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let (during, count) = (during_block.clone(), total.clone());
    let (start, over) = (blocked.clone(), unblocked.clone());
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = errors.clone();
    let consumer = xkafka::Consumer::builder("live-g")
        .brokers([cluster.bootstrap_servers()])
        .topics(["live"])
        .config("auto.offset.reset", "earliest")
        .config("session.timeout.ms", "6000")
        .config("heartbeat.interval.ms", "2000")
        .config("max.poll.interval.ms", "6000")
        .concurrency(4)
        .error_handler(move |err| {
            sink.lock().unwrap().push(err.to_string());
            Decision::Continue
        })
        .handler(move |m: Message| {
            let (during, count) = (during.clone(), count.clone());
            let (start, over) = (start.clone(), over.clone());
            async move {
                if m.partition() == Some(0) && m.offset() == Some(0) {
                    start.store(true, Ordering::SeqCst);
                    tokio::time::sleep(BLOCK).await; // longer than max.poll.interval.ms
                    over.store(true, Ordering::SeqCst);
                } else if m.partition() != Some(0) && !over.load(Ordering::SeqCst) {
                    during.fetch_add(1, Ordering::SeqCst);
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let probe = total.clone();
    let run = tokio::spawn(consumer.run(until(
        move || probe.load(Ordering::SeqCst) >= 3 * LATER,
        Duration::from_secs(60),
    )));
    until(|| blocked.load(Ordering::SeqCst), Duration::from_secs(30)).await;
    assert!(blocked.load(Ordering::SeqCst), "partition 0 reached");
    for p in 1..3 {
        for i in 0..LATER {
            publish(p, i).await.unwrap();
        }
    }
    let published_during = !unblocked.load(Ordering::SeqCst);
    producer.close().await;
    let summary = run.await.unwrap().unwrap();
    assert!(
        published_during,
        "the other partitions' messages were published during the block"
    );
    assert_eq!(
        summary.succeeded,
        3 * LATER as u64,
        "everything handled, partition 0 after its slow message"
    );
    assert_eq!(
        during_block.load(Ordering::SeqCst),
        2 * LATER,
        "other partitions flowed while partition 0 was blocked"
    );
    assert_eq!(
        summary.assignments, 1,
        "only the initial assignment: never evicted"
    );
    let errors = errors.lock().unwrap().clone();
    assert!(errors.iter().all(|e| !e.contains("poll")), "{errors:?}");
}

/// Member A consumes a stream; member B joins, consumes, and leaves; A takes
/// over. Returns the number of messages handled twice.
async fn second_member_joins_and_leaves(assignor: &str, concurrency: usize) -> usize {
    let _heavy = exclusive().await;
    const ROUND_ONE: usize = 600;
    let topic = topic("coop", 6).await;
    let producer = producer();
    // Round 0 flows until the second member has joined and is consuming, so
    // that the test does not depend on how fast the group rebalances.
    let stop_publishing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let (producer, topic) = (producer.clone(), topic.clone());
        let (stop, published) = (stop_publishing.clone(), published.clone());
        async move {
            // Until the second member consumes (bounded, in case it never does).
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let i = published.load(Ordering::Relaxed);
                let msg = Message::builder(topic.as_str())
                    .key(format!("r0-{i}"))
                    .value("v")
                    .build();
                producer.publish_async(msg).await.unwrap();
                published.fetch_add(1, Ordering::Relaxed);
                if i % 10 == 9 {
                    // Pacing, about 500 messages a second.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
    let group = unique("coop-g");
    let seen: Arc<Mutex<HashMap<(i32, i64), usize>>> = Arc::default();
    let by_member: Arc<Mutex<HashMap<&'static str, usize>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let start_member = |name: &'static str| {
        let seen = seen.clone();
        let by_member = by_member.clone();
        let consumer = consumer(&group, &topic)
            .config("partition.assignment.strategy", assignor)
            .config("client.id", name)
            .concurrency(concurrency)
            .order(Order::PerKey)
            .error_handler({
                let errors = errors.clone();
                move |err| {
                    errors.lock().unwrap().push(err.to_string());
                    Decision::Continue
                }
            })
            .handler(move |m: Message| {
                let seen = seen.clone();
                let by_member = by_member.clone();
                async move {
                    *seen
                        .lock()
                        .unwrap()
                        .entry((m.partition().unwrap(), m.offset().unwrap()))
                        .or_default() += 1;
                    *by_member.lock().unwrap().entry(name).or_default() += 1;
                }
            })
            .build()
            .unwrap();
        let handle = consumer.shutdown_handle();
        (handle, tokio::spawn(consumer.run(std::future::pending())))
    };
    let (a_stop, a) = start_member("member-a");
    until(|| !seen.lock().unwrap().is_empty(), WAIT).await;
    let (b_stop, b) = start_member("member-b");
    // B has been given partitions (incrementally) and is consuming them.
    let consumed_by = |name| by_member.lock().unwrap().get(name).copied().unwrap_or(0);
    until(|| consumed_by("member-b") >= 20, Duration::from_secs(90)).await;
    stop_publishing.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    // B leaves; A must take over B's partitions from B's committed offsets.
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
    let total = || seen.lock().unwrap().len();
    until(|| total() >= expected, Duration::from_secs(120)).await;
    a_stop.shutdown();
    let a_summary = a.await.unwrap().expect("member a");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), expected, "every message consumed");
    let twice = seen.values().filter(|&&n| n > 1).count();
    assert!(
        b_summary.succeeded >= 20,
        "member b took part before leaving"
    );
    assert!(a_summary.succeeded + b_summary.succeeded >= expected as u64);
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors
            .iter()
            .all(|e| !e.contains("rroneous state") && !e.contains("storing an offset")),
        "{errors:?}"
    );
    println!(
        "{assignor} x{concurrency}: {expected} messages, {twice} handled twice, assignments a={} b={}",
        a_summary.assignments, b_summary.assignments
    );
    twice
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_members_share_and_take_over() {
    let twice = second_member_joins_and_leaves("cooperative-sticky", 1).await;
    assert!(
        twice <= 1,
        "nothing consumed twice beyond the in-flight one: {twice}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_rebalance_under_load_with_concurrency_8() {
    let twice = second_member_joins_and_leaves("range", 8).await;
    // Revocations drain running handlers and commit before letting go, so a
    // message is only seen twice if it was running past the grace period.
    assert!(twice <= 8, "duplicates beyond the in-flight bound: {twice}");
}
