//! Where a transactional consumer starts a newly assigned partition when
//! the group's committed offset cannot be read at once: at that offset,
//! however long the answer takes, and never from `auto.offset.reset` (which
//! replays a whole partition with `earliest` or skips it with `latest`).
//!
//! The committed-offset query is made to fail with librdkafka's mock
//! cluster (fault injection); the real-broker case, a pending transaction
//! holding the offsets past the old fallback bound, runs on Apache Kafka.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{embedded_with, unique, until};
use xkafka::health::{HealthCheck, Problem};
use xkafka::mock::EmbeddedCluster;
use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use xkafka::raw::MockClusterExt;
use xkafka::{Ack, Consumer, Decision, Message, Producer};

/// The group's committed offset in the middle of the 100-message input.
const COMMITTED: i64 = 50;
const MESSAGES: usize = 100;
/// `max.poll.interval.ms` of the consumers under test: the old code gave up
/// waiting after 0.8 × this (2.4 s) and let librdkafka query the offsets.
const MAX_POLL_MS: &str = "3000";

/// A mock cluster whose `topic` holds 100 messages and whose group `group`
/// committed offset 50.
async fn mock_input(topic: &str, group: &str) -> EmbeddedCluster {
    let cluster = embedded_with(topic, 1, MESSAGES).await;
    let committer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut half = TopicPartitionList::new();
    half.add_partition_offset(topic, 0, Offset::Offset(COMMITTED))
        .unwrap();
    committer
        .commit(&half, xkafka::raw::rdkafka::consumer::CommitMode::Sync)
        .expect("commit 50");
    cluster
}

/// What one consumer under test saw.
#[derive(Default)]
struct Observed {
    offsets: Mutex<Vec<i64>>,
    errors: Mutex<Vec<String>>,
    /// Longest `PollStalled` the health check reported while it ran.
    stalled: Mutex<Option<u64>>,
}

