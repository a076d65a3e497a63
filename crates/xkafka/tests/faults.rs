//! Broker faults, injected precisely with librdkafka's in-process mock
//! cluster: request errors (Produce, Fetch, OffsetCommit, JoinGroup,
//! SyncGroup, Heartbeat), a broker down then up, added latency. Each test
//! checks the outcome: what was delivered or consumed (no loss, no
//! duplicate), and what the error handlers saw. Where librdkafka decides,
//! the comments say what it does and where in its source.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{embedded_with, until};
use xkafka::mock::EmbeddedCluster;
use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::error::RDKafkaErrorCode;
use xkafka::raw::rdkafka::message::Message as _;
use xkafka::raw::rdkafka::types::RDKafkaRespErr::*;
use xkafka::raw::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use xkafka::raw::MockClusterExt;
use xkafka::{
    CommitMode, Consumer, ConsumerBuilder, Decision, Delivery, Error, Message, Operation, Producer,
};

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

// ---------------------------------------------------------------------------
// Broker faults on the producer and consumer paths.
// ---------------------------------------------------------------------------

/// An error a handler received, kept for assertions.
#[derive(Clone, Debug)]
struct Reported {
    operation: Option<Operation>,
    code: Option<RDKafkaErrorCode>,
    text: String,
}

/// Records every error an error handler receives.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<Reported>>>);

impl Errors {
    fn record(&self, err: &Error) {
        let operation = match err {
            Error::Kafka { operation, .. } => Some(*operation),
            _ => None,
        };
        self.0.lock().unwrap().push(Reported {
            operation,
            code: err.kafka_code(),
            text: err.to_string(),
        });
    }

    fn all(&self) -> Vec<Reported> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self, wanted: impl Fn(&Reported) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|r| wanted(r)).count()
    }

    /// A consumer error handler that records and carries on.
    fn consumer_handler(&self) -> impl Fn(&Error) -> Decision + Send + Sync + 'static {
        let sink = self.clone();
        move |err: &Error| {
            sink.record(err);
            Decision::Continue
        }
    }

    /// A producer error handler that records.
    fn producer_handler(&self) -> impl Fn(&Error) + Send + Sync + 'static {
        let sink = self.clone();
        move |err: &Error| sink.record(err)
    }
}

/// What a consumer's handler saw, in the order it saw it:
/// `(partition, offset, key)`.
type Handled = Arc<Mutex<Vec<(i32, i64, String)>>>;

fn handled_count(handled: &Handled) -> usize {
    handled.lock().unwrap().len()
}

/// A consumer of `topic` on the embedded cluster that records what it
/// handles and every error (deciding `Continue`).
fn recording_consumer(
    cluster: &EmbeddedCluster,
    group: &str,
    topic: &str,
    errors: &Errors,
    handled: &Handled,
) -> ConsumerBuilder {
    common::init_tracing();
    let recorder = handled.clone();
    Consumer::builder(group)
        .brokers([cluster.bootstrap_servers()])
        .topics([topic])
        .config("auto.offset.reset", "earliest")
        .config("session.timeout.ms", "6000")
        .config("heartbeat.interval.ms", "500")
        .shutdown_timeout(Duration::from_secs(3))
        .error_handler(errors.consumer_handler())
        .handler(move |m: Message| {
            recorder.lock().unwrap().push((
                m.partition().unwrap_or(-1),
                m.offset().unwrap_or(-1),
                m.key_str().unwrap_or_default().to_owned(),
            ));
            async {}
        })
}

fn producer_on(cluster: &EmbeddedCluster, errors: &Errors, config: &[(&str, &str)]) -> Producer {
    Producer::builder("faults")
        .brokers([cluster.bootstrap_servers()])
        .configs(config.iter().copied())
        .error_handler(errors.producer_handler())
        .build()
        .unwrap()
}

/// Message `i`: key and value `i`, on partition `i % partitions`.
fn numbered(topic: &str, i: usize, partitions: i32) -> Message {
    Message::builder(topic)
        .partition(i32::try_from(i).unwrap() % partitions)
        .key(i.to_string())
        .value(i.to_string())
        .build()
}

/// Every record of `topic`, read by a plain rdkafka consumer outside any
/// group: per partition, `(offset, value)` in log order. The watermarks are
/// checked first, so a duplicate or an extra record cannot hide: the log
/// holds exactly what is returned.
async fn read_log(
    cluster: &EmbeddedCluster,
    topic: &str,
    partitions: i32,
) -> Vec<Vec<(i64, String)>> {
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "faults-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut sizes = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let (low, high) = reader
                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                .unwrap();
            sizes.push(usize::try_from(high - low).unwrap());
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        reader.assign(&tpl).unwrap();
        let mut log: Vec<Vec<(i64, String)>> = vec![Vec::new(); sizes.len()];
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.iter().zip(&sizes).any(|(l, n)| l.len() < *n) && Instant::now() < deadline {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                log[usize::try_from(m.partition()).unwrap()].push((m.offset(), value));
            }
        }
        let read: Vec<usize> = log.iter().map(Vec::len).collect();
        assert_eq!(read, sizes, "the reader read the whole log");
        log
    })
    .await
    .unwrap()
}

