//! Helpers of the `xkafka` binary's tests: the test broker
//! (`XKAFKA_TEST_BROKERS`, default 127.0.0.1:9092; a missing broker fails
//! them), unique names, and runs of the built binary.
#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;
use serde_json::Value;
use xkafka::dlq::DeadLetterLayer;
use xkafka::testing::{HandlerTest, Outcome};
use xkafka::{BoxError, Consumer, Decision, Message, Producer};

/// The broker's address; panics when nothing answers there.
pub fn brokers() -> String {
    let addr = std::env::var("XKAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if TcpStream::connect_timeout(
        &addr.parse().expect("XKAFKA_TEST_BROKERS is host:port"),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!(
            "no Kafka broker at {addr}: run the suite with scripts/test.sh, or start one with \
             scripts/broker.sh install && scripts/broker.sh start"
        );
    }
    addr
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        "{prefix}-{ms}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh topic.
pub async fn topic(prefix: &str, partitions: i32) -> String {
    let name = unique(prefix);
    xkafka::admin::ensure_topics(
        &brokers(),
        &[(&name, partitions)],
        &xkafka::Config::new(),
        Duration::from_secs(10),
    )
    .await
    .expect("create topic");
    name
}

pub fn producer() -> Producer {
    Producer::builder("xkafka-cli-tests")
        .brokers([brokers()])
        .error_handler(|err| eprintln!("producer error: {err}"))
        .build()
        .expect("producer")
}

/// What a run of the binary left.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    /// The exit code, asserting that stderr shows no panic.
    pub fn code(&self) -> i32 {
        assert!(
            !self.stderr.contains("panicked"),
            "the binary panicked: {}",
            self.stderr
        );
        self.code.expect("exited, not killed by a signal")
    }

    /// Asserts success and parses stdout as one JSON document.
    pub fn json(&self) -> Value {
        assert_eq!(self.code(), 0, "failed: {self:?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// Asserts success and parses each line of stdout as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        assert_eq!(self.code(), 0, "failed: {self:?}");
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Asserts a failure with `code` and one line on stderr.
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code(), code, "{self:?}");
        let line = self.stderr.trim_end();
        assert!(
            !line.is_empty() && !line.contains('\n'),
            "not one line: {line:?}"
        );
        assert!(line.starts_with("xkafka: "), "{line:?}");
        line
    }
}

/// The binary with `args`, against the test broker, without progress bars.
pub fn xkafka(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xkafka"));
    cmd.env_remove("XKAFKA_BROKERS")
        .args(["--brokers", &brokers(), "--no-progress"])
        .args(args);
    cmd
}

/// Runs `cmd` with `stdin`; killed (and the test failed) past 60 s.
pub fn run_with(cmd: Command, stdin: &[u8]) -> Run {
    let (child, started) = start(cmd, stdin);
    finish(child, started)
}

/// Starts `cmd` with `stdin` (its output is read by [`finish`]).
pub fn start(mut cmd: Command, stdin: &[u8]) -> (Child, Instant) {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run xkafka");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    (child, started)
}

pub fn finish(mut child: Child, started: Instant) -> Run {
    let deadline = started + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "xkafka hung; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 output"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

pub fn run(args: &[&str]) -> Run {
    run_with(xkafka(args), b"")
}

/// `(low, high)` of one partition, read by a second client.
pub fn watermarks(topic: &str, partition: i32) -> (i64, i64) {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    client
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap()
}

/// Dead letters written by the library's `DeadLetterLayer`: each original
/// goes through a handler that fails with its `fail` header's text.
pub async fn dead_letters(dlq: &str, originals: Vec<Message>) {
    let dead_producer = producer();
    let test = HandlerTest::new(
        Consumer::builder("billing")
            .error_handler(|_| Decision::Stop)
            .layer(DeadLetterLayer::new(dead_producer.clone(), dlq.to_owned()))
            .handler(|m: Message| async move {
                let why = m
                    .headers()
                    .get_str("fail")
                    .unwrap_or("no reason")
                    .to_owned();
                Err::<(), BoxError>(why.into())
            }),
    )
    .unwrap();
    for m in originals {
        assert_eq!(test.call(m).await, Outcome::Skip, "dead-lettered");
    }
    dead_producer.close().await;
}

/// An original record of `topic`, as a consumer would have fetched it.
pub fn original(topic: &str, partition: i32, offset: i64, fail: &str) -> Message {
    Message::builder(topic.to_owned())
        .partition(partition)
        .offset(offset)
        .key(format!("key-{topic}-{partition}-{offset}"))
        .value(format!("value-{topic}-{partition}-{offset}"))
        .header("trace", format!("t{offset}"))
        .header("fail", fail.to_owned())
        .timestamp_millis(1_700_000_000_000 + offset)
        .build()
}

/// Every record of `topic` now, through `tail --until-end --format json`.
pub fn read_all(topic: &str) -> Vec<Value> {
    run(&[
        "tail",
        topic,
        "--from",
        "beginning",
        "--until-end",
        "--format",
        "json",
    ])
    .json_lines()
}
