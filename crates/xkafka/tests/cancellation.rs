//! Dropping `Consumer::run`'s future (a timeout, a `select!` that chose
//! another branch, an aborted task) stops the consumer: its member leaves
//! the group and nothing more is handled.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::ClientConfig;
use xkafka::{Ack, Decision, Message};

/// Members of `group`, as the group coordinator lists them.
fn members(group: &str) -> usize {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let list = client
        .fetch_group_list(Some(group), Duration::from_secs(5))
        .expect("group list");
    list.groups()
        .iter()
        .filter(|g| g.name() == group)
        .map(|g| g.members().len())
        .sum()
}

async fn publish(topic: &str, prefix: &str, per_partition: usize) {
    let producer = producer();
    for partition in 0..2 {
        for i in 0..per_partition {
            let msg = Message::builder(topic)
                .partition(partition)
                .key(format!("k{i}"))
                .value(format!("{prefix}-{partition}-{i}"))
                .build();
            producer.publish(msg).await.expect("publish");
        }
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_run_leaves_the_group_and_handles_nothing_more() {
    let topic = topic("cancel", 2).await;
    let group = unique("cancel-group");
    publish(&topic, "old", 10).await;

    let handled = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let after_drop = Arc::new(AtomicUsize::new(0));
    let (h, d, a) = (handled.clone(), dropped.clone(), after_drop.clone());
    let first = consumer(&group, &topic)
        // Long enough that a member disappearing within the bound below can
        // only have left: it cannot have been expired by the coordinator.
        .config("session.timeout.ms", "45000")
        .error_handler(|err| {
            eprintln!("consumer error: {err}");
            Decision::Continue
        })
        .handler(move |_m: Message| {
            if d.load(Ordering::SeqCst) {
                a.fetch_add(1, Ordering::SeqCst);
            }
            h.fetch_add(1, Ordering::SeqCst);
            async { Ack::Success }
        })
        .build()
        .unwrap();

    let probe = handled.clone();
    tokio::select! {
        result = first.run(std::future::pending()) => panic!("run ended by itself: {result:?}"),
        () = until(move || probe.load(Ordering::SeqCst) >= 20, Duration::from_secs(60)) => {}
    }
    // The run future is gone (dropped by `select!`).
    let dropped_at = Instant::now();
    dropped.store(true, Ordering::SeqCst);
    assert_eq!(
        handled.load(Ordering::SeqCst),
        20,
        "every old message handled"
    );

    // Messages that arrive after the drop are fetchable by any member.
    publish(&topic, "new", 5).await;

    // The member leaves: within less than the session timeout, so it left
    // rather than being expired. (Without the fix it never does: its poll
    // thread goes on heartbeating.)
    let deadline = dropped_at + Duration::from_secs(20);
    while members(&group) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left_after = dropped_at.elapsed();
    assert_eq!(
        members(&group),
        0,
        "the dropped consumer is still in the group after {left_after:?}"
    );
    eprintln!("group empty {left_after:?} after the drop");

    // A second member of the group gets both partitions and exactly what
    // was published after the drop: the first one committed what it handled.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let second = consumer(&group, &topic)
        .error_handler(|err| panic!("unexpected: {err}"))
        .handler(move |m: Message| {
            sink.lock()
                .unwrap()
                .push(m.value_str().unwrap_or_default().to_owned());
            async { Ack::Success }
        })
        .build()
        .unwrap();
    let probe = seen.clone();
    let summary = second
        .run(until(
            move || probe.lock().unwrap().len() >= 10,
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let mut expected: Vec<String> = (0..2)
        .flat_map(|p| (0..5).map(move |i| format!("new-{p}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "the second member read only the new messages"
    );
    assert_eq!(summary.committed.len(), 2, "it owned both partitions");
    assert_eq!(
        after_drop.load(Ordering::SeqCst),
        0,
        "the dropped consumer handled messages after the drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_run_task_stops_its_consumer() {
    let topic = topic("cancel-abort", 2).await;
    let group = unique("cancel-abort-group");
    publish(&topic, "old", 3).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let consumer = consumer(&group, &topic)
        .config("session.timeout.ms", "45000")
        .error_handler(|_| Decision::Continue)
        .handler(move |_m: Message| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ack::Success }
        })
        .build()
        .unwrap();
    let shutdown = consumer.shutdown_handle();
    let task = tokio::spawn(consumer.run(std::future::pending()));
    let probe = handled.clone();
    until(
        move || probe.load(Ordering::SeqCst) >= 6,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(handled.load(Ordering::SeqCst), 6);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(
        shutdown.is_shutting_down(),
        "aborting the task did not start a shutdown"
    );
    let aborted_at = Instant::now();
    while members(&group) > 0 && aborted_at.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        members(&group),
        0,
        "still a member {:?} after the abort",
        aborted_at.elapsed()
    );
}
