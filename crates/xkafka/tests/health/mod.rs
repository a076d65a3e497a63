//! Status and health of a running consumer on the real broker, through the
//! HTTP endpoints (`xkafka::health::router`) and a real HTTP client: a
//! handler that hangs on purpose turns `/healthz` unhealthy once the
//! threshold passes, naming the partition and the offset, and healthy again
//! when it returns; readiness follows the group state; a stopping or
//! stopped consumer answers at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{consumer, fill, producer, topic, unique};
use xkafka::consumer::{GroupState, PauseReason};
use xkafka::health::{router, HealthCheck};
use xkafka::{Ack, Decision, Message, Producer};

/// GET `url`: status code and body, with a real HTTP client (on the
/// blocking pool: the client is synchronous).
async fn get(url: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut response = agent.get(&url).call().expect("HTTP request");
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().expect("body");
        (status, body)
    })
    .await
    .unwrap()
}

/// Polls `url` every 50 ms until its status is `want`; returns the body and
/// when that happened.
async fn wait_status(url: &str, want: u16, timeout: Duration) -> (String, Instant) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = get(url.to_owned()).await;
        if status == want {
            return (body, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "{url} still answers {status} after {timeout:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_handler_turns_healthz_unhealthy_naming_its_partition_and_offset() {
    let topic = topic("health", 2).await;
    let p = producer();
    fill(&p, &topic, 0, 10).await;
    fill(&p, &topic, 1, 10).await;
    p.close().await;

    let hung = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (h, r) = (hung.clone(), release.clone());
    let consumer = consumer(&unique("health"), &topic)
        .concurrency(2)
        .error_handler(|_| Decision::Continue)
        .handler(move |m: Message| {
            let (h, r) = (h.clone(), r.clone());
            async move {
                if m.partition() == Some(0) && m.offset() == Some(3) {
                    h.notify_one();
                    r.notified().await;
                }
                Ack::Success
            }
        })
        .build()
        .unwrap();
    let status = consumer.status_handle();
    assert_eq!(status.snapshot().state, GroupState::Idle);
    let check = HealthCheck::builder()
        .handler_stuck_after(Duration::from_secs(2))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(status, check)).await });

    let (code, body) = get(format!("{base}/readyz")).await;
    assert_eq!((code, body.as_str()), (503, "not ready: idle\n"));
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));

    tokio::time::timeout(Duration::from_secs(30), hung.notified())
        .await
        .expect("the handler reached offset 3");
    let hung_at = Instant::now();
    wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(10)).await;
    let (problems, unhealthy_at) =
        wait_status(&format!("{base}/healthz"), 503, Duration::from_secs(10)).await;
    let after = unhealthy_at - hung_at;
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_millis(4_500),
        "unhealthy {after:?} after the hang (threshold 2 s, status refreshed every 100 ms): {problems}"
    );
    assert!(
        problems.contains(&format!("{topic}[0]")) && problems.contains("offset 3"),
        "names the partition and the offset: {problems}"
    );
    // Still ready: stuck is not the same as not in the group.
    assert_eq!(get(format!("{base}/readyz")).await.0, 200);

    let (code, json) = get(format!("{base}/status")).await;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["health"]["live"], false);
    assert_eq!(json["status"]["state"], "stable");
    assert_eq!(json["status"]["protocol"], "classic");
    assert!(json["status"]["member_id"].is_string(), "{json}");
    let partitions = json["status"]["partitions"].as_array().unwrap();
    let p0 = partitions
        .iter()
        .find(|p| p["partition"] == 0)
        .expect("partition 0 in the status");
    assert_eq!(p0["oldest_unfinished"]["offset"], 3, "{p0}");
    assert!(p0["in_flight"].as_u64().unwrap() >= 1, "{p0}");
    assert_eq!(p0["stored"], 3, "held at the hung message: {p0}");
    let p1 = partitions.iter().find(|p| p["partition"] == 1).unwrap();
    assert_eq!(p1["in_flight"], 0, "partition 1 flows: {p1}");
    assert_eq!(p1["stored"], 10, "{p1}");

    release.notify_one();
    let (body, _) = wait_status(&format!("{base}/healthz"), 200, Duration::from_secs(2)).await;
    assert_eq!(body, "ok\n");

    stop.shutdown();
    let summary = run.await.unwrap().expect("run");
    assert_eq!(summary.succeeded, 20);
    let (code, body) = get(format!("{base}/healthz")).await;
    assert_eq!(code, 503);
    assert!(body.contains("stopped"), "{body}");
    assert_eq!(
        get(format!("{base}/readyz")).await,
        (503, "not ready: stopped\n".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_consumer_answers_at_once() {
    let topic = topic("health-stopping", 1).await;
    let p = producer();
    fill(&p, &topic, 0, 3).await;
    p.close().await;
    let hung = Arc::new(tokio::sync::Notify::new());
    let h = hung.clone();
    let consumer = consumer(&unique("health-stopping"), &topic)
        .shutdown_timeout(Duration::from_secs(4))
        .error_handler(|_| Decision::Continue)
        .handler(move |_m: Message| {
            let h = h.clone();
            async move {
                h.notify_one();
                std::future::pending::<()>().await;
                Ack::Success
            }
        })
        .build()
        .unwrap();
    let status = consumer.status_handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(status.clone(), HealthCheck::default());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    tokio::time::timeout(Duration::from_secs(30), hung.notified())
        .await
        .expect("handling");
    stop.shutdown();
    // The consumer waits (up to its shutdown timeout) for the hung handler;
    // the endpoints do not.
    let (_, at) = wait_status(&format!("{base}/readyz"), 503, Duration::from_secs(2)).await;
    let asked = Instant::now();
    let (code, body) = get(format!("{base}/readyz")).await;
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!((code, body.as_str()), (503, "not ready: stopping\n"));
    assert_eq!(status.snapshot().state, GroupState::Stopping);
    assert!(
        !run.is_finished(),
        "still stopping: the probe did not wait for it"
    );
    let summary = run.await.unwrap().expect("run");
    assert_eq!(summary.abandoned, 1);
    assert!(at.elapsed() < Duration::from_secs(5));
    assert_eq!(status.snapshot().state, GroupState::Stopped);
}

/// Serves the probes of `status` on a free local port; returns its base URL.
async fn serve(status: xkafka::consumer::StatusHandle, check: HealthCheck) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(status, check)).await });
    base
}