/// The group's committed offset of `topic[partition]`, read by a second
/// client.
async fn committed_on(
    cluster: &EmbeddedCluster,
    group: &str,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        let offsets = client.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
        match offsets.find_partition(&topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    })
    .await
    .unwrap()
}

/// Outcomes of `publish_async_with` callbacks, by message number: every
/// call is kept, so a second call for one message shows.
#[derive(Clone, Default)]
struct Callbacks(Arc<Mutex<Outcomes>>);

/// Every callback outcome per message number: `(partition, offset)` or the
/// error.
type Outcomes = BTreeMap<usize, Vec<Result<(i32, i64), Reported>>>;

impl Callbacks {
    fn callback(&self, i: usize) -> impl FnOnce(Result<Delivery, Error>) + Send + 'static {
        let sink = self.0.clone();
        move |report| {
            let outcome = match report {
                Ok(d) => Ok((d.partition, d.offset)),
                Err(err) => Err(Reported {
                    operation: None,
                    code: err.kafka_code(),
                    text: err.to_string(),
                }),
            };
            sink.lock().unwrap().entry(i).or_default().push(outcome);
        }
    }

    fn reported(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn snapshot(&self) -> Outcomes {
        self.0.lock().unwrap().clone()
    }
}

/// librdkafka retries retriable Produce errors by itself
/// (`rd_kafka_handle_Produce_error`, rdkafka_request.c): NOT_LEADER refreshes
/// the metadata first; REQUEST_TIMED_OUT leaves the batch "possibly
/// persisted", and the idempotent producer retries it with the same sequence
/// numbers, so a broker that had written it answers DUPLICATE_SEQUENCE
/// instead of writing it twice. (The mock fails the whole request and
/// writes nothing.) Neither `publish` nor the callbacks see these errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors_lose_nothing_and_duplicate_nothing() {
    const TOPIC: &str = "retried";
    const PARTITIONS: i32 = 3;
    const SYNC: usize = 30;
    const ASYNC: usize = 300;
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS).unwrap();
    let errors = Errors::default();
    let producer = producer_on(&cluster, &errors, &[]);
    cluster.start_request_tracking();
    let retriable = [
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, // NOT_LEADER_OR_FOLLOWER
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    ];
    let started = Instant::now();
    cluster
        .request_errors(RDKafkaApiKey::Produce, &retriable)
        .unwrap();
    let mut acked: BTreeMap<usize, (i32, i64)> = BTreeMap::new();
    for i in 0..SYNC {
        let delivery = producer
            .publish(numbered(TOPIC, i, PARTITIONS))
            .await
            .expect("a retriable error is retried until acknowledged");
        acked.insert(i, (delivery.partition, delivery.offset));
    }
    let sync_requests = cluster.requests(RDKafkaApiKey::Produce);
    let sync_took = started.elapsed();

    // Twice each while asynchronous publishes are in flight.
    let started = Instant::now();
    cluster
        .request_errors(RDKafkaApiKey::Produce, &[retriable, retriable].concat())
        .unwrap();
    let callbacks = Callbacks::default();
    for i in SYNC..SYNC + ASYNC {
        producer
            .publish_async_with(numbered(TOPIC, i, PARTITIONS), callbacks.callback(i))
            .await
            .unwrap();
    }
    until(|| callbacks.reported() == ASYNC, Duration::from_secs(15)).await;
    let async_took = started.elapsed();
    // Every injected error was used up: one more publish takes one request.
    let before = cluster.requests(RDKafkaApiKey::Produce);
    let last = SYNC + ASYNC;
    let delivery = producer
        .publish(numbered(TOPIC, last, PARTITIONS))
        .await
        .unwrap();
    acked.insert(last, (delivery.partition, delivery.offset));
    let extra = cluster.requests(RDKafkaApiKey::Produce) - before;
    let total_requests = cluster.requests(RDKafkaApiKey::Produce);
    assert_eq!(producer.close().await.undelivered, 0);

    for (i, outcomes) in callbacks.snapshot() {
        assert_eq!(outcomes.len(), 1, "message {i}: one callback: {outcomes:?}");
        let (partition, offset) = outcomes[0].clone().expect("delivered");
        acked.insert(i, (partition, offset));
    }
    assert_eq!(acked.len(), SYNC + ASYNC + 1, "every publish acknowledged");
    let log = read_log(&cluster, TOPIC, PARTITIONS).await;
    for (p, records) in log.iter().enumerate() {
        let values: Vec<usize> = records.iter().map(|(_, v)| v.parse().unwrap()).collect();
        let expected: Vec<usize> = (0..=last)
            .filter(|i| i % PARTITIONS as usize == p)
            .collect();
        // No loss, no duplicate, publish order.
        assert_eq!(values, expected, "partition {p}");
        for (offset, value) in records {
            let i: usize = value.parse().unwrap();
            assert_eq!(
                acked[&i],
                (p as i32, *offset),
                "message {i} is where its ack said"
            );
        }
    }
    eprintln!(
        "retriable produce errors: {} injected, {} records, {} sync in {sync_took:?} \
         ({sync_requests} Produce requests), {ASYNC} async in {async_took:?}, \
         {total_requests} Produce requests in all, last publish took {extra} request(s); \
         producer errors: {:?}",
        3 * retriable.len(),
        SYNC + ASYNC + 1,
        SYNC,
        errors.all()
    );
    assert_eq!(extra, 1, "all injected errors were consumed");
    // Retried errors are not client errors: the error handler saw nothing.
    assert!(errors.all().is_empty(), "{:?}", errors.all());
    assert!(
        sync_requests >= SYNC + retriable.len(),
        "each injected error failed one request: {sync_requests}"
    );
}

