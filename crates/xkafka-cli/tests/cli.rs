//! End-to-end tests of the `xkafka` binary against the real broker
//! (`XKAFKA_TEST_BROKERS`, default 127.0.0.1:9092; a missing broker fails
//! them). Each test runs the built binary and parses what it prints.
#![allow(unreachable_pub)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use xkafka::Message;

#[tokio::test]
async fn produce_then_tail_round_trip() {
    let topic = topic("cli-roundtrip", 2).await;
    let input = b"k1|hello\nk2|w\xc3\xb6rld|with|bars\r\nk3|\xff\xfebin\nno key here\nk5|\n";
    let cmd = xkafka(&[
        "produce",
        &topic,
        "--key-separator",
        "|",
        "--header",
        "source=cli-test",
        "--header",
        "empty=",
    ]);
    let produced = run_with(cmd, input);
    assert_eq!(produced.code(), 0, "{produced:?}");
    assert_eq!(produced.stdout.trim(), "5 acknowledged");

    // Another line to one partition, counted in JSON.
    let mut cmd = xkafka(&["produce", &topic, "--partition", "1", "--format", "json"]);
    cmd.arg("--key-separator=:");
    let produced = run_with(cmd, b"pk:last").json();
    assert_eq!(produced["acknowledged"], 6 - 5);
    assert_eq!(produced["failed"], 0);

    let records = run(&[
        "tail",
        &topic,
        "--from",
        "beginning",
        "--count",
        "6",
        "--format",
        "json",
    ])
    .json_lines();
    assert_eq!(records.len(), 6);
    let by_key: BTreeMap<String, &Value> = records
        .iter()
        .map(|r| (r["key"].as_str().unwrap_or("<null>").to_owned(), r))
        .collect();
    assert_eq!(by_key["k1"]["value"], "hello");
    assert_eq!(
        by_key["k2"]["value"], "wörld|with|bars",
        "split at the first |, \\r\\n cut"
    );
    assert_eq!(by_key["k3"]["value"], r"\xff\xfebin");
    assert_eq!(by_key["k3"]["value_escaped"], true);
    assert_eq!(by_key["k1"]["value_escaped"], false);
    assert_eq!(by_key["k5"]["value"], "");
    assert_eq!(by_key["<null>"]["value"], "no key here");
    assert_eq!(by_key["<null>"]["key"], Value::Null);
    assert_eq!(by_key["pk"]["partition"], 1);
    for r in records.iter().filter(|r| r["key"] != "pk") {
        assert_eq!(r["topic"], topic.as_str());
        let headers: Vec<(&str, &str)> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["name"].as_str().unwrap(), h["value"].as_str().unwrap()))
            .collect();
        assert_eq!(headers, [("source", "cli-test"), ("empty", "")]);
        assert!(r["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    }
    // Keys, hence partitions, keep the input's order within a partition.
    for p in 0..2 {
        let offsets: Vec<i64> = records
            .iter()
            .filter(|r| r["partition"] == p)
            .map(|r| r["offset"].as_i64().unwrap())
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    }

    // The text form: one line per record, bytes escaped.
    let text = run(&["tail", &topic, "--from", "beginning", "--until-end"]);
    assert_eq!(text.code(), 0, "{text:?}");
    assert_eq!(text.stdout.lines().count(), 6, "{}", text.stdout);
    let k3 = text.stdout.lines().find(|l| l.contains("key=k3")).unwrap();
    assert!(
        k3.ends_with(r#"headers={source=cli-test, empty=} value=b"\xff\xfebin""#),
        "{k3}"
    );

    // One partition, from an offset.
    let p1 = run(&[
        "tail",
        &topic,
        "--partition",
        "1",
        "--from",
        "1",
        "--until-end",
        "--format",
        "json",
    ])
    .json_lines();
    let (_, high) = watermarks(&topic, 1);
    assert_eq!(p1.len() as i64, high - 1);
    assert!(p1
        .iter()
        .all(|r| r["partition"] == 1 && r["offset"].as_i64() >= Some(1)));
    // The last record of each partition, from a time before it.
    let last = run(&[
        "tail",
        &topic,
        "--from",
        "-1",
        "--until-end",
        "--format",
        "json",
    ]);
    assert_eq!(last.json_lines().len(), 2);
    let all = run(&[
        "tail",
        &topic,
        "--from",
        "@1000000000000",
        "--until-end",
        "--format",
        "json",
    ]);
    assert_eq!(all.json_lines().len(), 6);
}

#[tokio::test]
async fn lag_after_a_partial_commit() {
    let topic = topic("cli-lag", 2).await;
    let producer = producer();
    for (partition, count) in [(0, 10), (1, 6)] {
        for i in 0..count {
            let m = Message::builder(topic.clone())
                .partition(partition)
                .value(format!("v{i}"))
                .build();
            producer.publish(m).await.unwrap();
        }
    }
    producer.close().await;
    let group = unique("cli-lag-group");
    {
        let committer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(4))
            .unwrap();
        tpl.add_partition_offset(&topic, 1, Offset::Offset(6))
            .unwrap();
        committer.commit(&tpl, CommitMode::Sync).unwrap();
    }

    let lag = run(&[
        "lag", "--group", &group, "--topic", &topic, "--format", "json",
    ])
    .json();
    assert_eq!(lag["group"], group.as_str());
    let rows: Vec<(i64, i64, i64, i64)> = lag["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["topic"], topic.as_str());
            (
                r["partition"].as_i64().unwrap(),
                r["committed"].as_i64().unwrap(),
                r["end"].as_i64().unwrap(),
                r["lag"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [(0, 4, 10, 6), (1, 6, 6, 0)]);
    assert_eq!(lag["total_lag"], 6);

    // Without --topic: the topics the group committed for (only this one).
    let all = run(&["lag", "--group", &group, "--format", "json"]).json();
    assert_eq!(all["partitions"], lag["partitions"]);

    // The table.
    let table = run(&["lag", "--group", &group]);
    assert_eq!(table.code(), 0, "{table:?}");
    let lines: Vec<Vec<&str>> = table
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG"]);
    assert_eq!(lines[1], [topic.as_str(), "0", "4", "10", "6"]);
    assert_eq!(lines[2], [topic.as_str(), "1", "6", "6", "0"]);
    assert_eq!(lines[3], ["total", "6"]);

    // A group that never committed: nothing to say, and it says so.
    let nobody = unique("cli-lag-nobody");
    let none = run(&["lag", "--group", &nobody]);
    assert!(none.fails(1).contains(&nobody), "{none:?}");
    // With --topic: uncommitted partitions count their whole log.
    let fresh = run(&[
        "lag", "--group", &nobody, "--topic", &topic, "--format", "json",
    ])
    .json();
    assert_eq!(fresh["total_lag"], 16);
    assert_eq!(fresh["partitions"][0]["committed"], Value::Null);
}

#[tokio::test]
async fn dlq_inspect_counts_dead_letters() {
    let dlq = topic("cli-inspect-dlq", 2).await;
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut originals = Vec::new();
    for offset in 0..12 {
        originals.push(original(
            "orders",
            (offset % 3) as i32,
            offset,
            "invalid JSON at 1:1",
        ));
    }
    for offset in 0..5 {
        originals.push(original("payments", 0, offset, "timeout: db\nunreachable"));
    }
    dead_letters(&dlq, originals).await;
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // And a record without the headers: not a dead letter.
    let p = producer();
    p.publish(
        Message::builder(dlq.clone())
            .partition(1)
            .value("stray")
            .build(),
    )
    .await
    .unwrap();
    p.close().await;

    let report = run(&["dlq", "inspect", &dlq, "--show", "3", "--format", "json"]).json();
    assert_eq!(report["topic"], dlq.as_str());
    assert_eq!(report["records"], 18);
    assert_eq!(report["dead_letters"], 17);
    assert_eq!(report["not_dead_letters"], 1);
    assert_eq!(
        report["by_error"],
        serde_json::json!([
            {"error": "invalid JSON at 1:1", "count": 12},
            {"error": "timeout: db\nunreachable", "count": 5},
        ])
    );
    assert_eq!(
        report["by_original"],
        serde_json::json!([
            {"topic": "orders", "partition": 0, "count": 4},
            {"topic": "orders", "partition": 1, "count": 4},
            {"topic": "orders", "partition": 2, "count": 4},
            {"topic": "payments", "partition": 0, "count": 5},
        ])
    );
    let (oldest, newest) = (&report["oldest"], &report["newest"]);
    assert_eq!(oldest["source"], "x-dlq-first-failure");
    let (o, n) = (
        oldest["timestamp"].as_i64().unwrap(),
        newest["timestamp"].as_i64().unwrap(),
    );
    assert!(
        before <= o && o <= n && n <= after,
        "{before} {o} {n} {after}"
    );
    let shown = report["shown"].as_array().unwrap();
    assert_eq!(shown.len(), 3);
    for s in shown {
        let names: Vec<&str> = s["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"trace") && names.contains(&"x-dlq-error"),
            "{names:?}"
        );
        assert!(s["dead_letter"]["original_topic"].is_string());
        assert_eq!(s["dead_letter"]["attempts"], 1);
        assert_eq!(s["dead_letter"]["consumer_group"], "billing");
    }

    let text = run(&["dlq", "inspect", &dlq]);
    assert_eq!(text.code(), 0, "{text:?}");
    let out = &text.stdout;
    assert!(
        out.starts_with(&format!("{dlq}: 17 dead letters in 2 partitions")),
        "{out}"
    );
    assert!(out.contains("1 records that are not dead letters"), "{out}");
    let count_of = |needle: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.trim_end().ends_with(needle))
            .unwrap();
        line.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert_eq!(count_of("invalid JSON at 1:1"), 12);
    assert_eq!(count_of(r"timeout: db\nunreachable"), 5);
    assert_eq!(count_of("payments[0]"), 5);
    assert_eq!(count_of("orders[2]"), 4);
    assert!(
        out.contains("oldest: ") && out.contains("newest: "),
        "{out}"
    );

    // An empty dead-letter topic.
    let empty = topic("cli-inspect-empty", 1).await;
    let report = run(&["dlq", "inspect", &empty, "--format", "json"]).json();
    assert_eq!(report["dead_letters"], 0);
    assert_eq!(report["oldest"], Value::Null);
}

/// A dead-letter topic with 20 "invalid JSON" dead letters of `orders`
/// (2 partitions), 10 "timeout" ones of `payments` and one stray record.
async fn replay_fixture() -> (String, String, String) {
    let dlq = topic("cli-replay-dlq", 2).await;
    let orders = topic("cli-replay-orders", 2).await;
    let payments = topic("cli-replay-payments", 1).await;
    let mut originals = Vec::new();
    for offset in 0..20 {
        originals.push(original(
            &orders,
            (offset % 2) as i32,
            offset,
            "invalid JSON",
        ));
    }
    for offset in 0..10 {
        originals.push(original(&payments, 0, offset, "timeout talking to db"));
    }
    dead_letters(&dlq, originals).await;
    let p = producer();
    p.publish(Message::builder(dlq.clone()).value("stray").build())
        .await
        .unwrap();
    p.close().await;
    (dlq, orders, payments)
}

/// Asserts `records` are the replayed copies of distinct originals of
/// `topic`: no duplicates, no `x-dlq-*` header, own headers, key and value
/// kept; returns their original offsets.
fn replayed_copies(records: &[Value], topic: &str) -> HashSet<i64> {
    let mut seen = HashSet::new();
    for r in records {
        let value = r["value"].as_str().unwrap();
        let parts: Vec<&str> = value.rsplitn(3, '-').collect();
        let (offset, partition): (i64, i64) =
            (parts[0].parse().unwrap(), parts[1].parse().unwrap());
        assert_eq!(value, format!("value-{topic}-{partition}-{offset}"));
        assert_eq!(
            r["key"],
            format!("key-{topic}-{partition}-{offset}").as_str()
        );
        assert_eq!(
            r["partition"], partition,
            "replayed to its original partition"
        );
        let headers: Vec<(&str, &str)> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["name"].as_str().unwrap(), h["value"].as_str().unwrap()))
            .collect();
        let trace = format!("t{offset}");
        assert!(headers.contains(&("trace", trace.as_str())), "{headers:?}");
        assert!(
            !headers.iter().any(|(n, _)| n.starts_with("x-dlq-")),
            "{headers:?}"
        );
        assert!(seen.insert(offset), "duplicate of {offset}");
    }
    seen
}

