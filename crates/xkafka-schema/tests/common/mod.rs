//! What the schema tests share: the real registry started by
//! `scripts/registry.sh` (`XKAFKA_SCHEMA_REGISTRY`), the real broker
//! (`XKAFKA_TEST_BROKERS`), fresh topics, and a consumer that records what
//! its handler decoded and what its error handler saw.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};
use xkafka::extract::Rejection;
use xkafka::{ConsumerBuilder, Decision, Error, Message, Producer};
use xkafka_schema::{RegistryClient, SchemaError};

/// The registry's ccompat URL. A missing registry fails the test.
pub fn registry_url() -> String {
    let url = std::env::var("XKAFKA_SCHEMA_REGISTRY")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into());
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let addr = authority
        .parse()
        .expect("XKAFKA_SCHEMA_REGISTRY is http://host:port/...");
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!(
            "no schema registry at {url}: run the suite with scripts/test.sh, or start one with \
             scripts/registry.sh install && scripts/registry.sh start"
        );
    }
    url
}

pub fn registry() -> RegistryClient {
    RegistryClient::builder(registry_url())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("registry client")
}

/// The broker's address; a missing broker fails the test.
pub fn brokers() -> String {
    let addr = std::env::var("XKAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if TcpStream::connect_timeout(&addr.parse().expect("host:port"), Duration::from_secs(2))
        .is_err()
    {
        panic!("no Kafka broker at {addr}: run the suite with scripts/test.sh");
    }
    addr
}

/// A name no other test (or earlier run) uses: the registry is shared by
/// the whole suite, so subjects are unique too.
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

pub async fn topic(prefix: &str) -> String {
    let name = unique(prefix);
    xkafka::admin::ensure_topics(
        &brokers(),
        &[(&name, 1)],
        &xkafka::Config::new(),
        Duration::from_secs(10),
    )
    .await
    .expect("create topic");
    name
}

pub fn producer() -> Producer {
    Producer::builder("xkafka-schema-tests")
        .brokers([brokers()])
        .error_handler(|err| eprintln!("producer error: {err}"))
        .build()
        .expect("producer")
}

/// Publishes raw values to partition 0, in order.
pub async fn publish(topic: &str, values: Vec<Vec<u8>>) {
    let producer = producer();
    for value in values {
        producer
            .publish(Message::builder(topic).partition(0).value(value).build())
            .await
            .expect("publish");
    }
}

pub fn consumer(group: &str, topic: &str) -> ConsumerBuilder {
    xkafka::Consumer::builder(group)
        .brokers([brokers()])
        .topics([topic])
        .config("auto.offset.reset", "earliest")
        .config("session.timeout.ms", "6000")
        .config("heartbeat.interval.ms", "2000")
        .shutdown_timeout(Duration::from_secs(5))
}

/// What the error handler saw of one failed message.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The message's offset.
    pub offset: i64,
    /// `rejection <format> <SchemaError variant>` for a decode rejection,
    /// `retriable <variant>` for a registry error that may pass, `other`.
    pub class: String,
    /// The error's text, as the error handler got it.
    pub text: String,
}

/// How a handler failure reached the error handler (see [`Seen::class`]).
pub fn classify(err: &Error) -> (i64, String) {
    let Error::Handler { offset, source, .. } = err else {
        return (-1, "other".into());
    };
    let variant = |e: &SchemaError| {
        format!("{e:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let class = if let Some(Rejection::Decode { format, source, .. }) =
        source.downcast_ref::<Rejection>()
    {
        match source.downcast_ref::<SchemaError>() {
            Some(e) => format!("rejection {format} {}", variant(e)),
            None => format!("rejection {format} ?"),
        }
    } else if let Some(e) = source.downcast_ref::<SchemaError>() {
        format!(
            "{} {}",
            if e.is_retriable() {
                "retriable"
            } else {
                "fatal"
            },
            variant(e)
        )
    } else {
        "other".into()
    };
    (*offset, class)
}

/// An error handler that records what it receives and answers `decision`.
pub fn recording(
    decision: Decision,
) -> (
    Arc<Mutex<Vec<Seen>>>,
    impl Fn(&Error) -> Decision + Send + Sync + 'static,
) {
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let sink = log.clone();
    (log, move |err: &Error| {
        let (offset, class) = classify(err);
        sink.lock().unwrap().push(Seen {
            offset,
            class,
            text: err.to_string(),
        });
        decision
    })
}

pub async fn until(done: impl Fn() -> bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Version 1 of the order record.
#[derive(AvroSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[avro(namespace = "shop")]
pub struct Order {
    pub id: i64,
    pub customer: String,
    pub total_cents: i64,
}
