//! The logging layer on the real broker: one line per message, at the
//! documented levels, inside the message's span. A test binary of its own
//! because it installs the global `tracing` subscriber (handlers run on
//! other threads than the test).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tracing::Level;
use xkafka::middleware::logging::LoggingLayer;
use xkafka::{Ack, Decision, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_logged_with_its_outcome() {
    let out = Captured::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_max_level(Level::INFO)
            .with_ansi(false)
            .with_target(true)
            .finish(),
    )
    .unwrap();
    let topic = topic("logging", 1).await;
    let producer = producer();
    fill(&producer, &topic, 0, 3).await;
    producer.close().await;
    let group = unique("logging-g");
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let consumer = consumer(&group, &topic)
        .error_handler(|_| Decision::Continue)
        .layer(LoggingLayer::new().success_level(Level::INFO))
        .handler(move |m: Message| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                match m.offset() {
                    Some(0) => Ok(Ack::Success),
                    Some(1) => Ok(Ack::Skip),
                    _ => Err("db down"),
                }
            }
        })
        .build()
        .unwrap();
    let probe = handled.clone();
    consumer
        .run(until(
            move || probe.load(Ordering::Relaxed) >= 3,
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    let text = String::from_utf8(out.bytes()).unwrap();
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("kafka.message{"))
        .collect();
    assert_eq!(ours.len(), 3, "{text}");
    let span = format!("kafka.message{{topic={topic} partition=0 offset=");
    assert!(
        ours.iter()
            .all(|l| l.contains(&span) && l.contains(&format!("group=\"{group}\""))),
        "{text}"
    );
    assert!(
        ours[0].contains(" INFO ")
            && ours[0].contains("offset=0")
            && ours[0].contains("outcome=\"success\""),
        "{text}"
    );
    assert!(
        ours[1].contains(" INFO ") && ours[1].contains("outcome=\"skip\""),
        "{text}"
    );
    assert!(
        ours[2].contains("ERROR") && ours[2].contains("error=db down"),
        "{text}"
    );
}
