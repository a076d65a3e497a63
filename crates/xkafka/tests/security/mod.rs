//! SASL on a real broker: the suite's Apache Kafka node has a SASL_PLAINTEXT
//! listener (`XKAFKA_SASL_BROKERS`, default 127.0.0.1:9094; see
//! `scripts/broker.sh`) with SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN enabled
//! and one user, created when the node is formatted.
//!
//! * the right password, with each mechanism: a message makes the round trip;
//! * a wrong password: `publish` fails, both error handlers receive
//!   librdkafka's authentication error, the consumer stops, all within
//!   bounds — and neither password shows up in `Debug` output, errors,
//!   logs (xkafka's and librdkafka's, at debug level) or metrics.
//!
//! TLS (`tls.rs`): the node's SSL listener, with and without its CA.
//!
//! Without the broker the tests fail, they never skip.

use crate::common;

mod tls;

use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::captured_debug_logs as logs;
use xkafka::raw::rdkafka::error::RDKafkaErrorCode;
use xkafka::{Ack, Config, Consumer, Decision, Error, Message, Producer};

/// The user `scripts/broker.sh` creates on the SASL listener.
const USER: &str = "xkafka-app";
const MECHANISM: &str = "SCRAM-SHA-512";
/// Distinctive values: any occurrence in output is a leak. `PASSWORD` is
/// the one `scripts/broker.sh` gives the user.
const PASSWORD: &str = "xk-scram-pw-2c9e71a4";
const WRONG: &str = "xk-wrong-pw-8b3d05f6";
const KEY_PASSWORD: &str = "xk-key-pw-61f0d9c3";
const SECRETS: [&str; 3] = [PASSWORD, WRONG, KEY_PASSWORD];

/// The SASL listener's address; a missing listener fails the test.
fn addr() -> String {
    listener("XKAFKA_SASL_BROKERS", "127.0.0.1:9094", "SASL")
}

/// The address in `var` (else `default`) of one of the test node's
/// listeners; a listener that does not answer fails the test.
fn listener(var: &str, default: &str, what: &str) -> String {
    let addr = std::env::var(var).unwrap_or_else(|_| default.into());
    assert!(
        TcpStream::connect_timeout(
            &addr.parse().expect("a listener address is host:port"),
            Duration::from_secs(2)
        )
        .is_ok(),
        "no {what} listener at {addr} ({var}): run the suite with scripts/test.sh, or start the \
         broker with scripts/broker.sh install && scripts/broker.sh start"
    );
    addr
}

// ---------------------------------------------------------------------------
// Clients, errors, logs

fn sasl(mechanism: &str, password: &str) -> Config {
    let addr = addr();
    [
        ("bootstrap.servers", addr.as_str()),
        ("security.protocol", "sasl_plaintext"),
        ("sasl.mechanisms", mechanism),
        ("sasl.username", USER),
        ("sasl.password", password),
        // Unused without TLS, but a secret all the same.
        ("ssl.key.password", KEY_PASSWORD),
        // librdkafka logs the SASL exchange and connections.
        ("debug", "security,broker"),
    ]
    .into_iter()
    .collect()
}

async fn sasl_topic(prefix: &str) -> String {
    let topic = common::unique(prefix);
    xkafka::admin::ensure_topics(
        &addr(),
        &[(&topic, 1)],
        &sasl(MECHANISM, PASSWORD),
        Duration::from_secs(10),
    )
    .await
    .expect("create the topic, authenticated");
    topic
}

/// What an error handler received: Display and Debug, and librdkafka's code.
#[derive(Clone, Debug)]
struct Seen {
    display: String,
    debug: String,
    code: Option<RDKafkaErrorCode>,
}

type Errors = Arc<Mutex<Vec<Seen>>>;

fn record(errors: &Errors, err: &Error) {
    errors.lock().unwrap().push(Seen {
        display: err.to_string(),
        debug: format!("{err:?}"),
        code: err.kafka_code(),
    });
}

fn authentication_failed(errors: &Errors) -> Option<Seen> {
    errors
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.code == Some(RDKafkaErrorCode::Authentication))
        .cloned()
}