/// Asks `url` every 100 ms for `window`: every answer must be `want`.
/// Returns how many answers there were.
async fn stays(url: &str, want: u16, window: Duration) -> usize {
    let until = Instant::now() + window;
    let mut asked = 0;
    while Instant::now() < until {
        let (status, body) = get(url.to_owned()).await;
        asked += 1;
        assert_eq!(
            status,
            want,
            "{url} answered {status} after {:?} of {window:?}: {body}",
            window - until.saturating_duration_since(Instant::now())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    asked
}

/// Polls the status until `done` holds for partition 0 of `topic`; returns
/// that partition's status.
async fn partition_until(
    status: &xkafka::consumer::StatusHandle,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&xkafka::consumer::PartitionStatus) -> bool,
) -> xkafka::consumer::PartitionStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let snapshot = status.snapshot();
        if let Some(p) = snapshot
            .partitions
            .iter()
            .find(|p| p.topic == topic && p.partition == 0)
        {
            if done(p) {
                return p.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "not reached after {timeout:?}: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The threshold the tests below give `commit_stuck_after`, and how long
/// they watch `/healthz` past it.
const COMMIT_STUCK: Duration = Duration::from_secs(2);
const WATCH: Duration = Duration::from_millis(4_500);

/// An input written by a transactional producer (xkafka's own exactly-once
/// output, for one) ends with a commit marker: the last offset of the log
/// is not a message, so once everything is handled and committed the
/// committed offset stays one below the high watermark for good. That is
/// a consumer with nothing to do, not a stuck one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transactional_input_consumed_to_its_end_stays_live() {
    let topic = topic("health-txn", 1).await;
    let txn = Producer::builder("xkafka-tests-txn")
        .brokers([crate::common::brokers()])
        .transactional_id(unique("health-txn-id"))
        .transaction_timeout(Duration::from_secs(10))
        .error_handler(|err| eprintln!("transactional producer error: {err}"))
        .build()
        .expect("transactional producer");
    // Committed 0..=3 (marker 4), aborted 5, 6 (marker 7), committed
    // 8..=11 (marker 12): the high watermark is 13.
    for (values, commit) in [(0..4, true), (4..6, false), (6..10, true)] {
        txn.begin_transaction().await.unwrap();
        for i in values {
            let msg = Message::builder(topic.as_str())
                .partition(0)
                .value(format!("v{i}"))
                .build();
            txn.publish(msg).await.unwrap();
        }
        if commit {
            txn.commit_transaction().await.unwrap();
        } else {
            txn.abort_transaction().await.unwrap();
        }
    }
    txn.close().await;

    let consumer = consumer(&unique("health-txn"), &topic)
        .error_handler(|e| {
            eprintln!("consumer error: {e}");
            Decision::Stop
        })
        .config("isolation.level", "read_committed")
        .config("auto.commit.interval.ms", "200")
        .handler(|_m: Message| async { Ack::Success })
        .build()
        .unwrap();
    let status = consumer.status_handle();
    let check = HealthCheck::builder()
        .commit_stuck_after(COMMIT_STUCK)
        .build()
        .unwrap();
    let base = serve(status.clone(), check).await;
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));

    let p = partition_until(&status, &topic, Duration::from_secs(30), |p| {
        p.committed == Some(12) && p.in_flight == 0
    })
    .await;
    assert_eq!(
        p.high_watermark,
        Some(13),
        "the last offset is a marker: {p:?}"
    );
    assert_eq!(p.stored, Some(12), "{p:?}");
    // librdkafka read the marker: nothing is left to read.
    partition_until(&status, &topic, Duration::from_secs(5), |p| {
        p.position == Some(13) && p.fetchable == Some(0)
    })
    .await;
    let asked = stays(&format!("{base}/healthz"), 200, WATCH).await;
    assert!(asked >= 20, "{asked}");
    let p = partition_until(&status, &topic, Duration::ZERO, |_| true).await;
    assert!(
        p.committed_unchanged_for >= COMMIT_STUCK,
        "the watch outlasted the threshold: {p:?}"
    );

    stop.shutdown();
    let summary = run.await.unwrap().expect("run");
    assert_eq!(summary.succeeded, 8, "the aborted two are not read");
}

