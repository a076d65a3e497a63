//! Producer against the real broker: round trip, async callbacks, close,
//! middleware order, cancellation and client errors.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use xkafka::middleware::{from_fn, Next};
use xkafka::{Delivery, Error, Message, Producer, Timestamp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_every_field() {
    let topic = topic("roundtrip", 3).await;
    let producer = producer();
    let ts = 1_700_000_123_456;
    let sent = Message::builder(topic.as_str())
        .key("order-1")
        .value(vec![0u8, 159, 146, 150, 1]) // not UTF-8 on purpose
        .header("trace", "a")
        .header("tenant", "acme")
        .header("trace", "b")
        .partition(2)
        .timestamp_millis(ts)
        .build();
    let delivery = producer.publish(sent.clone()).await.expect("publish");
    assert_eq!(delivery.partition, 2, "explicit partition honoured");
    assert_eq!(&*delivery.topic, topic.as_str());
    assert!(delivery.offset >= 0);

    let got = consume(&unique("roundtrip-g"), &topic, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "exactly the one message comes back");
    let got = &got[0];
    assert_eq!(got.topic(), topic);
    assert_eq!(got.partition(), Some(2));
    assert_eq!(
        got.offset(),
        Some(delivery.offset),
        "publish reported the real offset"
    );
    assert_eq!(got.key(), sent.key());
    assert_eq!(got.value(), sent.value());
    assert_eq!(
        got.headers(),
        sent.headers(),
        "headers in order, duplicates kept"
    );
    assert_eq!(got.headers().get_str("trace"), Some("b"));
    assert_eq!(got.timestamp(), Some(Timestamp::CreateTime(ts)));
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_async_calls_back_exactly_once_even_when_closed_at_once() {
    const N: usize = 10_000;
    let topic = topic("async", 6).await;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let producer = Producer::builder("xkafka-tests-async")
        .brokers([brokers()])
        .config("linger.ms", "5")
        .error_handler(|err| eprintln!("producer error: {err}"))
        .on_delivery({
            let (ok, failed) = (ok.clone(), failed.clone());
            move |report: &Result<Delivery, Error>| {
                let counter = if report.is_ok() { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()
        .unwrap();
    let per_message: Arc<Vec<AtomicU64>> = Arc::new((0..N).map(|_| AtomicU64::new(0)).collect());
    for i in 0..N {
        let calls = per_message.clone();
        let msg = Message::builder(topic.as_str())
            .key(i.to_string())
            .value("x")
            .build();
        producer
            .publish_async_with(msg, move |_| {
                calls[i].fetch_add(1, Ordering::Relaxed);
            })
            .await
            .unwrap();
    }
    // Close right after the last publish: every callback must still fire.
    let report = producer.close().await;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        ok + failed,
        N as u64,
        "producer-wide callback once per message"
    );
    assert_eq!(report.undelivered as u64, failed);
    let counts: Vec<u64> = per_message
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    assert!(
        counts.iter().all(|&c| c == 1),
        "a per-message callback fired {:?} times",
        counts.iter().find(|&&c| c != 1)
    );
    assert_eq!(ok, N as u64, "nothing should fail on a healthy broker");

    let got = consume(&unique("async-g"), &topic, N, Duration::from_secs(60)).await;
    assert_eq!(
        got.len() as u64,
        ok,
        "a consumer reads exactly the successes"
    );
    // After close, publishing is refused rather than lost.
    let refused = producer
        .publish(Message::builder(topic.as_str()).build())
        .await;
    assert!(matches!(refused, Err(Error::ProducerClosed)), "{refused:?}");
    assert_eq!(producer.close().await, report, "closing twice is harmless");
}

/// Every report names its own message's topic while publishes alternate
/// between topics, with and without a callback of their own: the delivery
/// thread keeps the last topic it reported and hands it from one report to
/// the next rather than looking it up, so a wrong reuse would name the
/// wrong topic here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_report_names_its_own_topic_when_topics_alternate() {
    const N: usize = 400;
    let topics = [topic("alt-a", 2).await, topic("alt-b", 2).await];
    // Reported topics; for the own callbacks, with the topic sent to.
    let producer_wide: Arc<Mutex<Vec<String>>> = Arc::default();
    let own: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let producer = Producer::builder("xkafka-tests-alternate")
        .brokers([brokers()])
        .config("linger.ms", "5")
        .error_handler(|err| eprintln!("producer error: {err}"))
        .on_delivery({
            let seen = producer_wide.clone();
            move |report: &Result<Delivery, Error>| {
                let delivery = report.as_ref().expect("delivered");
                seen.lock().unwrap().push(delivery.topic.to_string());
            }
        })
        .build()
        .unwrap();
    let mut sent = Vec::new();
    for i in 0..N {
        // Runs of one to three messages per topic.
        let topic = &topics[(i / (1 + i % 3)) % 2];
        sent.push((topic.clone(), i.to_string()));
        let msg = Message::builder(topic.as_str())
            .key(i.to_string())
            .value("x")
            .build();
        if i % 2 == 0 {
            let seen = own.clone();
            let topic = topic.clone();
            producer
                .publish_async_with(msg, move |report| {
                    let delivery = report.expect("delivered");
                    seen.lock()
                        .unwrap()
                        .push((delivery.topic.to_string(), topic.clone()));
                })
                .await
                .unwrap();
        } else {
            producer.publish_async(msg).await.unwrap();
        }
    }
    assert_eq!(producer.close().await.undelivered, 0);
    let own = own.lock().unwrap();
    assert_eq!(own.len(), N / 2, "one own callback per even message");
    for (reported, expected) in own.iter() {
        assert_eq!(reported, expected, "an own callback named the wrong topic");
    }
    // The producer-wide callback: per topic, as many reports as sends.
    let reported = producer_wide.lock().unwrap();
    assert_eq!(reported.len(), N);
    for topic in &topics {
        let want = sent.iter().filter(|(t, _)| t == topic).count();
        let got = reported.iter().filter(|t| *t == topic).count();
        assert_eq!(got, want, "reports naming {topic}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_middleware_first_added_is_outermost() {
    let topic = topic("prod-order", 1).await;
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut builder = Producer::builder("xkafka-tests-order")
        .brokers([brokers()])
        .error_handler(|err| eprintln!("producer error: {err}"));
    for name in ["a", "b", "c"] {
        let log = log.clone();
        builder = builder.layer(from_fn(move |mut m: Message, next: Next<Delivery>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(format!("{name} in"));
                m.headers_mut().insert("path", name);
                let out = next.run(m).await;
                log.lock().unwrap().push(format!("{name} out"));
                out
            }
        }));
    }
    let producer = builder.build().unwrap();
    producer
        .publish(Message::builder(topic.as_str()).value("v").build())
        .await
        .unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["a in", "b in", "c in", "c out", "b out", "a out"]
    );
    let got = consume(&unique("prod-order-g"), &topic, 1, Duration::from_secs(30)).await;
    let path: Vec<_> = got[0]
        .headers()
        .get_all("path")
        .filter_map(|h| h.value_str())
        .collect();
    assert_eq!(
        path,
        ["a", "b", "c"],
        "the message went through a, then b, then c"
    );
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_brokers_reach_the_error_handler_and_publish_can_be_cancelled() {
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = errors.clone();
    let producer = Producer::builder("xkafka-tests-down")
        .brokers(["127.0.0.1:1"]) // nothing listens there
        .close_timeout(Duration::from_secs(1))
        .error_handler(move |err| sink.lock().unwrap().push(err.to_string()))
        .build()
        .unwrap();
    let started = Instant::now();
    let attempt = tokio::time::timeout(
        Duration::from_millis(500),
        producer.publish(Message::builder("nowhere").value("v").build()),
    )
    .await;
    assert!(attempt.is_err(), "publish cannot succeed: {attempt:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cancellation is prompt"
    );

    until(
        || !errors.lock().unwrap().is_empty(),
        Duration::from_secs(10),
    )
    .await;
    let seen = errors.lock().unwrap().clone();
    assert!(
        !seen.is_empty(),
        "the error handler heard of the dead brokers"
    );
    assert!(
        seen.iter().all(|e| e.contains("kafka client failed")),
        "{seen:?}"
    );

    let started = Instant::now();
    let report = producer.close().await;
    assert_eq!(
        report.undelivered, 1,
        "the cancelled message was never delivered"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "close is bounded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_an_invalid_topic_is_a_clear_error() {
    let producer = producer();
    let err = producer
        .publish(Message::builder("").value("v").build())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTopic { .. }), "{err:?}");
    let err = producer
        .publish_async(Message::builder("bad name").build())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid topic name"), "{err}");
    producer.close().await;
}

/// A partition the topic does not have is refused at once, once the
/// producer knows the topic: with and without a timestamp of the message's
/// own (librdkafka takes the two by different calls, which report their
/// errors differently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_async_to_a_missing_partition_is_refused_with_the_reason() {
    let topic = topic("producer-no-partition", 1).await;
    let producer = producer();
    // Acknowledged: the producer now knows the topic has one partition.
    producer
        .publish(Message::builder(topic.as_str()).value("first").build())
        .await
        .unwrap();
    for timestamp in [None, Some(1_700_000_000_000)] {
        let mut message = Message::builder(topic.as_str()).partition(7).value("x");
        if let Some(millis) = timestamp {
            message = message.timestamp_millis(millis);
        }
        let err = producer
            .publish_async(message.build())
            .await
            .expect_err("partition 7 of a one-partition topic");
        match &err {
            Error::Delivery {
                partition, source, ..
            } => {
                assert_eq!(*partition, Some(7), "{err:?}");
                assert_eq!(
                    source.rdkafka_error_code(),
                    Some(xkafka::raw::rdkafka::error::RDKafkaErrorCode::UnknownPartition),
                    "timestamp {timestamp:?}: {err:?}"
                );
            }
            other => panic!("timestamp {timestamp:?}: {other:?}"),
        }
    }
    let status = producer.status();
    assert_eq!(
        (status.delivered, status.callbacks_pending),
        (1, 0),
        "{status:?}"
    );
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_counts_deliveries_and_says_when_no_broker_is_reachable() {
    let topic = topic("producer-status", 1).await;
    let producer = producer();
    let before = producer.status();
    assert_eq!(
        (before.delivered, before.failed, before.in_flight),
        (0, 0, 0)
    );
    assert!(before.brokers_reachable && !before.closed && !before.transactional);
    for i in 0..10 {
        producer
            .publish_async(
                Message::builder(topic.as_str())
                    .value(format!("{i}"))
                    .build(),
            )
            .await
            .unwrap();
    }
    let probe = producer.clone();
    until(|| probe.status().delivered == 10, Duration::from_secs(10)).await;
    let after = producer.status();
    assert_eq!(
        (after.delivered, after.failed, after.in_flight),
        (10, 0, 0),
        "{after:?}"
    );
    producer.close().await;
    assert!(producer.status().closed);

    // Nothing listens there: librdkafka reports every broker down.
    let nowhere = Producer::builder("xkafka-tests-nowhere")
        .brokers(["127.0.0.1:1"])
        .config("message.timeout.ms", "1000")
        .error_handler(|_| {})
        .build()
        .unwrap();
    nowhere
        .publish_async(Message::builder("anything").value("x").build())
        .await
        .unwrap();
    let probe = nowhere.clone();
    until(
        || {
            let s = probe.status();
            !s.brokers_reachable && s.failed == 1 && s.callbacks_pending == 0
        },
        Duration::from_secs(10),
    )
    .await;
    let status = nowhere.status();
    assert!(!status.brokers_reachable, "{status:?}");
    assert_eq!(status.failed, 1, "the message timed out: {status:?}");
    assert_eq!(
        status.delivered, 0,
        "a failed report is no delivery: {status:?}"
    );
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("anything")),
        "{status:?}"
    );
    nowhere.close_within(Duration::from_millis(100)).await;
}
