//! Shutdown is bounded even when the brokers are unreachable (librdkafka's
//! mock cluster, so that the broker can be taken down precisely).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::embedded_with;
use xkafka::{Consumer, Decision, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_within_the_timeout_when_brokers_are_down() {
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
    assert!(
        took <= TIMEOUT + Duration::from_secs(1),
        "shutdown took {took:?}"
    );
    assert_eq!(summary.succeeded, 20);
    assert!(
        !summary.closed_cleanly,
        "leaving the group cannot succeed with the broker down"
    );
    stop.shutdown(); // and after the end
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_in_flight_message_is_abandoned_at_the_deadline() {
    let cluster = embedded_with("slow", 1, 1).await;

    let started_handling = Arc::new(tokio::sync::Notify::new());
    let signal = started_handling.clone();
    let consumer = Consumer::builder("g")
        .brokers([cluster.bootstrap_servers()])
        .topics(["slow"])
        .config("auto.offset.reset", "earliest")
        .shutdown_timeout(Duration::from_secs(1))
        .error_handler(|_| Decision::Continue)
        .handler(move |_m: Message| {
            let signal = signal.clone();
            async move {
                signal.notify_one();
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        })
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    started_handling.notified().await;
    let started = Instant::now();
    stop.shutdown();
    let summary = run.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(summary.abandoned, 1);
    assert_eq!(summary.succeeded, 0);
    assert!(
        summary.committed.is_empty(),
        "an abandoned message's offset is not committed"
    );
}
