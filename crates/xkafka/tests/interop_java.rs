//! Interop with Apache Kafka's Java client (`kafka-clients` of the broker's
//! version, the jars `scripts/broker.sh install` put under
//! `$XKAFKA_BROKER_PREFIX/kafka-4.3.1/libs`), on the suite's broker.
//!
//! The Java side is `tests/java/Interop.java`, run as a single source file.
//! Both sides print every record in one canonical line (partition, offset,
//! timestamp, key, value, headers in order, bytes in hex), so "byte-identical"
//! is a comparison of text:
//!
//! - what the Java producer writes with each codec (none, gzip, snappy, lz4,
//!   zstd — into the same partitions, batches served as produced) reaches our
//!   handler unchanged, and the Java AdminClient then reads the group's
//!   committed offsets equal to the end offsets;
//! - what our producer writes with each codec the Java consumer reads
//!   unchanged;
//! - a Java member and ours share a group, then ours leaves and the Java one
//!   takes over its partitions without losing a message.
//!
//! Needs the broker and the jars (`scripts/broker.sh install && scripts/broker.sh start`):
//! a missing Java, jar folder or broker fails the tests.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xkafka::{Ack, Decision, Message, Producer};

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// The Java client's classpath: the broker's installed jars.
fn classpath() -> String {
    let prefix =
        std::env::var("XKAFKA_BROKER_PREFIX").unwrap_or_else(|_| "/opt/xkafka-broker".into());
    let version = std::env::var("XKAFKA_KAFKA_VERSION").unwrap_or_else(|_| "4.3.1".into());
    let libs = PathBuf::from(prefix).join(format!("kafka-{version}/libs"));
    assert!(
        libs.join(format!("kafka-clients-{version}.jar")).is_file(),
        "no kafka-clients-{version}.jar in {}: run scripts/broker.sh install (or set \
         XKAFKA_BROKER_PREFIX / XKAFKA_KAFKA_VERSION)",
        libs.display()
    );
    format!("{}/*", libs.display())
}

/// `java -cp LIBS tests/java/Interop.java ARGS...`, not yet started.
fn java(args: &[&str]) -> Command {
    let java = match std::env::var_os("JAVA_HOME") {
        Some(home) => PathBuf::from(home).join("bin/java"),
        None => PathBuf::from("java"),
    };
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/java/Interop.java");
    let mut cmd = Command::new(java);
    // A small heap: the JVM shares 2 cores and the memory with three brokers.
    cmd.args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", &classpath()])
        .arg(source)
        .args(args);
    cmd
}

