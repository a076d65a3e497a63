//! How transactional and idempotent producer errors are classified
//! ([`Error::is_fenced`], [`Error::is_fatal`]), as librdkafka reports them:
//! a transactional producer fenced by a newer instance gets librdkafka's
//! normalised `Fenced` code (fatal); `INVALID_PRODUCER_EPOCH` on an
//! idempotent producer's produce request is neither (librdkafka bumps the
//! epoch and goes on); a `transaction.timeout.ms` the broker refuses fails
//! the first transaction with a fatal error that names the broker's limit.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use xkafka::mock::EmbeddedCluster;
use xkafka::raw::rdkafka::error::RDKafkaErrorCode;
use xkafka::raw::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use xkafka::raw::MockClusterExt;
use xkafka::{Error, Message, Operation, Producer};

/// The producer's error handler's calls, as (text, fenced, fatal).
type Reported = Arc<Mutex<Vec<(String, bool, bool)>>>;

fn recording(builder: xkafka::ProducerBuilder) -> (Producer, Reported) {
    let reported: Reported = Arc::default();
    let sink = reported.clone();
    let producer = builder
        .error_handler(move |err: &Error| {
            eprintln!("producer error: {err}");
            sink.lock()
                .unwrap()
                .push((err.to_string(), err.is_fenced(), err.is_fatal()));
        })
        .build()
        .expect("producer");
    (producer, reported)
}

fn transactional(id: &str) -> (Producer, Reported) {
    recording(
        Producer::builder("xkafka-tests-classes")
            .brokers([brokers()])
            .transactional_id(id)
            .transaction_timeout(Duration::from_secs(10)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_transactional_producer_is_fenced_and_fatal() {
    let output = topic("classes-fence", 1).await;
    let id = unique("classes-fence-id");
    let (old, old_reported) = transactional(&id);
    old.begin_transaction().await.expect("begin");
    old.publish(Message::builder(output.as_str()).value("old").build())
        .await
        .expect("publish in the open transaction");

    // The same transactional.id again: initialising it fences the old one.
    let (newer, _) = transactional(&id);
    newer
        .begin_transaction()
        .await
        .expect("the newer one begins");

    let err = old
        .commit_transaction()
        .await
        .expect_err("the fenced producer cannot commit");
    println!(
        "fenced commit: {err} (code {:?}, fenced {}, fatal {})",
        err.kafka_code(),
        err.is_fenced(),
        err.is_fatal()
    );
    assert_eq!(err.operation(), Some(Operation::CommitTransaction), "{err}");
    assert!(err.is_fenced(), "fencing is reported as fenced: {err}");
    assert!(err.is_fatal(), "fencing is fatal: {err}");
    // librdkafka also reports it to the error handler, as a client error
    // with its `Fenced` code.
    until(
        || {
            old_reported
                .lock()
                .unwrap()
                .iter()
                .any(|(_, fenced, _)| *fenced)
        },
        Duration::from_secs(10),
    )
    .await;
    let reported = old_reported.lock().unwrap().clone();
    println!("the fenced producer's error handler received {reported:?}");
    assert!(
        reported.iter().any(|(_, fenced, fatal)| *fenced && *fatal),
        "the error handler hears of the fencing, fatal: {reported:?}"
    );
    newer.abort_transaction().await.expect("abort");
    old.close().await;
    newer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producers_invalid_epoch_is_neither_fenced_nor_fatal() {
    // Fault injection: the real broker answers INVALID_PRODUCER_EPOCH only
    // to a transactional producer's zombie, never on demand.
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic("epoch", 1).unwrap();
    let (producer, reported) = recording(
        Producer::builder("xkafka-tests-epoch")
            .brokers([cluster.bootstrap_servers()])
            .config("enable.idempotence", "true"),
    );
    producer
        .publish(Message::builder("epoch").value("before").build())
        .await
        .expect("the first publish");
    cluster
        .request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH],
        )
        .unwrap();
    let hit = producer
        .publish(Message::builder("epoch").value("refused once").build())
        .await;
    let err = hit.expect_err("the produce request failed with INVALID_PRODUCER_EPOCH");
    println!(
        "idempotent producer: {err} (code {:?}, fenced {}, fatal {})",
        err.kafka_code(),
        err.is_fenced(),
        err.is_fatal()
    );
    assert_eq!(
        err.kafka_code(),
        Some(RDKafkaErrorCode::InvalidProducerEpoch)
    );
    assert!(!err.is_fenced(), "not fenced: {err}");
    assert!(!err.is_fatal(), "not fatal: {err}");
    // librdkafka bumped the epoch and goes on.
    producer
        .publish(Message::builder("epoch").value("after").build())
        .await
        .expect("the producer carries on");
    let reported = reported.lock().unwrap().clone();
    assert!(
        reported.iter().all(|(_, fenced, fatal)| !fenced && !fatal),
        "no fatal or fencing error: {reported:?}"
    );
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_timeout_above_the_brokers_maximum_fails_the_first_transaction_clearly() {
    // The broker's transaction.max.timeout.ms is 15 min by default; nothing
    // but the broker knows it, so the build accepts this.
    let (producer, _) = recording(
        Producer::builder("xkafka-tests-max-timeout")
            .brokers([brokers()])
            .transactional_id(unique("classes-max-timeout"))
            .config("transaction.timeout.ms", "900001"),
    );
    let err = tokio::time::timeout(Duration::from_secs(30), producer.begin_transaction())
        .await
        .expect("init_transactions answers")
        .expect_err("the broker refuses the transaction timeout");
    println!("{err}");
    assert_eq!(err.operation(), Some(Operation::InitTransactions), "{err}");
    assert_eq!(
        err.kafka_code(),
        Some(RDKafkaErrorCode::InvalidTransactionTimeout),
        "{err}"
    );
    // Kafka's own text calls it `max.transaction.timeout.ms`; the
    // broker property is `transaction.max.timeout.ms`.
    assert!(
        err.to_string().contains("max.transaction.timeout.ms"),
        "the error names the broker's setting: {err}"
    );
    assert!(err.is_fatal(), "{err}");
    producer.close().await;
}