/// MESSAGE_TOO_LARGE is a permanent error for the messages of the failed
/// request only: their delivery fails, and the idempotent producer bumps its
/// epoch (`rd_kafka_idemp_drain_epoch_bump`, as `enable.gapless.guarantee`
/// is off) so the next messages go through. Each publish here is alone in
/// its request, so exactly one message fails each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_retriable_produce_error_fails_only_that_publish() {
    const TOPIC: &str = "refused";
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic(TOPIC, 1).unwrap();
    let errors = Errors::default();
    let producer = producer_on(&cluster, &errors, &[]);
    let mut published = Vec::new();
    for i in 0..5 {
        producer.publish(numbered(TOPIC, i, 1)).await.unwrap();
        published.push(i);
    }
    // `publish`: the one message of the failed request gets the error.
    cluster
        .request_errors(
            RDKafkaApiKey::Produce,
            &[RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        )
        .unwrap();
    let err = producer
        .publish(numbered(TOPIC, 5, 1))
        .await
        .expect_err("the broker refused it");
    assert!(matches!(err, Error::Delivery { .. }), "{err:?}");
    assert_eq!(
        err.kafka_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge)
    );
    assert!(!err.is_fatal(), "{err:?}");
    for i in 6..11 {
        producer
            .publish(numbered(TOPIC, i, 1))
            .await
            .expect("later publishes succeed");
        published.push(i);
    }

    // `publish_async`: the failed message's callback gets the error, once.
    let callbacks = Callbacks::default();
    for i in 11..16 {
        producer
            .publish_async_with(numbered(TOPIC, i, 1), callbacks.callback(i))
            .await
            .unwrap();
        published.push(i);
    }
    until(|| callbacks.reported() == 5, Duration::from_secs(10)).await;
    cluster
        .request_errors(
            RDKafkaApiKey::Produce,
            &[RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        )
        .unwrap();
    producer
        .publish_async_with(numbered(TOPIC, 16, 1), callbacks.callback(16))
        .await
        .unwrap();
    until(|| callbacks.reported() == 6, Duration::from_secs(10)).await;
    for i in 17..22 {
        producer
            .publish_async_with(numbered(TOPIC, i, 1), callbacks.callback(i))
            .await
            .unwrap();
        published.push(i);
    }
    assert_eq!(producer.close().await.undelivered, 0);
    let outcomes = callbacks.snapshot();
    assert_eq!(outcomes.len(), 11);
    for (i, results) in &outcomes {
        assert_eq!(results.len(), 1, "message {i}: one callback");
        if *i == 16 {
            let err = results[0].clone().expect_err("the broker refused it");
            assert_eq!(
                err.code,
                Some(RDKafkaErrorCode::MessageSizeTooLarge),
                "{err:?}"
            );
        } else {
            assert!(results[0].is_ok(), "message {i}: {results:?}");
        }
    }
    // The refused messages were not written; everything else was, once, in
    // order.
    let log = read_log(&cluster, TOPIC, 1).await;
    let values: Vec<usize> = log[0].iter().map(|(_, v)| v.parse().unwrap()).collect();
    assert_eq!(values, published);
    // A failed message is not a client error.
    assert!(errors.all().is_empty(), "{:?}", errors.all());
}

