//! The new user's flow of issue 32, with `xkafka` alone beside the
//! library: create a topic, produce to it, run the README's consumer (an
//! equivalent: same builder calls, a handler that counts) and see it
//! consume, see the group's lag reach zero, reset the group to earliest
//! (dry run, then `--execute` with the consumer stopped) and read
//! everything again. On the way: what `groups list|describe` show of a
//! running consumer, and the refusals while it runs.
#![allow(unreachable_pub)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use xkafka::{Ack, BoxError, Consumer, Decision, Error, Message};

/// A running consumer of `topic` in `group`, like the README's.
struct Running {
    seen: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<xkafka::Summary, Error>>,
}

fn start_consumer(group: &str, topic: &str) -> Running {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorder = seen.clone();
    let consumer = Consumer::builder(group)
        .brokers([brokers()])
        .topics([topic])
        .config("auto.offset.reset", "earliest")
        .config("session.timeout.ms", "6000")
        .config("heartbeat.interval.ms", "2000")
        .error_handler(|err: &Error| {
            eprintln!("consumer error: {err}");
            Decision::Continue
        })
        .handler(move |msg: Message| {
            let recorder = recorder.clone();
            async move {
                let Some(order) = msg.value_str() else {
                    return Ok::<Ack, BoxError>(Ack::Skip);
                };
                recorder.lock().unwrap().push(order.to_owned());
                Ok(Ack::Success)
            }
        })
        .build()
        .expect("consumer");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    Running { seen, stop, done }
}

impl Running {
    /// Waits until it saw `n` records (at most 30 s).
    async fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.seen.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "consumed {:?}, expected {n}",
                self.seen.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> Vec<String> {
        let _ = self.stop.send(());
        let summary = self.done.await.expect("joined").expect("run");
        eprintln!("consumer stopped: {summary:?}");
        self.seen.lock().unwrap().clone()
    }
}

/// `xkafka lag --group G --format json`'s total.
fn total_lag(group: &str, topic: &str) -> Value {
    run(&[
        "lag", "--group", group, "--topic", topic, "--format", "json",
    ])
    .json()
}

