//! Shutdown is bounded even when the brokers are unreachable (librdkafka's
//! mock cluster, so that the broker can be taken down precisely).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::embedded_with;
use xkafka::{Consumer, Decision, Message};

/// How much longer than the shutdown timeout `run` waits for its poll
/// thread to report before returning without it (`SHUTDOWN_MARGIN` in
/// `consumer/mod.rs`).
const RUN_MARGIN: Duration = Duration::from_millis(500);
/// Scheduling on a loaded 2-core machine: between the event a bound is
/// measured from and the test seeing its end. A shutdown that waited for
/// an unreachable broker or a 60 s handler exceeds it by far.
const SLACK: Duration = Duration::from_secs(1);

/// `run` returns within the shutdown timeout plus its margin, measured from
/// the shutdown request, although committing and leaving the group cannot
/// complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_within_the_timeout_and_margin_when_brokers_are_down() {
    let cluster = embedded_with("orders", 2, 20).await;

    const TIMEOUT: Duration = Duration::from_secs(2);
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let consumer = Consumer::builder("g")
        .brokers([cluster.bootstrap_servers()])
        .topics(["orders"])
        .config("auto.offset.reset", "earliest")
        .shutdown_timeout(TIMEOUT)
        .error_handler(|_| Decision::Continue)
        .handler(move |_m: Message| {
            counter.fetch_add(1, Ordering::Relaxed);
            async {}
        })
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while handled.load(Ordering::Relaxed) < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        handled.load(Ordering::Relaxed),
        20,
        "consumed before the outage"
    );

    cluster.broker_down(1).unwrap();
    let started = Instant::now();
    stop.shutdown();
    stop.shutdown(); // twice is harmless
    let summary = tokio::time::timeout(TIMEOUT + Duration::from_secs(5), run)
        .await
        .expect("run must return")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    println!(
        "shutdown with the broker down: run returned {took:?} after the request (timeout \
         {TIMEOUT:?}, margin {RUN_MARGIN:?}){}",
        if took >= TIMEOUT + RUN_MARGIN {
            ", without its poll thread's report"
        } else {
            ""
        }
    );
    assert!(
        took <= TIMEOUT + RUN_MARGIN + SLACK,
        "shutdown took {took:?}"
    );
    assert_eq!(summary.succeeded, 20);
    assert!(
        !summary.closed_cleanly,
        "leaving the group cannot succeed with the broker down"
    );
    stop.shutdown(); // and after the end
}

/// A handler still running at shutdown is given most of the timeout, then
/// dropped (not left running), and its offset is not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_in_flight_message_is_abandoned_at_the_deadline() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let cluster = embedded_with("slow", 1, 1).await;

    /// Records when the handler's future is dropped.
    struct OnDrop(Arc<std::sync::OnceLock<Instant>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.get_or_init(Instant::now);
        }
    }
    let dropped: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let started_handling = Arc::new(tokio::sync::Notify::new());
    let (signal, on_drop) = (started_handling.clone(), dropped.clone());
    let consumer = Consumer::builder("g")
        .brokers([cluster.bootstrap_servers()])
        .topics(["slow"])
        .config("auto.offset.reset", "earliest")
        .shutdown_timeout(TIMEOUT)
        .error_handler(|_| Decision::Continue)
        .handler(move |_m: Message| {
            let (signal, guard) = (signal.clone(), OnDrop(on_drop.clone()));
            async move {
                let _guard = guard;
                signal.notify_one();
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        })
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    started_handling.notified().await;
    let requested = Instant::now();
    stop.shutdown();
    let summary = run.await.unwrap().unwrap();
    let took = requested.elapsed();
    let dropped_after = dropped
        .get()
        .expect("the abandoned handler's future is dropped")
        .saturating_duration_since(requested);
    println!("slow in-flight: dropped {dropped_after:?}, run returned {took:?} after the request");
    assert!(
        dropped_after >= TIMEOUT / 2,
        "given most of the timeout to finish, not dropped at once: {dropped_after:?}"
    );
    assert!(
        dropped_after <= took,
        "dropped before run returned: {dropped_after:?} / {took:?}"
    );
    assert!(
        took <= TIMEOUT + RUN_MARGIN + SLACK,
        "run returned {took:?} after the request"
    );
    assert_eq!(summary.abandoned, 1);
    assert_eq!(summary.succeeded, 0);
    assert!(
        summary.committed.is_empty(),
        "an abandoned message's offset is not committed"
    );
}
