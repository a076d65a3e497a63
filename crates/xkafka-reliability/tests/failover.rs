//! Broker failover on the 3-broker Apache Kafka cluster (replication factor
//! 3, `min.insync.replicas=2`), with real broker processes killed by
//! `scripts/broker.sh`, while an idempotent `acks=all` producer publishes with
//! `publish_async` and a `Concurrency(8)` `Order::PerKey` consumer consumes:
//!
//! - the leader of the partitions in use is SIGKILLed at 600 msg/s;
//! - the group coordinator's broker is SIGKILLed;
//! - all three brokers are restarted one after the other under load;
//! - two of three brokers are down: publishes fail, then go on.
//!
//! Each test reads the topic back and counts: acknowledged ids lost (by the
//! consumer, in the log), duplicates in the log, each key's order. Figures are
//! printed and written to `target/reliability/failover-*.json`.
//!
//! Needs the cluster (`scripts/broker.sh cluster start`; address in
//! `XKAFKA_CLUSTER_BROKERS`): without it the tests fail. They run one at a
//! time, and every broker a test takes down is started again when the test
//! ends, passed or failed.
//!
//! `cargo test -p xkafka-reliability --all-features --test failover -- --nocapture`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use xkafka::BoxError;
use xkafka_reliability::cluster::{Feeder, Input};
use xkafka_reliability::control::{self, Downed};
use xkafka_reliability::failover::{self, Consuming, Verdict};

const PARTITIONS: i32 = 3;
/// The publish rate under test (the issue asks for at least 500 msg/s).
const RATE: u64 = 600;

/// Every check a failover run must pass, whatever the fault.
fn assert_nothing_lost(name: &str, v: &Verdict) {
    assert_eq!(
        v.lost, 0,
        "{name}: acknowledged ids never handled, e.g. {:?}",
        v.lost_examples
    );
    assert_eq!(
        v.lost_in_log, 0,
        "{name}: acknowledged ids missing from the log"
    );
    assert_eq!(
        v.log_order_violations, 0,
        "{name}: keys out of order in the log"
    );
    assert_eq!(
        v.handling_order_violations, 0,
        "{name}: keys handled out of order"
    );
}

fn report(name: &str, v: &Verdict, extra: serde_json::Value) {
    let mut figures = serde_json::to_value(v).unwrap();
    if let (Some(f), Some(e)) = (figures.as_object_mut(), extra.as_object()) {
        f.extend(e.clone());
    }
    println!("FAILOVER {name}: {figures}");
    match control::write_figures(&format!("failover-{name}"), &figures) {
        Ok(path) => println!("figures in {}", path.display()),
        Err(e) => eprintln!("could not write the figures: {e}"),
    }
}

