//! `ConsumerBuilder::on_rebalance` on the real broker: listeners hear of
//! an assignment before any message of it is handled and of the
//! revocation after the last one, and a panicking listener goes to the
//! error handler instead of unwinding into librdkafka.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{consumer, fill, producer, topic, unique, until};
use xkafka::{Decision, Error, Message, Rebalance};

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Assigned(Vec<i32>),
    Handled(i64),
    Revoked(Vec<i32>, bool),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_hear_the_assignment_before_its_messages_and_the_revocation_after() {
    let topic = topic("rebalance", 2).await;
    let p = producer();
    fill(&p, &topic, 0, 5).await;
    fill(&p, &topic, 1, 5).await;
    p.close().await;
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let second: Arc<Mutex<usize>> = Arc::default();
    let (e, h, s) = (events.clone(), events.clone(), second.clone());
    let c = consumer(&unique("rebalance"), &topic)
        .on_rebalance(move |event: &Rebalance| {
            let mut e = e.lock().unwrap();
            match event {
                Rebalance::Assigned(ps) => {
                    e.push(Event::Assigned(ps.iter().map(|tp| tp.partition).collect()))
                }
                Rebalance::Revoked { partitions, lost } => e.push(Event::Revoked(
                    partitions.iter().map(|tp| tp.partition).collect(),
                    *lost,
                )),
                _ => {}
            }
        })
        .on_rebalance(move |_: &Rebalance| *s.lock().unwrap() += 1)
        .error_handler(|err| panic!("unexpected: {err}"))
        .handler(move |m: Message| {
            h.lock().unwrap().push(Event::Handled(m.offset().unwrap()));
            async {}
        })
        .build()
        .unwrap();
    let probe = events.clone();
    c.run(until(
        move || probe.lock().unwrap().len() >= 11,
        Duration::from_secs(30),
    ))
    .await
    .unwrap();
    let events = events.lock().unwrap().clone();
    assert_eq!(events[0], Event::Assigned(vec![0, 1]), "{events:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Handled(_)))
            .count(),
        10
    );
    assert_eq!(
        events.last(),
        Some(&Event::Revoked(vec![0, 1], false)),
        "revoked at the close, after the last message: {events:?}"
    );
    assert_eq!(*second.lock().unwrap(), 2, "every listener is called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_listener_goes_to_the_error_handler() {
    let topic = topic("rebalance-panic", 1).await;
    let p = producer();
    fill(&p, &topic, 0, 3).await;
    p.close().await;
    let reported: Arc<Mutex<Vec<String>>> = Arc::default();
    let handled: Arc<Mutex<usize>> = Arc::default();
    let (r, h) = (reported.clone(), handled.clone());
    let c = consumer(&unique("rebalance-panic"), &topic)
        .on_rebalance(|event: &Rebalance| {
            if matches!(event, Rebalance::Assigned(_)) {
                panic!("listener bug");
            }
        })
        .error_handler(move |err| {
            if matches!(err, Error::CallbackPanicked { .. }) {
                r.lock().unwrap().push(err.to_string());
            }
            Decision::Continue
        })
        .handler(move |_m: Message| {
            *h.lock().unwrap() += 1;
            async {}
        })
        .build()
        .unwrap();
    let probe = handled.clone();
    c.run(until(
        move || *probe.lock().unwrap() >= 3,
        Duration::from_secs(30),
    ))
    .await
    .expect("the consumer goes on when the error handler says so");
    let reported = reported.lock().unwrap().clone();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(
        reported[0].contains("on_rebalance") && reported[0].contains("listener bug"),
        "{reported:?}"
    );
}
