//! `xkafka topics …`, `xkafka groups …`, `config`, `completions` and `man`
//! against the real broker: each command's JSON output parsed, and bad
//! input refused with one line, a non-zero exit and nothing changed.
#![allow(unreachable_pub)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `topics describe TOPIC --format json`.
fn describe(topic: &str) -> Value {
    run(&["topics", "describe", topic, "--format", "json"]).json()
}

#[tokio::test]
async fn topics_are_created_described_altered_grown_and_deleted() {
    let topic = unique("cli-topics");
    let created = run(&[
        "topics",
        "create",
        &topic,
        "--partitions",
        "3",
        "--replication-factor",
        "1",
        "--config",
        "retention.ms=3600000",
        "--format",
        "json",
    ])
    .json();
    assert_eq!(created["created"], topic.as_str());
    assert_eq!(created["partitions"], 3);

    let listed = run(&["topics", "list", "--format", "json"]).json();
    let mine: Vec<&Value> = listed["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == topic.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{listed}");
    assert_eq!(mine[0]["partitions"], 3);
    assert_eq!(mine[0]["replication_factor"], 1);
    assert!(
        listed["topics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| !t["name"].as_str().unwrap().starts_with("__")),
        "internal topics only with --all"
    );
    let all = run(&["topics", "list", "--all", "--format", "json"]).json();
    assert!(all["topics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "__consumer_offsets" && t["internal"] == true));
    let text = run(&["topics", "list"]);
    assert_eq!(text.code(), 0);
    assert!(text.stdout.starts_with("TOPIC"), "{}", text.stdout);

    // Three records on partition 1: its end offset moves.
    let r = run_with(
        xkafka(&["produce", &topic, "--partition", "1"]),
        b"a\nb\nc\n",
    );
    assert_eq!(r.code(), 0, "{r:?}");
    let d = describe(&topic);
    let parts = d["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[1]["partition"], 1);
    assert_eq!(parts[1]["end_offset"], 3);
    assert_eq!(parts[0]["end_offset"], 0);
    assert_eq!(parts[1]["replicas"].as_array().unwrap().len(), 1);
    assert_eq!(parts[1]["isr"], parts[1]["replicas"]);
    assert!(parts[1]["leader"].as_i64().unwrap() >= 0);
    assert_eq!(d["configs"]["retention.ms"], "3600000", "{d}");

    // Set one, remove another: the rest is kept.
    run(&[
        "topics",
        "alter-config",
        &topic,
        "--set",
        "cleanup.policy=compact",
        "--set",
        "max.message.bytes=200000",
        "--format",
        "json",
    ])
    .json();
    let d = describe(&topic);
    assert_eq!(d["configs"]["cleanup.policy"], "compact", "{d}");
    assert_eq!(d["configs"]["retention.ms"], "3600000", "{d}");
    run(&[
        "topics",
        "alter-config",
        &topic,
        "--delete",
        "retention.ms",
        "--format",
        "json",
    ])
    .json();
    let d = describe(&topic);
    assert_eq!(d["configs"].get("retention.ms"), None, "{d}");
    assert_eq!(d["configs"]["max.message.bytes"], "200000", "{d}");

    let grown = run(&[
        "topics",
        "add-partitions",
        &topic,
        "--partitions",
        "4",
        "--format",
        "json",
    ])
    .json();
    assert_eq!(
        (grown["before"].as_i64(), grown["partitions"].as_i64()),
        (Some(3), Some(4))
    );
    assert_eq!(describe(&topic)["partitions"].as_array().unwrap().len(), 4);

    // Refusals: one line, non-zero, nothing changed.
    let again = run(&["topics", "create", &topic, "--partitions", "1"]);
    assert!(again
        .fails(1)
        .contains(&format!("topic {topic} already exists")));
    let fewer = run(&["topics", "add-partitions", &topic, "--partitions", "2"]);
    assert!(fewer.fails(2).contains("has 4 partitions"), "{fewer:?}");
    let unconfirmed = run(&["topics", "delete", &topic]);
    assert!(unconfirmed.fails(2).contains("--yes"), "{unconfirmed:?}");
    let bad_config = run(&[
        "topics",
        "alter-config",
        &topic,
        "--set",
        "cleanup.policy=sometimes",
    ]);
    assert!(bad_config.fails(1).contains(&topic), "{bad_config:?}");
    let d = describe(&topic);
    assert_eq!(d["partitions"].as_array().unwrap().len(), 4);
    assert_eq!(d["configs"]["cleanup.policy"], "compact", "{d}");

    let deleted = run(&["topics", "delete", &topic, "--yes", "--format", "json"]).json();
    assert_eq!(deleted["deleted"], topic.as_str());
    let gone = run(&["topics", "describe", &topic]);
    assert!(gone
        .fails(1)
        .contains(&format!("topic {topic} does not exist")));
}

#[tokio::test]
async fn bad_input_is_refused_in_one_line_and_changes_nothing() {
    // Side by side: each waits briefly for the topic's metadata.
    let missing = unique("cli-nothing");
    let unknown_group = unique("cli-no-group");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["topics", "describe", &missing],
            format!("topic {missing} does not exist"),
        ),
        (
            vec!["topics", "delete", &missing, "--yes"],
            format!("topic {missing} does not exist"),
        ),
        (
            vec![
                "topics",
                "alter-config",
                &missing,
                "--set",
                "retention.ms=1",
            ],
            format!("topic {missing} does not exist"),
        ),
        (
            vec!["topics", "add-partitions", &missing, "--partitions", "9"],
            format!("topic {missing} does not exist"),
        ),
        (
            vec![
                "groups",
                "reset-offsets",
                "g",
                "--topic",
                &missing,
                "--to-earliest",
            ],
            format!("topic {missing} does not exist"),
        ),
        // produce to a missing topic says how to create it.
        (
            vec!["produce", &missing],
            format!("xkafka topics create {missing}"),
        ),
        (
            vec!["groups", "describe", &unknown_group],
            "does not exist".to_owned(),
        ),
        (
            vec!["groups", "delete", &unknown_group],
            "does not exist".to_owned(),
        ),
    ];
    let started: Vec<_> = cases
        .iter()
        .map(|(args, _)| start(xkafka(args), b"x\n"))
        .collect();
    for ((args, expected), (child, at)) in cases.iter().zip(started) {
        let r = finish(child, at);
        assert!(r.fails(1).contains(expected.as_str()), "{args:?}: {r:?}");
    }

    // A partition the topic does not have: nothing committed.
    let topic = topic("cli-bad-partition", 2).await;
    let group = unique("cli-bad-partition-group");
    let r = run(&[
        "groups",
        "reset-offsets",
        &group,
        "--topic",
        &topic,
        "--partition",
        "9",
        "--to-earliest",
        "--execute",
    ]);
    assert!(r.fails(1).contains("no partition 9"), "{r:?}");
    let r = run(&[
        "lag", "--group", &group, "--topic", &topic, "--format", "json",
    ])
    .json();
    assert!(
        r["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["committed"].is_null()),
        "{r}"
    );
    // Usage: no target, two targets, a malformed -X: exit 2, nothing created.
    let never = unique("cli-never");
    for args in [
        vec![
            "groups",
            "reset-offsets",
            group.as_str(),
            "--topic",
            topic.as_str(),
        ],
        vec![
            "groups",
            "reset-offsets",
            group.as_str(),
            "--topic",
            topic.as_str(),
            "--to-earliest",
            "--to-latest",
        ],
        vec!["-X", "acks", "topics", "create", never.as_str()],
        vec![
            "-X",
            "no.such.property=1",
            "topics",
            "create",
            never.as_str(),
        ],
        vec!["topics", "create", never.as_str(), "--partitions", "0"],
        vec!["topics", "create", never.as_str(), "--config", "novalue"],
    ] {
        let r = run(&args);
        r.fails(2);
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
    let r = run(&["topics", "describe", &never]);
    assert!(r.fails(1).contains("does not exist"), "{r:?}");

    // An unreachable broker: a bounded wait, then exit 1.
    for args in [
        &["topics", "list"][..],
        &["topics", "create", "t", "--partitions", "1"][..],
        &["groups", "list"][..],
        &[
            "groups",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-earliest",
        ][..],
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xkafka"));
        cmd.env_remove("XKAFKA_BROKERS")
            .args(["--brokers", "127.0.0.1:1", "--timeout", "2"])
            .args(args);
        let r = run_with(cmd, b"");
        assert!(
            r.fails(1)
                .contains("no answer from the brokers at 127.0.0.1:1"),
            "{args:?}: {r:?}"
        );
        assert!(
            r.took < Duration::from_secs(6),
            "{args:?} took {:?}",
            r.took
        );
    }
}

#[test]
fn config_completions_and_man_page() {
    let r = run(&[
        "-X",
        "sasl.password=hunter2",
        "-X",
        "security.protocol=sasl_plaintext",
        "config",
        "--format",
        "json",
    ]);
    let c = r.json();
    assert_eq!(c["settings"]["sasl.password"], "<redacted>", "{c}");
    assert_eq!(c["settings"]["security.protocol"], "sasl_plaintext");
    assert_eq!(c["settings"]["bootstrap.servers"], brokers().as_str());
    assert_eq!(c["settings"]["client.id"], "xkafka-cli");
    assert!(!r.stdout.contains("hunter2"));
    let text = run(&["-X", "sasl.password=hunter2", "config"]);
    assert_eq!(text.code(), 0);
    assert!(text.stdout.contains("sasl.password=<redacted>"), "{text:?}");
    assert!(!text.stdout.contains("hunter2"));

    // No brokers needed for these.
    let bare = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xkafka"));
        cmd.env_remove("XKAFKA_BROKERS").args(args);
        run_with(cmd, b"")
    };
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let r = bare(&["completions", shell]);
        assert_eq!(r.code(), 0, "{r:?}");
        assert!(r.stdout.contains("reset-offsets"), "{shell}: {}", r.stdout);
    }
    assert!(bare(&["completions", "tcsh"]).fails(2).contains("tcsh"));
    let man = bare(&["man"]);
    assert_eq!(man.code(), 0);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH xkafka"),
        "{}",
        man.stdout
    );
    assert!(
        man.stdout.contains("Exit codes"),
        "the man page documents them"
    );
}

/// `groups reset-offsets … --execute` for one target; the committed offset
/// of partition 0 after it.
fn reset_to(group: &str, topic: &str, target: &[&str]) -> i64 {
    let mut args = vec![
        "groups",
        "reset-offsets",
        group,
        "--topic",
        topic,
        "--execute",
        "--format",
        "json",
    ];
    args.extend_from_slice(target);
    let plan = run(&args).json();
    assert_eq!(plan["executed"], true, "{plan}");
    let lag = run(&[
        "lag", "--group", group, "--topic", topic, "--format", "json",
    ])
    .json();
    let committed = lag["partitions"][0]["committed"]
        .as_i64()
        .expect("committed");
    assert_eq!(plan["partitions"][0]["target"], committed, "{plan} {lag}");
    committed
}

#[tokio::test]
async fn reset_offsets_to_each_kind_of_target() {
    let topic = topic("cli-reset", 1).await;
    let group = unique("cli-reset-group");
    // Ten records a second apart in record time: offset i at base + i s.
    let base = 1_700_000_000_000_i64;
    let producer = producer();
    for i in 0..10 {
        let m = xkafka::Message::builder(topic.clone())
            .partition(0)
            .value(format!("r{i}"))
            .timestamp_millis(base + i * 1000)
            .build();
        producer.publish(m).await.expect("published");
    }
    producer.close().await;

    // A group that never committed: its first reset sets where it starts.
    assert_eq!(reset_to(&group, &topic, &["--to-offset", "4"]), 4);
    assert_eq!(reset_to(&group, &topic, &["--shift-by", "3"]), 7);
    assert_eq!(reset_to(&group, &topic, &["--shift-by", "-5"]), 2);
    // Kept within the retained records.
    assert_eq!(reset_to(&group, &topic, &["--shift-by", "-50"]), 0);
    assert_eq!(reset_to(&group, &topic, &["--to-offset", "99"]), 10);
    assert_eq!(reset_to(&group, &topic, &["--to-earliest"]), 0);
    assert_eq!(reset_to(&group, &topic, &["--to-latest"]), 10);
    let at = format!("@{}", base + 6500);
    assert_eq!(reset_to(&group, &topic, &["--to-timestamp", &at]), 7);
    assert_eq!(
        reset_to(&group, &topic, &["--to-timestamp", "2023-11-14T22:13:22Z"]),
        2,
        "base is 2023-11-14T22:13:20Z"
    );
    // Past the newest record: the end.
    assert_eq!(
        reset_to(&group, &topic, &["--to-timestamp", "@1900000000000"]),
        10
    );

    // A dry run (text) shows the plan and changes nothing.
    let dry = run(&[
        "groups",
        "reset-offsets",
        &group,
        "--topic",
        &topic,
        "--to-earliest",
    ]);
    assert_eq!(dry.code(), 0, "{dry:?}");
    assert!(
        dry.stdout.contains("dry run: nothing changed"),
        "{}",
        dry.stdout
    );
    let lag = run(&[
        "lag", "--group", &group, "--topic", &topic, "--format", "json",
    ])
    .json();
    assert_eq!(lag["partitions"][0]["committed"], 10, "{lag}");
    let bad_time = run(&[
        "groups",
        "reset-offsets",
        &group,
        "--topic",
        &topic,
        "--to-timestamp",
        "soon",
    ]);
    assert!(bad_time.fails(2).contains("soon"), "{bad_time:?}");
}