/// Runs a transactional consumer of `topic` on `cluster` until it handled
/// offset 99 (or `timeout`), checking its health every 100 ms with a 1 s
/// `PollStalled` threshold.
async fn run_transactional(
    cluster: &EmbeddedCluster,
    topic: &str,
    group: &str,
    reset: &'static str,
    timeout: Duration,
) -> Arc<Observed> {
    common::init_tracing();
    let observed = Arc::new(Observed::default());
    let producer = Producer::builder("xkafka-tests-start-offsets")
        .brokers([cluster.bootstrap_servers()])
        .transactional_id(unique("start-offsets"))
        .error_handler(|err| eprintln!("transactional producer error: {err}"))
        .build()
        .expect("transactional producer");
    let (record, errors) = (observed.clone(), observed.clone());
    let consumer = Consumer::builder(group)
        .brokers([cluster.bootstrap_servers()])
        .topics([topic])
        .config("auto.offset.reset", reset)
        .config("session.timeout.ms", MAX_POLL_MS)
        .config("heartbeat.interval.ms", "500")
        .config("max.poll.interval.ms", MAX_POLL_MS)
        .shutdown_timeout(Duration::from_secs(5))
        .transactional(producer.clone())
        .error_handler(move |err| {
            eprintln!("{reset}: consumer error: {err}");
            errors.errors.lock().unwrap().push(err.to_string());
            Decision::Continue
        })
        .handler(move |m: Message| {
            let record = record.clone();
            async move {
                record.offsets.lock().unwrap().push(m.offset().unwrap());
                Ack::Success
            }
        })
        .build()
        .expect("consumer");
    let status = consumer.status_handle();
    let health = HealthCheck::builder()
        .poll_stalled_after(Duration::from_secs(1))
        .build()
        .unwrap();
    let watch = observed.clone();
    let watcher = tokio::spawn(async move {
        loop {
            for problem in health.check(&status.snapshot()).problems {
                if let Problem::PollStalled { for_secs } = problem {
                    let mut worst = watch.stalled.lock().unwrap();
                    *worst = Some(worst.unwrap_or(0).max(for_secs).max(1));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let probe = observed.clone();
    let summary = consumer
        .run(until(
            move || probe.offsets.lock().unwrap().contains(&99),
            timeout,
        ))
        .await
        .expect("run");
    watcher.abort();
    producer.close().await;
    eprintln!("{reset}: {summary:?}");
    observed
}

/// Asserts that `observed` read the input from exactly the committed
/// offset: nothing before it handled, nothing after it skipped.
fn assert_started_at_the_committed_offset(reset: &str, observed: &Observed) {
    let offsets = observed.offsets.lock().unwrap().clone();
    let distinct: BTreeSet<i64> = offsets.iter().copied().collect();
    assert_eq!(
        (
            distinct.first().copied(),
            distinct.last().copied(),
            distinct.len()
        ),
        (Some(COMMITTED), Some(99), 50),
        "auto.offset.reset={reset}: handled offsets {:?}..{:?} ({} distinct), \
         expected exactly 50..=99",
        distinct.first(),
        distinct.last(),
        distinct.len()
    );
    assert_eq!(
        *observed.stalled.lock().unwrap(),
        None,
        "auto.offset.reset={reset}: the health check saw the poll thread stalled \
         while it waited for the committed offset"
    );
}

/// The committed-offset query fails (the coordinator answers
/// `GROUP_AUTHORIZATION_FAILED`, an ACL change being rolled out) for longer
/// than 0.8 × `max.poll.interval.ms`. The consumer keeps asking, tells the
/// error handler once, keeps its poll thread (and health) alive, and starts
/// at the committed offset when the answer comes, with `earliest` (which
/// would replay the partition) and `latest` (which would skip it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_offset_query_failing_past_the_old_bound_starts_at_the_committed_offset() {
    let run = |reset: &'static str| async move {
        let topic = unique("start-offsets-failing");
        let group = unique("start-offsets-failing");
        let cluster = mock_input(&topic, &group).await;
        cluster.start_request_tracking();
        // One error per query; the old code gave up after about five.
        cluster
            .request_errors(
                RDKafkaApiKey::OffsetFetch,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 8],
            )
            .unwrap();
        let started = Instant::now();
        let observed =
            run_transactional(&cluster, &topic, &group, reset, Duration::from_secs(40)).await;
        let queries = cluster.requests(RDKafkaApiKey::OffsetFetch);
        eprintln!(
            "{reset}: {queries} OffsetFetch requests, {:?}",
            started.elapsed()
        );
        (reset, observed, queries)
    };
    let (earliest, latest) = tokio::join!(run("earliest"), run("latest"));
    for (reset, observed, queries) in [earliest, latest] {
        assert_started_at_the_committed_offset(reset, &observed);
        assert!(
            queries > 8,
            "{reset}: every injected error was hit ({queries} queries)"
        );
        let errors = observed.errors.lock().unwrap().clone();
        let told = errors
            .iter()
            .filter(|e| e.contains("Group authorization"))
            .count();
        assert_eq!(
            told, 1,
            "{reset}: the error handler is told once: {errors:?}"
        );
    }
}

/// The query answers, but with an error for the partition (OffsetFetch v1
/// carries only per-partition errors). The consumer keeps asking rather
/// than handing the partition to librdkafka's own query.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_per_partition_error_is_retried_and_the_partition_starts_at_the_committed_offset() {
    let run = |reset: &'static str| async move {
        let topic = unique("start-offsets-partition");
        let group = unique("start-offsets-partition");
        let cluster = mock_input(&topic, &group).await;
        cluster
            .with_mock(|m| m.apiversion(RDKafkaApiKey::OffsetFetch, Some(0), Some(1)))
            .unwrap();
        cluster.start_request_tracking();
        cluster
            .request_errors(
                RDKafkaApiKey::OffsetFetch,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 3],
            )
            .unwrap();
        let observed =
            run_transactional(&cluster, &topic, &group, reset, Duration::from_secs(30)).await;
        let queries = cluster.requests(RDKafkaApiKey::OffsetFetch);
        (reset, observed, queries)
    };
    let (earliest, latest) = tokio::join!(run("earliest"), run("latest"));
    for (reset, observed, queries) in [earliest, latest] {
        assert_started_at_the_committed_offset(reset, &observed);
        assert!(
            queries > 3,
            "{reset}: every injected error was hit ({queries} queries)"
        );
    }
}

