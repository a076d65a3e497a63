//! The AsyncAPI 3.0 document generated from the service's types is valid
//! for the reference parser (`@asyncapi/parser` with its Avro schema
//! parser, run by node, installed by `scripts/registry.sh asyncapi`), and
//! a broken one is not (the validator can fail).

use std::process::Command;

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};
use xkafka_schema::asyncapi::AsyncApi;
use xkafka_schema::{Avro, JsonSchema};

#[derive(AvroSchema, Serialize, Deserialize)]
#[avro(namespace = "shop")]
struct Order {
    id: i64,
    customer: String,
    #[avro(default = "\"EUR\"")]
    currency: String,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize)]
struct OrderEnriched {
    id: i64,
    customer_tier: String,
    total_cents: Option<i64>,
}

/// Runs the parser on `doc`: (exit success, its JSON report).
fn validate(doc: &serde_json::Value) -> (bool, serde_json::Value) {
    let node_dir = std::env::var("XKAFKA_ASYNCAPI_NODE").unwrap_or_else(|_| {
        format!(
            "{}/../../target/xkafka-asyncapi-node",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let modules = format!("{node_dir}/node_modules");
    assert!(
        std::path::Path::new(&modules)
            .join("@asyncapi/parser")
            .exists(),
        "no @asyncapi/parser in {modules}: run scripts/registry.sh asyncapi (scripts/test.sh does)"
    );
    let file = std::env::temp_dir().join(format!(
        "xkafka-asyncapi-{}-{}.json",
        std::process::id(),
        fastid()
    ));
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let out = Command::new("node")
        .arg(format!(
            "{}/tests/asyncapi/validate.cjs",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(&file)
        .env("NODE_PATH", &modules)
        .output()
        .expect("run node");
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "the validator did not answer ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

fn fastid() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn document() -> serde_json::Value {
    AsyncApi::new("order service", "1.0.0")
        .description("Consumes Avro orders, publishes enriched orders.")
        .server("local", "127.0.0.1:9092")
        .partitions("orders", 6)
        .receive::<Avro<Order>>("orders", "order-service")
        .send::<JsonSchema<OrderEnriched>>("orders.enriched")
        .to_json()
}

#[test]
fn the_generated_document_is_valid_asyncapi_3() {
    let doc = document();
    let (ok, report) = validate(&doc);
    assert!(ok, "{report:#}\n{doc:#}");
    assert_eq!(
        report["channels"],
        serde_json::json!(["orders", "orders.enriched"])
    );
    // What the parser accepted says what the service does.
    let receive = &doc["operations"]["receive-orders"];
    assert_eq!(
        receive["bindings"]["kafka"]["groupId"]["enum"][0],
        "order-service"
    );
    assert_eq!(
        doc["channels"]["orders"]["bindings"]["kafka"]["partitions"],
        6
    );
    let order = &doc["components"]["messages"]["shop.Order"];
    assert_eq!(order["payload"]["schema"]["fields"][2]["default"], "EUR");
    assert_eq!(
        order["bindings"]["kafka"]["schemaIdPayloadEncoding"],
        "confluent"
    );
}

#[test]
fn a_broken_document_is_refused_by_the_validator() {
    let mut doc = document();
    doc["operations"]["receive-orders"]["channel"]["$ref"] = "#/channels/missing".into();
    doc["components"]["messages"]["shop.Order"]["payload"]["schema"]["type"] =
        "no-such-avro-type".into();
    let (ok, report) = validate(&doc);
    assert!(!ok, "{report:#}");
    assert!(
        !report["errors"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
}
