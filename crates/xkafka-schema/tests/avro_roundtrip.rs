//! Avro through the real registry (Apicurio's Confluent-compatible API) and
//! the real broker: the producer's encoder registers the schema and frames
//! the record, the consumer's layer looks the id up and `Avro<T>` decodes
//! it, including a reader schema newer than the writer's.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::AvroSchema;
use common::*;
use serde::{Deserialize, Serialize};
use xkafka::{Ack, Decision};
use xkafka_schema::{wire, Avro, AvroEncoder, SchemaRegistryLayer, SubjectNameStrategy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_round_trips_through_the_registry_and_kafka() {
    let registry = registry();
    let topic = topic("schema-avro").await;
    let encoder = AvroEncoder::<Order>::new(registry.clone());
    let orders: Vec<Order> = (0..3)
        .map(|i| Order {
            id: i,
            customer: format!("c{i}"),
            total_cents: 100 * i,
        })
        .collect();
    let mut values = Vec::new();
    for order in &orders {
        values.push(encoder.encode(&topic, order).await.expect("encode"));
    }
    // The wire format: magic 0, the id the registry gave the subject.
    let (id, _) = wire::split(&values[0]).unwrap();
    assert_eq!(values[0][0], 0);
    let registered = registry
        .schema_by_id(id)
        .await
        .expect("the registry knows the id");
    assert!(
        registered.text().contains("\"shop.Order\"") || registered.text().contains("\"Order\""),
        "{}",
        registered.text()
    );
    publish(&topic, values).await;

    let decoded: Arc<Mutex<Vec<Order>>> = Arc::default();
    let sink = decoded.clone();
    let (errors, on_error) = recording(Decision::Stop);
    let consumer = consumer(&unique("g"), &topic)
        .error_handler(on_error)
        .layer(SchemaRegistryLayer::new(registry.clone()))
        .handler(move |Avro(order): Avro<Order>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(order);
                Ack::Success
            }
        })
        .build()
        .expect("consumer");
    let probe = decoded.clone();
    consumer
        .run(until(
            move || probe.lock().unwrap().len() >= 3,
            Duration::from_secs(60),
        ))
        .await
        .expect("run");
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    assert_eq!(*decoded.lock().unwrap(), orders);
}

/// Version 2 of the order: a field the writer did not have, with a default.
#[derive(AvroSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[avro(namespace = "shop", name = "Order")]
struct OrderV2 {
    id: i64,
    customer: String,
    total_cents: i64,
    #[avro(default = "\"EUR\"")]
    currency: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_reader_schema_reads_old_records_with_defaults() {
    let registry = registry();
    let topic = topic("schema-evolve").await;
    let subject = format!("{topic}-value");
    registry
        .set_compatibility(&subject, "BACKWARD")
        .await
        .expect("config");
    let old = Order {
        id: 7,
        customer: "ada".into(),
        total_cents: 4200,
    };
    let v1 = AvroEncoder::<Order>::new(registry.clone())
        .encode(&topic, &old)
        .await
        .unwrap();
    // V2 is backward compatible (a defaulted field): the registry accepts it
    // under the same subject, with a new id.
    let new = OrderV2 {
        id: 8,
        customer: "bob".into(),
        total_cents: 1,
        currency: "CHF".into(),
    };
    let v2 = AvroEncoder::<OrderV2>::new(registry.clone())
        .strategy(SubjectNameStrategy::Topic)
        .encode(&topic, &new)
        .await
        .expect("a compatible evolution is accepted");
    assert_ne!(
        wire::split(&v1).unwrap().0,
        wire::split(&v2).unwrap().0,
        "a new version, a new id"
    );
    publish(&topic, vec![v1, v2]).await;

    let decoded: Arc<Mutex<Vec<OrderV2>>> = Arc::default();
    let sink = decoded.clone();
    let (errors, on_error) = recording(Decision::Stop);
    let consumer = consumer(&unique("g"), &topic)
        .error_handler(on_error)
        .layer(SchemaRegistryLayer::new(registry))
        .handler(move |Avro(order): Avro<OrderV2>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(order);
                Ack::Success
            }
        })
        .build()
        .expect("consumer");
    let probe = decoded.clone();
    consumer
        .run(until(
            move || probe.lock().unwrap().len() >= 2,
            Duration::from_secs(60),
        ))
        .await
        .expect("run");
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    let decoded = decoded.lock().unwrap().clone();
    assert_eq!(
        decoded,
        vec![
            OrderV2 {
                id: 7,
                customer: "ada".into(),
                total_cents: 4200,
                currency: "EUR".into()
            },
            new
        ],
        "the old record gets the reader's default"
    );
}