async fn wait_for(done: impl Fn() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn assert_hidden(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} shows secret {secret}:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_round_trip() {
    round_trip("SCRAM-SHA-512").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_round_trip() {
    round_trip("SCRAM-SHA-256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_round_trip() {
    round_trip("PLAIN").await;
}

/// Publishes one message and consumes it back, authenticated with
/// `mechanism`: the broker only answers authenticated clients on this
/// listener, so the round trip proves the mechanism worked.
async fn round_trip(mechanism: &str) {
    logs();
    let topic = sasl_topic("sasl-round-trip").await;

    let errors: Errors = Arc::default();
    let sink = errors.clone();
    let producer = Producer::builder("xkafka-sasl")
        .configs(sasl(mechanism, PASSWORD).iter())
        .error_handler(move |err| record(&sink, err))
        .build()
        .expect("producer");
    let started = Instant::now();
    let message = Message::builder(topic.as_str())
        .key("k1")
        .value(format!("over {mechanism}"))
        .build();
    let delivery = producer.publish(message).await.expect("publish");
    eprintln!(
        "authenticated publish (connect + SCRAM + produce) in {:?}",
        started.elapsed()
    );
    assert_eq!((delivery.partition, delivery.offset), (0, 0));
    producer.close().await;

    let sink = errors.clone();
    let builder = Consumer::builder(common::unique("sasl-g"))
        .configs(sasl(mechanism, PASSWORD).iter())
        .topics([topic.as_str()])
        .config("auto.offset.reset", "earliest")
        .shutdown_timeout(Duration::from_secs(5))
        .error_handler(move |err| {
            record(&sink, err);
            Decision::Continue
        });
    let started = Instant::now();
    let (seen, _) = common::record_until(builder, 1, Duration::from_secs(30)).await;
    eprintln!("authenticated consume in {:?}", started.elapsed());

    assert_eq!(seen.len(), 1, "consumed {seen:?}");
    assert_eq!(seen[0].key_str(), Some("k1"));
    assert_eq!(
        seen[0].value_str(),
        Some(format!("over {mechanism}").as_str())
    );
    assert_eq!(
        authentication_failed(&errors).map(|e| e.display),
        None,
        "the right password was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_clearly_and_leaks_nothing() {
    let logs = logs();
    // An authenticated client first, so the logs hold a successful SCRAM
    // exchange with the right password as well.
    let topic = sasl_topic("sasl-wrong").await;
    #[cfg(feature = "metrics")]
    let metrics = xkafka::metrics::Metrics::new();

    let config = sasl(MECHANISM, WRONG);
    let mut shown = vec![("Config", format!("{config:?}"))];

    // The producer: its error handler hears of the failure at once; a
    // publish fails once `message.timeout.ms` passed.
    let produced: Errors = Arc::default();
    let sink = produced.clone();
    let builder = Producer::builder("xkafka-sasl-wrong")
        .configs(config.iter())
        .config("message.timeout.ms", "5000")
        .error_handler(move |err| record(&sink, err));
    #[cfg(feature = "metrics")]
    let builder = builder.layer(metrics.producer_layer());
    shown.push(("ProducerBuilder", format!("{builder:?}")));
    let started = Instant::now();
    let producer = builder.build().expect("producer");
    shown.push(("Producer", format!("{producer:?}")));
    let heard = wait_for(
        || authentication_failed(&produced).is_some(),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        heard,
        "the producer's error handler got no authentication error within 10 s: {:?}",
        produced.lock().unwrap()
    );
    eprintln!(
        "producer error handler: authentication error {:?} after build",
        started.elapsed()
    );
    let started = Instant::now();
    let message = Message::builder(topic.as_str()).value("never").build();
    let publish = producer.publish(message);
    let published = tokio::time::timeout(Duration::from_secs(20), publish)
        .await
        .expect("publish settles within 20 s");
    let publish_err = published.expect_err("a wrong password cannot publish");
    eprintln!(
        "publish failed after {:?}: {publish_err}",
        started.elapsed()
    );
    shown.push(("publish error", format!("{publish_err} / {publish_err:?}")));
    let auth = authentication_failed(&produced).expect("seen above");
    eprintln!("producer error handler: {}", auth.display);
    assert!(
        auth.display.contains("Authentication failure"),
        "{}",
        auth.display
    );
    producer.close().await;

    // The consumer: its error handler stops it; `run` returns the error.
    let consumed: Errors = Arc::default();
    let sink = consumed.clone();
    let builder = Consumer::builder(common::unique("sasl-wrong-g"))
        .configs(config.iter())
        .topics([topic.as_str()])
        .shutdown_timeout(Duration::from_secs(5))
        .error_handler(move |err| {
            record(&sink, err);
            if err.kafka_code() == Some(RDKafkaErrorCode::Authentication) {
                Decision::Stop
            } else {
                Decision::Continue
            }
        })
        .handler(|_m: Message| async { Ack::Success });
    #[cfg(feature = "metrics")]
    let builder = builder.metrics(&metrics).layer(metrics.layer());
    shown.push(("ConsumerBuilder", format!("{builder:?}")));
    let consumer = builder.build().expect("consumer");
    shown.push(("Consumer", format!("{consumer:?}")));
    let started = Instant::now();
    let run = consumer.run(std::future::pending::<()>());
    let stopped = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the consumer stops within 30 s");
    let run_err = stopped.expect_err("a wrong password cannot consume");
    eprintln!("consumer stopped after {:?}: {run_err}", started.elapsed());
    assert_eq!(
        run_err.kafka_code(),
        Some(RDKafkaErrorCode::Authentication),
        "{run_err:?}"
    );
    assert!(
        run_err.to_string().contains("Authentication failure"),
        "{run_err}"
    );
    shown.push(("run error", format!("{run_err} / {run_err:?}")));
    assert!(authentication_failed(&consumed).is_some());

    // Nothing shows a password.
    for errors in [&produced, &consumed] {
        for e in errors.lock().unwrap().iter() {
            shown.push(("handled error", format!("{} / {}", e.display, e.debug)));
        }
    }
    for (what, text) in &shown {
        assert_hidden(what, text);
    }
    let text = logs.text();
    assert_hidden("logs", &text);
    // …and the logs are not empty by accident: librdkafka's SASL debug
    // lines and its failure reason arrived.
    for expected in ["SCRAM", "client error", "Authentication failure"] {
        assert!(
            text.contains(expected),
            "no {expected:?} in the logs:\n{text}"
        );
    }
    #[cfg(feature = "metrics")]
    {
        let rendered = metrics.render();
        assert_hidden("metrics", &rendered);
        let failed =
            format!("xkafka_messages_published_total{{outcome=\"fail\",topic=\"{topic}\"}} 1");
        assert!(rendered.contains(&failed), "{rendered}");
    }
}
