//! TLS on a real broker: the test node's SSL listener (`XKAFKA_TLS_BROKERS`,
//! default 127.0.0.1:9095) presents a certificate for 127.0.0.1 signed by a
//! throwaway CA that `scripts/broker.sh` makes (`XKAFKA_TLS_CA`, default
//! `target/xkafka-broker/single/tls/ca.pem`).
//!
//! * trusting that CA, a message makes the round trip, with librdkafka
//!   checking the broker's name against the certificate (its default);
//! * without it, the handshake fails and the error handler hears why.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xkafka::raw::rdkafka::error::RDKafkaErrorCode;
use xkafka::{Config, Consumer, Decision, Message, Producer};

use crate::common;

fn tls_addr() -> String {
    super::listener("XKAFKA_TLS_BROKERS", "127.0.0.1:9095", "TLS")
}

fn ca() -> String {
    let path = std::env::var_os("XKAFKA_TLS_CA").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/xkafka-broker/single/tls/ca.pem")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no CA certificate at {} (scripts/broker.sh start makes it; or set XKAFKA_TLS_CA)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// An error handler's call: librdkafka's code and the error's text.
type Heard = (Option<RDKafkaErrorCode>, String);

fn tls(ca: Option<&str>) -> Config {
    let addr = tls_addr();
    let mut config: Config = [
        ("bootstrap.servers", addr.as_str()),
        ("security.protocol", "ssl"),
    ]
    .into_iter()
    .collect();
    if let Some(ca) = ca {
        config.set("ssl.ca.location", ca);
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip() {
    // The topic is created over the plaintext listener: same broker.
    let topic = common::topic("tls-round-trip", 1).await;
    let ca = ca();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = errors.clone();
    let producer = Producer::builder("xkafka-tls")
        .configs(tls(Some(&ca)).iter())
        // A CA that is not the broker's (a stale XKAFKA_TLS_CA) fails within
        // 30 s, not librdkafka's 300.
        .config("message.timeout.ms", "30000")
        .error_handler(move |err| sink.lock().unwrap().push(err.to_string()))
        .build()
        .expect("producer");
    let message = Message::builder(topic.as_str())
        .key("k")
        .value("over TLS")
        .build();
    let delivery = match producer.publish(message).await {
        Ok(delivery) => delivery,
        Err(e) => panic!(
            "publish over TLS (CA {ca}): {e}; client errors: {:?}",
            errors.lock().unwrap()
        ),
    };
    assert_eq!((delivery.partition, delivery.offset), (0, 0));
    producer.close().await;

    let sink = errors.clone();
    let builder = Consumer::builder(common::unique("tls-g"))
        .configs(tls(Some(&ca)).iter())
        .topics([topic.as_str()])
        .config("auto.offset.reset", "earliest")
        .shutdown_timeout(Duration::from_secs(5))
        .error_handler(move |err| {
            sink.lock().unwrap().push(err.to_string());
            Decision::Continue
        });
    let (seen, _) = common::record_until(builder, 1, Duration::from_secs(30)).await;
    assert_eq!(seen.len(), 1, "consumed over TLS: {seen:?}");
    assert_eq!(seen[0].value_str(), Some("over TLS"));
    let errors = errors.lock().unwrap();
    assert!(
        errors.iter().all(|e| !e.contains("SSL")),
        "TLS errors with the right CA: {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_fails_clearly() {
    let codes: Arc<Mutex<Vec<Heard>>> = Arc::default();
    let sink = codes.clone();
    // No ssl.ca.location: the system's CAs, which do not know the test CA.
    let producer = Producer::builder("xkafka-tls-untrusted")
        .configs(tls(None).iter())
        .config("message.timeout.ms", "3000")
        .error_handler(move |err| {
            sink.lock()
                .unwrap()
                .push((err.kafka_code(), err.to_string()))
        })
        .build()
        .expect("producer");
    let started = Instant::now();
    let heard = loop {
        let found = codes
            .lock()
            .unwrap()
            .iter()
            .find(|(code, _)| *code == Some(RDKafkaErrorCode::SSL))
            .cloned();
        if let Some(found) = found {
            break found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no SSL error within 20 s: {:?}",
            codes.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("after {:?}: {}", started.elapsed(), heard.1);
    assert!(
        heard.1.contains("certificate verify failed"),
        "the error says why: {}",
        heard.1
    );
    let message = Message::builder("tls-never-created").value("x").build();
    let err = producer
        .publish(message)
        .await
        .expect_err("no publish without a trusted certificate");
    eprintln!("publish: {err}");
    producer.close().await;
}
