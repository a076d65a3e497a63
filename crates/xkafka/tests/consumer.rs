//! Streaming consumer against the real broker: offsets after failures,
//! commit modes, the error handler's contract and middleware order.
//! (Cooperative rebalancing is in `tests/concurrency.rs`.)

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use xkafka::middleware::{from_fn, Next};
use xkafka::{Ack, BoxError, CommitMode, Decision, Message, ShutdownHandle};

const WAIT: Duration = Duration::from_secs(30);

/// First offset a fresh consumer of `group` receives on each partition.
async fn first_offsets(group: &str, topic: &str, expect: usize) -> BTreeMap<i32, i64> {
    let seen = consume(group, topic, expect, WAIT).await;
    let mut first = BTreeMap::new();
    for m in &seen {
        first
            .entry(m.partition().unwrap())
            .or_insert(m.offset().unwrap());
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_failure_is_read_again_and_nothing_before_it() {
    let topic = topic("fail-stop", 3).await;
    let producer = producer();
    for p in 0..3 {
        fill(&producer, &topic, p, 10).await;
    }
    producer.close().await;
    let group = unique("fail-stop-g");
    let handled: Arc<Mutex<BTreeMap<i32, i64>>> = Arc::default();
    let last = handled.clone();
    let (errors, on_error) = recording_error_handler(Decision::Stop);
    let consumer = consumer(&group, &topic)
        .error_handler(on_error)
        .handler(move |m: Message| {
            let last = last.clone();
            async move {
                let (p, o) = (m.partition().unwrap(), m.offset().unwrap());
                if p == 1 && o == 4 {
                    return Err::<Ack, BoxError>("the 5th message of partition 1 is poison".into());
                }
                last.lock().unwrap().insert(p, o);
                Ok(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let err = consumer.run(std::future::pending()).await.unwrap_err();
    assert_eq!(
        err.message_location(),
        Some((topic.as_str(), 1, 4)),
        "{err}"
    );
    assert_eq!(errors.lock().unwrap().len(), 1);
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        handled.get(&1),
        Some(&3),
        "partition 1 stopped right before the failure"
    );

    // The next member of the group starts exactly at the failed message on
    // partition 1, and right after the last handled one elsewhere.
    let remaining: usize = (0..3)
        .map(|p| 10 - handled.get(&p).map_or(0, |o| o + 1) as usize)
        .sum();
    let first = first_offsets(&group, &topic, remaining).await;
    assert_eq!(
        first.get(&1),
        Some(&4),
        "failed message delivered again, nothing before it"
    );
    for p in [0, 2] {
        let expected = handled.get(&p).map_or(0, |o| o + 1);
        if expected < 10 {
            assert_eq!(
                first.get(&p),
                Some(&expected),
                "partition {p} resumes after its last handled offset"
            );
        } else {
            assert_eq!(first.get(&p), None, "partition {p} was finished");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_failure_is_not_read_again() {
    let topic = topic("fail-skip", 1).await;
    let producer = producer();
    fill(&producer, &topic, 0, 10).await;
    producer.close().await;
    let group = unique("fail-skip-g");
    let handle: Arc<OnceLock<ShutdownHandle>> = Arc::default();
    let stopper = handle.clone();
    let consumer = consumer(&group, &topic)
        .error_handler(|_| Decision::Continue)
        .handler(move |m: Message| {
            let stopper = stopper.clone();
            async move {
                if m.offset() == Some(4) {
                    // Stop after this message: the error handler's skip must
                    // still store its offset.
                    stopper.get().unwrap().shutdown();
                    return Err::<(), BoxError>("poison".into());
                }
                Ok(())
            }
        })
        .build()
        .unwrap();
    handle.set(consumer.shutdown_handle()).unwrap();
    let summary = consumer.run(std::future::pending()).await.unwrap();
    assert_eq!(
        (summary.succeeded, summary.failed, summary.failed_skipped),
        (4, 1, 1)
    );
    assert_eq!(committed(&group, &topic, 0), Some(5));
    let first = first_offsets(&group, &topic, 5).await;
    assert_eq!(
        first.get(&0),
        Some(&5),
        "the next consumer starts after the skipped failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_commit_commits_each_message_before_the_next() {
    let topic = topic("manual", 1).await;
    let producer = producer();
    fill(&producer, &topic, 0, 10).await;
    producer.close().await;
    let group = unique("manual-g");
    // (offset being handled, committed offset seen meanwhile)
    type Observed = Vec<(i64, Option<i64>)>;
    let observed: Arc<Mutex<Observed>> = Arc::default();
    let record = observed.clone();
    let (g, t) = (group.clone(), topic.clone());
    let consumer = consumer(&group, &topic)
        .commit_mode(CommitMode::Manual)
        .error_handler(|err| panic!("unexpected error: {err}"))
        .handler(move |m: Message| {
            let (record, g, t) = (record.clone(), g.clone(), t.clone());
            async move {
                let offset = m.offset().unwrap();
                let seen = tokio::task::spawn_blocking(move || committed(&g, &t, 0))
                    .await
                    .unwrap();
                record.lock().unwrap().push((offset, seen));
            }
        })
        .build()
        .unwrap();
    let probe = observed.clone();
    consumer
        .run(until(move || probe.lock().unwrap().len() >= 10, WAIT))
        .await
        .unwrap();
    let observed = observed.lock().unwrap().clone();
    assert_eq!(observed.len(), 10);
    for (offset, seen) in observed {
        let expected = if offset == 0 { None } else { Some(offset) };
        assert_eq!(
            seen, expected,
            "while handling offset {offset} the committed offset is the previous one + 1"
        );
    }
    assert_eq!(committed(&group, &topic, 0), Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_does_not_redeliver_a_message_that_crashed() {
    let topic = topic("at-most-once", 1).await;
    let producer = producer();
    fill(&producer, &topic, 0, 10).await;
    producer.close().await;
    let group = unique("amo-g");
    let handled: Arc<Mutex<Vec<i64>>> = Arc::default();
    let record = handled.clone();
    let consumer = consumer(&group, &topic)
        .commit_mode(CommitMode::AtMostOnce)
        .error_handler(|_| Decision::Stop)
        .handler(move |m: Message| {
            let record = record.clone();
            async move {
                let offset = m.offset().unwrap();
                if offset == 3 {
                    panic!("crash while handling offset 3");
                }
                record.lock().unwrap().push(offset);
            }
        })
        .build()
        .unwrap();
    let err = consumer.run(std::future::pending()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("handler panicked: crash while handling offset 3"),
        "{err}"
    );
    assert_eq!(*handled.lock().unwrap(), [0, 1, 2]);
    let first = first_offsets(&group, &topic, 6).await;
    assert_eq!(
        first.get(&0),
        Some(&4),
        "the crashed message is not delivered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_handler_only_ever_sees_errors() {
    let topic = topic("only-errors", 2).await;
    let producer = producer();
    for p in 0..2 {
        fill(&producer, &topic, p, 15).await;
    }
    producer.close().await;
    let (errors, on_error) = recording_error_handler(Decision::Continue);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let consumer = consumer(&unique("only-errors-g"), &topic)
        .error_handler(on_error)
        .handler(move |m: Message| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                match m.offset().unwrap() % 3 {
                    0 => Ok(Ack::Success),
                    1 => Ok(Ack::Skip),
                    _ => Err(format!("fail {}", m.location())),
                }
            }
        })
        .build()
        .unwrap();
    let probe = calls.clone();
    let summary = consumer
        .run(until(move || probe.load(Ordering::Relaxed) >= 30, WAIT))
        .await
        .unwrap();
    assert_eq!(
        (summary.succeeded, summary.skipped, summary.failed),
        (10, 10, 10)
    );
    let errors = errors.lock().unwrap().clone();
    assert_eq!(
        errors.len(),
        10,
        "called once per failure and for nothing else: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e.starts_with("handler failed on") && e.contains(": fail ")),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_middleware_first_added_is_outermost() {
    let topic = topic("cons-order", 1).await;
    let producer = producer();
    fill(&producer, &topic, 0, 1).await;
    producer.close().await;
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut builder = consumer(&unique("cons-order-g"), &topic).error_handler(|_| Decision::Stop);
    for name in ["a", "b", "c"] {
        let log = log.clone();
        builder = builder.layer(from_fn(move |m: Message, next: Next| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(format!("{name} in"));
                let out = next.run(m).await;
                log.lock().unwrap().push(format!("{name} out"));
                out
            }
        }));
    }
    let handler_log = log.clone();
    let consumer = builder
        .handler(move |_m: Message| {
            let log = handler_log.clone();
            async move { log.lock().unwrap().push("handler".into()) }
        })
        .build()
        .unwrap();
    let probe = log.clone();
    consumer
        .run(until(move || probe.lock().unwrap().len() >= 7, WAIT))
        .await
        .unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["a in", "b in", "c in", "handler", "c out", "b out", "a out"]
    );
}
