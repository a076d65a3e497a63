//! A record corrupted on the broker's disk never reaches a handler: with
//! xkafka's default `check.crcs=true` librdkafka verifies each record
//! batch's CRC-32C, and a batch that fails becomes [`Error::Consume`]
//! naming its partition and offset.
//!
//! What librdkafka does then (measured here): it hands over nothing of
//! that fetch from the corrupt batch on, and fetches the partition again
//! from the corrupt batch's offset, failing again each time (one error per
//! fetch, about every `fetch.error.backoff.ms`). So the partition stays at
//! the corrupt record: nothing after it is handled and the committed
//! offset does not pass it, until the application moves the group past it
//! (here: a commit of the next offset), after which the rest is handled.
//!
//! The corruption is real: a private Apache Kafka (never the shared test
//! brokers) is stopped cleanly, one byte of a record's value is flipped in
//! its log segment, and the broker is started again on that data (after a
//! clean shutdown Kafka does not re-validate its segments, and it serves
//! fetches straight from the file). A consumer with `check.crcs=false`
//! then receives the altered value as if it were sound, which is what
//! librdkafka's own default does.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use xkafka::raw::rdkafka::error::RDKafkaErrorCode;
use xkafka::{Ack, Consumer, Decision, Error, Message, Producer, TopicPartition};

/// Records published; the victim's batch holds it alone.
const RECORDS: usize = 10;
const VICTIM: usize = 4;

/// A single Apache Kafka node of this test only, started with
/// `scripts/broker.sh` on its own ports and data folder. Dropped (the test
/// passed, failed or panicked), it is killed by its pid file and its data
/// removed.
struct PrivateBroker {
    port: u16,
    data: PathBuf,
}

