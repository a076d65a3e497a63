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
    ensure(&retries).await;
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
    ensure(&retries).await;
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
    /// Its own failed attempts before this call (the attempt header).
    attempt: usize,
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
            let h = m.headers();
            let attempt = h
                .get_str(headers::ATTEMPT)
                .map_or(0, |a| a.parse().unwrap());
            // Before the tier header, the attempt header was the tier.
            let tier = h
                .get_str(headers::TIER)
                .map_or(attempt, |a| a.parse().unwrap());
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
                attempt,
                followed: h.get_str(headers::FOLLOWS).is_some(),
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
/// (succeeded, or failed for the last time) is a redelivery after the
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
        if !c.failed || c.attempt == tiers {
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

/// Every input settled: its last call succeeded, or it failed with its
/// retry budget spent (its own `tiers` failures before: dead-lettered).
fn settled(calls: &[KeyedCall], tiers: usize) -> usize {
    let mut last: BTreeMap<(usize, usize), &KeyedCall> = BTreeMap::new();
    for c in calls {
        let e = last.entry((c.key, c.seq)).or_insert(c);
        if c.order > e.order {
            *e = c;
        }
    }
    last.values()
        .filter(|c| !c.failed || c.attempt == tiers)
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
    ensure(&retries).await;
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
    // Moves to tier `tier` of messages consumed from tier `from` (0: the
    // main topic).
    let moves_from = |tier: usize, from: usize, reason: &str| {
        metric(
            &text,
            &format!(
                "xkafka_retry_tier_moves_total{{reason=\"{reason}\",tier=\"{tier}\",topic=\"{}\"}}",
                if from == 0 {
                    source.clone()
                } else {
                    format!("{source}.retry.{from}")
                }
            ),
        )
    };
    let moves = |tier: usize, reason: &str| {
        (0..=TIERS)
            .map(|from| moves_from(tier, from, reason))
            .sum::<u64>()
    };

    // Twin without key order: same inputs, same tiers.
    let twin_source = topic("rt-twin", 3).await;
    publish_keyed(&twin_source, 0..PER_KEY).await;
    let twin_retries = RetryTopics::new(producer(), twin_source.as_str()).tiers(delays);
    ensure(&twin_retries).await;
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
    // Failures moved per tier, as counted by the metrics layer: a failed
    // call with retry budget left moved its message to the tier after its
    // own failures (a message that had followed its key into a later tier
    // starts again at tier 1).
    for tier in 1..=TIERS {
        for from in 0..=TIERS {
            let failed_here = ordered
                .iter()
                .filter(|c| c.failed && c.attempt + 1 == tier && c.tier == from)
                .count() as u64;
            assert_eq!(
                moves_from(tier, from, "failed"),
                failed_here,
                "to tier {tier} from tier {from}"
            );
        }
    }
    assert!(
        (1..=TIERS).map(|t| moves(t, "follows")).sum::<u64>() > 0,
        "moves behind a key's head are counted too"
    );
    // Both instances ended cleanly; nothing failed past the layer.
    assert_eq!(first.failed + second.failed, 0);

    // What the dead-letter topic holds: exactly the inputs that fail more
    // often than there are tiers, each once, after 4 failures of its own —
    // following its key through the tiers spent none of its retries.
    let expected_dead: Vec<(usize, usize)> = (0..KEYS)
        .flat_map(|k| (0..PER_KEY).map(move |s| (k, s)))
        .filter(|(k, s)| keyed_failures(*k, *s) > TIERS)
        .collect();
    let dead_calls: Vec<(usize, usize)> = {
        let mut d: Vec<(usize, usize)> = ordered
            .iter()
            .filter(|c| c.failed && c.attempt == TIERS)
            .map(|c| (c.key, c.seq))
            .collect();
        d.sort_unstable();
        d
    };
    let mut dead: Vec<(usize, usize, Option<u32>)> = read_to_end(retries.dead_letter())
        .iter()
        .map(|m| {
            let (k, s) = m.value_str().unwrap().split_once(':').unwrap();
            let info = DeadLetterInfo::from_message(m).expect("a dead letter");
            (k.parse().unwrap(), s.parse().unwrap(), info.attempts)
        })
        .collect();
    dead.sort_unstable();
    let dead_followers: Vec<_> = dead
        .iter()
        .filter(|(k, s, _)| keyed_failures(*k, *s) <= TIERS)
        .collect();
    println!(
        "KEY_ORDER_DLQ expected={} dead_lettered={} of_which_had_retries_left={}",
        expected_dead.len(),
        dead.len(),
        dead_followers.len()
    );
    assert_eq!(
        dead,
        expected_dead
            .iter()
            .map(|&(k, s)| (k, s, Some(TIERS as u32 + 1)))
            .collect::<Vec<_>>(),
        "the dead-letter topic: which inputs, after how many attempts"
    );
    assert_eq!(dead_calls, expected_dead, "dead-lettered where they failed");
}

/// Every record of `topic` (all partitions), read to its end offsets.
fn read_to_end(topic: &str) -> Vec<Message> {
    use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
    use xkafka::raw::rdkafka::message::{Headers as _, Message as _};
    use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("rt-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
        let (_, high) = client
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        ends.insert(p.id(), high);
    }
    client.assign(&tpl).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let position = client.position().expect("position");
        let done = ends.iter().all(|(&p, &end)| {
            end == 0
                || matches!(position.find_partition(topic, p).map(|e| e.offset()),
                    Some(xkafka::raw::rdkafka::Offset::Offset(o)) if o >= end)
        });
        if done {
            return records;
        }
        assert!(Instant::now() < deadline, "{topic} not read to {ends:?}");
        if let Some(Ok(m)) = client.poll(Duration::from_millis(100)) {
            let mut b = Message::builder(topic)
                .partition(m.partition())
                .offset(m.offset());
            if let Some(k) = m.key() {
                b = b.key(k.to_vec());
            }
            if let Some(v) = m.payload() {
                b = b.value(v.to_vec());
            }
            if let Some(h) = m.headers() {
                for x in h.iter() {
                    if let Some(v) = x.value {
                        b = b.header(x.key, v.to_vec());
                    }
                }
            }
            records.push(b.build());
        }
    }
}