#[tokio::test]
async fn dlq_replay_filters_dry_runs_and_resumes_in_steps() {
    let (dlq, orders, payments) = replay_fixture().await;
    let filter = ["--where-error", "^invalid JSON$"];

    // Dry run: counts, publishes and commits nothing.
    let mut args = vec![
        "dlq",
        "replay",
        "--from",
        &dlq,
        "--dry-run",
        "--format",
        "json",
    ];
    args.extend(filter);
    let dry = run(&args).json();
    assert_eq!(
        (
            &dry["dry_run"],
            &dry["read"],
            &dry["replayed"],
            &dry["skipped_filter"],
            &dry["not_dead_letters"],
            &dry["failed"]
        ),
        (
            &Value::Bool(true),
            &31.into(),
            &20.into(),
            &10.into(),
            &1.into(),
            &0.into()
        )
    );
    assert_eq!(dry["by_target"][&orders], 20);
    assert_eq!(watermarks(&orders, 0).1 + watermarks(&orders, 1).1, 0);
    let group = format!("xkafka-dlq-replay-{dlq}");
    let no_commit = run(&["lag", "--group", &group]);
    assert!(
        no_commit.fails(1).contains("no committed offsets"),
        "{no_commit:?}"
    );

    // Two steps: 12 records, then the rest.
    let mut args = vec![
        "dlq", "replay", "--from", &dlq, "--max", "12", "--batch", "5", "--format", "json",
    ];
    args.extend(filter);
    let first = run(&args).json();
    assert_eq!(first["read"], 12);
    assert_eq!(first["failed"], 0);
    assert_eq!(first["dry_run"], false);
    let lag = run(&["lag", "--group", &group, "--format", "json"]).json();
    assert!(
        lag["total_lag"].as_u64().unwrap() < 31,
        "progress committed: {lag}"
    );
    let mut args = vec!["dlq", "replay", "--from", &dlq, "--format", "json"];
    args.extend(filter);
    let second = run(&args).json();
    // It reads again from the first record the first step left (a
    // "timeout" one): what the first step replayed beyond it is covered by
    // its mark, not replayed twice.
    let replayed = first["replayed"].as_u64().unwrap() + second["replayed"].as_u64().unwrap();
    assert_eq!(replayed, 20, "{first} then {second}");
    assert_eq!(second["skipped_filter"], 10, "{second}");
    let again = second["already_replayed"].as_u64().unwrap();
    assert!(
        second["read"].as_u64().unwrap() >= 31 - 12 && again <= 12,
        "{second}"
    );
    // The group's position did not move past the 10 dead letters the filter
    // left (nor, maybe, the stray record after them): a replay of the other
    // error class still reads them.
    let lag = run(&["lag", "--group", &group, "--format", "json"]).json()["total_lag"]
        .as_u64()
        .unwrap();
    assert!((10..=11).contains(&lag), "{lag}");

    let copies = read_all(&orders);
    assert_eq!(copies.len(), 20);
    assert_eq!(replayed_copies(&copies, &orders), (0..20).collect());
    assert!(read_all(&payments).is_empty(), "filtered out");

    // A replay without the filter replays what it left, and nothing twice.
    let third = run(&["dlq", "replay", "--from", &dlq, "--format", "json"]).json();
    assert_eq!(
        (&third["replayed"], &third["failed"]),
        (&10.into(), &0.into()),
        "{third}"
    );
    assert_eq!(third["by_target"][&payments], 10, "{third}");
    assert_eq!(replayed_copies(&read_all(&payments), &payments).len(), 10);
    assert_eq!(replayed_copies(&read_all(&orders), &orders).len(), 20);
    assert_eq!(
        run(&["lag", "--group", &group, "--format", "json"]).json()["total_lag"],
        0
    );

    // Nothing left: a fourth run replays nothing.
    let fourth = run(&["dlq", "replay", "--from", &dlq, "--format", "json"]).json();
    assert_eq!(
        (&fourth["read"], &fourth["replayed"]),
        (&0.into(), &0.into())
    );

    // The text summary, with its own group and --to.
    let elsewhere = topic("cli-replay-elsewhere", 3).await;
    let text = run(&[
        "dlq",
        "replay",
        "--from",
        &dlq,
        "--to",
        &elsewhere,
        "--group",
        &unique("g"),
        "--where-error",
        "timeout",
    ]);
    assert_eq!(text.code(), 0, "{text:?}");
    assert!(
        text.stdout.starts_with(&format!(
            "replayed 10 ({elsewhere}: 10), skipped by filter 20, not dead letters 1, failed 0"
        )),
        "{}",
        text.stdout
    );
    assert_eq!(read_all(&elsewhere).len(), 10);
}

