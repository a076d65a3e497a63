//! Helpers shared by the integration tests that run against the real broker
//! started by `scripts/test.sh` (address in `XKAFKA_TEST_BROKERS`).
#![allow(dead_code, unreachable_pub)]

use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xkafka::mock::EmbeddedCluster;
use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use xkafka::{Ack, Consumer, ConsumerBuilder, Decision, Error, Message, Producer, Summary};

/// The broker's address. A missing broker fails the test: these tests must
/// never pass by not running.
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

/// A fresh topic on the test broker.
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
    Producer::builder("xkafka-tests")
        .brokers([brokers()])
        .error_handler(|err| eprintln!("producer error: {err}"))
        .build()
        .expect("producer")
}

/// Publishes `count` messages with keys `k0..` to `partition` and returns
/// their offsets.
pub async fn fill(producer: &Producer, topic: &str, partition: i32, count: usize) -> Vec<i64> {
    let mut offsets = Vec::with_capacity(count);
    for i in 0..count {
        let msg = Message::builder(topic)
            .partition(partition)
            .key(format!("k{i}"))
            .value(format!("p{partition}-v{i}"))
            .build();
        offsets.push(producer.publish(msg).await.expect("publish").offset);
    }
    offsets
}

/// A consumer builder with what every test wants: the broker, earliest
/// offsets, a short shutdown.
pub fn consumer(group: &str, topic: &str) -> ConsumerBuilder {
    init_tracing();
    Consumer::builder(group)
        .brokers([brokers()])
        .topics([topic])
        .config("auto.offset.reset", "earliest")
        .config("session.timeout.ms", "6000")
        // At most a third of the session: xkafka refuses more.
        .config("heartbeat.interval.ms", "2000")
        .shutdown_timeout(Duration::from_secs(5))
}

/// Every message a consumer handled, in order.
pub type Seen = Arc<Mutex<Vec<Message>>>;

/// Consumes with a recording handler until `count` messages were seen (or
/// `timeout`), then shuts down; returns what was seen.
pub async fn consume(group: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Message> {
    let builder = consumer(group, topic).error_handler(|err| {
        eprintln!("consumer error: {err}");
        Decision::Continue
    });
    record_until(builder, count, timeout).await.0
}

/// Runs `builder` (error handler set) with a recording handler until
/// `count` messages were seen (or `timeout`), then shuts down; returns what
/// was seen, in order, and the run's summary.
pub async fn record_until(
    builder: ConsumerBuilder,
    count: usize,
    timeout: Duration,
) -> (Vec<Message>, Summary) {
    let seen: Seen = Arc::default();
    let recorder = seen.clone();
    let consumer = builder
        .handler(move |m: Message| {
            let recorder = recorder.clone();
            async move {
                recorder.lock().unwrap().push(m);
                Ack::Success
            }
        })
        .build()
        .expect("consumer");
    let probe = seen.clone();
    let summary = consumer
        .run(until(move || probe.lock().unwrap().len() >= count, timeout))
        .await
        .expect("run");
    let seen = seen.lock().unwrap().clone();
    (seen, summary)
}

/// Resolves when `done()` holds or `timeout` passed (polled every 20 ms:
/// the condition is a counter that other threads update).
pub async fn until(done: impl Fn() -> bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The group's committed offset for one partition, read by a second client.
pub fn committed(group: &str, topic: &str, partition: i32) -> Option<i64> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let offsets = client
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match offsets.find_partition(topic, partition).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

/// An error handler that records what it receives and answers `decision`.
pub fn recording_error_handler(
    decision: Decision,
) -> (
    Arc<Mutex<Vec<String>>>,
    impl Fn(&Error) -> Decision + Send + Sync + 'static,
) {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = log.clone();
    (log, move |err: &Error| {
        sink.lock().unwrap().push(err.to_string());
        decision
    })
}

/// An embedded (mock) cluster with `topic` holding `messages` keyed messages
/// on partition 0 — for fault injection, where the real broker cannot be
/// steered precisely.
pub async fn embedded_with(topic: &str, partitions: i32, messages: usize) -> EmbeddedCluster {
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic(topic, partitions).unwrap();
    let producer = Producer::builder("xkafka-tests-embedded")
        .brokers([cluster.bootstrap_servers()])
        .error_handler(|err| eprintln!("producer error: {err}"))
        .build()
        .unwrap();
    for i in 0..messages {
        let msg = Message::builder(topic)
            .partition(0)
            .key(i.to_string())
            .value("v")
            .build();
        producer.publish(msg).await.unwrap();
    }
    producer.close().await;
    cluster
}

/// Logs to stderr when `RUST_LOG` is set (e.g. `RUST_LOG=xkafka=debug`), for
/// debugging a failing test.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Serialises the heavy tests of one test binary: run side by side on two
/// cores they starve each other (and the broker) into timeouts.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// An in-memory log sink for a `tracing_subscriber::fmt` subscriber: tests
/// read back what was logged.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// The bytes written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// How many bytes were written so far: a mark for [`Captured::text_until`].
    pub fn mark(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// What was written before `mark` (a [`Captured::mark`]), as text.
    pub fn text_until(&self, mark: usize) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()[..mark]).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Every log line of this test binary: xkafka's and librdkafka's at DEBUG,
/// the rdkafka crate's own at TRACE. `try_init` also routes the `log` crate,
/// which rdkafka asks what level librdkafka should log at, so call this
/// before creating a client.
pub fn captured_debug_logs() -> &'static Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let out = Captured::default();
        tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_env_filter("xkafka=debug,librdkafka=debug,rdkafka=trace")
            .with_ansi(false)
            .try_init()
            .expect("the only global subscriber of this binary");
        out
    })
}

/// The 3-broker cluster of `scripts/broker.sh cluster start`
/// (`XKAFKA_CLUSTER_BROKERS`). A missing cluster fails the test.
pub fn cluster_brokers() -> String {
    let brokers = std::env::var("XKAFKA_CLUSTER_BROKERS")
        .unwrap_or_else(|_| "127.0.0.1:11092,127.0.0.1:12092,127.0.0.1:13092".into());
    for addr in brokers.split(',') {
        if TcpStream::connect_timeout(
            &addr.parse().expect("XKAFKA_CLUSTER_BROKERS is host:port,…"),
            Duration::from_secs(2),
        )
        .is_err()
        {
            panic!(
                "no Kafka broker at {addr}: run the suite with scripts/test.sh, or start the \
                 cluster with scripts/broker.sh install && scripts/broker.sh cluster start"
            );
        }
    }
    brokers
}