/// Creates the tiers' and dead-letter topics; retried while the source
/// topic, just created, is not yet known to the broker's metadata.
async fn ensure(retries: &RetryTopics) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match retries
            .ensure_topics(&brokers(), Duration::from_secs(10))
            .await
        {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("ensure_topics: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("tier topics: {e}"),
        }
    }
}

/// A topic whose records may be at most `max_bytes` large: a publish of a
/// larger record fails (the broker refuses it).
async fn small_topic(name: &str, partitions: i32, max_bytes: usize) {
    use xkafka::raw::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use xkafka::raw::rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = xkafka::raw::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin");
    let size = max_bytes.to_string();
    let topic =
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)).set("max.message.bytes", &size);
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create");
    for r in results {
        r.expect("topic created");
    }
}

/// Issue 27 item 9: a move to a tier that fails (here: the tier refuses a
/// record that large) sends the message to the dead-letter topic instead
/// of handing it to the error handler, whose `Continue` dropped it: in
/// neither the tier nor the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tier_publish_that_fails_sends_the_message_to_the_dead_letter_topic() {
    const INPUTS: usize = 10;
    let source = topic("rt-pubfail", 1).await;
    let retries = RetryTopics::new(producer(), source.as_str()).tiers([Duration::from_millis(100)]);
    small_topic(&retries.tier_topics()[0], 1, 1_000).await;
    ensure(&retries).await;
    let p = producer();
    for n in 0..INPUTS {
        let value = format!("{n}:{}", "x".repeat(2_000));
        p.publish(
            Message::builder(source.as_str())
                .key(format!("k{n}"))
                .value(value)
                .build(),
        )
        .await
        .unwrap();
    }
    p.close().await;
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (e, c) = (errors.clone(), calls.clone());
    let consumer = consumer(&unique("rt-pubfail"), &source)
        .error_handler(move |err| {
            e.lock().unwrap().push(err.to_string());
            Decision::Continue
        })
        .layer(retries.layer())
        .handler(move |_m: Message| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<Ack, BoxError>("downstream down".into()) }
        })
        .build()
        .unwrap();
    let probe = calls.clone();
    let summary = consumer
        .run(until(
            move || probe.load(std::sync::atomic::Ordering::SeqCst) >= INPUTS,
            Duration::from_secs(30),
        ))
        .await
        .expect("run");
    let errors = errors.lock().unwrap().clone();
    let dead = read_to_end(retries.dead_letter());
    println!(
        "TIER_PUBLISH_FAILS inputs={INPUTS} dead_lettered={} to_error_handler={} summary={summary:?}",
        dead.len(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "nothing for the error handler: {errors:?}"
    );
    assert_eq!(
        summary.skipped, INPUTS as u64,
        "each moved on (dead-lettered)"
    );
    let mut numbers: Vec<usize> = dead
        .iter()
        .map(|m| {
            let info = DeadLetterInfo::from_message(m).expect("a dead letter");
            let error = info.error.unwrap_or_default();
            assert!(
                error.contains("downstream down") && error.contains("retry topic"),
                "the dead letter says why: {error}"
            );
            assert_eq!(info.attempts, Some(1));
            m.value_str()
                .unwrap()
                .split_once(':')
                .unwrap()
                .0
                .parse()
                .unwrap()
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..INPUTS).collect::<Vec<_>>());
}