/// Filtered replays of two error classes, one after the other and one of
/// them twice: each dead letter is replayed exactly once. The first filter
/// ("timeout", whose dead letters come last) cannot move the group's
/// position; its mark in the commit metadata tells the later replays which
/// records it replayed.
#[tokio::test]
async fn dlq_replays_of_different_errors_replay_each_dead_letter_once() {
    let (dlq, orders, payments) = replay_fixture().await;
    let group = unique("cli-replay-classes");
    let replay = |filter: Option<&str>| {
        let mut args = vec![
            "dlq", "replay", "--from", &dlq, "--group", &group, "--batch", "7", "--format", "json",
        ];
        if let Some(f) = filter {
            args.extend(["--where-error", f]);
        }
        let out = run(&args);
        assert_eq!(out.code(), 0, "{out:?}");
        out.json()
    };
    let counts = |s: &Value| {
        (
            s["replayed"].as_u64().unwrap(),
            s["skipped_filter"].as_u64().unwrap(),
            s["already_replayed"].as_u64().unwrap(),
        )
    };

    let timeouts = replay(Some("^timeout"));
    assert_eq!(counts(&timeouts), (10, 20, 0), "{timeouts}");
    // The same filter again: its mark covers them.
    let again = replay(Some("^timeout"));
    assert_eq!(counts(&again), (0, 20, 10), "{again}");
    assert_eq!(replayed_copies(&read_all(&payments), &payments).len(), 10);
    assert!(read_all(&orders).is_empty());

    // The other class: the position had not moved past it.
    let invalid = replay(Some("^invalid JSON$"));
    assert_eq!(counts(&invalid), (20, 0, 10), "{invalid}");
    assert_eq!(replayed_copies(&read_all(&orders), &orders).len(), 20);
    assert_eq!(
        run(&["lag", "--group", &group, "--format", "json"]).json()["total_lag"],
        0
    );
    // Everything is done: an unfiltered replay finds nothing.
    let rest = replay(None);
    assert_eq!((&rest["read"], &rest["replayed"]), (&0.into(), &0.into()));
    assert_eq!(replayed_copies(&read_all(&payments), &payments).len(), 10);
    assert_eq!(replayed_copies(&read_all(&orders), &orders).len(), 20);
}

