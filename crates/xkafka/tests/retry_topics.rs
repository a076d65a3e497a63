//! Non-blocking retry topics on the real broker: three tiers (100 ms,
//! 500 ms, 1 s), a handler that fails a chosen set of messages their first
//! k times. Every retry is handled no earlier than its due time (lateness
//! reported), what keeps failing lands in the dead-letter topic after the
//! last tier, and the main topic is not held up by the backoffs.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{brokers, consumer, producer, topic, unique, until};
use xkafka::dlq::DeadLetterInfo;
use xkafka::retry_topics::{due, headers, RetryTopics};
use xkafka::{Ack, BoxError, Decision, Message};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One handler call: the input's number, the attempt (0 on the main
/// topic), when it ran and when it was due (ms since the epoch).
#[derive(Clone, Debug)]
struct Call {
    n: usize,
    attempt: usize,
    at_ms: u64,
    due_ms: Option<u64>,
}

/// How many times input `n` fails before it succeeds: 1 to 4 for every
/// tenth input (4: more than the three tiers, so it is dead-lettered), 0
/// for the others.
fn failures(n: usize) -> usize {
    if n % 10 == 0 {
        (n / 10) % 4 + 1
    } else {
        0
    }
}

/// The same main-topic consumer (retry layer included) over `inputs`
/// healthy messages: first to last handler call, ms.
async fn healthy_main_topic_span(inputs: usize) -> u64 {
    let source = topic("rt-healthy", 3).await;
    let p = producer();
    for n in 0..inputs {
        let msg = Message::builder(source.as_str())
            .key(format!("k{n}"))
            .value(n.to_string())
            .build();
        p.publish_async(msg).await.unwrap();
    }
    p.close().await;
    let retries = RetryTopics::new(producer(), source.as_str()).tiers([Duration::from_millis(100)]);
    let times: Arc<Mutex<Vec<u64>>> = Arc::default();
    let t = times.clone();
    let main = consumer(&unique("rt-healthy"), &source)
        .error_handler(|_| Decision::Stop)
        .layer(retries.layer())
        .handler(move |_m: Message| {
            t.lock().unwrap().push(now_ms());
            async { Ack::Success }
        })
        .build()
        .unwrap();
    let probe = times.clone();
    main.run(until(
        move || probe.lock().unwrap().len() >= inputs,
        Duration::from_secs(30),
    ))
    .await
    .unwrap();
    let times = times.lock().unwrap();
    assert_eq!(times.len(), inputs);
    times.iter().max().unwrap() - times.iter().min().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_move_through_the_tiers_on_time_and_then_to_the_dead_letter_topic() {
    const INPUTS: usize = 400;
    let source = topic("rt-src", 3).await;
    let p = producer();
    for n in 0..INPUTS {
        let msg = Message::builder(source.as_str())
            .key(format!("k{n}"))
            .value(n.to_string())
            .build();
        p.publish_async(msg).await.unwrap();
    }
    p.close().await;
    let retries = RetryTopics::new(producer(), source.as_str()).tiers([
        Duration::from_millis(100),
        Duration::from_millis(500),
        Duration::from_secs(1),
    ]);
    retries
        .ensure_topics(&brokers(), Duration::from_secs(10))
        .await
        .expect("tier topics");
    for t in retries.tier_topics() {
        assert_eq!(
            xkafka::admin::partition_count(&brokers(), &t, Duration::from_secs(10))
                .await
                .unwrap(),
            3,
            "{t} has the source's partitions"
        );
    }

    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let handler = {
        let calls = calls.clone();
        move |m: Message| {
            let calls = calls.clone();
            async move {
                let n: usize = m.value_str().unwrap().parse().unwrap();
                let attempt: usize = m
                    .headers()
                    .get_str(headers::ATTEMPT)
                    .map_or(0, |a| a.parse().unwrap());
                calls.lock().unwrap().push(Call {
                    n,
                    attempt,
                    at_ms: now_ms(),
                    due_ms: due(&m)
                        .map(|d| d.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64),
                });
                if attempt < failures(n) {
                    return Err::<Ack, BoxError>(format!("attempt {attempt} of {n} fails").into());
                }
                Ok(Ack::Success)
            }
        }
    };
    let group = unique("rt");
    let main = consumer(&group, &source)
        .error_handler(|err| {
            eprintln!("main: {err}");
            Decision::Stop
        })
        .layer(retries.layer())
        .handler(handler.clone())
        .build()
        .unwrap();
    let tiers = xkafka::Consumer::builder(format!("{group}-retries"))
        .brokers([brokers()])
        .topics(retries.tier_topics())
        .config("auto.offset.reset", "earliest")
        .config("fetch.wait.max.ms", "50")
        .not_before(due)
        .error_handler(|err| {
            eprintln!("tiers: {err}");
            Decision::Stop
        })
        .layer(retries.layer())
        .handler(handler)
        .build()
        .unwrap();
    let (stop_main, stop_tiers) = (main.shutdown_handle(), tiers.shutdown_handle());
    let started = Instant::now();
    let main = tokio::spawn(main.run(std::future::pending()));
    let tiers = tokio::spawn(tiers.run(std::future::pending()));

    let handled_main = |calls: &Arc<Mutex<Vec<Call>>>| {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.attempt == 0)
            .count()
    };
    let probe = calls.clone();
    until(|| handled_main(&probe) >= INPUTS, Duration::from_secs(60)).await;
    let main_done = started.elapsed();
    // Every input reaches its end: success, or its fourth failure.
    let expected_calls: usize = (0..INPUTS).map(|n| 1 + failures(n).min(3)).sum();
    let probe = calls.clone();
    until(
        || probe.lock().unwrap().len() >= expected_calls,
        Duration::from_secs(60),
    )
    .await;
    stop_main.shutdown();
    stop_tiers.shutdown();
    let (main, tiers) = (
        main.await.unwrap().expect("main"),
        tiers.await.unwrap().expect("tiers"),
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        expected_calls,
        "every input handled to its end, once per attempt"
    );

    // Each input's attempts, in order, each in the right tier.
    let mut by_input: BTreeMap<usize, Vec<Call>> = BTreeMap::new();
    for c in &calls {
        by_input.entry(c.n).or_default().push(c.clone());
    }
    let mut lateness: Vec<u64> = Vec::new();
    for (n, attempts) in &by_input {
        let tries: Vec<usize> = attempts.iter().map(|c| c.attempt).collect();
        assert_eq!(
            tries,
            (0..=failures(*n).min(3)).collect::<Vec<_>>(),
            "input {n}"
        );
        for c in attempts.iter().filter(|c| c.attempt > 0) {
            let due_ms = c.due_ms.expect("a retry carries its due time");
            assert!(
                c.at_ms >= due_ms,
                "input {n} attempt {} ran {} ms before it was due",
                c.attempt,
                due_ms - c.at_ms
            );
            lateness.push(c.at_ms - due_ms);
        }
    }
    lateness.sort_unstable();
    let pct = |p: usize| lateness[(lateness.len() * p / 100).min(lateness.len() - 1)];
    // The main topic's pace: first to last handler call there.
    let main_calls: Vec<u64> = calls
        .iter()
        .filter(|c| c.attempt == 0)
        .map(|c| c.at_ms)
        .collect();
    let failing_span = main_calls.iter().max().unwrap() - main_calls.iter().min().unwrap();
    let healthy_span = healthy_main_topic_span(INPUTS).await;
    let dead: Vec<usize> = (0..INPUTS).filter(|n| failures(*n) > 3).collect();
    println!(
        "RETRY_TOPICS inputs={INPUTS} retries={} lateness_p50_ms={} lateness_p99_ms={} lateness_max_ms={} main_topic_done_ms={} dead_lettered={} main_topic_span_ms: 10%_failing={failing_span} 0%_failing={healthy_span}",
        lateness.len(),
        pct(50),
        pct(99),
        lateness.last().unwrap(),
        main_done.as_millis(),
        dead.len()
    );
    // The main topic did not wait for any backoff: with blocking retries it
    // would have slept at least 100 ms for each of its 40 failing inputs.
    assert!(
        main_done < Duration::from_secs(4),
        "the main topic took {main_done:?}"
    );
    // A failure moved on counts as a skip: its copy was acknowledged.
    assert_eq!((main.succeeded, main.skipped, main.failed), (360, 40, 0));
    // In the tiers: 30 recovered; 30 + 20 + 10 failures moved on (the last
    // 10 to the dead-letter topic).
    assert_eq!((tiers.succeeded, tiers.skipped, tiers.failed), (30, 60, 0));

    // What kept failing is in the dead-letter topic, as it was consumed.
    let dlq = common::consume(
        &unique("rt-dlq"),
        retries.dead_letter(),
        dead.len(),
        Duration::from_secs(30),
    )
    .await;
    let mut dead_letters: Vec<(usize, String)> = dlq
        .iter()
        .map(|m| {
            let info = DeadLetterInfo::from_message(m).expect("a dead letter");
            assert_eq!(info.original_topic, source, "named by its original topic");
            assert!(info.original_offset.is_some() && info.original_partition.is_some());
            (
                m.value_str().unwrap().parse().unwrap(),
                info.error.unwrap_or_default(),
            )
        })
        .collect();
    dead_letters.sort();
    assert_eq!(
        dead_letters.iter().map(|d| d.0).collect::<Vec<_>>(),
        dead,
        "exactly the inputs that failed four times"
    );
    assert!(
        dead_letters[0].1.contains("attempt 3 of 30 fails"),
        "{:?}",
        dead_letters[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_consumer_moves_its_failed_messages_to_the_tiers_too() {
    let source = topic("rt-batch", 2).await;
    let p = producer();
    for n in 0..100 {
        p.publish_async(
            Message::builder(source.as_str())
                .value(n.to_string())
                .build(),
        )
        .await
        .unwrap();
    }
    p.close().await;
    let retries = RetryTopics::new(producer(), source.as_str()).tiers([Duration::from_millis(200)]);
    retries
        .ensure_topics(&brokers(), Duration::from_secs(10))
        .await
        .unwrap();
    let group = unique("rt-batch");
    let main = xkafka::BatchConsumer::builder(&group)
        .brokers([brokers()])
        .topics([source.as_str()])
        .config("auto.offset.reset", "earliest")
        .batch_size(25)
        .batch_timeout(Duration::from_millis(100))
        .error_handler(|_| Decision::Stop)
        .layer(retries.layer())
        .handler(|batch: xkafka::Batch| async move {
            for (i, m) in batch.iter().enumerate() {
                if m.value_str().unwrap().ends_with('7') {
                    batch.fail(i, "sevens fail the first time");
                }
            }
        })
        .build()
        .unwrap();
    let retried: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let r = retried.clone();
    let tiers = xkafka::Consumer::builder(format!("{group}-retries"))
        .brokers([brokers()])
        .topics(retries.tier_topics())
        .config("auto.offset.reset", "earliest")
        .not_before(due)
        .error_handler(|_| Decision::Stop)
        .handler(move |m: Message| {
            let r = r.clone();
            async move {
                let due_ms = due(&m)
                    .unwrap()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                r.lock().unwrap().push((due_ms, now_ms()));
                Ack::Success
            }
        })
        .build()
        .unwrap();
    let (stop_main, stop_tiers) = (main.shutdown_handle(), tiers.shutdown_handle());
    let main = tokio::spawn(main.run(std::future::pending()));
    let tiers = tokio::spawn(tiers.run(std::future::pending()));
    let probe = retried.clone();
    until(
        || probe.lock().unwrap().len() >= 10,
        Duration::from_secs(30),
    )
    .await;
    stop_main.shutdown();
    stop_tiers.shutdown();
    let main = main.await.unwrap().expect("main");
    tiers.await.unwrap().expect("tiers");
    assert_eq!((main.succeeded, main.skipped, main.failed), (90, 10, 0));
    let retried = retried.lock().unwrap().clone();
    assert_eq!(retried.len(), 10, "the ten sevens, once each");
    assert!(
        retried.iter().all(|(due, at)| at >= due),
        "none early: {retried:?}"
    );
}

/// One handler call in the key-order runs.
#[derive(Clone, Debug)]
struct KeyedCall {
    /// Global call order.
    order: usize,
    key: usize,
    seq: usize,
    /// The tier it was consumed from (0: main topic).
    tier: usize,
    /// It had followed an earlier message of its key into the tiers.
    followed: bool,
    failed: bool,
}

const KEYS: usize = 24;
const PER_KEY: usize = 16;

/// How many times the message `seq` of `key` fails before it succeeds:
/// about one in nine fails 1 to 4 times (4: dead-lettered if handled
/// in every tier).
fn keyed_failures(key: usize, seq: usize) -> usize {
    if (key * 7 + seq * 5) % 9 == 0 {
        (key + seq) % 4 + 1
    } else {
        0
    }
}

/// Publishes messages `seqs` of every key, key by key in order.
async fn publish_keyed(source: &str, seqs: std::ops::Range<usize>) {
    let p = producer();
    for seq in seqs {
        for key in 0..KEYS {
            let msg = Message::builder(source)
                .key(format!("key-{key}"))
                .value(format!("{key}:{seq}"))
                .build();
            p.publish_async(msg).await.unwrap();
        }
    }
    p.close().await;
}

/// A handler failing each message its first `keyed_failures` calls,
/// recording every call.
fn keyed_handler(
    calls: Arc<Mutex<Vec<KeyedCall>>>,
) -> impl Fn(
    Message,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Ack, BoxError>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    move |m: Message| {
        let calls = calls.clone();
        Box::pin(async move {
            let (key, seq) = m.value_str().unwrap().split_once(':').unwrap();
            let (key, seq): (usize, usize) = (key.parse().unwrap(), seq.parse().unwrap());
            let tier = m
                .headers()
                .get_str(headers::ATTEMPT)
                .map_or(0, |a| a.parse().unwrap());
            let mut calls = calls.lock().unwrap();
            let before = calls
                .iter()
                .filter(|c| (c.key, c.seq) == (key, seq))
                .count();
            let failed = before < keyed_failures(key, seq);
            let order = calls.len();
            calls.push(KeyedCall {
                order,
                key,
                seq,
                tier,
                followed: m.headers().get_str(headers::FOLLOWS).is_some(),
                failed,
            });
            drop(calls);
            if failed {
                Err(format!("{key}:{seq} fails").into())
            } else {
                Ok(Ack::Success)
            }
        })
    }
}

/// Calls where a key went backwards: a message handled after a later
/// message of its key. A call for a message that had already settled
/// (succeeded, or failed in the last tier) is a redelivery after the
/// restart — at-least-once replays what follows the committed offset — and
/// is counted apart (second value), not as order.
fn order_violations(calls: &[KeyedCall], tiers: usize) -> (Vec<String>, usize) {
    let mut last: BTreeMap<usize, usize> = BTreeMap::new();
    let mut settled: std::collections::BTreeSet<(usize, usize)> = Default::default();
    let mut violations = Vec::new();
    let mut redelivered = 0;
    let mut sorted = calls.to_vec();
    sorted.sort_by_key(|c| c.order);
    for c in &sorted {
        if settled.contains(&(c.key, c.seq)) {
            redelivered += 1;
            continue;
        }
        if !c.failed || c.tier == tiers {
            settled.insert((c.key, c.seq));
        }
        if let Some(prev) = last.get(&c.key) {
            if c.seq < *prev {
                violations.push(format!(
                    "key-{} seq {} (tier {}) after seq {prev}",
                    c.key, c.seq, c.tier
                ));
            }
        }
        last.insert(c.key, c.seq);
    }
    (violations, redelivered)
}

/// Every input settled: its last call succeeded, or it failed in the last
/// tier (dead-lettered).
fn settled(calls: &[KeyedCall], tiers: usize) -> usize {
    let mut last: BTreeMap<(usize, usize), &KeyedCall> = BTreeMap::new();
    for c in calls {
        let e = last.entry((c.key, c.seq)).or_insert(c);
        if c.order > e.order {
            *e = c;
        }
    }
    last.values()
        .filter(|c| !c.failed || c.tier == tiers)
        .count()
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        })
        .unwrap_or(0)
}

/// Per-key order kept across the tiers, over the whole run: one consumer
/// for the main topic and the tiers (`subscribe`), `Concurrency(4)` per
/// key, stopped half-way while keys wait in the tiers and replaced by a
/// new instance (which reads what the tiers hold before handling
/// anything). The same inputs without key order, in the same run, do get
/// handled out of order: the check can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_key_order_no_key_is_ever_handled_out_of_order() {
    const TIERS: usize = 3;
    let delays = [
        Duration::from_millis(100),
        Duration::from_millis(500),
        Duration::from_secs(1),
    ];
    let inputs = KEYS * PER_KEY;
    let expected_dead = (0..KEYS)
        .flat_map(|k| (0..PER_KEY).map(move |s| (k, s)))
        .filter(|(k, s)| keyed_failures(*k, *s) > TIERS)
        .count();
    assert!(expected_dead > 0, "some inputs fail in every tier");

    // Key order kept.
    let source = topic("rt-order", 3).await;
    publish_keyed(&source, 0..PER_KEY / 2).await;
    let retries = RetryTopics::new(producer(), source.as_str())
        .tiers(delays)
        .keep_key_order();
    retries
        .ensure_topics(&brokers(), Duration::from_secs(10))
        .await
        .unwrap();
    let metrics = xkafka::metrics::Metrics::new();
    let calls: Arc<Mutex<Vec<KeyedCall>>> = Arc::default();
    let group = unique("rt-order");
    let instance = || {
        retries
            .subscribe(xkafka::Consumer::builder(&group))
            .brokers([brokers()])
            .config("auto.offset.reset", "earliest")
            .config("fetch.wait.max.ms", "50")
            .concurrency(4)
            .order(xkafka::Order::PerKey)
            .shutdown_timeout(Duration::from_secs(10))
            .error_handler(|err| {
                eprintln!("ordered: {err}");
                Decision::Stop
            })
            .layer(metrics.layer())
            .layer(retries.layer())
            .handler(keyed_handler(calls.clone()))
            .build()
            .unwrap()
    };
    // First instance: stopped once some keys wait in the tiers.
    let probe = calls.clone();
    let first = instance()
        .run(until(
            move || probe.lock().unwrap().iter().filter(|c| c.failed).count() >= 12,
            Duration::from_secs(30),
        ))
        .await
        .expect("first instance");
    let at_stop = calls.lock().unwrap().len();
    // The second half arrives while the first half's failures wait.
    publish_keyed(&source, PER_KEY / 2..PER_KEY).await;
    let probe = calls.clone();
    let second = instance()
        .run(until(
            move || settled(&probe.lock().unwrap(), TIERS) >= inputs,
            Duration::from_secs(90),
        ))
        .await
        .expect("second instance");
    let ordered = calls.lock().unwrap().clone();
    assert_eq!(settled(&ordered, TIERS), inputs, "every input settled");
    let (violations, redelivered) = order_violations(&ordered, TIERS);
    let followed = ordered.iter().filter(|c| c.followed).count();
    let text = metrics.render();
    let moves = |tier: usize, reason: &str| {
        metric(
            &text,
            &format!(
                "xkafka_retry_tier_moves_total{{reason=\"{reason}\",tier=\"{tier}\",topic=\"{}\"}}",
                if tier == 1 {
                    source.clone()
                } else {
                    format!("{source}.retry.{}", tier - 1)
                }
            ),
        )
    };

    // Twin without key order: same inputs, same tiers.
    let twin_source = topic("rt-twin", 3).await;
    publish_keyed(&twin_source, 0..PER_KEY).await;
    let twin_retries = RetryTopics::new(producer(), twin_source.as_str()).tiers(delays);
    twin_retries
        .ensure_topics(&brokers(), Duration::from_secs(10))
        .await
        .unwrap();
    let twin_calls: Arc<Mutex<Vec<KeyedCall>>> = Arc::default();
    let twin = twin_retries
        .subscribe(xkafka::Consumer::builder(unique("rt-twin")))
        .brokers([brokers()])
        .config("auto.offset.reset", "earliest")
        .config("fetch.wait.max.ms", "50")
        .concurrency(4)
        .order(xkafka::Order::PerKey)
        .error_handler(|err| {
            eprintln!("twin: {err}");
            Decision::Stop
        })
        .layer(twin_retries.layer())
        .handler(keyed_handler(twin_calls.clone()))
        .build()
        .unwrap();
    let probe = twin_calls.clone();
    twin.run(until(
        move || settled(&probe.lock().unwrap(), TIERS) >= inputs,
        Duration::from_secs(60),
    ))
    .await
    .expect("twin");
    let twin_calls = twin_calls.lock().unwrap().clone();
    let (twin_violations, _) = order_violations(&twin_calls, TIERS);
    println!(
        "KEY_ORDER inputs={inputs} keys={KEYS} calls={} followed={followed} violations={} redelivered_after_restart={redelivered} \
         restart_after_calls={at_stop} moves_failed={}/{}/{} moves_follows={}/{}/{} \
         twin_calls={} twin_violations={}",
        ordered.len(),
        violations.len(),
        moves(1, "failed"),
        moves(2, "failed"),
        moves(3, "failed"),
        moves(1, "follows"),
        moves(2, "follows"),
        moves(3, "follows"),
        twin_calls.len(),
        twin_violations.len(),
    );
    assert!(
        violations.is_empty(),
        "out of order with key order on: {violations:?}"
    );
    assert!(followed > 0, "later messages followed their key's head");
    assert!(
        !twin_violations.is_empty(),
        "without key order later messages overtake a failed one"
    );
    // Failures moved per tier, as counted by the metrics layer: each failed
    // call outside the last tier moved its message one tier on.
    for tier in 1..=TIERS {
        let failed_here = ordered
            .iter()
            .filter(|c| c.failed && c.tier == tier - 1)
            .count() as u64;
        assert_eq!(moves(tier, "failed"), failed_here, "tier {tier}");
    }
    assert!(
        (1..=TIERS).map(|t| moves(t, "follows")).sum::<u64>() > 0,
        "moves behind a key's head are counted too"
    );
    // Both instances ended cleanly; nothing failed past the layer.
    assert_eq!(first.failed + second.failed, 0);

    // What the dead-letter topic holds: the inputs whose last call failed
    // in the last tier, each once.
    let dead_calls: Vec<(usize, usize)> = {
        let mut d: Vec<(usize, usize)> = ordered
            .iter()
            .filter(|c| c.failed && c.tier == TIERS)
            .map(|c| (c.key, c.seq))
            .collect();
        d.sort_unstable();
        d
    };
    let dlq = common::consume(
        &unique("rt-order-dlq"),
        retries.dead_letter(),
        dead_calls.len(),
        Duration::from_secs(30),
    )
    .await;
    let mut dead: Vec<(usize, usize)> = dlq
        .iter()
        .map(|m| {
            let (k, s) = m.value_str().unwrap().split_once(':').unwrap();
            (k.parse().unwrap(), s.parse().unwrap())
        })
        .collect();
    dead.sort_unstable();
    assert_eq!(dead, dead_calls);
}
