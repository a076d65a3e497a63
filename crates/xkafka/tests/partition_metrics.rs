//! Per-partition metrics follow the assignment: lag is there for a partition
//! this member never committed, and the series of a revoked partition go.
#![cfg(feature = "metrics")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use xkafka::metrics::Metrics;
use xkafka::{Ack, Decision, Message};

fn series(metrics: &Metrics, family: &str, topic: &str) -> Vec<String> {
    metrics
        .render()
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{family}{{")) && l.contains(&format!("topic=\"{topic}\""))
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_reported_for_a_partition_this_member_never_committed() {
    let topic = topic("lag-uncommitted", 1).await;
    let group = unique("lag-uncommitted-g");
    let producer = producer();
    fill(&producer, &topic, 0, 10).await;
    // An earlier member of the group handles and commits the first ten.
    assert_eq!(
        consume(&group, &topic, 10, Duration::from_secs(60))
            .await
            .len(),
        10
    );
    assert_eq!(committed(&group, &topic, 0), Some(10));
    fill(&producer, &topic, 0, 5).await;
    producer.close().await;

    // This member's handler never finishes: it commits nothing.
    let metrics = Metrics::new();
    let consumer = consumer(&group, &topic)
        .shutdown_timeout(Duration::from_secs(2))
        .metrics(&metrics)
        .error_handler(|err| panic!("unexpected: {err}"))
        .handler(|_m: Message| async {
            std::future::pending::<()>().await;
            Ack::Success
        })
        .build()
        .unwrap();
    let lag = format!("xkafka_consumer_lag{{partition=\"0\",topic=\"{topic}\"}} 5");
    let offset = format!("xkafka_committed_offset{{partition=\"0\",topic=\"{topic}\"}} 10");
    let probe = metrics.clone();
    let seen = Arc::new(Mutex::new(String::new()));
    let last = seen.clone();
    let summary = consumer
        .run(until(
            move || {
                let text = probe.render();
                let found = text.contains(&lag) && text.contains(&offset);
                *last.lock().unwrap() = text;
                found
            },
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    let text = seen.lock().unwrap().clone();
    assert!(
        text.contains(&format!(
            "xkafka_consumer_lag{{partition=\"0\",topic=\"{topic}\"}} 5"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "xkafka_committed_offset{{partition=\"0\",topic=\"{topic}\"}} 10"
        )),
        "{text}"
    );
    // Closing revoked the partition: its series went with it.
    assert!(
        !metrics.render().contains("xkafka_consumer_lag{"),
        "{}",
        metrics.render()
    );
    assert!(summary.committed.is_empty(), "{summary:?}");
    assert_eq!(summary.abandoned, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_of_a_revoked_partition_are_removed() {
    let topic = topic("metrics-revoke", 2).await;
    let group = unique("metrics-revoke-g");
    let producer = producer();
    for p in 0..2 {
        fill(&producer, &topic, p, 5).await;
    }
    producer.close().await;

    let metrics = Metrics::new();
    let first = consumer(&group, &topic)
        .metrics(&metrics)
        .config("auto.commit.interval.ms", "100")
        .error_handler(|err| {
            eprintln!("first: {err}");
            Decision::Continue
        })
        .handler(|_m: Message| async { Ack::Success })
        .build()
        .unwrap();
    let stop_first = first.shutdown_handle();
    let first = tokio::spawn(first.run(std::future::pending()));
    let probe = metrics.clone();
    let t = topic.clone();
    until(
        move || series(&probe, "xkafka_committed_offset", &t).len() == 2,
        Duration::from_secs(60),
    )
    .await;
    let before = series(&metrics, "xkafka_committed_offset", &topic);
    assert_eq!(before.len(), 2, "both partitions reported: {before:?}");

    // A second member takes one partition away.
    let second = consumer(&group, &topic)
        .error_handler(|err| {
            eprintln!("second: {err}");
            Decision::Continue
        })
        .handler(|_m: Message| async { Ack::Success })
        .build()
        .unwrap();
    let probe = metrics.clone();
    let t = topic.clone();
    let summary = second
        .run(until(
            move || series(&probe, "xkafka_committed_offset", &t).len() == 1,
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    let after_committed = series(&metrics, "xkafka_committed_offset", &topic);
    let after_lag = series(&metrics, "xkafka_consumer_lag", &topic);
    stop_first.shutdown();
    first.await.unwrap().unwrap();
    assert_eq!(summary.assignments, 1, "the second member got partitions");
    assert_eq!(after_committed.len(), 1, "{after_committed:?}");
    assert_eq!(after_lag.len(), 1, "{after_lag:?}");
}
