//! `xkafka asyncapi` against the real registry: the document of a topic
//! whose Avro schema is registered is valid for the reference AsyncAPI
//! parser (`@asyncapi/parser`, installed by `scripts/registry.sh asyncapi`)
//! and carries that schema; a topic without a subject is a clear failure.

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use xkafka_schema::{RegistryClient, SchemaKind};

fn registry_url() -> String {
    let url = std::env::var("XKAFKA_SCHEMA_REGISTRY")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into());
    let authority = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    if TcpStream::connect_timeout(
        &authority.parse().expect("http://host:port/..."),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!("no schema registry at {url}: run scripts/test.sh, or scripts/registry.sh install && scripts/registry.sh start");
    }
    url
}

fn unique(prefix: &str) -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{ns}-{}", std::process::id())
}

const ORDER: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"long"},{"name":"currency","type":"string","default":"EUR"}]}"#;

#[tokio::test]
async fn the_asyncapi_command_writes_a_valid_document_from_the_registry() {
    let url = registry_url();
    let topic = unique("asyncapi-orders");
    RegistryClient::builder(&url)
        .build()
        .unwrap()
        .register(&format!("{topic}-value"), SchemaKind::Avro, ORDER)
        .await
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xkafka"))
        .args([
            "asyncapi",
            "--registry",
            &url,
            "--title",
            "orders",
            "-b",
            "127.0.0.1:9092",
        ])
        .args(["--receive", &format!("{topic}=billing")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = &doc["components"]["messages"]["shop.Order"];
    assert_eq!(
        message["payload"]["schema"]["fields"][1]["default"], "EUR",
        "{doc:#}"
    );
    assert_eq!(doc["servers"]["broker-1"]["host"], "127.0.0.1:9092");

    // The reference parser accepts it.
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
    let file = std::env::temp_dir().join(format!("{}.json", unique("xkafka-asyncapi-cli")));
    std::fs::write(&file, &out.stdout).unwrap();
    let check = Command::new("node")
        .arg(format!(
            "{}/../xkafka-schema/tests/asyncapi/validate.cjs",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(&file)
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_topic_without_a_subject_is_a_clear_failure() {
    let url = registry_url();
    let topic = unique("asyncapi-none");
    let out = Command::new(env!("CARGO_BIN_EXE_xkafka"))
        .args(["asyncapi", "--registry", &url, "--send", &topic])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("no subject \"{topic}-value\"")),
        "{err}"
    );
}
