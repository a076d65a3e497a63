//! The whole cluster dies mid-stream: all three brokers of the 3-broker
//! Apache Kafka cluster are SIGKILLed, stay down a few seconds, and start
//! again on their data, while a producer publishes with `publish_async` and a
//! `Concurrency(8)` per-key consumer consumes. Every acknowledged message must
//! be consumed, the consumer must resume by itself, and the error handler must
//! see the outage without the consumer stopping. (One broker killed is the
//! leader-failover test in `tests/failover.rs`.)
//!
//! Needs the cluster (`scripts/broker.sh cluster start`; address in
//! `XKAFKA_CLUSTER_BROKERS`); the brokers are started again when the test
//! ends, passed or failed.
//!
//! `cargo test -p xkafka-reliability --all-features --test broker_faults -- --nocapture`

use std::time::{Duration, Instant};

use serde_json::json;
use xkafka_reliability::cluster::{Feeder, Input};
use xkafka_reliability::control::{self, Downed};
use xkafka_reliability::failover::{self, Consuming};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_brokers_killed_then_back_loses_no_acknowledged_message() {
    let stage = control::stage("broker-fault", 3).await.unwrap();
    let (brokers, topic) = (stage.brokers.clone(), stage.topic.clone());
    let consuming = Consuming::start(&brokers, &topic, &topic, &[]).unwrap();
    let input = Input::new(&brokers, &topic).unwrap();
    let feeder = Feeder::start(&input, 200);
    consuming
        .wait(
            "200 messages before the fault",
            Duration::from_secs(60),
            |c| c.count() >= 200,
        )
        .await
        .unwrap();

    let before = consuming.count();
    let mut downed = Downed::new();
    let killed_at = Instant::now();
    for node in 1..=3 {
        downed.kill(node).await.unwrap();
    }
    // The outage itself: 4 s without a broker, publishing all along.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let errors_while_down = consuming.errors.lock().unwrap().len();
    let down_for = killed_at.elapsed();
    let restored = downed.restore().await.unwrap();
    let published_at_return = input.published();
    consuming
        .wait(
            "consumption after the restart",
            Duration::from_secs(90),
            |c| c.first(|h| h.id >= published_at_return).is_some(),
        )
        .await
        .unwrap();
    let resumed = killed_at.elapsed();
    feeder.stop().await.unwrap();
    let acked = input.finish().await;
    let finished = consuming
        .finish(&acked, Duration::from_secs(90))
        .await
        .unwrap();
    let log = failover::read_log(&brokers, &topic, 3).await.unwrap();
    let v = failover::verdict(&acked, &[], &finished, &log);
    let mut figures = serde_json::to_value(&v).unwrap();
    figures.as_object_mut().unwrap().extend(
        json!({
            "consumed_before_kill": before,
            "down_for_ms": down_for.as_millis(),
            "brokers_back_after_ms": restored.as_millis(),
            "consumption_resumed_after_kill_ms": resumed.as_millis(),
            "errors_while_down": errors_while_down,
            "first_error": finished.errors.first(),
        })
        .as_object()
        .unwrap()
        .clone(),
    );
    println!("BROKER_FAULTS all-down: {figures}");
    if let Err(e) = control::write_figures("broker-faults", &figures) {
        eprintln!("could not write the figures: {e}");
    }
    assert_eq!(
        v.lost, 0,
        "acknowledged messages lost, e.g. {:?}",
        v.lost_examples
    );
    assert_eq!(v.lost_in_log, 0);
    assert_eq!(
        v.failed, 0,
        "librdkafka retried through the outage (message.timeout.ms 300 s)"
    );
    assert!(
        errors_while_down > 0,
        "the error handler saw the outage: {:?}",
        finished.errors
    );
    assert_eq!(finished.summary.failed, 0);
}