/// A partition held back by `not_before` (a retry tier's backoff) waits on
/// purpose: it has lag and a committed offset that does not move, and
/// restarting the consumer would only make it wait again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_waiting_for_a_message_not_due_stays_live() {
    let topic = topic("health-not-due", 1).await;
    let p = producer();
    for value in ["now0", "now1", "now2", "later"] {
        let msg = Message::builder(topic.as_str())
            .partition(0)
            .value(value)
            .build();
        p.publish(msg).await.unwrap();
    }
    p.close().await;

    let consumer = consumer(&unique("health-not-due"), &topic)
        .error_handler(|e| {
            eprintln!("consumer error: {e}");
            Decision::Stop
        })
        .config("auto.commit.interval.ms", "200")
        .not_before(|m: &Message| {
            (m.value_str() == Some("later"))
                .then(|| std::time::SystemTime::now() + Duration::from_secs(3600))
        })
        .handler(|m: Message| async move {
            assert_ne!(m.value_str(), Some("later"), "handled before it was due");
            Ack::Success
        })
        .build()
        .unwrap();
    let status = consumer.status_handle();
    let check = HealthCheck::builder()
        .commit_stuck_after(COMMIT_STUCK)
        .build()
        .unwrap();
    let base = serve(status.clone(), check).await;
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));

    let p = partition_until(&status, &topic, Duration::from_secs(30), |p| {
        p.committed == Some(3) && p.paused == Some(PauseReason::NotDue)
    })
    .await;
    assert_eq!(p.high_watermark, Some(4), "one message waits: {p:?}");
    let asked = stays(&format!("{base}/healthz"), 200, WATCH).await;
    assert!(asked >= 20, "{asked}");
    let p = partition_until(&status, &topic, Duration::ZERO, |_| true).await;
    assert!(
        p.committed_unchanged_for >= COMMIT_STUCK && p.paused == Some(PauseReason::NotDue),
        "the watch outlasted the threshold, still waiting: {p:?}"
    );

    stop.shutdown();
    let summary = run.await.unwrap().expect("run");
    assert_eq!(summary.succeeded, 3);
}

/// The other side: a handler that never returns while messages wait
/// behind it holds the committed offset, and that fails liveness through
/// `commit_stuck_after` alone (the handler threshold is left at 5 min).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_held_by_a_hung_handler_fails_liveness() {
    let topic = topic("health-commit-stuck", 1).await;
    let p = producer();
    fill(&p, &topic, 0, 10).await;
    p.close().await;

    let hung = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (h, r) = (hung.clone(), release.clone());
    let consumer = consumer(&unique("health-commit-stuck"), &topic)
        .error_handler(|e| {
            eprintln!("consumer error: {e}");
            Decision::Stop
        })
        .config("auto.commit.interval.ms", "200")
        .handler(move |m: Message| {
            let (h, r) = (h.clone(), r.clone());
            async move {
                if m.offset() == Some(3) {
                    h.notify_one();
                    r.notified().await;
                }
                Ack::Success
            }
        })
        .build()
        .unwrap();
    let status = consumer.status_handle();
    let check = HealthCheck::builder()
        .commit_stuck_after(COMMIT_STUCK)
        .build()
        .unwrap();
    let base = serve(status.clone(), check).await;
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));

    tokio::time::timeout(Duration::from_secs(30), hung.notified())
        .await
        .expect("the handler reached offset 3");
    partition_until(&status, &topic, Duration::from_secs(10), |p| {
        p.committed == Some(3)
    })
    .await;
    let committed_at = Instant::now();
    let (problems, unhealthy_at) =
        wait_status(&format!("{base}/healthz"), 503, Duration::from_secs(10)).await;
    let after = unhealthy_at - committed_at;
    assert!(
        after < COMMIT_STUCK + Duration::from_secs(5),
        "unhealthy {after:?} after the last commit (threshold {COMMIT_STUCK:?}): {problems}"
    );
    assert!(
        problems.contains(&format!(
            "{topic}[0]: the committed offset (3) has not moved"
        )) && problems.contains("the message at offset 3 holds it"),
        "{problems}"
    );
    assert!(
        !problems.contains("has not finished"),
        "the handler threshold (5 min) did not fire: {problems}"
    );

    release.notify_one();
    wait_status(&format!("{base}/healthz"), 200, Duration::from_secs(5)).await;
    stop.shutdown();
    let summary = run.await.unwrap().expect("run");
    assert_eq!(summary.succeeded, 10);
}