/// A second replay of the same group while one runs (2 records a second)
/// waits for it to finish (a killed replay's membership expires) or, past
/// that, refuses: never do two replays publish the same dead letters.
#[tokio::test]
async fn dlq_replay_refuses_to_run_beside_another() {
    let (dlq, orders, payments) = replay_fixture().await;
    let group = unique("cli-replay-twice");
    let started = Instant::now();
    let first = xkafka(&[
        "dlq", "replay", "--from", &dlq, "--group", &group, "--rate", "2", "--batch", "2",
        "--format", "json",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let written = || {
        [(&orders, 0), (&orders, 1), (&payments, 0)]
            .into_iter()
            .map(|(t, p)| {
                reader
                    .fetch_watermarks(t, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .sum::<i64>()
    };
    while written() < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = run(&[
        "dlq", "replay", "--from", &dlq, "--group", &group, "--format", "json",
    ]);
    let second_ended = started.elapsed();
    let first = finish(first, started);
    assert_eq!(first.code(), 0, "{first:?}");
    let summary: Value = serde_json::from_str(&first.stdout).unwrap();
    assert_eq!(summary["replayed"], 30, "{summary}");
    assert_eq!(second.code(), 1, "{second:?}");
    assert!(
        second.stderr.contains(&format!(
            "another replay (or consumer) is a member of group {group}"
        )),
        "{second:?}"
    );
    assert!(
        second_ended < Duration::from_secs(15),
        "refused while the first ran: {second_ended:?}"
    );
    // Each dead letter once (replayed_copies asserts no duplicates).
    assert_eq!(replayed_copies(&read_all(&orders), &orders).len(), 20);
    assert_eq!(replayed_copies(&read_all(&payments), &payments).len(), 10);
}

/// Starts a slow replay of the fixture (10 records/s, a commit every 4),
/// sends `signal` once 6 copies were written, and returns what the
/// process left.
fn replay_and_signal(dlq: &str, group: &str, orders: &str, payments: &str, signal: &str) -> Run {
    let mut cmd = xkafka(&[
        "dlq", "replay", "--from", dlq, "--group", group, "--rate", "10", "--batch", "4",
        "--format", "json",
    ]);
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let written = || {
        [(orders, 0), (orders, 1), (payments, 0)]
            .into_iter()
            .map(|(t, p)| {
                reader
                    .fetch_watermarks(t, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .sum::<i64>()
    };
    while written() < 6 {
        assert!(started.elapsed() < Duration::from_secs(20), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    finish(child, started)
}

#[tokio::test]
async fn dlq_replay_interrupted_resumes_without_duplicates() {
    let (dlq, orders, payments) = replay_fixture().await;
    let group = unique("cli-replay-interrupted");
    let stopped = replay_and_signal(&dlq, &group, &orders, &payments, "-INT");
    assert_eq!(stopped.code(), 130, "{stopped:?}");
    assert!(stopped.stderr.contains("interrupted"), "{stopped:?}");
    let summary: Value = serde_json::from_str(&stopped.stdout).unwrap();
    assert_eq!(summary["interrupted"], true);
    let first = summary["replayed"].as_u64().unwrap();
    assert!((6..30).contains(&first), "interrupted mid-way: {summary}");
    let lag = run(&["lag", "--group", &group, "--format", "json"]).json();
    assert!(lag["total_lag"].as_u64().unwrap() > 0, "{lag}");

    let rest = run(&[
        "dlq", "replay", "--from", &dlq, "--group", &group, "--format", "json",
    ])
    .json();
    assert_eq!(rest["interrupted"], false);
    assert_eq!(
        first + rest["replayed"].as_u64().unwrap(),
        30,
        "{summary} then {rest}"
    );
    assert_eq!(replayed_copies(&read_all(&orders), &orders).len(), 20);
    assert_eq!(replayed_copies(&read_all(&payments), &payments).len(), 10);
}

/// `kill -9`: nothing lost; what is replayed again is at most the batch in
/// flight (acknowledged, not yet committed).
#[tokio::test]
async fn dlq_replay_killed_loses_nothing() {
    let (dlq, orders, payments) = replay_fixture().await;
    let group = unique("cli-replay-killed");
    let killed = replay_and_signal(&dlq, &group, &orders, &payments, "-KILL");
    assert_eq!(killed.code, None, "killed: {killed:?}");
    let rest = run(&[
        "dlq", "replay", "--from", &dlq, "--group", &group, "--format", "json",
    ])
    .json();
    assert_eq!(rest["failed"], 0);
    let mut copies = read_all(&orders);
    copies.extend(read_all(&payments));
    let mut count: BTreeMap<String, u32> = BTreeMap::new();
    for c in &copies {
        *count
            .entry(c["value"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(count.len(), 30, "every dead letter replayed");
    let again: u32 = count.values().map(|n| n - 1).sum();
    assert!(again <= 4, "{again} replayed twice: more than one batch");
}

#[tokio::test]
async fn bad_input_fails_clearly() {
    // Side by side: each waits for the brokers (or for a topic's metadata).
    let missing = unique("cli-missing");
    let mut started: Vec<_> = [
        vec!["tail", missing.as_str()],
        vec!["dlq", "inspect", missing.as_str()],
        vec!["dlq", "replay", "--from", missing.as_str()],
        vec!["lag", "--group", "g", "--topic", missing.as_str()],
        vec!["produce", missing.as_str()],
    ]
    .into_iter()
    .map(|args| start(xkafka(&args), b"x\n"))
    .collect();
    // An unreachable broker: a bounded wait, then exit 1.
    let unreachable = [
        &["lag", "--group", "g"][..],
        &["dlq", "inspect", "dlq"][..],
        &["tail", "t", "--count", "1"][..],
        &["produce", "t"][..],
    ];
    for args in unreachable {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xkafka"));
        cmd.env_remove("XKAFKA_BROKERS")
            .args(["--brokers", "127.0.0.1:1", "--timeout", "2"])
            .args(args);
        started.push(start(cmd, b"x\n"));
    }
    for (i, (child, at)) in started.into_iter().enumerate() {
        let r = finish(child, at);
        let line = r.fails(1);
        if i < 5 {
            assert!(
                line.contains(&format!("topic {missing} does not exist")),
                "{line}"
            );
            assert!(r.took < Duration::from_secs(8), "{:?}", r.took);
        } else {
            assert!(
                line.contains("no answer from the brokers at 127.0.0.1:1"),
                "{line}"
            );
            assert!(r.took < Duration::from_secs(5), "took {:?}", r.took);
        }
    }

    // A dead letter whose original topic is gone: exit 1 naming it, and
    // nothing committed past it.
    let dlq = topic("cli-bad-input-dlq", 1).await;
    let gone = unique("cli-gone");
    dead_letters(&dlq, vec![original(&gone, 0, 0, "boom")]).await;
    let group = unique("cli-gone-group");
    let r = run(&["dlq", "replay", "--from", &dlq, "--group", &group]);
    let line = r.fails(1);
    assert!(
        line.contains(&format!("topic {gone} does not exist")),
        "{line}"
    );
    assert!(r.stdout.contains("failed 1"), "{r:?}");
    let lag = run(&[
        "lag", "--group", &group, "--topic", &dlq, "--format", "json",
    ])
    .json();
    // Not committed past the dead letter it could not replay (the replay's
    // group membership may commit its start, offset 0, with its marks).
    assert!(
        lag["partitions"][0]["committed"].as_i64().unwrap_or(0) == 0,
        "{lag}"
    );

    // Usage: exit 2.
    let topic = topic("cli-bad-input", 1).await;
    let usage = [
        vec!["-X", "nonsense", "tail", topic.as_str()],
        vec!["-X", "no.such.property=1", "tail", topic.as_str()],
        vec!["-X", "session.timeout.ms=soon", "lag", "--group", "g"],
        vec![
            "dlq",
            "replay",
            "--from",
            topic.as_str(),
            "--where-error",
            "(unclosed",
        ],
        vec!["tail", topic.as_str(), "--from", "yesterday"],
        vec!["produce", topic.as_str(), "--header", "novalue"],
        vec!["lag"],
        vec!["frobnicate"],
    ];
    for args in usage {
        let r = run(&args);
        r.fails(2);
        assert!(r.stdout.is_empty(), "{r:?}");
    }
    let r = run(&["-X", "no.such.property=1", "tail", &topic]);
    assert!(r.fails(2).contains("no.such.property"), "{r:?}");
    // No brokers at all.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xkafka"));
    cmd.env_remove("XKAFKA_BROKERS")
        .args(["lag", "--group", "g"]);
    assert!(run_with(cmd, b"").fails(2).contains("XKAFKA_BROKERS"));
    // The environment variable works.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xkafka"));
    cmd.env("XKAFKA_BROKERS", brokers()).args([
        "tail",
        &topic,
        "--until-end",
        "--from",
        "beginning",
    ]);
    assert_eq!(run_with(cmd, b"").code(), 0);
    // A partition the topic does not have.
    let r = run(&["tail", &topic, "--partition", "7"]);
    assert!(r.fails(1).contains("no partition 7"));
    // --help documents the exit codes.
    let help = run(&["--help"]);
    assert_eq!(help.code(), 0);
    assert!(help.stdout.contains("Exit codes:") && help.stdout.contains("usage or bad input"));
}
