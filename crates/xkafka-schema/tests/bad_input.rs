//! Every kind of bad input gets its own, per-message answer with the
//! message's location, on the real registry and broker: a rejection the
//! error handler (or a dead-letter layer) sees for input that can never
//! decode, a retriable error that keeps the consumer's position when the
//! registry is unreachable, and a refused schema for the producer.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::AvroSchema;
use common::*;
use serde::{Deserialize, Serialize};
use xkafka::{Ack, Decision};
use xkafka_schema::{wire, Avro, AvroEncoder, RegistryClient, SchemaError, SchemaRegistryLayer};

/// Publishes `bad` then a good order, consumes with error handler
/// `Continue`, and returns what the error handler saw once the good record
/// was handled (so the bad one was answered, not stalled on).
async fn answer_to(bad: Vec<u8>) -> Vec<Seen> {
    let registry = registry();
    let topic = topic("schema-bad").await;
    let good = AvroEncoder::<Order>::new(registry.clone())
        .encode(
            &topic,
            &Order {
                id: 1,
                customer: "c".into(),
                total_cents: 5,
            },
        )
        .await
        .unwrap();
    publish(&topic, vec![bad, good]).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let (errors, on_error) = recording(Decision::Continue);
    let consumer = consumer(&unique("g"), &topic)
        .error_handler(on_error)
        .layer(SchemaRegistryLayer::new(registry))
        .handler(move |Avro(order): Avro<Order>| {
            let counter = counter.clone();
            async move {
                assert_eq!(order.id, 1);
                counter.fetch_add(1, Ordering::SeqCst);
                Ack::Success
            }
        })
        .build()
        .expect("consumer");
    let probe = handled.clone();
    consumer
        .run(until(
            move || probe.load(Ordering::SeqCst) >= 1,
            Duration::from_secs(60),
        ))
        .await
        .expect("run");
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "the good record after the bad one was handled"
    );
    let seen = errors.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one answer, for the bad record: {seen:?}");
    assert_eq!(seen[0].offset, 0, "{seen:?}");
    assert!(
        seen[0].text.contains(&format!("{topic}[0]@0")),
        "the location is named: {}",
        seen[0].text
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_magic_byte_is_a_rejection() {
    let seen = answer_to(b"{\"id\": 1}".to_vec()).await;
    assert_eq!(
        seen[0].class, "rejection schema registry wire format WrongMagic",
        "{seen:?}"
    );
    assert!(
        seen[0].text.contains("wrong magic byte 0x7b"),
        "{}",
        seen[0].text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_header_is_a_rejection() {
    let seen = answer_to(vec![0, 0, 1]).await;
    assert_eq!(
        seen[0].class, "rejection schema registry wire format Truncated",
        "{seen:?}"
    );
    assert!(seen[0].text.contains("3 byte(s)"), "{}", seen[0].text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_schema_id_is_a_rejection() {
    // Far above anything the suite registers.
    let seen = answer_to(wire::frame(2_000_000_000, b"\x02")).await;
    assert_eq!(
        seen[0].class, "rejection schema registry wire format UnknownId",
        "{seen:?}"
    );
    assert!(
        seen[0].text.contains("unknown schema id 2000000000"),
        "{}",
        seen[0].text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_not_matching_its_schema_is_a_rejection() {
    let registry = registry();
    let id = registry
        .register(
            &unique("mismatch-value"),
            xkafka_schema::SchemaKind::Avro,
            &serde_json::to_string(&Order::get_schema()).unwrap(),
        )
        .await
        .unwrap();
    // id 1 (zigzag 2), then a string whose length says 60 bytes: only 3 follow.
    let seen = answer_to(wire::frame(id, &[2, 120, b'a', b'b', b'c'])).await;
    assert_eq!(seen[0].class, "rejection Avro Payload", "{seen:?}");
    assert!(
        seen[0]
            .text
            .contains(&format!("does not match schema {id}")),
        "{}",
        seen[0].text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_bytes_after_the_record_are_a_rejection() {
    let registry = registry();
    let topic = unique("trailing");
    let mut framed = AvroEncoder::<Order>::new(registry)
        .encode(
            &topic,
            &Order {
                id: 1,
                customer: "c".into(),
                total_cents: 5,
            },
        )
        .await
        .unwrap();
    framed.extend_from_slice(b"junk");
    let seen = answer_to(framed).await;
    assert_eq!(seen[0].class, "rejection Avro Payload", "{seen:?}");
    assert!(
        seen[0].text.contains("4 byte(s) after the record"),
        "{}",
        seen[0].text
    );
}

#[derive(AvroSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[avro(namespace = "shop", name = "Order")]
struct OrderRenamed {
    order_id: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_schema_is_refused_by_the_registry() {
    let registry = registry();
    let topic = unique("incompatible");
    registry
        .set_compatibility(&format!("{topic}-value"), "BACKWARD")
        .await
        .unwrap();
    AvroEncoder::<Order>::new(registry.clone())
        .encode(
            &topic,
            &Order {
                id: 1,
                customer: "c".into(),
                total_cents: 5,
            },
        )
        .await
        .unwrap();
    let err = AvroEncoder::<OrderRenamed>::new(registry)
        .encode(&topic, &OrderRenamed { order_id: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SchemaError::Incompatible { subject, .. } if *subject == format!("{topic}-value")),
        "{err:?}"
    );
    assert!(!err.is_retriable());
    assert!(err.to_string().contains("incompatible"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_is_retriable_and_the_consumer_keeps_its_position() {
    let registry = registry();
    let topic = topic("schema-unreachable").await;
    let order = Order {
        id: 9,
        customer: "c".into(),
        total_cents: 5,
    };
    let framed = AvroEncoder::<Order>::new(registry.clone())
        .encode(&topic, &order)
        .await
        .unwrap();
    publish(&topic, vec![framed]).await;
    let group = unique("g");

    // A port nothing listens on: connection refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/apis/ccompat/v7", closed.local_addr().unwrap());
    drop(closed);
    let dead = RegistryClient::builder(dead_url)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (errors, on_error) = recording(Decision::Stop);
    let first = consumer(&group, &topic)
        .error_handler(on_error)
        .layer(SchemaRegistryLayer::new(dead))
        .handler(|Avro(_o): Avro<Order>| async { Ack::Success })
        .build()
        .unwrap();
    let err = first
        .run(std::future::pending::<()>())
        .await
        .expect_err("stops on the error");
    let (offset, class) = classify(&err);
    assert_eq!(
        (offset, class.as_str()),
        (0, "retriable Unreachable"),
        "{err}"
    );
    assert_eq!(
        errors.lock().unwrap().len(),
        1,
        "{:?}",
        errors.lock().unwrap()
    );

    // The same group with the registry back: offset 0 again, decoded.
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let (errors, on_error) = recording(Decision::Stop);
    let second = consumer(&group, &topic)
        .error_handler(on_error)
        .layer(SchemaRegistryLayer::new(registry))
        .handler(
            move |Avro(o): Avro<Order>, meta: xkafka::extract::Metadata| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push((meta.offset, o));
                    Ack::Success
                }
            },
        )
        .build()
        .unwrap();
    let probe = got.clone();
    second
        .run(until(
            move || !probe.lock().unwrap().is_empty(),
            Duration::from_secs(60),
        ))
        .await
        .expect("run");
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    assert_eq!(
        *got.lock().unwrap(),
        vec![(0, order)],
        "the message was not skipped"
    );
}