/// TOPIC_AUTHORIZATION_FAILED is not a one-message error in librdkafka:
/// `rd_kafka_handle_Produce_error` (rdkafka_request.c) marks the whole topic
/// as permanently failed (`rd_kafka_topic_set_error`), and from then on
/// `rd_kafka_producev` refuses every message for it at once, without a
/// request (rdkafka_msg.c, `RD_KAFKA_TOPIC_S_ERROR`), until a metadata
/// response says the topic is fine again. Here the metadata keeps saying
/// "not authorized" (as a real broker would while the ACL is missing), then
/// the ACL "comes back".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_authorization_failure_fails_that_topic_until_metadata_clears_it() {
    const TOPIC: &str = "forbidden";
    const OTHER: &str = "allowed";
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic(TOPIC, 1).unwrap();
    cluster.create_topic(OTHER, 1).unwrap();
    let errors = Errors::default();
    let producer = producer_on(&cluster, &errors, &[]);
    producer.publish(numbered(TOPIC, 0, 1)).await.unwrap();
    producer.publish(numbered(OTHER, 0, 1)).await.unwrap();
    cluster
        .with_mock(|m| m.topic_error(TOPIC, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED))
        .unwrap();
    cluster
        .request_errors(
            RDKafkaApiKey::Produce,
            &[RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        )
        .unwrap();
    let is_authorization =
        |e: &Error| e.kafka_code() == Some(RDKafkaErrorCode::TopicAuthorizationFailed);

    // The publish the broker refused gets the error...
    let refused = producer.publish(numbered(TOPIC, 1, 1)).await.unwrap_err();
    assert!(
        matches!(refused, Error::Delivery { .. }) && is_authorization(&refused),
        "{refused:?}"
    );
    cluster.start_request_tracking();
    // ...and so do later ones for the topic, at once (no hang), also after a
    // metadata refresh; `publish_async` refuses them up front (its callback
    // is then not called, as documented).
    until(
        || cluster.requests(RDKafkaApiKey::Metadata) > 0,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        cluster.requests(RDKafkaApiKey::Metadata) > 0,
        "metadata was refreshed"
    );
    let started = Instant::now();
    let next = producer.publish(numbered(TOPIC, 2, 1)).await.unwrap_err();
    let refused_in = started.elapsed();
    assert!(is_authorization(&next), "{next:?}");
    assert!(
        refused_in < Duration::from_secs(1),
        "refused at once: {refused_in:?}"
    );
    let callbacks = Callbacks::default();
    let queued = producer
        .publish_async_with(numbered(TOPIC, 3, 1), callbacks.callback(3))
        .await
        .unwrap_err();
    assert!(is_authorization(&queued), "{queued:?}");
    // Other topics are not affected.
    producer
        .publish(numbered(OTHER, 1, 1))
        .await
        .expect("another topic is fine");

    // The ACL is back: publishes succeed again once librdkafka has seen it.
    cluster
        .with_mock(|m| m.topic_error(TOPIC, RD_KAFKA_RESP_ERR_NO_ERROR))
        .unwrap();
    let started = Instant::now();
    let mut attempts = 0;
    let recovered = loop {
        attempts += 1;
        match producer.publish(numbered(TOPIC, 4, 1)).await {
            Ok(delivery) => break Some(delivery),
            Err(e) if started.elapsed() < Duration::from_secs(15) => {
                assert!(is_authorization(&e), "{e:?}");
                // Nothing to await: librdkafka refreshes metadata on its own.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => break None,
        }
    };
    let recovery = started.elapsed();
    assert!(
        recovered.is_some(),
        "publishes succeed again within {recovery:?}"
    );
    assert_eq!(producer.close().await.undelivered, 0);
    assert_eq!(
        callbacks.reported(),
        0,
        "a refused publish_async has no callback"
    );
    eprintln!(
        "topic authorization: refused at once in {refused_in:?}; recovered {recovery:?} after \
         the ACL came back ({attempts} attempts, {} metadata requests); producer errors: {:?}",
        cluster.requests(RDKafkaApiKey::Metadata),
        errors.all()
    );
    // Only the accepted messages were written.
    let log = read_log(&cluster, TOPIC, 1).await;
    let values: Vec<&str> = log[0].iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["0", "4"]);
    let other = read_log(&cluster, OTHER, 1).await;
    assert_eq!(other[0].len(), 2);
    assert!(errors.all().is_empty(), "{:?}", errors.all());
}

/// Runs `consumer` until `handled` holds `expected` messages (or 15 s),
/// running `meanwhile` once the first `after` are handled.
async fn consume_with<F>(
    consumer: Consumer,
    handled: &Handled,
    after: usize,
    expected: usize,
    meanwhile: F,
) -> xkafka::Summary
where
    F: std::future::Future<Output = ()>,
{
    let probe = handled.clone();
    consumer
        .run(async move {
            until(|| handled_count(&probe) >= after, Duration::from_secs(15)).await;
            meanwhile.await;
            until(
                || handled_count(&probe) >= expected,
                Duration::from_secs(15),
            )
            .await;
        })
        .await
        .expect("the consumer ran to the end")
}

/// Checks that the keys handled are `0..expected`, each once, in order.
fn assert_handled_once_in_order(handled: &Handled, expected: usize) {
    let keys: Vec<usize> = handled
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, k)| k.parse().unwrap())
        .collect();
    assert_eq!(
        keys,
        (0..expected).collect::<Vec<_>>(),
        "every message once, in order"
    );
}

/// Publishes keys `keys` (value "v") to partition 0, as `embedded_with` does.
async fn publish_keys(cluster: &EmbeddedCluster, topic: &str, keys: std::ops::Range<usize>) {
    let producer = producer_on(cluster, &Errors::default(), &[]);
    for i in keys {
        let msg = Message::builder(topic)
            .partition(0)
            .key(i.to_string())
            .value("v")
            .build();
        producer.publish(msg).await.unwrap();
    }
    producer.close().await;
}