/// On Apache Kafka: a member killed inside its transaction's commit leaves
/// the group's offset pending (`UNSTABLE_OFFSET_COMMIT`) for longer than
/// 0.8 × `max.poll.interval.ms` of the member that takes its partition
/// over. The newcomer waits — polling, healthy, in the group — without
/// reading anything, and starts at the committed offset once the pending
/// transaction ends. (The old code waited inside the rebalance callback,
/// where the poll thread made no progress, then handed the partition to
/// librdkafka's own query.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_transaction_past_the_old_bound_is_waited_for_on_kafka() {
    use common::{brokers, fill, producer, topic};
    use xkafka::raw::rdkafka::producer::{BaseProducer, Producer as _};
    use xkafka::raw::rdkafka::util::Timeout;

    let input = topic("start-offsets-pending", 1).await;
    let p = producer();
    fill(&p, &input, 0, MESSAGES).await;
    p.close().await;
    let group = unique("start-offsets-pending");
    let member = |group: &str| {
        ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .clone()
    };
    let committer: BaseConsumer = member(&group).create().unwrap();
    let mut half = TopicPartitionList::new();
    half.add_partition_offset(&input, 0, Offset::Offset(COMMITTED))
        .unwrap();
    committer
        .commit(&half, xkafka::raw::rdkafka::consumer::CommitMode::Sync)
        .expect("commit 50");
    drop(committer);
    // The zombie: a member whose transaction holds offset 60, never ended.
    let zombie_member: BaseConsumer = member(&group).create().unwrap();
    zombie_member.subscribe(&[&input]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while zombie_member.assignment().unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the zombie joined the group");
        let _ = zombie_member.poll(Duration::from_millis(100));
    }
    let zombie: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", unique("start-offsets-zombie"))
        .create()
        .unwrap();
    let t = Timeout::After(Duration::from_secs(30));
    zombie.init_transactions(t).unwrap();
    zombie.begin_transaction().unwrap();
    let mut sixty = TopicPartitionList::new();
    sixty
        .add_partition_offset(&input, 0, Offset::Offset(60))
        .unwrap();
    zombie
        .send_offsets_to_transaction(&sixty, &zombie_member.group_metadata().unwrap(), t)
        .expect("the zombie's offsets joined its transaction");
    drop(zombie_member);

    let observed = Arc::new(Observed::default());
    let producer = Producer::builder("xkafka-tests-start-offsets")
        .brokers([brokers()])
        .transactional_id(unique("start-offsets-c"))
        .error_handler(|err| eprintln!("transactional producer error: {err}"))
        .build()
        .expect("transactional producer");
    let (record, errors) = (observed.clone(), observed.clone());
    let consumer = common::consumer(&group, &input)
        .config("auto.offset.reset", "latest")
        .config("heartbeat.interval.ms", "1000")
        .config("max.poll.interval.ms", "6000")
        .transactional(producer.clone())
        .error_handler(move |err| {
            eprintln!("C: {err}");
            errors.errors.lock().unwrap().push(err.to_string());
            Decision::Continue
        })
        .handler(move |m: Message| {
            let record = record.clone();
            async move {
                record.offsets.lock().unwrap().push(m.offset().unwrap());
                Ack::Success
            }
        })
        .build()
        .expect("consumer");
    let status = consumer.status_handle();
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    let health = HealthCheck::builder()
        .poll_stalled_after(Duration::from_secs(2))
        .build()
        .unwrap();
    // The pending transaction outlasts 0.8 × max.poll.interval.ms (4.8 s):
    // the scenario, not a synchronisation.
    let pending_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < pending_until {
        for problem in health.check(&status.snapshot()).problems {
            if let Problem::PollStalled { for_secs } = problem {
                let mut worst = observed.stalled.lock().unwrap();
                *worst = Some(worst.unwrap_or(0).max(for_secs).max(1));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = observed.offsets.lock().unwrap().clone();
    zombie.abort_transaction(Duration::from_secs(30)).unwrap();
    let probe = observed.clone();
    until(
        move || probe.offsets.lock().unwrap().contains(&99),
        Duration::from_secs(30),
    )
    .await;
    stop.shutdown();
    let summary = run.await.unwrap().expect("C");
    producer.close().await;
    eprintln!("{summary:?}");
    assert!(
        during.is_empty(),
        "nothing is read while the group's offset is pending: {during:?}"
    );
    assert_started_at_the_committed_offset("latest", &observed);
    assert!(summary.closed_cleanly, "{summary:?}");
}
