//! The broker dies mid-stream: a private Tansu broker is killed (SIGKILL)
//! and started again on the same data while a producer publishes with
//! `publish_async` and a consumer consumes. Every acknowledged message must
//! be consumed, the consumer must resume by itself, and the error handler
//! must see the outage without the consumer stopping.
//!
//! `cargo test -p xkafka-reliability --test broker_faults -- --nocapture`
//! (needs `scripts/broker.sh install`; it starts its own broker on port
//! 9094, or `XKAFKA_FAULT_BROKER_PORT`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xkafka::{Ack, Consumer, Decision, Error, Message, Order};
use xkafka_reliability::cluster::{self, Input};
use xkafka_reliability::tansu::Tansu;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_loses_no_acknowledged_message() {
    let port = std::env::var("XKAFKA_FAULT_BROKER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9094);
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/reliability/tansu-faults");
    let mut broker = Tansu::start(port, dir).expect("a private broker");
    let brokers = broker.bootstrap();
    let topic = cluster::unique("broker-fault");
    cluster::create_topic(&brokers, &topic, 3).await.unwrap();

    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let consumer = {
        let seen = seen.clone();
        let errors = errors.clone();
        Consumer::builder(topic.clone())
            .brokers([brokers.as_str()])
            .topics([topic.as_str()])
            .config("auto.offset.reset", "earliest")
            .config("session.timeout.ms", "6000")
            .concurrency(4)
            .order(Order::PerKey)
            .shutdown_timeout(Duration::from_secs(5))
            .error_handler(move |err: &Error| {
                errors.lock().unwrap().push(err.to_string());
                // Transient client errors: librdkafka reconnects by itself.
                if err.message_location().is_some() {
                    Decision::Stop
                } else {
                    Decision::Continue
                }
            })
            .handler(move |m: Message| {
                let seen = seen.clone();
                async move {
                    let id: u64 = m.value_str().unwrap().parse().unwrap();
                    seen.lock().unwrap().push(id);
                    Ack::Success
                }
            })
            .build()
            .unwrap()
    };
    let stop_consumer = consumer.shutdown_handle();
    let consuming = tokio::spawn(consumer.run(std::future::pending::<()>()));

    let input = Input::new(&brokers, &topic).unwrap();
    let stop_feeding = Arc::new(AtomicBool::new(false));
    let feeder = {
        let input = input.clone();
        let stop = stop_feeding.clone();
        tokio::spawn(async move { input.feed(200, stop).await })
    };
    // Wait until messages flow end to end before pulling the plug.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < 200 {
        assert!(
            Instant::now() < deadline,
            "nothing consumed before the fault"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = seen.lock().unwrap().len();
    broker.kill().unwrap();
    let killed_at = Instant::now();
    // The outage itself: 4 s without a broker, publishing all along.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let errors_while_down = errors.lock().unwrap().len();
    let during = seen.lock().unwrap().len();
    broker.resume().unwrap();
    println!("broker down for {:?}", killed_at.elapsed());
    // Keep publishing a while after the restart, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_feeding.store(true, Ordering::Relaxed);
    feeder.await.unwrap().unwrap();
    let acked = input.finish().await;
    println!(
        "published {}, acknowledged {}, failed {}, producer client errors {}",
        acked.published,
        acked.ids.len(),
        acked.failed,
        acked.client_errors
    );

    let deadline = Instant::now() + Duration::from_secs(90);
    let missing = loop {
        let got: HashSet<u64> = seen.lock().unwrap().iter().copied().collect();
        let missing: Vec<u64> = acked
            .ids
            .iter()
            .filter(|id| !got.contains(id))
            .copied()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        assert!(!consuming.is_finished(), "the consumer stopped by itself");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resumed_after = killed_at.elapsed();
    stop_consumer.shutdown();
    let summary = consuming
        .await
        .unwrap()
        .expect("the consumer ran to the end");
    let handled = seen.lock().unwrap().clone();
    let unique: HashSet<u64> = handled.iter().copied().collect();
    let errors = errors.lock().unwrap().clone();
    println!(
        "consumed {} ({} before the kill, {} while down), duplicates {}, caught up {:?} after the \
         kill; {} errors, e.g. {:?}; summary {summary:?}",
        handled.len(),
        before,
        during - before,
        handled.len() - unique.len(),
        resumed_after,
        errors.len(),
        errors.first()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(acked.ids.len() as u64 >= acked.published - acked.failed);
    assert_eq!(
        acked.failed, 0,
        "librdkafka retried through the outage (message.timeout.ms 300 s)"
    );
    assert!(
        errors_while_down > 0,
        "the error handler saw the outage: {errors:?}"
    );
    assert_eq!(summary.failed, 0);
}
