//! The middleware suite on the real broker: retry without stalling other
//! partitions, panic recovery, tower's timeout, typed handlers with a router.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde::Deserialize;
use xkafka::extract::{Json, Key, SkipRejectedLayer, State};
use xkafka::middleware::recover::RecoverLayer;
use xkafka::middleware::retry::{Attempt, Backoff, RetryLayer};
use xkafka::{Ack, BoxError, Decision, Message, Order, Router};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backing_off_message_does_not_hold_up_other_partitions() {
    const BACKOFF: Duration = Duration::from_secs(2);
    let topic = topic("retry", 3).await;
    let producer = producer();
    for p in 0..3 {
        fill(&producer, &topic, p, 20).await;
    }
    producer.close().await;
    // (partition, offset, attempt, when)
    type Calls = Vec<(i32, i64, u32, Instant)>;
    let calls: Arc<Mutex<Calls>> = Arc::default();
    let record = calls.clone();
    let consumer = consumer(&unique("retry-g"), &topic)
        .concurrency(3)
        .order(Order::PerPartition)
        .error_handler(|err| panic!("unexpected: {err}"))
        .layer(RetryLayer::new(
            Backoff::new().initial_delay(BACKOFF).jitter(0.0),
        ))
        .handler(move |m: Message| {
            let record = record.clone();
            async move {
                let attempt = m.extensions().get::<Attempt>().unwrap().0;
                let (p, o) = (m.partition().unwrap(), m.offset().unwrap());
                record.lock().unwrap().push((p, o, attempt, Instant::now()));
                if p == 0 && o == 0 && attempt < 3 {
                    return Err::<(), BoxError>("transient".into());
                }
                // Real work takes time: the other partitions are still busy
                // while partition 0 backs off.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            }
        })
        .build()
        .unwrap();
    let probe = calls.clone();
    let summary = consumer
        .run(until(move || probe.lock().unwrap().len() >= 62, WAIT))
        .await
        .unwrap();
    assert_eq!(summary.succeeded, 60);
    let calls = calls.lock().unwrap().clone();
    let first: Vec<_> = calls.iter().filter(|c| c.0 == 0 && c.1 == 0).collect();
    assert_eq!(
        first.iter().map(|c| c.2).collect::<Vec<_>>(),
        [1, 2, 3],
        "called 3 times"
    );
    let (t1, t3) = (first[0].3, first[2].3);
    assert!(t3 - t1 >= BACKOFF * 2, "waited 2 s then 3 s: {:?}", t3 - t1);
    // Partition 0 waits in its lane; the other two flow meanwhile: none of
    // their 40 messages waits for the backoff to end. (How many of them
    // come before partition 0's first call depends on fetch timing, so the
    // count during the backoff is only required to be non-zero.)
    let others_during = calls
        .iter()
        .filter(|c| c.0 != 0 && c.3 > t1 && c.3 < t3)
        .count();
    let others_after = calls.iter().filter(|c| c.0 != 0 && c.3 >= t3).count();
    let p0_during = calls
        .iter()
        .filter(|c| c.0 == 0 && c.1 > 0 && c.3 < t3)
        .count();
    println!(
        "during partition 0's backoff: {others_during} messages of other partitions handled, \
         {others_after} after it, {p0_during} of partition 0"
    );
    assert_eq!(p0_during, 0, "partition order holds while backing off");
    assert!(others_during > 0, "other partitions stalled");
    assert_eq!(others_after, 0, "other partitions waited for the backoff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_becomes_a_failure_and_the_consumer_goes_on() {
    let topic = topic("recover", 1).await;
    let producer = producer();
    fill(&producer, &topic, 0, 5).await;
    producer.close().await;
    let (errors, on_error) = recording_error_handler(Decision::Continue);
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let consumer = consumer(&unique("recover-g"), &topic)
        .error_handler(on_error)
        .layer(RecoverLayer::new())
        .handler(move |m: Message| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                if m.offset() == Some(2) {
                    panic!("cannot parse order 2");
                }
            }
        })
        .build()
        .unwrap();
    let probe = handled.clone();
    let summary = consumer
        .run(until(move || probe.load(Ordering::Relaxed) >= 5, WAIT))
        .await
        .unwrap();
    assert_eq!((summary.succeeded, summary.failed), (4, 1));
    let errors = errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("@2: handler panicked: cannot parse order 2"),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn towers_timeout_fails_a_slow_handler_like_any_failure() {
    const TIMEOUT: Duration = Duration::from_millis(200);
    const SLOW: Duration = Duration::from_secs(10);
    let topic = topic("timeout", 1).await;
    let producer = producer();
    fill(&producer, &topic, 0, 3).await;
    producer.close().await;
    // When the slow handler started, and when its failure was reported:
    // measured from the handler, not from before the group join.
    let slow_started: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let failed_at: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let (errors, on_error) = recording_error_handler(Decision::Continue);
    let reported = failed_at.clone();
    let handled = Arc::new(AtomicUsize::new(0));
    let (counter, started) = (handled.clone(), slow_started.clone());
    let consumer = consumer(&unique("timeout-g"), &topic)
        .error_handler(move |err| {
            reported.get_or_init(Instant::now);
            on_error(err)
        })
        .layer(tower::timeout::TimeoutLayer::new(TIMEOUT))
        .handler(move |m: Message| {
            let (counter, started) = (counter.clone(), started.clone());
            async move {
                if m.offset() == Some(1) {
                    started.get_or_init(Instant::now);
                    tokio::time::sleep(SLOW).await;
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()
        .unwrap();
    let (probe, count) = (errors.clone(), handled.clone());
    let summary = consumer
        .run(until(
            move || probe.lock().unwrap().len() == 1 && count.load(Ordering::Relaxed) == 2,
            WAIT,
        ))
        .await
        .unwrap();
    assert_eq!(
        (summary.succeeded, summary.failed),
        (2, 1),
        "the slow one failed, the others succeeded"
    );
    let errors = errors.lock().unwrap().clone();
    assert!(errors[0].contains("@1: request timed out"), "{errors:?}");
    let cut_after = *failed_at.get().unwrap() - *slow_started.get().unwrap();
    println!("the slow handler failed {cut_after:?} after it started (timeout {TIMEOUT:?})");
    assert!(
        cut_after < SLOW,
        "the slow handler was cut short, not waited for: {cut_after:?}"
    );
}

#[derive(Debug, Deserialize)]
struct Order_ {
    id: u64,
    total: u64,
}

#[derive(Clone, Default)]
struct Books(Arc<Mutex<HashMap<u32, u64>>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handlers_behind_a_router() {
    let orders = topic("typed-orders", 2).await;
    let audit = topic("typed-audit", 1).await;
    let producer = producer();
    let valid = [(1u32, 1u64, 10u64), (2, 2, 20), (1, 3, 30)];
    for (customer, id, total) in valid {
        let msg = Message::builder(orders.as_str())
            .key(customer.to_string())
            .value(format!(r#"{{"id":{id},"total":{total}}}"#))
            .build();
        producer.publish(msg).await.unwrap();
    }
    producer
        .publish(
            Message::builder(orders.as_str())
                .key("3")
                .value("{oops")
                .build(),
        )
        .await
        .unwrap();
    producer
        .publish(Message::builder(audit.as_str()).value("x").build())
        .await
        .unwrap();
    producer.close().await;

    async fn book(
        State(books): State<Books>,
        Key(customer): Key<u32>,
        Json(order): Json<Order_>,
    ) -> Ack {
        assert!(order.id > 0);
        *books.0.lock().unwrap().entry(customer).or_default() += order.total;
        Ack::Success
    }
    let books = Books::default();
    let router = Router::new()
        .route(orders.as_str(), book)
        .fallback(|_m: Message| async { Ack::Skip });
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    let consumer = xkafka::Consumer::builder(unique("typed-g"))
        .brokers([brokers()])
        .topics([orders.as_str(), audit.as_str()])
        .config("auto.offset.reset", "earliest")
        .error_handler(|err| panic!("unexpected: {err}"))
        .layer(xkafka::middleware::from_fn(
            move |m: Message, next: xkafka::middleware::Next| {
                let counter = counter.clone();
                async move {
                    let out = next.run(m).await;
                    counter.fetch_add(1, Ordering::Relaxed);
                    out
                }
            },
        ))
        .layer(SkipRejectedLayer)
        .layer(xkafka::extract::AddStateLayer::new(books.clone()))
        .service(router)
        .build()
        .unwrap();
    let probe = done.clone();
    let summary = consumer
        .run(until(move || probe.load(Ordering::Relaxed) >= 5, WAIT))
        .await
        .unwrap();
    assert_eq!(
        (summary.succeeded, summary.skipped, summary.failed),
        (3, 2, 0),
        "invalid JSON and the audit topic skipped"
    );
    let books = books.0.lock().unwrap().clone();
    assert_eq!(books, HashMap::from([(1, 40), (2, 20)]));
}
