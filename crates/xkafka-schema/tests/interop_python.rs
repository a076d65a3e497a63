//! Interop, both ways, with a client we did not write: Confluent's Python
//! serializers (`confluent-kafka[avro,schemaregistry]`, installed in a venv
//! by `scripts/registry.sh python`, path in `XKAFKA_SCHEMA_PYTHON`), against
//! the same registry and broker. Byte for byte: the same record framed by
//! both sides is the same bytes. And schema evolution: records Python wrote
//! with the old schema are read by our newer one, its new field defaulted.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::AvroSchema;
use common::*;
use serde::{Deserialize, Serialize};
use xkafka::{Ack, Decision};
use xkafka_schema::{Avro, AvroEncoder, JsonSchema, JsonSchemaEncoder, SchemaRegistryLayer};

/// The venv's python; a missing one fails the test.
fn python() -> String {
    let path = std::env::var("XKAFKA_SCHEMA_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/../../target/xkafka-schema-py/bin/python",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    assert!(
        std::path::Path::new(&path).exists(),
        "no Python peer at {path}: run scripts/registry.sh python (scripts/test.sh does)"
    );
    path
}

/// Runs the peer and returns its stdout lines; its failure fails the test.
fn peer(args: &[&str]) -> Vec<String> {
    let script = format!("{}/tests/python/peer.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("run the Python peer");
    assert!(
        out.status.success(),
        "the Python peer failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The order as the service reads it now: a field Python's writers do not
/// know, with a default.
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
async fn avro_written_by_python_is_read_by_us_with_a_newer_schema() {
    let registry = registry();
    let topic = topic("interop-py-avro").await;
    let v1 = AvroEncoder::<Order>::new(registry.clone());
    let records = [
        r#"{"id": 1, "customer": "ada", "total_cents": 100}"#,
        r#"{"id": 2, "customer": "bob", "total_cents": 250}"#,
    ];
    let mut args = vec![
        "produce",
        "avro",
        registry.url(),
        &BROKERS,
        &topic,
        v1.schema_text(),
    ];
    args.extend(records);
    let framed_by_python = peer(&args);
    // Byte for byte: our encoder frames the same record identically (same
    // subject, same schema, so the same id).
    let first = Order {
        id: 1,
        customer: "ada".into(),
        total_cents: 100,
    };
    assert_eq!(
        framed_by_python[0],
        hex(&v1.encode(&topic, &first).await.unwrap())
    );

    let decoded: Arc<Mutex<Vec<OrderV2>>> = Arc::default();
    let sink = decoded.clone();
    let (errors, on_error) = recording(Decision::Stop);
    let consumer = consumer(&unique("g"), &topic)
        .error_handler(on_error)
        .layer(SchemaRegistryLayer::new(registry))
        .handler(move |Avro(o): Avro<OrderV2>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(o);
                Ack::Success
            }
        })
        .build()
        .unwrap();
    let probe = decoded.clone();
    consumer
        .run(until(
            move || probe.lock().unwrap().len() >= 2,
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    let got = decoded.lock().unwrap().clone();
    let want = |id, customer: &str, total_cents| OrderV2 {
        id,
        customer: customer.into(),
        total_cents,
        currency: "EUR".into(),
    };
    assert_eq!(got, vec![want(1, "ada", 100), want(2, "bob", 250)]);
}

static BROKERS: std::sync::LazyLock<String> = std::sync::LazyLock::new(brokers);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_written_by_us_is_read_by_python() {
    let registry = registry();
    let topic = topic("interop-rs-avro").await;
    let encoder = AvroEncoder::<Order>::new(registry.clone());
    let order = Order {
        id: 42,
        customer: "zoë".into(),
        total_cents: -7,
    };
    let framed = encoder.encode(&topic, &order).await.unwrap();
    publish(&topic, vec![framed.clone()]).await;
    let lines = peer(&["consume", "avro", registry.url(), &BROKERS, &topic, "1"]);
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["hex"], hex(&framed));
    assert_eq!(
        line["value"],
        serde_json::to_value(&order).unwrap(),
        "Python decoded our record"
    );
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Refund {
    id: i64,
    amount_cents: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_both_ways_with_python() {
    let registry = registry();
    let topic = topic("interop-json").await;
    let encoder = JsonSchemaEncoder::<Refund>::new(registry.clone());
    let ours = Refund {
        id: 1,
        amount_cents: 300,
    };
    publish(&topic, vec![encoder.encode(&topic, &ours).await.unwrap()]).await;
    let theirs = peer(&[
        "produce",
        "json",
        registry.url(),
        &BROKERS,
        &topic,
        encoder.schema_text(),
        r#"{"id": 2, "amount_cents": 400}"#,
    ]);
    assert_eq!(theirs.len(), 1);
    // Python reads both records.
    let lines = peer(&[
        "consume",
        "json",
        registry.url(),
        &BROKERS,
        &topic,
        "2",
        encoder.schema_text(),
    ]);
    let values: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["value"].clone())
        .collect();
    assert_eq!(
        values,
        vec![
            serde_json::json!({"id": 1, "amount_cents": 300}),
            serde_json::json!({"id": 2, "amount_cents": 400})
        ]
    );
    // We read both.
    let decoded: Arc<Mutex<Vec<Refund>>> = Arc::default();
    let sink = decoded.clone();
    let (errors, on_error) = recording(Decision::Stop);
    let consumer = consumer(&unique("g"), &topic)
        .error_handler(on_error)
        .layer(SchemaRegistryLayer::new(registry))
        .handler(move |JsonSchema(r): JsonSchema<Refund>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(r);
                Ack::Success
            }
        })
        .build()
        .unwrap();
    let probe = decoded.clone();
    consumer
        .run(until(
            move || probe.lock().unwrap().len() >= 2,
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    assert_eq!(
        *decoded.lock().unwrap(),
        vec![
            ours,
            Refund {
                id: 2,
                amount_cents: 400
            }
        ]
    );
}