#[tokio::test]
async fn a_new_user_creates_produces_consumes_resets_and_reads_again() {
    let topic = unique("orders");
    let group = unique("billing");
    let r = run(&["topics", "create", &topic, "--partitions", "2"]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(r
        .stdout
        .contains(&format!("created topic {topic} (2 partitions)")));
    let orders: String = (1..=10).map(|i| format!("order-{i}\n")).collect();
    let r = run_with(
        xkafka(&["produce", &topic, "--format", "json"]),
        orders.as_bytes(),
    );
    assert_eq!(r.json()["acknowledged"], 10);

    let consumer = start_consumer(&group, &topic);
    consumer.wait_for(10).await;

    // The lag reaches zero while it runs (commits are periodic).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lag = total_lag(&group, &topic);
        if lag["total_lag"] == 0
            && lag["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| !p["committed"].is_null())
        {
            break;
        }
        assert!(Instant::now() < deadline, "lag never reached zero: {lag}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What the operator sees of the running group.
    let listed = run(&["groups", "list", "--format", "json"]).json();
    let mine = listed["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group.as_str())
        .unwrap_or_else(|| panic!("{group} not listed: {listed}"))
        .clone();
    assert_eq!(mine["protocol"], "classic", "{mine}");
    assert_eq!(mine["state"], "Stable", "{mine}");
    assert_eq!(mine["members"], 1, "{mine}");
    let described = run(&["groups", "describe", &group, "--format", "json"]).json();
    let members = described["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{described}");
    assert_eq!(
        members[0]["assignment"][0]["topic"],
        topic.as_str(),
        "{described}"
    );
    assert_eq!(
        members[0]["assignment"][0]["partitions"],
        serde_json::json!([0, 1])
    );
    assert!(!members[0]["client_id"].as_str().unwrap().is_empty());
    assert_eq!(described["total_lag"], 0, "{described}");

    // While it runs: a dry run is shown, --execute and delete are refused.
    let dry = run(&[
        "groups",
        "reset-offsets",
        &group,
        "--topic",
        &topic,
        "--to-earliest",
        "--format",
        "json",
    ])
    .json();
    assert_eq!(dry["executed"], false);
    assert!(
        dry["blocked"].as_str().unwrap().contains("1 members"),
        "{dry}"
    );
    let refused = run(&[
        "groups",
        "reset-offsets",
        &group,
        "--topic",
        &topic,
        "--to-earliest",
        "--execute",
    ]);
    assert!(
        refused
            .fails(1)
            .contains(&format!("group {group} has 1 members")),
        "{refused:?}"
    );
    let busy = run(&["groups", "delete", &group]);
    assert!(busy.fails(1).contains("has members"), "{busy:?}");
    assert_eq!(total_lag(&group, &topic)["total_lag"], 0, "nothing changed");

    let first = consumer.stop().await;
    assert_eq!(first.len(), 10, "{first:?}");

    // Stopped: the dry run plans offset 0 everywhere and changes nothing.
    let dry = run(&[
        "groups",
        "reset-offsets",
        &group,
        "--topic",
        &topic,
        "--to-earliest",
        "--format",
        "json",
    ])
    .json();
    assert_eq!(dry["blocked"], Value::Null, "{dry}");
    let plan = dry["partitions"].as_array().unwrap();
    assert_eq!(plan.len(), 2);
    assert!(plan.iter().all(|p| p["target"] == 0), "{dry}");
    let current: i64 = plan.iter().map(|p| p["current"].as_i64().unwrap()).sum();
    assert_eq!(current, 10, "{dry}");
    assert_eq!(
        total_lag(&group, &topic)["total_lag"],
        0,
        "a dry run changes nothing"
    );
    let done = run(&[
        "groups",
        "reset-offsets",
        &group,
        "--topic",
        &topic,
        "--to-earliest",
        "--execute",
    ]);
    assert_eq!(done.code(), 0, "{done:?}");
    assert!(done.stdout.contains(&format!("applied to group {group}")));
    assert_eq!(total_lag(&group, &topic)["total_lag"], 10);

    // Everything again.
    let consumer = start_consumer(&group, &topic);
    consumer.wait_for(10).await;
    let second = consumer.stop().await;
    let expected: HashSet<String> = (1..=10).map(|i| format!("order-{i}")).collect();
    assert_eq!(second.iter().cloned().collect::<HashSet<_>>(), expected);
    assert_eq!(second.len(), 10, "{second:?}");

    // An empty group can go.
    let r = run(&["groups", "delete", &group, "--format", "json"]).json();
    assert_eq!(r["deleted"], group.as_str());
    let r = run(&["groups", "describe", &group]);
    assert!(r.fails(1).contains("does not exist"), "{r:?}");
}

#[tokio::test]
async fn a_kip848_group_is_listed_as_consumer_protocol_and_not_reset_while_it_runs() {
    let topic = topic("cli-kip848", 1).await;
    let group = unique("cli-kip848-group");
    let r = run_with(xkafka(&["produce", &topic]), b"one\n");
    assert_eq!(r.code(), 0, "{r:?}");
    let seen: Arc<Mutex<usize>> = Arc::default();
    let counter = seen.clone();
    let consumer = Consumer::builder(&group)
        .brokers([brokers()])
        .topics([topic.as_str()])
        .config("group.protocol", "consumer")
        .config("auto.offset.reset", "earliest")
        .error_handler(|err: &Error| {
            eprintln!("consumer error: {err}");
            Decision::Continue
        })
        .handler(move |_m: Message| {
            let counter = counter.clone();
            async move {
                *counter.lock().unwrap() += 1;
                Ack::Success
            }
        })
        .build()
        .expect("consumer");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while *seen.lock().unwrap() < 1 {
        assert!(Instant::now() < deadline, "nothing consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = run(&["groups", "list", "--format", "json"]).json();
    let mine = listed["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group.as_str())
        .unwrap_or_else(|| panic!("{group} not listed: {listed}"))
        .clone();
    assert_eq!(mine["protocol"], "consumer", "{mine}");
    // Its members are not known here: the broker refuses the commit.
    let refused = run(&[
        "groups",
        "reset-offsets",
        &group,
        "--topic",
        &topic,
        "--to-earliest",
        "--execute",
    ]);
    let line = refused.fails(1);
    assert!(line.contains(&group), "{line}");
    let _ = stop.send(());
    done.await.expect("joined").expect("run");
}
