//! Protobuf (with message indexes) and JSON Schema through the real
//! registry and broker, and a writer of one format refused by a reader of
//! another.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde::{Deserialize, Serialize};
use xkafka::{Ack, Decision};
use xkafka_schema::{
    split_indexes, wire, JsonSchema, JsonSchemaEncoder, Proto, ProtoEncoder, SchemaRegistryLayer,
};

const PROTO: &str = r#"syntax = "proto3";
package shop;

message OrderPlaced {
  int64 id = 1;
  string customer = 2;
}

message OrderShipped {
  int64 id = 1;
  string carrier = 2;
}
"#;

#[derive(Clone, PartialEq, prost::Message)]
struct OrderShipped {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(string, tag = "2")]
    carrier: String,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Refund {
    id: i64,
    amount_cents: i64,
    reason: Option<String>,
}

/// Consumes `count` messages of `topic` with `handler` behind the registry
/// layer, failing on any error.
async fn consume_all<H, T>(topic: &str, count: usize, handler: H, seen: Arc<Mutex<Vec<String>>>)
where
    H: xkafka::Handler<T>,
    T: 'static,
{
    let (errors, on_error) = recording(Decision::Stop);
    let consumer = consumer(&unique("g"), topic)
        .error_handler(on_error)
        .layer(SchemaRegistryLayer::new(registry()))
        .handler(handler)
        .build()
        .expect("consumer");
    let probe = seen.clone();
    let errors_probe = errors.clone();
    consumer
        .run(until(
            move || {
                probe.lock().unwrap().len() >= count || !errors_probe.lock().unwrap().is_empty()
            },
            Duration::from_secs(60),
        ))
        .await
        .ok();
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_round_trips_with_message_indexes() {
    let topic = topic("schema-proto").await;
    // The second message of the file: indexes [1], not the [0] shortcut.
    let encoder = ProtoEncoder::<OrderShipped>::new(registry(), PROTO, "shop.OrderShipped")
        .message_indexes(vec![1]);
    let event = OrderShipped {
        id: 5,
        carrier: "DHL".into(),
    };
    let framed = encoder.encode(&topic, &event).await.expect("encode");
    let (_, payload) = wire::split(&framed).unwrap();
    assert_eq!(split_indexes(payload).unwrap().0, vec![1]);
    publish(&topic, vec![framed]).await;

    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let handler = move |Proto(e): Proto<OrderShipped>| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push(format!("{}:{}", e.id, e.carrier));
            Ack::Success
        }
    };
    consume_all(&topic, 1, handler, seen.clone()).await;
    assert_eq!(*seen.lock().unwrap(), vec!["5:DHL".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_round_trips() {
    let topic = topic("schema-json").await;
    let encoder = JsonSchemaEncoder::<Refund>::new(registry());
    let refund = Refund {
        id: 3,
        amount_cents: 250,
        reason: Some("late".into()),
    };
    let framed = encoder.encode(&topic, &refund).await.expect("encode");
    let id = wire::split(&framed).unwrap().0;
    let registered = registry().schema_by_id(id).await.unwrap();
    assert_eq!(registered.kind(), xkafka_schema::SchemaKind::Json);
    publish(&topic, vec![framed]).await;

    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let handler = move |JsonSchema(r): JsonSchema<Refund>| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push(format!("{r:?}"));
            Ack::Success
        }
    };
    consume_all(&topic, 1, handler, seen.clone()).await;
    assert_eq!(*seen.lock().unwrap(), vec![format!("{refund:?}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_another_format_is_a_rejection() {
    // A JSON Schema record read by a Protobuf handler.
    let topic = topic("schema-kind").await;
    let framed = JsonSchemaEncoder::<Refund>::new(registry())
        .encode(
            &topic,
            &Refund {
                id: 1,
                amount_cents: 1,
                reason: None,
            },
        )
        .await
        .unwrap();
    publish(&topic, vec![framed]).await;
    let (errors, on_error) = recording(Decision::Stop);
    let consumer = consumer(&unique("g"), &topic)
        .error_handler(on_error)
        .layer(SchemaRegistryLayer::new(registry()))
        .handler(|Proto(_e): Proto<OrderShipped>| async { Ack::Success })
        .build()
        .unwrap();
    let err = consumer
        .run(std::future::pending::<()>())
        .await
        .expect_err("stops");
    let (offset, class) = classify(&err);
    assert_eq!(
        (offset, class.as_str()),
        (0, "rejection Protobuf Schema"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("it is a JSON schema, the handler reads Protobuf"),
        "{err}"
    );
    assert_eq!(errors.lock().unwrap().len(), 1);
}