/// Fetch errors librdkafka handles itself (leader moved, unknown partition,
/// storage error: `rd_kafka_fetch_reply_handle_partition_error` in
/// rdkafka_fetcher.c refreshes metadata and fetches again) are not reported;
/// any other one (here UNKNOWN_SERVER_ERROR) is handed to the application,
/// once, and the consumer fetches again from the same position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_errors_do_not_stop_the_consumer() {
    const TOPIC: &str = "fetched";
    let cluster = embedded_with(TOPIC, 1, 100).await;
    let errors = Errors::default();
    let handled = Handled::default();
    let consumer = recording_consumer(&cluster, "g", TOPIC, &errors, &handled)
        // Reaching the end of the partition is not an error either.
        .config("enable.partition.eof", "true")
        .build()
        .unwrap();
    let injected = [
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
        RD_KAFKA_RESP_ERR_UNKNOWN, // UNKNOWN_SERVER_ERROR
    ];
    let started = Instant::now();
    let summary = consume_with(consumer, &handled, 100, 200, async {
        // The next fetches fail while the second half is written.
        cluster.start_request_tracking();
        cluster
            .request_errors(RDKafkaApiKey::Fetch, &injected)
            .unwrap();
        publish_keys(&cluster, TOPIC, 100..200).await;
    })
    .await;
    let took = started.elapsed();
    let reported = errors.all();
    eprintln!(
        "fetch errors: {} injected, {} handled in {took:?}, {} Fetch requests; reported {reported:?}",
        injected.len(),
        handled_count(&handled),
        cluster.requests(RDKafkaApiKey::Fetch),
    );
    assert_handled_once_in_order(&handled, 200);
    assert_eq!(summary.succeeded, 200);
    assert_eq!(
        summary.committed.values().copied().collect::<Vec<_>>(),
        [200]
    );
    // The last injected error reached the handler (so all four were used),
    // once; the three librdkafka handles itself and the partition EOFs did
    // not.
    let codes: Vec<_> = reported.iter().map(|r| (r.operation, r.code)).collect();
    assert_eq!(
        codes,
        [(Some(Operation::Client), Some(RDKafkaErrorCode::Unknown))],
        "{reported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_auto_commit_is_reported_and_later_commits_carry_the_end() {
    const TOPIC: &str = "autocommits";
    let cluster = embedded_with(TOPIC, 1, 50).await;
    // The first OffsetCommit: with nothing committed before, a background
    // one (no rebalance happens before the shutdown).
    cluster
        .request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
        )
        .unwrap();
    let errors = Errors::default();
    let handled = Handled::default();
    let consumer = recording_consumer(&cluster, "g", TOPIC, &errors, &handled)
        .commit_mode(CommitMode::Auto)
        .config("auto.commit.interval.ms", "100")
        .build()
        .unwrap();
    let mut committed_while_running = None;
    let summary = consume_with(consumer, &handled, 50, 50, async {
        until(
            || errors.count(|e| e.operation == Some(Operation::Commit)) > 0,
            Duration::from_secs(10),
        )
        .await;
        // A later background commit, not the final one, carries the end.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            committed_while_running = committed_on(&cluster, "g", TOPIC, 0).await;
            if committed_while_running == Some(50) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let reported = errors.all();
    eprintln!(
        "auto commit: committed while running {committed_while_running:?}, summary {summary:?}, \
         reported {reported:?}"
    );
    assert_eq!(summary.succeeded, 50);
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].operation, Some(Operation::Commit));
    assert!(
        reported[0].text.starts_with("committing offsets failed"),
        "{reported:?}"
    );
    assert_eq!(
        reported[0].code,
        Some(RDKafkaErrorCode::GroupAuthorizationFailed)
    );
    assert_eq!(committed_while_running, Some(50));
    assert_eq!(
        summary.committed.values().copied().collect::<Vec<_>>(),
        [50]
    );
    assert_eq!(committed_on(&cluster, "g", TOPIC, 0).await, Some(50));
}