/// Issue 27 item 9: a tier publish is not abandoned while librdkafka still
/// owns it. With a 1 ms bound (`timeout`, now ignored) the old code
/// reported the move failed — to the error handler, whose `Continue`
/// skipped the message — while librdkafka delivered the copy anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(deprecated)]
async fn a_tier_publish_is_never_reported_failed_while_it_is_still_delivered() {
    const INPUTS: usize = 20;
    let source = topic("rt-slowpub", 1).await;
    let retries = RetryTopics::new(producer(), source.as_str())
        .tiers([Duration::from_millis(100)])
        .timeout(Duration::from_millis(1));
    ensure(&retries).await;
    let p = producer();
    for n in 0..INPUTS {
        p.publish_async(
            Message::builder(source.as_str())
                .key(format!("k{n}"))
                .value(n.to_string())
                .build(),
        )
        .await
        .unwrap();
    }
    p.close().await;
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let (e, c) = (errors.clone(), calls.clone());
    let consumer = retries
        .subscribe(xkafka::Consumer::builder(unique("rt-slowpub")))
        .brokers([brokers()])
        .config("auto.offset.reset", "earliest")
        .config("fetch.wait.max.ms", "50")
        .error_handler(move |err| {
            e.lock().unwrap().push(err.to_string());
            Decision::Continue
        })
        .layer(retries.layer())
        .handler(move |m: Message| {
            let n: usize = m.value_str().unwrap().parse().unwrap();
            let tier: usize = m
                .headers()
                .get_str(headers::ATTEMPT)
                .map_or(0, |a| a.parse().unwrap());
            c.lock().unwrap().push((n, tier));
            async move {
                if tier == 0 {
                    Err::<Ack, BoxError>("first call fails".into())
                } else {
                    Ok(Ack::Success)
                }
            }
        })
        .build()
        .unwrap();
    let probe = calls.clone();
    consumer
        .run(until(
            move || probe.lock().unwrap().iter().filter(|c| c.1 == 1).count() >= INPUTS,
            Duration::from_secs(30),
        ))
        .await
        .expect("run");
    let errors = errors.lock().unwrap().clone();
    let mut retried: Vec<usize> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.1 == 1)
        .map(|c| c.0)
        .collect();
    retried.sort_unstable();
    println!(
        "TIER_PUBLISH_NOT_ABANDONED inputs={INPUTS} retried={} reported_failed={}",
        retried.len(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "a move reported failed although its copy was delivered: {errors:?}"
    );
    assert_eq!(
        retried,
        (0..INPUTS).collect::<Vec<_>>(),
        "each retried once"
    );
    assert!(read_to_end(retries.dead_letter()).is_empty());
}

