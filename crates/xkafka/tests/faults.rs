//! Client errors reach the error handler, injected precisely with
//! librdkafka's mock cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::embedded_with;
use xkafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use xkafka::{CommitMode, Consumer, Decision, Error, Message, Operation};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_reaches_the_error_handler_and_the_consumer_goes_on() {
    let cluster = embedded_with("commits", 1, 5).await;

    // The first OffsetCommit request fails with an error librdkafka does not
    // retry by itself.
    cluster
        .with_mock(|m| {
            m.request_errors(
                RDKafkaApiKey::OffsetCommit,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
            );
            Ok(())
        })
        .unwrap();
    let errors: Arc<Mutex<Vec<(Operation, String)>>> = Arc::default();
    let sink = errors.clone();
    let handled = Arc::new(Mutex::new(0usize));
    let counter = handled.clone();
    let consumer = Consumer::builder("g")
        .brokers([cluster.bootstrap_servers()])
        .topics(["commits"])
        .config("auto.offset.reset", "earliest")
        .commit_mode(CommitMode::Manual)
        .shutdown_timeout(Duration::from_secs(3))
        .error_handler(move |err: &Error| {
            if let Error::Kafka { operation, .. } = err {
                sink.lock().unwrap().push((*operation, err.to_string()));
            }
            Decision::Continue
        })
        .handler(move |_m: Message| {
            *counter.lock().unwrap() += 1;
            async {}
        })
        .build()
        .unwrap();
    let probe = handled.clone();
    let summary = consumer
        .run(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while *probe.lock().unwrap() < 5 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
    assert_eq!(
        summary.succeeded, 5,
        "the consumer carried on after the failed commit"
    );
    let errors = errors.lock().unwrap().clone();
    let commit_errors: Vec<_> = errors
        .iter()
        .filter(|(op, _)| *op == Operation::Commit)
        .collect();
    assert_eq!(commit_errors.len(), 1, "reported once: {errors:?}");
    assert!(
        commit_errors[0].1.contains("committing offsets failed"),
        "{errors:?}"
    );
    // The later commits succeeded and carried the final position.
    assert_eq!(summary.committed.values().copied().collect::<Vec<_>>(), [5]);
}