/// librdkafka retries the join on its own (`rd_kafka_cgrp_handle_JoinGroup`
/// in rdkafka_cgrp.c rejoins after its join interval, a few seconds): a
/// retriable error (NOT_COORDINATOR: look the coordinator up again) is not
/// reported; a permanent one (GROUP_AUTHORIZATION_FAILED) is handed to the
/// application once, and librdkafka still rejoins, so the consumer gets its
/// assignment when the broker relents. A failed SyncGroup
/// (REBALANCE_IN_PROGRESS) is a silent rejoin. Nothing is assigned until the
/// join succeeds, so there is exactly one assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_sync_group_errors_delay_the_assignment_only() {
    const TOPIC: &str = "joined";
    let cluster = embedded_with(TOPIC, 1, 20).await;
    cluster.start_request_tracking();
    cluster
        .request_errors(
            RDKafkaApiKey::JoinGroup,
            &[
                RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED,
            ],
        )
        .unwrap();
    cluster
        .request_errors(
            RDKafkaApiKey::SyncGroup,
            &[RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
        )
        .unwrap();
    let errors = Errors::default();
    let handled = Handled::default();
    let consumer = recording_consumer(&cluster, "g", TOPIC, &errors, &handled)
        // The mock waits session timeout - 1 s for members to rejoin.
        .config("session.timeout.ms", "3000")
        .config("heartbeat.interval.ms", "1000")
        .commit_mode(CommitMode::Manual)
        .build()
        .unwrap();
    let started = Instant::now();
    let mut first = Duration::ZERO;
    let summary = consume_with(consumer, &handled, 1, 20, async {
        first = started.elapsed();
    })
    .await;
    let (joins, syncs) = (
        cluster.requests(RDKafkaApiKey::JoinGroup),
        cluster.requests(RDKafkaApiKey::SyncGroup),
    );
    let reported = errors.all();
    eprintln!(
        "join errors: first message after {first:?}, {} handled in {:?}, {joins} JoinGroup, \
         {syncs} SyncGroup; reported {reported:?}",
        handled_count(&handled),
        started.elapsed(),
    );
    assert_handled_once_in_order(&handled, 20);
    assert!(
        joins >= 4 && syncs >= 2,
        "the errors were hit: {joins} JoinGroup, {syncs} SyncGroup"
    );
    assert_eq!(summary.assignments, 1);
    let codes: Vec<_> = reported.iter().map(|r| (r.operation, r.code)).collect();
    assert_eq!(
        codes,
        [(
            Some(Operation::Client),
            Some(RDKafkaErrorCode::GroupAuthorizationFailed)
        )],
        "{reported:?}"
    );
    assert_eq!(
        summary.committed.values().copied().collect::<Vec<_>>(),
        [20]
    );
}

/// A heartbeat answered REBALANCE_IN_PROGRESS makes librdkafka rejoin (a
/// revoke and a new assignment, with nothing reported): the revoke commits
/// what was processed, so nothing is handled twice or skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_error_rebalances_without_loss_or_duplicate() {
    const TOPIC: &str = "heartbeats";
    let cluster = embedded_with(TOPIC, 1, 20).await;
    cluster.start_request_tracking();
    let errors = Errors::default();
    let handled = Handled::default();
    let consumer = recording_consumer(&cluster, "g", TOPIC, &errors, &handled)
        .config("session.timeout.ms", "3000")
        .config("heartbeat.interval.ms", "1000")
        .commit_mode(CommitMode::Manual)
        .build()
        .unwrap();
    let started = Instant::now();
    let mut rejoined = Duration::ZERO;
    let summary = consume_with(consumer, &handled, 20, 40, async {
        let joins = cluster.requests(RDKafkaApiKey::JoinGroup);
        cluster
            .request_errors(
                RDKafkaApiKey::Heartbeat,
                &[RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
            )
            .unwrap();
        until(
            || cluster.requests(RDKafkaApiKey::JoinGroup) > joins,
            Duration::from_secs(5),
        )
        .await;
        rejoined = started.elapsed();
        publish_keys(&cluster, TOPIC, 20..40).await;
    })
    .await;
    let reported = errors.all();
    eprintln!(
        "heartbeat error: rejoined after {rejoined:?}, {} handled in {:?}, summary {summary:?}, \
         reported {reported:?}",
        handled_count(&handled),
        started.elapsed(),
    );
    assert_handled_once_in_order(&handled, 40);
    assert_eq!(summary.assignments, 2, "the heartbeat error rebalanced");
    assert!(reported.is_empty(), "{reported:?}");
    assert_eq!(
        summary.committed.values().copied().collect::<Vec<_>>(),
        [40]
    );
}

fn is_transport(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
    )
}