/// Issue 27 item 8: key order on a consumer that cannot keep it is refused
/// when it is built (it failed each message at run time).
#[tokio::test]
async fn key_order_on_a_consumer_that_cannot_keep_it_is_refused_at_build() {
    let source = unique("rt-refuse");
    let retries = RetryTopics::new(producer(), source.as_str()).keep_key_order();
    // No subscribe: the main topic only.
    let err = consumer(&unique("rt-refuse"), &source)
        .error_handler(|_| Decision::Stop)
        .layer(retries.layer())
        .handler(|_m: Message| async { Ack::Success })
        .build()
        .map(|_| ())
        .expect_err("a consumer of the main topic only");
    assert!(err.to_string().contains("RetryTopics::subscribe"), "{err}");
    // A batch consumer.
    let err = xkafka::BatchConsumer::builder(unique("rt-refuse"))
        .brokers([brokers()])
        .topics(std::iter::once(source.clone()).chain(retries.tier_topics()))
        .not_before(due)
        .error_handler(|_| Decision::Stop)
        .layer(retries.layer())
        .handler(|_b: xkafka::Batch| async {})
        .build()
        .map(|_| ())
        .expect_err("a batch consumer");
    assert!(err.to_string().contains("streaming consumer only"), "{err}");
    // Exactly-once with the copies published by another transactional
    // producer: outside the consumer's transactions.
    let txn = |id: &str| {
        xkafka::Producer::builder("rt-refuse")
            .brokers([brokers()])
            .transactional_id(unique(id))
            .error_handler(|_| {})
            .build()
            .unwrap()
    };
    let other = RetryTopics::new(txn("copies"), source.as_str()).keep_key_order();
    let err = other
        .subscribe(xkafka::Consumer::builder(unique("rt-refuse")))
        .brokers([brokers()])
        .transactional(txn("consumer"))
        .error_handler(|_| Decision::Stop)
        .layer(other.layer())
        .handler(|_m: Message| async { Ack::Success })
        .build()
        .map(|_| ())
        .expect_err("copies outside the consumer's transactions");
    assert!(err.to_string().contains("transactional producer"), "{err}");
    // Set up as documented: built.
    retries
        .subscribe(xkafka::Consumer::builder(unique("rt-refuse")))
        .brokers([brokers()])
        .error_handler(|_| Decision::Stop)
        .layer(retries.layer())
        .handler(|_m: Message| async { Ack::Success })
        .build()
        .expect("subscribe + layer");
}