/// Runs the Java program to its end and returns its stdout lines; its failure
/// fails the test with its stderr.
fn java_output(args: &[&str]) -> Vec<String> {
    let out = java(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run java (Java 17 or newer, or set JAVA_HOME): {e}"));
    assert!(
        out.status.success(),
        "java Interop {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn hex(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "null".into(),
        Some(b) => {
            let mut s = String::with_capacity(1 + 2 * b.len());
            s.push('x');
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
    }
}

/// The canonical line of `Interop.java` for a record.
fn canonical(
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &xkafka::Headers,
) -> String {
    let headers = if headers.is_empty() {
        "-".to_owned()
    } else {
        headers
            .iter()
            .map(|h| {
                format!(
                    "{}:{}",
                    hex(Some(h.name().as_bytes())),
                    hex(h.value().map(|v| &v[..]))
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "REC {partition} {offset} {timestamp} {} {} {headers}",
        hex(key),
        hex(value)
    )
}

/// What our consumer handed the handler, in the canonical form.
fn canonical_message(m: &Message) -> String {
    canonical(
        m.partition().expect("a consumed message has a partition"),
        m.offset().expect("a consumed message has an offset"),
        m.timestamp().map(|t| t.millis()).unwrap_or(-1),
        m.key().map(|k| &k[..]),
        m.value().map(|v| &v[..]),
        m.headers(),
    )
}

fn records(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with("REC "))
        .cloned()
        .collect()
}

/// Sorted by partition and offset, the lines' own order otherwise.
fn sorted(mut lines: Vec<String>) -> Vec<String> {
    fn position(line: &str) -> (i32, i64) {
        let mut f = line.split(' ').skip(1);
        (
            f.next().unwrap().parse().unwrap(),
            f.next().unwrap().parse().unwrap(),
        )
    }
    lines.sort_by_key(|l| position(l));
    lines
}

/// Asserts both lists hold the same lines, naming the first differences.
fn assert_same(what: &str, expected: &[String], got: &[String]) {
    let exp: BTreeSet<&String> = expected.iter().collect();
    let have: BTreeSet<&String> = got.iter().collect();
    let missing: Vec<_> = exp.difference(&have).take(3).collect();
    let extra: Vec<_> = have.difference(&exp).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && expected.len() == got.len(),
        "{what}: {} expected, {} got; missing e.g. {missing:#?}; unexpected e.g. {extra:#?}",
        expected.len(),
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_records_of_every_codec_reach_our_handler_byte_identical_and_offsets_commit() {
    let _heavy = common::exclusive().await;
    let brokers = common::brokers();
    let topic = common::topic("interop-from-java", 3).await;
    let mut args = vec!["produce", brokers.as_str(), topic.as_str()];
    args.extend(CODECS);
    let written = sorted(records(&java_output(&args)));
    // 68 records per codec (Interop.java's record set).
    assert_eq!(written.len(), 68 * CODECS.len(), "{written:#?}");

    let group = common::unique("interop-from-java");
    let (errors, on_error) = common::recording_error_handler(Decision::Continue);
    let (seen, summary) = common::record_until(
        common::consumer(&group, &topic).error_handler(on_error),
        written.len(),
        Duration::from_secs(60),
    )
    .await;
    let got = sorted(seen.iter().map(canonical_message).collect());
    for codec in CODECS {
        // The plain record of each codec names it in its key: a stalled codec
        // shows here by name.
        let key = hex(Some(format!("{codec}-keyed").as_bytes()));
        assert!(
            got.iter().any(|l| l.contains(&key)),
            "nothing of the {codec} batch arrived; {} errors, e.g. {:?}",
            errors.lock().unwrap().len(),
            errors.lock().unwrap().first()
        );
    }
    assert_same("what Java wrote vs what our handler got", &written, &got);
    assert_eq!(summary.failed, 0);
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );

    // After our consumer finished (run returned: committed and left), Java's
    // AdminClient reads the committed offsets: each is the end offset.
    let offsets = java_output(&["offsets", &brokers, &group, &topic]);
    let offsets: Vec<_> = offsets
        .iter()
        .filter(|l| l.starts_with("OFFSET "))
        .collect();
    assert_eq!(offsets.len(), 3, "{offsets:?}");
    for line in offsets {
        let f: Vec<i64> = line
            .split(' ')
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        assert!(f[2] > 0, "partition {} is empty: {line}", f[0]);
        assert_eq!(f[1], f[2], "committed != end offset: {line}");
    }
}

/// Our version of Interop.java's record set, published with `codec`; returns
/// the canonical lines of what the broker acknowledged.
async fn publish_ours(brokers: &str, topic: &str, codec: &str) -> Vec<String> {
    let producer = Producer::builder("xkafka-interop")
        .brokers([brokers])
        .config("compression.type", codec)
        // Batches of several records: every codec compresses something.
        .config("linger.ms", "50")
        .error_handler(|err| eprintln!("producer error: {err}"))
        .build()
        .unwrap();
    let t0 = 1_700_000_000_000i64;
    let binary: Vec<u8> = (0..=255u8).collect();
    let mut messages = vec![
        Message::builder(topic)
            .partition(0)
            .timestamp_millis(t0 + 1)
            .key(format!("{codec}-keyed"))
            .value("plain value")
            .build(),
        Message::builder(topic)
            .partition(1)
            .timestamp_millis(t0 + 2)
            .value(format!("{codec} null key"))
            .build(),
        Message::builder(topic)
            .partition(2)
            .timestamp_millis(t0 + 3)
            .key(format!("{codec}-empty-value"))
            .value("")
            .build(),
        Message::builder(topic)
            .partition(0)
            .timestamp_millis(t0 + 4)
            .key(format!("{codec}-tombstone"))
            .build(),
        Message::builder(topic)
            .partition(1)
            .timestamp_millis(t0 + 5)
            .key("")
            .value(format!("{codec} empty key"))
            .build(),
        Message::builder(topic)
            .partition(2)
            .timestamp_millis(t0 + 6)
            .build(),
        Message::builder(topic)
            .partition(0)
            .timestamp_millis(t0 + 7)
            .key(binary.clone())
            .value(binary)
            .header("dup", "first")
            .header("bin", vec![0u8, 0xff, 0x80, 0x7f])
            .header("dup", "second")
            .null_header("null-value")
            .header("empty", "")
            .header("dup", "third")
            .build(),
        // Neither partition nor timestamp: our partitioner and clock choose.
        Message::builder(topic)
            .key(format!("{codec}-partitioned-by-us"))
            .value("chosen")
            .build(),
    ];
    for i in 0..60i64 {
        messages.push(
            Message::builder(topic)
                .partition((i % 3) as i32)
                .timestamp_millis(t0 + 100 + i)
                .key(format!("bulk-{}", i % 7))
                .value(format!("{codec} bulk {i} ").repeat(40))
                .header("seq", i.to_string())
                .build(),
        );
    }
    // All at once, so that they share batches.
    let deliveries =
        futures_util::future::join_all(messages.iter().map(|m| producer.publish(m.clone()))).await;
    let lines = messages
        .iter()
        .zip(deliveries)
        .map(|(m, d)| {
            let d = d.expect("published");
            let timestamp = m
                .timestamp()
                .or(d.timestamp)
                .expect("a timestamp: given, or the delivery report's")
                .millis();
            canonical(
                d.partition,
                d.offset,
                timestamp,
                m.key().map(|k| &k[..]),
                m.value().map(|v| &v[..]),
                m.headers(),
            )
        })
        .collect();
    producer.close().await;
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_we_publish_with_every_codec_the_java_consumer_reads_byte_identical() {
    let _heavy = common::exclusive().await;
    let brokers = common::brokers();
    let topic = common::topic("interop-to-java", 3).await;
    let mut published = Vec::new();
    for codec in CODECS {
        published.extend(publish_ours(&brokers, &topic, codec).await);
    }
    assert_eq!(published.len(), 68 * CODECS.len());
    let read = records(&java_output(&["read", &brokers, &topic, "60"]));
    assert_same(
        "what we published vs what the Java consumer read",
        &sorted(published),
        &sorted(read),
    );
}

/// A Java group member running in the background; its stdout lines collect
/// in `lines`.
struct JavaMember {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl JavaMember {
    fn start(brokers: &str, topic: &str, group: &str) -> Self {
        let mut child = java(&["member", brokers, topic, group])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("java");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        JavaMember {
            child,
            stdin,
            lines,
        }
    }

    /// The partitions of its latest assignment.
    fn assigned(&self) -> Option<BTreeSet<i32>> {
        let lines = self.lines.lock().unwrap();
        let last = lines.iter().rev().find(|l| l.starts_with("ASSIGNED"))?;
        Some(
            last.trim_start_matches("ASSIGNED")
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect(),
        )
    }

    /// Values of the records it consumed, with their partition.
    fn consumed(&self) -> Vec<(i32, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("REC "))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[1].parse().unwrap(), unhex(f[5]))
            })
            .collect()
    }

    /// Asks it to leave the group and waits until it exited.
    fn stop(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the Java member did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for JavaMember {
    fn drop(&mut self) {
        // A failed test must not leave a JVM in the group.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unhex(field: &str) -> String {
    let digits = field.trim_start_matches('x');
    let bytes: Vec<u8> = (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

async fn wait_for(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_member_and_ours_split_the_partitions_and_java_takes_over_when_ours_leaves() {
    let _heavy = common::exclusive().await;
    let brokers = common::brokers();
    let topic = common::topic("interop-group", 4).await;
    let group = common::unique("interop-group");
    let producer = common::producer();
    let publish = |from: usize, to: usize| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            for i in from..to {
                let msg = Message::builder(topic.as_str())
                    .partition((i % 4) as i32)
                    .value(format!("m{i}"))
                    .build();
                producer.publish(msg).await.expect("publish");
            }
        }
    };

    let java = JavaMember::start(&brokers, &topic, &group);
    wait_for(
        "the Java member's first assignment",
        Duration::from_secs(60),
        || java.assigned().is_some_and(|p| p.len() == 4),
    )
    .await;

    let ours: Arc<Mutex<Vec<(i32, String)>>> = Arc::default();
    let recorder = ours.clone();
    let (errors, on_error) = common::recording_error_handler(Decision::Continue);
    let consumer = common::consumer(&group, &topic)
        // Eager range, what the Java member is configured with.
        .config("partition.assignment.strategy", "range")
        .error_handler(on_error)
        .handler(move |m: Message| {
            let recorder = recorder.clone();
            async move {
                recorder
                    .lock()
                    .unwrap()
                    .push((m.partition().unwrap(), m.value_str().unwrap().to_owned()));
                Ack::Success
            }
        })
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let running = tokio::spawn(consumer.run(std::future::pending::<()>()));
    // Ours joined when the Java member's assignment shrank to half.
    wait_for(
        "the split of the partitions",
        Duration::from_secs(60),
        || java.assigned().is_some_and(|p| p.len() == 2),
    )
    .await;
    let java_half = java.assigned().unwrap();

    publish(0, 200).await;
    let all = |n: usize| {
        let java = &java;
        let ours = ours.clone();
        move || {
            let mut values: HashSet<String> = java.consumed().into_iter().map(|r| r.1).collect();
            values.extend(ours.lock().unwrap().iter().map(|r| r.1.clone()));
            (0..n).all(|i| values.contains(&format!("m{i}")))
        }
    };
    wait_for(
        "all of the first 200 messages",
        Duration::from_secs(60),
        all(200),
    )
    .await;
    let our_partitions: BTreeSet<i32> = ours.lock().unwrap().iter().map(|r| r.0).collect();
    let java_partitions: BTreeSet<i32> = java.consumed().iter().map(|r| r.0).collect();
    println!("Java member: {java_partitions:?}, ours: {our_partitions:?}");
    assert_eq!(
        java_partitions, java_half,
        "Java consumed what it was assigned"
    );
    assert_eq!(our_partitions.len(), 2, "ours consumed two partitions");
    assert!(
        our_partitions.is_disjoint(&java_partitions),
        "split, not shared"
    );

    // Ours leaves (commits, then leaves the group): the Java member gets all four.
    stop.shutdown();
    let summary = running.await.unwrap().expect("run");
    wait_for(
        "the Java member's takeover",
        Duration::from_secs(60),
        || java.assigned().is_some_and(|p| p.len() == 4),
    )
    .await;
    let ours_before_leaving = ours.lock().unwrap().len();
    publish(200, 400).await;
    wait_for("all 400 messages", Duration::from_secs(60), all(400)).await;
    let java_after: BTreeMap<i32, usize> = java
        .consumed()
        .iter()
        .filter(|r| r.1[1..].parse::<usize>().unwrap() >= 200)
        .fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.0).or_default() += 1;
            m
        });
    // Duplicates: what ours had handled and Java read again after the takeover
    // (0 when ours committed everything it handled before leaving).
    let ours_values: HashSet<String> = ours.lock().unwrap().iter().map(|r| r.1.clone()).collect();
    let redelivered = java
        .consumed()
        .iter()
        .filter(|r| ours_values.contains(&r.1))
        .count();
    java.stop();
    println!(
        "ours handled {ours_before_leaving} then left ({summary:?}); the Java member took over \
         {java_after:?} of the second 200; redelivered {redelivered}"
    );
    for p in &our_partitions {
        assert_eq!(
            java_after.get(p),
            Some(&50),
            "the Java member consumed partition {p} after the takeover"
        );
    }
    assert_eq!(redelivered, 0, "ours committed before leaving");
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
}