/// The only broker goes down while a producer publishes asynchronously and
/// a consumer consumes, and comes back a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_then_up_loses_no_acknowledged_message() {
    const TOPIC: &str = "outage";
    const PARTITIONS: i32 = 3;
    const BEFORE: usize = 100;
    const TOTAL: usize = 200;
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS).unwrap();
    let producer_errors = Errors::default();
    let producer = producer_on(&cluster, &producer_errors, &[]);
    let errors = Errors::default();
    let handled = Handled::default();
    let consumer = recording_consumer(&cluster, "g", TOPIC, &errors, &handled)
        .commit_mode(CommitMode::Manual)
        .build()
        .unwrap();
    let callbacks = Callbacks::default();
    let started = Instant::now();
    let mut marks = Vec::new();
    let probe = handled.clone();
    let summary = consumer
        .run(async {
            for i in 0..BEFORE {
                producer
                    .publish_async_with(numbered(TOPIC, i, PARTITIONS), callbacks.callback(i))
                    .await
                    .unwrap();
            }
            until(|| handled_count(&probe) >= BEFORE, Duration::from_secs(15)).await;
            cluster.broker_down(1).unwrap();
            marks.push(("down", started.elapsed()));
            for i in BEFORE..TOTAL {
                producer
                    .publish_async_with(numbered(TOPIC, i, PARTITIONS), callbacks.callback(i))
                    .await
                    .unwrap();
            }
            until(
                || errors.count(|_| true) > 0 && producer_errors.count(|_| true) > 0,
                Duration::from_secs(10),
            )
            .await;
            // The outage's length, not a synchronisation: reconnection
            // attempts fail meanwhile.
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.broker_up(1).unwrap();
            marks.push(("up", started.elapsed()));
            until(|| callbacks.reported() >= TOTAL, Duration::from_secs(15)).await;
            marks.push(("all acknowledged", started.elapsed()));
            until(|| handled_count(&probe) >= TOTAL, Duration::from_secs(15)).await;
            marks.push(("all consumed", started.elapsed()));
        })
        .await
        .expect("the consumer did not stop: every error was answered Continue");
    assert_eq!(producer.close().await.undelivered, 0);
    let (consumer_reported, producer_reported) = (errors.all(), producer_errors.all());
    eprintln!(
        "outage: {marks:?}; {} handled, summary {summary:?}\n  consumer errors: {:?}\n  \
         producer errors: {:?}",
        handled_count(&handled),
        consumer_reported.iter().map(|r| r.code).collect::<Vec<_>>(),
        producer_reported.iter().map(|r| r.code).collect::<Vec<_>>(),
    );

    // Both error handlers saw the outage, as transport errors only.
    assert!(!consumer_reported.is_empty() && !producer_reported.is_empty());
    for r in consumer_reported.iter().chain(&producer_reported) {
        assert!(is_transport(r.code), "{r:?}");
        assert_eq!(r.operation, Some(Operation::Client), "{r:?}");
    }
    // Every message was acknowledged, once (the default message.timeout.ms
    // is 5 minutes), and consumed exactly once, in order per partition.
    let mut acked: BTreeMap<i32, Vec<(i64, usize)>> = BTreeMap::new();
    for (i, outcomes) in callbacks.snapshot() {
        assert_eq!(outcomes.len(), 1, "message {i}: {outcomes:?}");
        let (partition, offset) = outcomes[0].clone().expect("delivered after the outage");
        acked.entry(partition).or_default().push((offset, i));
    }
    assert_eq!(acked.values().map(Vec::len).sum::<usize>(), TOTAL);
    let mut consumed: BTreeMap<i32, Vec<(i64, usize)>> = BTreeMap::new();
    for (partition, offset, key) in handled.lock().unwrap().iter() {
        consumed
            .entry(*partition)
            .or_default()
            .push((*offset, key.parse().unwrap()));
    }
    for list in acked.values_mut() {
        list.sort_unstable();
    }
    assert_eq!(
        consumed, acked,
        "consumed = acknowledged: none lost, none twice"
    );
    for (partition, list) in &consumed {
        let keys: Vec<usize> = list.iter().map(|(_, k)| *k).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "partition {partition} in publish order");
    }
    assert_eq!(summary.assignments, 1, "the group outlived the outage");
    assert_eq!(summary.committed.values().sum::<i64>(), TOTAL as i64);
}

/// Publishes `first`, `first + 1`, ... until one is acknowledged (each
/// failure must be a timeout), within 15 s; returns it and every attempt.
async fn publish_until_delivered(
    producer: &Producer,
    topic: &str,
    first: usize,
) -> (usize, Vec<usize>) {
    let started = Instant::now();
    let mut attempts = Vec::new();
    loop {
        let attempt = first + attempts.len();
        attempts.push(attempt);
        match producer.publish(numbered(topic, attempt, 1)).await {
            Ok(_) => return (attempt, attempts),
            Err(e) if started.elapsed() < Duration::from_secs(15) => assert_eq!(
                e.kafka_code(),
                Some(RDKafkaErrorCode::MessageTimedOut),
                "{e:?}"
            ),
            Err(e) => panic!("not delivered within 15 s: {e:?}"),
        }
    }
}