/// Leaders of the topic's partitions, by node.
async fn leaders(brokers: &str, topic: &str) -> Result<BTreeMap<i32, u8>, BoxError> {
    let mut out = BTreeMap::new();
    for p in 0..PARTITIONS {
        let leader = control::leader(brokers, topic, p)
            .await?
            .ok_or_else(|| format!("{topic}[{p}] has no leader"))?;
        out.insert(p, leader);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_message_and_keeps_key_order() {
    let stage = control::stage("failover-leader", PARTITIONS).await.unwrap();
    let (brokers, topic) = (stage.brokers.clone(), stage.topic.clone());
    let before = leaders(&brokers, &topic).await.unwrap();
    let victim = before[&0];
    let led: Vec<i32> = before
        .iter()
        .filter(|(_, l)| **l == victim)
        .map(|(p, _)| *p)
        .collect();

    let consuming = Consuming::start(&brokers, &topic, &topic, &[]).unwrap();
    let input = Input::new(&brokers, &topic).unwrap();
    let feeding_since = Instant::now();
    let feeder = Feeder::start(&input, RATE);
    consuming
        .wait(
            "1,000 messages before the kill",
            Duration::from_secs(60),
            |c| c.count() >= 1000,
        )
        .await
        .unwrap();

    let mut downed = Downed::new();
    downed.kill(victim).await.unwrap();
    // The process is gone (broker.sh waited for it): what is published from
    // now on cannot have reached it.
    let published_at_kill = input.published();
    let killed_at = Instant::now();
    // Resumed: a message published after the kill, on a partition the dead
    // broker led, was acknowledged / handled.
    let after_kill = |p: i32, id: u64| led.contains(&p) && id >= published_at_kill;
    let waited = consuming
        .wait(
            "consumption after the election",
            Duration::from_secs(60),
            |c| c.first(|h| after_kill(h.partition, h.id)).is_some(),
        )
        .await;
    if let Err(e) = waited {
        let acks_after: Vec<_> = input
            .acks()
            .iter()
            .filter(|a| a.id >= published_at_kill)
            .fold(BTreeMap::<i32, usize>::new(), |mut m, a| {
                *m.entry(a.partition).or_default() += 1;
                m
            })
            .into_iter()
            .collect();
        let leaders_now = leaders(&brokers, &topic).await;
        panic!(
            "{e}; node {victim} led {led:?}; acks after the kill per partition {acks_after:?}; \
             leaders now {leaders_now:?}"
        );
    }
    let resumed = consuming
        .first(|h| after_kill(h.partition, h.id))
        .unwrap()
        .at
        - killed_at;
    let acked_again = input
        .acks()
        .iter()
        .find(|a| after_kill(a.partition, a.id))
        .map(|a| a.at - killed_at);
    // Consumption resumed on the partitions the dead broker led: they have
    // new leaders. A few more seconds of load, then the broker comes back.
    let after = leaders(&brokers, &topic).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restored = downed.restore().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    feeder.stop().await.unwrap();
    let feed_secs = feeding_since.elapsed().as_secs_f64();
    let acked = input.finish().await;
    let finished = consuming
        .finish(&acked, Duration::from_secs(120))
        .await
        .unwrap();
    let log = failover::read_log(&brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let v = failover::verdict(&acked, &[], &finished, &log);
    let rate = acked.published as f64 / feed_secs;
    report(
        "leader",
        &v,
        json!({
            "killed_node": victim,
            "partitions_it_led": led,
            "leaders_before": before,
            "leaders_after": after,
            "publish_rate_per_s": rate.round(),
            "acks_resumed_after_ms": acked_again.map(|d| d.as_millis()),
            "consumption_resumed_after_ms": resumed.as_millis(),
            "broker_back_after_ms": restored.as_millis(),
        }),
    );
    assert_nothing_lost("leader", &v);
    assert_eq!(v.log_duplicates, 0, "idempotence: no duplicate in the log");
    assert_eq!(v.failed, 0, "librdkafka retried through the election");
    assert!(rate >= 500.0, "published at {rate:.0} msg/s");
    for p in &led {
        assert_ne!(after[p], victim, "partition {p} got a new leader");
    }
    assert_eq!(finished.summary.failed, 0);
}

/// How long a commit replayed late may hold a partition's committed offset
/// below a newer one: the consumer's `auto.commit.interval.ms` (1 s here),
/// whose next commit carries the newest offsets again, and room for that
/// commit's round trip on a loaded machine.
const REPAIRED_WITHIN_MS: i64 = 4_000;

/// With `XKAFKA_FAILOVER_TRACE=<file>`: librdkafka's `cgrp` and `protocol`
/// debug lines of the consumer, and every sample with the node that answered
/// it, to that file (timestamped), for a diagnosis.
fn trace_to_file() -> Vec<(&'static str, &'static str)> {
    let Ok(path) = std::env::var("XKAFKA_FAILOVER_TRACE") else {
        return Vec::new();
    };
    let file = std::fs::File::create(&path).expect("the trace file");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "librdkafka=debug,sampler=debug",
        ))
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    vec![("debug", "cgrp,protocol")]
}

/// Clears its flag when dropped.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Killing the group's coordinator (SIGKILL, no controlled shutdown) while
/// the group commits every second.
///
/// What holds, read from `__consumer_offsets` itself (what any later reader
/// of the group's offsets gets): no commit after the kill goes below the last
/// commit written before it; the group's last commit of each partition is its
/// highest; and a commit that does land below a newer one (librdkafka
/// replaying, with their old offsets, the auto-commits it held while there
/// was no coordinator: see RELIABILITY.md) is superseded within
/// `REPAIRED_WITHIN_MS`. Every move back the sampler sees must be such a
/// write: a read answered from stale state would fail the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_group_coordinator_never_commits_below_what_was_committed_before_it() {
    let debug = trace_to_file();
    let stage = control::stage("failover-coordinator", PARTITIONS)
        .await
        .unwrap();
    let (brokers, topic) = (stage.brokers.clone(), stage.topic.clone());
    let group = topic.clone();
    // Commit every second so that the samples see the offsets move.
    let mut config = vec![("auto.commit.interval.ms", "1000")];
    config.extend(debug);
    let consuming = Consuming::start(&brokers, &topic, &group, &config).unwrap();
    let input = Input::new(&brokers, &topic).unwrap();
    let feeder = Feeder::start(&input, RATE);
    consuming
        .wait(
            "1,000 messages before the kill",
            Duration::from_secs(60),
            |c| c.count() >= 1000,
        )
        .await
        .unwrap();
    let victim = control::coordinator(&brokers, &group).await.unwrap();

    // The committed offsets, sampled by another client all along.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
        let (on, count) = (sampling.clone(), sampled.clone());
        tokio::task::spawn_blocking(move || {
            failover::sample_committed(
                &b,
                &g,
                &t,
                PARTITIONS,
                Duration::from_millis(200),
                &on,
                &count,
            )
        })
    };

    // The sampler's thread stops also when the test panics: the runtime waits
    // for blocking tasks when it ends, and the test would hang instead.
    let _stop_sampler = StopOnDrop(sampling.clone());

    // Samples of the offsets before the kill: something to compare with.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sampled.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(Instant::now() < deadline, "no committed offsets sampled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut downed = Downed::new();
    downed.kill(victim).await.unwrap();
    // broker.sh waited for the process to be gone: whatever it wrote, it
    // wrote before this.
    let killed_wall = unix_ms(std::time::SystemTime::now());
    tracing::info!(target: "sampler", victim, "killed");
    let published_at_kill = input.published();
    let killed_at = Instant::now();
    consuming
        .wait("consumption after the kill", Duration::from_secs(60), |c| {
            c.first(|h| h.id >= published_at_kill).is_some()
        })
        .await
        .unwrap();
    let resumed = consuming.first(|h| h.id >= published_at_kill).unwrap().at - killed_at;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let new_coordinator = control::coordinator(&brokers, &group).await.unwrap();
    let restored = downed.restore().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    feeder.stop().await.unwrap();
    let acked = input.finish().await;
    let finished = consuming
        .finish(&acked, Duration::from_secs(120))
        .await
        .unwrap();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (samples, sample_failures) = sampler.await.unwrap().unwrap();
    let log = failover::read_log(&brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let v = failover::verdict(&acked, &[], &finished, &log);
    let history = {
        let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
        tokio::task::spawn_blocking(move || failover::commit_history(&b, &g, &t))
            .await
            .unwrap()
            .unwrap()
    };

    let analysis =
        failover::analyse_commits(&history, &samples, PARTITIONS, killed_wall, killed_at);
    // The group committed again after the kill: the first sample past the
    // kill whose offsets exceed the last sample before it.
    let last_before = samples
        .iter()
        .rev()
        .find(|s| s.at < killed_at)
        .map(|s| s.offsets.clone());
    let commits_resumed = last_before.as_ref().and_then(|before| {
        samples
            .iter()
            .find(|s| s.at > killed_at && s.offsets.iter().zip(before).any(|(a, b)| a > b))
            .map(|s| s.at - killed_at)
    });
    let answered_by: BTreeMap<i32, usize> = samples.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.coordinator).or_default() += 1;
        m
    });
    report(
        "coordinator",
        &v,
        json!({
            "killed_node": victim,
            "new_coordinator": new_coordinator,
            "offset_samples": samples.len(),
            "offset_samples_by_answering_node": answered_by,
            "offset_sample_failures": sample_failures,
            "commits_written": history.len(),
            "commits_written_below_a_newer_one": analysis.written_back.len(),
            "longest_move_back_ms": analysis
                .written_back
                .iter()
                .filter_map(|w| w.repaired_after_ms)
                .max(),
            "written_back": format!("{:?}", analysis.written_back),
            "samples_moved_back": analysis.seen_back.len(),
            "seen_back": format!("{:?}", analysis.seen_back),
            "commits_resumed_after_ms": commits_resumed.map(|d| d.as_millis()),
            "consumption_resumed_after_ms": resumed.as_millis(),
            "broker_back_after_ms": restored.as_millis(),
        }),
    );
    assert_nothing_lost("coordinator", &v);
    assert!(
        !history.is_empty(),
        "the group's commits are in __consumer_offsets"
    );
    assert!(
        analysis.below_floor.is_empty(),
        "commits after the kill below the last one before it \
         (partition, floor, offset, ms after the kill): {:?}",
        analysis.below_floor
    );
    assert!(
        analysis.last_not_highest.is_empty(),
        "the group's last commit is not its highest (partition, last, highest): {:?}",
        analysis.last_not_highest
    );
    let slow: Vec<_> = analysis
        .written_back
        .iter()
        .filter(|w| w.repaired_after_ms.is_none_or(|ms| ms > REPAIRED_WITHIN_MS))
        .collect();
    assert!(
        slow.is_empty(),
        "moves back not repaired within {REPAIRED_WITHIN_MS} ms: {slow:?}"
    );
    assert!(
        analysis.seen_not_written.is_empty(),
        "the sampler saw offsets go back that no coordinator wrote back (a stale read): \
         {:?}; the log's moves back: {:?}",
        analysis.seen_not_written,
        analysis.written_back
    );
    assert_ne!(new_coordinator, victim, "the group moved to another broker");
    assert!(
        commits_resumed.is_some(),
        "the group committed again after the kill; samples before {:?}, last {:?}",
        last_before,
        samples.last().map(|s| &s.offsets)
    );
    assert_eq!(finished.summary.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_brokers_under_load_loses_nothing() {
    let stage = control::stage("failover-rolling", PARTITIONS)
        .await
        .unwrap();
    let (brokers, topic) = (stage.brokers.clone(), stage.topic.clone());
    let consuming = Consuming::start(&brokers, &topic, &topic, &[]).unwrap();
    let input = Input::new(&brokers, &topic).unwrap();
    let feeder = Feeder::start(&input, RATE);
    consuming
        .wait(
            "1,000 messages before the restarts",
            Duration::from_secs(60),
            |c| c.count() >= 1000,
        )
        .await
        .unwrap();
    let mut restarts = Vec::new();
    for node in 1..=3u8 {
        let mut downed = Downed::new();
        let started = Instant::now();
        downed.stop(node).await.unwrap();
        let stopped = started.elapsed();
        downed.restore().await.unwrap();
        restarts.push((node, stopped.as_millis(), started.elapsed().as_millis()));
        // Consumption goes on after each restart, before the next one.
        let n = consuming.count();
        consuming
            .wait(
                "consumption after a restart",
                Duration::from_secs(60),
                |c| c.count() > n + 100,
            )
            .await
            .unwrap();
    }
    feeder.stop().await.unwrap();
    let acked = input.finish().await;
    let finished = consuming
        .finish(&acked, Duration::from_secs(120))
        .await
        .unwrap();
    let log = failover::read_log(&brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let v = failover::verdict(&acked, &[], &finished, &log);
    report(
        "rolling",
        &v,
        json!({ "restarts_node_stop_ms_total_ms": restarts }),
    );
    assert_nothing_lost("rolling", &v);
    assert_eq!(v.log_duplicates, 0, "idempotence: no duplicate in the log");
    assert_eq!(v.failed, 0);
    assert_eq!(finished.summary.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_brokers_down_publishes_fail_clearly_and_go_on_after() {
    let stage = control::stage("failover-minisr", PARTITIONS).await.unwrap();
    let (brokers, topic) = (stage.brokers.clone(), stage.topic.clone());
    let consuming = Consuming::start(&brokers, &topic, &topic, &[]).unwrap();
    // A short delivery timeout: what cannot reach min.insync.replicas fails
    // within the outage instead of waiting for the brokers.
    let input = Input::with_config(&brokers, &topic, &[("message.timeout.ms", "5000")]).unwrap();
    input.publish(300).await.unwrap();
    consuming
        .wait("the first 300", Duration::from_secs(60), |c| {
            c.count() >= 300
        })
        .await
        .unwrap();
    // The consumer can read a record before its delivery report reached the
    // producer's callback: wait for the reports too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while input.acks().len() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(input.acks().len(), 300);

    let mut downed = Downed::new();
    downed.kill(2).await.unwrap();
    downed.kill(3).await.unwrap();
    let down_at = Instant::now();
    let first_in_outage = input.published();
    input.publish(200).await.unwrap();
    let outage_ids = first_in_outage..input.published();
    let deadline = Instant::now() + Duration::from_secs(30);
    while input.failures().len() < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failures = input.failures();
    let failed_after = down_at.elapsed();
    let acked_in_outage: Vec<u64> = input
        .acks()
        .iter()
        .map(|a| a.id)
        .filter(|id| outage_ids.contains(id))
        .collect();
    let example_error = failures.first().map(|f| f.1.clone()).unwrap_or_default();

    let restored = downed.restore().await.unwrap();
    let resumed_from = input.published();
    input.publish(300).await.unwrap();
    let acked = input.finish().await;
    let finished = consuming
        .finish(&acked, Duration::from_secs(120))
        .await
        .unwrap();
    let log = failover::read_log(&brokers, &topic, PARTITIONS)
        .await
        .unwrap();
    let failed_ids: Vec<u64> = failures.iter().map(|f| f.0).collect();
    let v = failover::verdict(&acked, &failed_ids, &finished, &log);
    let acked_after = acked.ids.iter().filter(|id| **id >= resumed_from).count();
    report(
        "min-insync",
        &v,
        json!({
            "published_in_outage": 200,
            "failed_in_outage": failures.len(),
            "acked_in_outage": acked_in_outage.len(),
            "all_failed_after_ms": failed_after.as_millis(),
            "example_error": example_error,
            "brokers_back_after_ms": restored.as_millis(),
            "acked_after_return": acked_after,
        }),
    );
    assert!(
        acked_in_outage.is_empty(),
        "reported delivered without min.insync.replicas: {acked_in_outage:?}"
    );
    assert_eq!(
        failures.len(),
        200,
        "every publish in the outage failed within message.timeout.ms"
    );
    assert!(
        failures.iter().all(|f| outage_ids.contains(&f.0)),
        "only publishes of the outage failed: {failures:?}"
    );
    assert!(
        example_error.contains("timed out") || example_error.contains("replicas"),
        "a clear error: {example_error}"
    );
    assert_eq!(
        acked_after, 300,
        "publishing goes on after the brokers returned"
    );
    assert_nothing_lost("min-insync", &v);
    assert_eq!(finished.summary.failed, 0);
}
