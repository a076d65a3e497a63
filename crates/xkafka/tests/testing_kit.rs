//! The test kit users test their services with (`xkafka::testing`), tested
//! the way they would use it: no broker for the handler stack, the embedded
//! cluster for the wiring. Every wait's failure must say what did not happen.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xkafka::dlq::{headers, DeadLetterLayer};
use xkafka::middleware::retry::{Backoff, RetryLayer};
use xkafka::testing::{
    run_until, HandlerTest, KitError, Outcome, RecordingProducer, TestCluster, Until,
};
use xkafka::{Ack, BoxError, Consumer, Decision, Error, Message};

fn order(offset: i64, value: &str) -> Message {
    Message::builder("orders")
        .partition(1)
        .offset(offset)
        .key("k")
        .value(value.to_owned())
        .build()
}

#[tokio::test]
async fn each_outcome_is_reported_with_the_error_handlers_decision() {
    let test = HandlerTest::new(
        Consumer::builder("billing")
            .error_handler(|err| match err.message_location() {
                Some((_, _, 3)) => Decision::Continue,
                _ => Decision::Stop,
            })
            .handler(|m: Message| async move {
                match m.value_str() {
                    Some("ok") => Ok(Ack::Success),
                    Some("skip") => Ok(Ack::Skip),
                    Some("panic") => panic!("cannot bill {}", m.location()),
                    _ => Err::<Ack, BoxError>("not an amount".into()),
                }
            }),
    )
    .unwrap();
    assert_eq!(test.call(order(1, "ok")).await, Outcome::Success);
    assert_eq!(test.call(order(2, "skip")).await, Outcome::Skip);
    let failed = test.call(order(3, "x")).await;
    assert!(
        matches!(
            &failed,
            Outcome::Failed {
                error: Error::Handler { offset: 3, .. },
                decision: Decision::Continue
            }
        ),
        "{failed:?}"
    );
    assert!(failed.offset_stored(), "skipped by the error handler");
    let stopped = test.call(order(4, "x")).await;
    assert!(matches!(
        stopped,
        Outcome::Failed {
            decision: Decision::Stop,
            ..
        }
    ));
    assert!(!stopped.offset_stored());
    match test.call(order(5, "panic")).await {
        Outcome::Panicked { message, decision } => {
            assert!(message.contains("cannot bill orders[1]@5"), "{message}");
            assert_eq!(decision, Decision::Stop);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn retries_and_dead_letters_run_in_paused_time_and_are_recorded() {
    let recorder = RecordingProducer::new().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let backoff = Backoff::new()
        .initial_delay(Duration::from_secs(10))
        .jitter(0.0)
        .max_attempts(5);
    // Four waits between five attempts (10 s, 15 s, 22.5 s, then the 30 s cap).
    let waits: Duration = (1..=4).map(|attempt| backoff.delay(attempt)).sum();
    assert!(waits >= Duration::from_secs(70));
    let test = HandlerTest::new(
        Consumer::builder("billing")
            .error_handler(|_| Decision::Stop)
            .layer(DeadLetterLayer::new(recorder.producer(), "orders.dlq"))
            .layer(RetryLayer::new(backoff))
            .handler(move |_m: Message| {
                c.fetch_add(1, Ordering::SeqCst);
                async { Err::<Ack, BoxError>("downstream is down".into()) }
            }),
    )
    .unwrap();
    let real = Instant::now();
    let virtual_start = tokio::time::Instant::now();
    assert_eq!(test.call(order(7, "12")).await, Outcome::Skip);
    assert_eq!(calls.load(Ordering::SeqCst), 5, "five attempts");
    assert!(
        virtual_start.elapsed() >= waits,
        "the backoff ran in (paused) time: {:?} of {waits:?}",
        virtual_start.elapsed()
    );
    assert!(
        real.elapsed() < Duration::from_secs(2),
        "and took no real time"
    );

    let dead = recorder.published_to("orders.dlq");
    assert_eq!(dead.len(), 1);
    let h = dead[0].headers();
    assert_eq!(h.get_str(headers::ORIGINAL_OFFSET), Some("7"));
    assert_eq!(h.get_str(headers::ATTEMPTS), Some("5"));
    assert_eq!(h.get_str(headers::CONSUMER_GROUP), Some("billing"));
    assert_eq!(dead[0].value_str(), Some("12"));

    // The dead-letter publish itself fails: the original failure stands,
    // and nothing is recorded.
    recorder.fail_next(1, "broker refused");
    let outcome = test.call(order(8, "13")).await;
    match &outcome {
        Outcome::Failed {
            error,
            decision: Decision::Stop,
        } => {
            assert!(error.to_string().contains("broker refused"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(recorder.published().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_consumer_runs_on_the_embedded_cluster_until_its_goal() {
    let cluster = TestCluster::start().unwrap();
    cluster.create_topic("orders", 2).unwrap();
    cluster.create_topic("receipts", 1).unwrap();
    let fixtures = (0..20).map(|i| {
        Message::builder("orders")
            .partition(i % 2)
            .value(format!("{i}"))
            .build()
    });
    assert_eq!(cluster.publish(fixtures).await.unwrap().len(), 20);

    let receipts = xkafka::Producer::builder("receipts")
        .brokers([cluster.brokers()])
        .error_handler(|_| {})
        .build()
        .unwrap();
    let consumer = Consumer::builder("billing")
        .brokers([cluster.brokers()])
        .topics(["orders"])
        .config("auto.offset.reset", "earliest")
        .config("auto.commit.interval.ms", "100")
        .error_handler(|_| Decision::Stop)
        .handler(move |m: Message| {
            let receipts = receipts.clone();
            async move {
                let receipt = Message::builder("receipts")
                    .value(format!("paid {}", m.value_str().unwrap_or("?")))
                    .build();
                receipts.publish(receipt).await?;
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let summary = run_until(
        consumer,
        Until::Committed(vec![("orders".into(), 0, 10), ("orders".into(), 1, 10)]),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(summary.succeeded, 20);
    let read = cluster
        .read("receipts", 20, Duration::from_secs(10))
        .await
        .unwrap();
    let mut values: Vec<String> = read
        .iter()
        .map(|m| m.value_str().unwrap().to_owned())
        .collect();
    values.sort();
    assert_eq!(values.len(), 20);
    assert!(values.contains(&"paid 19".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_that_time_out_say_what_did_not_happen() {
    let cluster = TestCluster::start().unwrap();
    cluster.create_topic("orders", 1).unwrap();
    cluster
        .publish((0..3).map(|i| Message::builder("orders").value(format!("{i}")).build()))
        .await
        .unwrap();
    let consumer = Consumer::builder("billing")
        .brokers([cluster.brokers()])
        .topics(["orders"])
        .config("auto.offset.reset", "earliest")
        .error_handler(|_| Decision::Stop)
        .handler(|_m: Message| async { Ack::Success })
        .build()
        .unwrap();
    let started = Instant::now();
    let err = run_until(consumer, Until::Handled(5), Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = err.to_string();
    assert!(
        matches!(err, KitError::Timeout { .. })
            && text.contains("5 messages handled did not happen within 3s")
            && text.contains("3 handled (3 succeeded"),
        "{text}"
    );

    let err = cluster
        .read("orders", 4, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "4 messages in orders did not happen within 1s: read 3 of them"
    );
}

/// A service that publishes one receipt twice: `read` returns everything in
/// the topic (not just the first `count`), so the duplicate is seen, and
/// `read_exactly` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_reveals_duplicates_a_service_published() {
    let cluster = TestCluster::start().unwrap();
    cluster.create_topic("orders", 2).unwrap();
    cluster.create_topic("receipts", 2).unwrap();
    let fixtures = (0..20).map(|i| {
        Message::builder("orders")
            .partition(i % 2)
            .key(format!("{i}"))
            .value(format!("{i}"))
            .build()
    });
    cluster.publish(fixtures).await.unwrap();
    let receipts = xkafka::Producer::builder("receipts")
        .brokers([cluster.brokers()])
        .error_handler(|_| {})
        .build()
        .unwrap();
    let consumer = Consumer::builder("billing")
        .brokers([cluster.brokers()])
        .topics(["orders"])
        .config("auto.offset.reset", "earliest")
        .config("auto.commit.interval.ms", "100")
        .error_handler(|_| Decision::Stop)
        .handler(move |m: Message| {
            let receipts = receipts.clone();
            async move {
                let order = m.value_str().unwrap_or("?").to_owned();
                let receipt = Message::builder("receipts")
                    .partition(m.partition().unwrap_or(0))
                    .key(order.clone())
                    .value(format!("paid {order}"))
                    .build();
                // The bug under test: order 7's receipt goes out twice.
                let copies = if order == "7" { 2 } else { 1 };
                for _ in 0..copies {
                    receipts.publish(receipt.clone()).await?;
                }
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    run_until(
        consumer,
        Until::Committed(vec![("orders".into(), 0, 10), ("orders".into(), 1, 10)]),
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let read = cluster
        .read("receipts", 20, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(read.len(), 21, "every receipt, the duplicate too");
    let sevens = read
        .iter()
        .filter(|m| m.value_str() == Some("paid 7"))
        .count();
    assert_eq!(sevens, 2);

    let err = cluster
        .read_exactly("receipts", 20, Duration::from_secs(10))
        .await
        .unwrap_err();
    let text = err.to_string();
    // Order 7 is the 4th of partition 1 (1, 3, 5, 7): its receipts are at
    // offsets 3 and 4 there.
    assert!(
        matches!(
            err,
            KitError::TooMany {
                expected: 20,
                found: 21,
                ..
            }
        ) && text
            == "expected 20 messages in receipts, found 21: alike: receipts[1]@4 = receipts[1]@3",
        "{text}"
    );
    // Exactly as many: the messages themselves.
    assert_eq!(
        cluster
            .read_exactly("receipts", 21, Duration::from_secs(10))
            .await
            .unwrap()
            .len(),
        21
    );
}

/// With the broker down, `publish` fails within its timeout saying which
/// fixture was not acknowledged, and that fixture is not written once the
/// broker is back (librdkafka gave up on it, not just the wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_bounded_and_a_timed_out_fixture_is_never_written() {
    let cluster = TestCluster::start()
        .unwrap()
        .publish_timeout(Duration::from_secs(2))
        .unwrap();
    cluster.create_topic("orders", 1).unwrap();
    let order = |i: i32| Message::builder("orders").value(format!("{i}")).build();
    cluster.publish([order(0)]).await.unwrap();
    cluster.cluster().broker_down(1).unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        cluster.publish([order(1), order(2)]),
    )
    .await
    .expect("publish returned within its timeout")
    .unwrap_err();
    let took = started.elapsed();
    let text = err.to_string();
    assert!(
        matches!(err, KitError::Timeout { .. })
            && text.starts_with(
                "the acknowledgement of fixture 0 (to orders) did not happen within 2s: 0 \
                 fixtures published before it; librdkafka gave up on it"
            ),
        "{text}"
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");

    cluster.cluster().broker_up(1).unwrap();
    // librdkafka reconnects with a backoff: a fixture published meanwhile
    // times out too (and is not written either).
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = cluster.publish([order(3)]).await {
        assert!(Instant::now() < deadline, "the broker never came back: {e}");
    }
    let values: Vec<String> = cluster
        .read("orders", 2, Duration::from_secs(10))
        .await
        .unwrap()
        .iter()
        .map(|m| m.value_str().unwrap().to_owned())
        .collect();
    assert_eq!(values, ["0", "3"], "fixtures 1 and 2 were never written");
}