impl PrivateBroker {
    fn start() -> Self {
        let broker = PrivateBroker {
            port: free_ports(),
            data: std::env::temp_dir().join(unique("xkafka-crc-broker")),
        };
        // From here on the guard owns whatever the script starts.
        broker.script("start");
        broker
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The log folder of partition 0 of `topic`.
    fn partition_dir(&self, topic: &str) -> PathBuf {
        self.data.join("single/log").join(format!("{topic}-0"))
    }

    fn script(&self, command: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/broker.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(command)
            .env("XKAFKA_BROKER_PORT", self.port.to_string())
            .env("XKAFKA_BROKER_DATA", &self.data)
            .output()
            .expect("run scripts/broker.sh");
        assert!(
            out.status.success(),
            "scripts/broker.sh {command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // SIGKILL by the pid file the script wrote (never by name).
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/broker.sh");
        let _ = Command::new("bash")
            .arg(&script)
            .arg("kill")
            .env("XKAFKA_BROKER_PORT", self.port.to_string())
            .env("XKAFKA_BROKER_DATA", &self.data)
            .output();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The first of four consecutive free ports (the node's listeners: plain,
/// controller, SASL, TLS), below Linux's ephemeral range.
fn free_ports() -> u16 {
    let start = 20_000 + (std::process::id() % 500) as u16 * 20;
    (0..200)
        .map(|i| start + i * 4)
        .find(|&p| (p..p + 4).all(|q| TcpListener::bind(("127.0.0.1", q)).is_ok()))
        .expect("four free ports")
}

/// Flips one bit in the middle of `needle` in the partition's segment
/// files; returns the altered value. Exactly one occurrence must exist.
fn corrupt(dir: &Path, needle: &[u8]) -> Vec<u8> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("partition folder") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let bytes = std::fs::read(&path).unwrap();
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                found.push((path, bytes, at));
            }
        }
    }
    assert_eq!(found.len(), 1, "the victim's value in one segment");
    let (path, mut bytes, at) = found.pop().unwrap();
    assert_eq!(
        bytes[at + 1..]
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count(),
        0,
        "the victim's value once"
    );
    let flip = at + needle.len() / 2;
    bytes[flip] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    bytes[at..at + needle.len()].to_vec()
}

/// An [`Error::Consume`] the error handler received.
#[derive(Clone, Debug)]
struct ConsumeError {
    partition: Option<TopicPartition>,
    offset: i64,
    code: RDKafkaErrorCode,
    reason: String,
}

/// What one consumer saw: handled (offset, value), and the errors.
#[derive(Default)]
struct Seen {
    handled: Mutex<Vec<(i64, Vec<u8>)>>,
    consume_errors: Mutex<Vec<ConsumeError>>,
}

/// Consumes the topic as `group` (from the start, for a new group) until
/// `done` holds (30 s at most).
async fn consume(
    broker: &PrivateBroker,
    group: &str,
    topic: &str,
    check_crcs: Option<&str>,
    done: impl Fn(&Seen) -> bool,
) -> (Arc<Seen>, xkafka::Summary) {
    let seen = Arc::new(Seen::default());
    let (handled, errors) = (seen.clone(), seen.clone());
    let mut builder = Consumer::builder(group)
        .brokers([broker.bootstrap()])
        .topics([topic])
        .config("auto.offset.reset", "earliest")
        .shutdown_timeout(Duration::from_secs(5))
        .error_handler(move |err: &Error| {
            eprintln!("consumer error: {err}");
            if let Error::Consume {
                partition,
                offset,
                reason,
                code,
            } = err
            {
                errors.consume_errors.lock().unwrap().push(ConsumeError {
                    partition: partition.clone(),
                    offset: *offset,
                    code: *code,
                    reason: reason.to_string(),
                });
            }
            Decision::Continue
        })
        .handler(move |m: Message| {
            let handled = handled.clone();
            async move {
                let value = m.value().map(|v| v.to_vec()).unwrap_or_default();
                handled
                    .handled
                    .lock()
                    .unwrap()
                    .push((m.offset().unwrap(), value));
                Ack::Success
            }
        });
    if let Some(value) = check_crcs {
        builder = builder.config("check.crcs", value);
    }
    let consumer = builder.build().expect("consumer");
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    until(|| done(&seen), Duration::from_secs(30)).await;
    stop.shutdown();
    let summary = run.await.unwrap().expect("the consumer stops cleanly");
    (seen, summary)
}

/// Commits `offset` (the next to read) for `group` on partition 0 of
/// `topic`, as an operator skipping a record would.
fn commit(broker: &PrivateBroker, group: &str, topic: &str, offset: i64) {
    use xkafka::raw::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
    use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    client.commit(&tpl, CommitMode::Sync).expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_corrupted_on_disk_is_an_error_naming_it_and_never_reaches_a_handler() {
    let broker = PrivateBroker::start();
    let topic = unique("crc");
    xkafka::admin::ensure_topics(
        &broker.bootstrap(),
        &[(&topic, 1)],
        &xkafka::Config::new(),
        Duration::from_secs(30),
    )
    .await
    .expect("create the topic");

    // One record per batch (each publish awaited, no linger), stored as
    // produced (no compression): the victim's value is on disk as is.
    let victim = unique("crc-victim-value").into_bytes();
    let producer = Producer::builder("crc")
        .brokers([broker.bootstrap()])
        .config("linger.ms", "0")
        .config("compression.type", "none")
        .error_handler(|err| eprintln!("producer error: {err}"))
        .build()
        .unwrap();
    let mut offsets = Vec::new();
    for i in 0..RECORDS {
        let value = if i == VICTIM {
            victim.clone()
        } else {
            format!("record-{i}").into_bytes()
        };
        let message = Message::builder(topic.as_str())
            .partition(0)
            .value(value)
            .build();
        offsets.push(producer.publish(message).await.expect("publish").offset);
    }
    producer.close().await;
    assert_eq!(offsets, (0..RECORDS as i64).collect::<Vec<_>>());

    broker.script("stop");
    let altered = corrupt(&broker.partition_dir(&topic), &victim);
    assert_ne!(altered, victim);
    broker.script("start");

    // xkafka's default: the corrupt batch is an error naming its partition
    // and offset, at every fetch of it; the partition stays there.
    let victim_offset = offsets[VICTIM];
    let tp = TopicPartition::new(topic.as_str(), 0);
    let group = unique("crc-checked");
    let (seen, summary) = consume(&broker, &group, &topic, None, |s| {
        s.handled.lock().unwrap().len() >= VICTIM && s.consume_errors.lock().unwrap().len() >= 3
    })
    .await;
    let handled = seen.handled.lock().unwrap().clone();
    let errors = seen.consume_errors.lock().unwrap().clone();
    println!(
        "check.crcs default: handled offsets {:?}, {} consume errors, the first {:?}, committed {:?}",
        handled.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        errors.len(),
        errors.first(),
        summary.committed,
    );
    assert!(errors.len() >= 3, "one error per fetch: {errors:?}");
    for e in &errors {
        assert!(
            e.partition.as_ref() == Some(&tp)
                && e.offset == victim_offset
                && e.code == RDKafkaErrorCode::BadMessage
                && e.reason.contains("CRC"),
            "the error handler is told which record failed its CRC: {e:?}"
        );
    }
    assert!(
        handled
            .iter()
            .all(|(o, v)| *o != victim_offset && *v != altered),
        "the corrupt record never reaches the handler"
    );
    let got: Vec<i64> = handled.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        got,
        offsets[..VICTIM].to_vec(),
        "the records before it are handled, none after it"
    );
    assert_eq!(
        summary.committed.get(&tp),
        Some(&victim_offset),
        "the committed offset stops at the corrupt record"
    );

    // Moving the group past it: the rest is handled, with no error.
    commit(&broker, &group, &topic, victim_offset + 1);
    let (seen, _) = consume(&broker, &group, &topic, None, |s| {
        s.handled.lock().unwrap().len() >= RECORDS - VICTIM - 1
    })
    .await;
    let got: Vec<i64> = seen
        .handled
        .lock()
        .unwrap()
        .iter()
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(got, offsets[VICTIM + 1..].to_vec(), "the records after it");
    assert!(seen.consume_errors.lock().unwrap().is_empty());

    // The same data without the check: the altered record is handed over
    // as if it were sound (librdkafka's default, and xkafka's before).
    let (unchecked, _) = consume(
        &broker,
        &unique("crc-unchecked"),
        &topic,
        Some("false"),
        |s| s.handled.lock().unwrap().len() >= RECORDS,
    )
    .await;
    let handled = unchecked.handled.lock().unwrap();
    assert!(
        handled
            .iter()
            .any(|(o, v)| *o == victim_offset && *v == altered),
        "without check.crcs the corrupt record reaches the handler: the corruption is real"
    );
    assert!(unchecked.consume_errors.lock().unwrap().is_empty());
}