/// With a message.timeout.ms shorter than the outage, every message
/// published while the broker is down fails, to its callback, exactly once;
/// none was written; the producer works again once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_down_fail_once_when_they_time_out() {
    const TOPIC: &str = "timeouts";
    const QUEUED: usize = 20;
    const TIMEOUT: Duration = Duration::from_millis(1000);
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic(TOPIC, 1).unwrap();
    let errors = Errors::default();
    let producer = producer_on(
        &cluster,
        &errors,
        &[
            ("message.timeout.ms", &TIMEOUT.as_millis().to_string()),
            // librdkafka's reconnect backoff grows to 10 s by default: keep
            // the wait after the outage short.
            ("reconnect.backoff.max.ms", "500"),
        ],
    );
    // Connected first. On a loaded machine the first publish (connection,
    // metadata, producer id) can outlast the short timeout: try again.
    let (warm, warm_attempts) = publish_until_delivered(&producer, TOPIC, 200).await;
    cluster.broker_down(1).unwrap();
    let callbacks = Callbacks::default();
    let started = Instant::now();
    for i in 1..=QUEUED {
        producer
            .publish_async_with(numbered(TOPIC, i, 1), callbacks.callback(i))
            .await
            .unwrap();
    }
    let sync = producer
        .publish(numbered(TOPIC, QUEUED + 1, 1))
        .await
        .unwrap_err();
    let sync_failed_after = started.elapsed();
    until(|| callbacks.reported() == QUEUED, Duration::from_secs(10)).await;
    let all_failed_after = started.elapsed();
    let timed_out =
        |code: Option<RDKafkaErrorCode>| code == Some(RDKafkaErrorCode::MessageTimedOut);
    assert!(timed_out(sync.kafka_code()), "{sync:?}");
    assert!(
        sync_failed_after >= TIMEOUT && all_failed_after < Duration::from_secs(8),
        "failed after message.timeout.ms: {sync_failed_after:?}, {all_failed_after:?}"
    );

    // Back up: publishing works again once librdkafka has reconnected
    // (its reconnect backoff has grown meanwhile, and an attempt may time
    // out before that).
    cluster.broker_up(1).unwrap();
    let up = Instant::now();
    let (recovered, attempts) = publish_until_delivered(&producer, TOPIC, 100).await;
    let recovered_after = up.elapsed();
    assert_eq!(producer.close().await.undelivered, 0);
    let outcomes = callbacks.snapshot();
    eprintln!(
        "timeouts: publish failed after {sync_failed_after:?}, {QUEUED} callbacks after \
         {all_failed_after:?}; recovered {recovered_after:?} after up ({} attempts); \
         producer errors {:?}",
        attempts.len(),
        errors.all().iter().map(|r| r.code).collect::<Vec<_>>()
    );
    // Exactly one callback per message, all timeouts, even after close.
    assert_eq!(outcomes.len(), QUEUED);
    for (i, results) in &outcomes {
        assert_eq!(results.len(), 1, "message {i}: {results:?}");
        let err = results[0].clone().expect_err("timed out");
        assert!(timed_out(err.code), "message {i}: {err:?}");
    }
    assert!(errors
        .all()
        .iter()
        .all(|r| is_transport(r.code) && r.operation == Some(Operation::Client)));
    // None of the timed-out messages was written (they were never sent).
    let log = read_log(&cluster, TOPIC, 1).await;
    let values: Vec<usize> = log[0].iter().map(|(_, v)| v.parse().unwrap()).collect();
    // (An attempt that timed out while connecting may or may not have been
    // written.)
    assert!(values.contains(&warm) && values.last() == Some(&recovered));
    assert!(
        values
            .iter()
            .all(|v| warm_attempts.contains(v) || attempts.contains(v)),
        "{values:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_slows_publish_and_consume_but_breaks_nothing() {
    const TOPIC: &str = "slow";
    const RTT: Duration = Duration::from_millis(300);
    const ASYNC: usize = 50;
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic(TOPIC, 1).unwrap();
    let errors = Errors::default();
    let producer = producer_on(&cluster, &errors, &[]);
    // Connected first, so that the measured latency is one round trip.
    producer.publish(numbered(TOPIC, 0, 1)).await.unwrap();
    cluster.broker_round_trip_time(1, RTT).unwrap();
    let mut latencies = Vec::new();
    for i in 1..=5 {
        let started = Instant::now();
        producer.publish(numbered(TOPIC, i, 1)).await.unwrap();
        latencies.push(started.elapsed());
    }
    let callbacks = Callbacks::default();
    let started = Instant::now();
    for i in 6..6 + ASYNC {
        producer
            .publish_async_with(numbered(TOPIC, i, 1), callbacks.callback(i))
            .await
            .unwrap();
    }
    until(|| callbacks.reported() == ASYNC, Duration::from_secs(10)).await;
    let async_took = started.elapsed();
    assert_eq!(producer.close().await.undelivered, 0);
    let consumer_errors = Errors::default();
    let handled = Handled::default();
    let consumer = recording_consumer(&cluster, "g", TOPIC, &consumer_errors, &handled)
        .build()
        .unwrap();
    let started = Instant::now();
    let summary = consume_with(consumer, &handled, 6 + ASYNC, 6 + ASYNC, async {}).await;
    let consume_took = started.elapsed();
    eprintln!(
        "latency {RTT:?}: publish {latencies:?}; {ASYNC} publish_async acknowledged in \
         {async_took:?}; {} consumed in {consume_took:?}",
        handled_count(&handled),
    );
    for latency in &latencies {
        assert!(
            *latency >= RTT && *latency < RTT + Duration::from_secs(2),
            "{latencies:?}"
        );
    }
    assert!(async_took >= RTT, "{async_took:?}");
    for (i, results) in callbacks.snapshot() {
        assert_eq!(results.len(), 1, "message {i}");
        assert!(results[0].is_ok(), "message {i}: {results:?}");
    }
    assert_handled_once_in_order(&handled, 6 + ASYNC);
    assert_eq!(summary.succeeded, 6 + ASYNC as u64);
    assert!(consume_took >= RTT);
    assert!(errors.all().is_empty() && consumer_errors.all().is_empty());
}