/// Issue 27 item 8: the rebuild after an assignment reads a tier backlog
/// that takes longer than one attempt's bound (here 300 ms; the old code
/// bounded it by the publish timeout) without failing a message: each
/// attempt goes on where the last stopped, and the partition waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(deprecated)]
async fn the_rebuild_reads_a_long_tier_backlog_without_failing_a_message() {
    const BACKLOG: usize = 60_000;
    const INPUTS: usize = 20;
    common::init_tracing();
    let source = topic("rt-backlog", 1).await;
    let retries = RetryTopics::new(producer(), source.as_str())
        .tiers([Duration::from_millis(100)])
        .keep_key_order()
        .timeout(Duration::from_millis(300))
        .rebuild_timeout(Duration::from_millis(300));
    ensure(&retries).await;
    // What another instance left in the tier: due in an hour, other keys.
    let tier = retries.tier_topics()[0].clone();
    let due_ms = (now_ms() + 3_600_000).to_string();
    let p = producer();
    for i in 0..BACKLOG {
        let copy = Message::builder(tier.as_str())
            .partition(0)
            .key(format!("old-{}", i % 500))
            .value(format!("backlog {i}"))
            .header(headers::ATTEMPT, "1")
            .header(headers::DUE, due_ms.clone())
            .header(headers::ORIGINAL_TOPIC, source.clone())
            .header(headers::ORIGINAL_PARTITION, "0")
            .header(headers::ORIGINAL_OFFSET, (1_000_000 + i).to_string())
            .build();
        p.publish_async(copy).await.unwrap();
    }
    for n in 0..INPUTS {
        p.publish_async(
            Message::builder(source.as_str())
                .key(format!("new-{n}"))
                .value(n.to_string())
                .build(),
        )
        .await
        .unwrap();
    }
    p.close().await;
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let handled: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (e, h) = (errors.clone(), handled.clone());
    let consumer = retries
        .subscribe(xkafka::Consumer::builder(unique("rt-backlog")))
        .brokers([brokers()])
        .config("auto.offset.reset", "earliest")
        .error_handler(move |err| {
            e.lock().unwrap().push(err.to_string());
            Decision::Continue
        })
        .layer(retries.layer())
        .handler(move |m: Message| {
            h.lock()
                .unwrap()
                .push(m.value_str().unwrap().parse().unwrap());
            async { Ack::Success }
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let (probe, failures) = (handled.clone(), errors.clone());
    let summary = consumer
        .run(until(
            move || {
                probe.lock().unwrap().len() + failures.lock().unwrap().len() >= INPUTS
                    && !failures.lock().unwrap().is_empty()
                    || probe.lock().unwrap().len() >= INPUTS
            },
            Duration::from_secs(60),
        ))
        .await
        .expect("run");
    let errors = errors.lock().unwrap().clone();
    let mut handled = handled.lock().unwrap().clone();
    handled.sort_unstable();
    println!(
        "REBUILD backlog={BACKLOG} inputs={INPUTS} handled={} failed={} first_to_last_ms={} summary={summary:?}",
        handled.len(),
        errors.len(),
        started.elapsed().as_millis()
    );
    assert!(
        errors.is_empty(),
        "{} messages failed, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(
        handled,
        (0..INPUTS).collect::<Vec<_>>(),
        "each handled once"
    );
}

/// Issue 27 item 6: key order with exactly-once. A transaction that moved
/// `a:0` to a tier (and sent `a:1` after it) aborts — here its commit
/// fails because another handler's output was refused by the broker. The
/// copies never become visible; the inputs, read again, must be handled
/// again, not skipped as already moved (the old code: `a:0` lost, and
/// `a:1` waiting behind it for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_order_with_exactly_once_loses_nothing_when_a_transaction_aborts() {
    let source = topic("rt-eos", 1).await;
    let out = topic("rt-eos-out", 1).await;
    let big = unique("rt-eos-big");
    small_topic(&big, 1, 1_000).await;
    let txn = xkafka::Producer::builder("rt-eos")
        .brokers([brokers()])
        .transactional_id(unique("rt-eos"))
        .transaction_timeout(Duration::from_secs(10))
        .error_handler(|err| eprintln!("transactional producer: {err}"))
        .build()
        .unwrap();
    let retries = RetryTopics::new(txn.clone(), source.as_str())
        .tiers([Duration::from_millis(200)])
        .keep_key_order();
    ensure(&retries).await;
    let inputs = ["a:0", "a:1", "b:0", "b:1", "t:0"];
    let p = producer();
    for i in inputs {
        p.publish(
            Message::builder(source.as_str())
                .key(i.split_once(':').unwrap().0)
                .value(i)
                .build(),
        )
        .await
        .unwrap();
    }
    p.close().await;
    // (input, its call number, succeeded)
    let calls: Arc<Mutex<Vec<(String, usize, bool)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let (c, e) = (calls.clone(), errors.clone());
    let output = txn.clone();
    let (out_topic, big_topic) = (out.clone(), big.clone());
    let consumer = retries
        .subscribe(xkafka::Consumer::builder(unique("rt-eos")))
        .brokers([brokers()])
        .config("auto.offset.reset", "earliest")
        .config("fetch.wait.max.ms", "50")
        .transactional(txn.clone())
        .transaction_interval(Duration::from_secs(1))
        .error_handler(move |err| {
            e.lock().unwrap().push(err.to_string());
            Decision::Continue
        })
        .layer(retries.layer())
        .handler(move |m: Message| {
            let (c, output) = (c.clone(), output.clone());
            let (out_topic, big_topic) = (out_topic.clone(), big_topic.clone());
            async move {
                let input = m.value_str().unwrap().to_owned();
                let call = {
                    let calls = c.lock().unwrap();
                    calls.iter().filter(|x| x.0 == input).count() + 1
                };
                // a:0 fails its first two calls.
                let fails = input == "a:0" && call <= 2;
                c.lock().unwrap().push((input.clone(), call, !fails));
                if fails {
                    return Err::<Ack, BoxError>("a:0 fails".into());
                }
                if input == "t:0" && call == 1 {
                    // Refused by the broker: the transaction cannot commit.
                    let poison = Message::builder(big_topic.as_str())
                        .value("p".repeat(5_000))
                        .build();
                    output.publish_async(poison).await?;
                    return Ok(Ack::Success);
                }
                output
                    .publish(Message::builder(out_topic.as_str()).value(input).build())
                    .await?;
                Ok(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let probe = calls.clone();
    let summary = consumer
        .run(until(
            move || {
                let calls = probe.lock().unwrap();
                inputs
                    .iter()
                    .all(|i| calls.iter().any(|c| c.0 == *i && c.2))
            },
            Duration::from_secs(40),
        ))
        .await;
    let calls = calls.lock().unwrap().clone();
    let errors = errors.lock().unwrap().clone();
    println!("EOS_KEY_ORDER calls={calls:?} errors={errors:?} summary={summary:?}");
    summary.expect("run");
    assert!(
        !errors.is_empty(),
        "the first transaction's commit failed (what this test is about)"
    );
    let mut outputs: Vec<String> = read_to_end(&out)
        .iter()
        .map(|m| m.value_str().unwrap().to_owned())
        .collect();
    let a: Vec<&String> = outputs.iter().filter(|o| o.starts_with("a:")).collect();
    assert_eq!(a, ["a:0", "a:1"], "a's outputs, in order, once each");
    outputs.sort();
    assert_eq!(outputs, inputs, "each input's output exactly once");
    assert!(
        read_to_end(retries.dead_letter()).is_empty(),
        "nothing dead-lettered"
    );
}
