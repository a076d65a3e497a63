//! `xkafka asyncapi`: an AsyncAPI 3.0 document of a service's topics, each
//! message with the latest value schema of its subject (`<topic>-value`)
//! in the Schema Registry. The same document a service makes from its own
//! types with `xkafka_schema::asyncapi::AsyncApi`, for services whose code
//! is not at hand.

use serde_json::Value;
use xkafka_schema::asyncapi::{AsyncApi, MessageSpec};
use xkafka_schema::{RegisteredSchema, RegistryClient, SchemaKind, SubjectNameStrategy};

use crate::cli::{AsyncapiArgs, Global};
use crate::client::Failure;

/// Prints the document on standard output.
pub(crate) async fn asyncapi(global: &Global, args: &AsyncapiArgs) -> Result<(), Failure> {
    let client = RegistryClient::builder(&args.registry)
        .timeout(global.timeout)
        .build()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    if args.receive.is_empty() && args.send.is_empty() {
        return Err(Failure::Usage(
            "name at least one --receive TOPIC=GROUP or --send TOPIC".into(),
        ));
    }
    let mut doc = AsyncApi::new(&args.title, &args.app_version);
    if let Some(brokers) = &global.brokers {
        for (i, host) in brokers.split(',').enumerate() {
            doc = doc.server(format!("broker-{}", i + 1), host.trim());
        }
    }
    for (topic, group) in &args.receive {
        doc = doc.receive_message(topic, group, message(&client, topic).await?);
    }
    for topic in &args.send {
        doc = doc.send_message(topic, message(&client, topic).await?);
    }
    let text = serde_json::to_string_pretty(&doc.to_json())
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// The message of `topic`: the latest schema of its value subject.
async fn message(client: &RegistryClient, topic: &str) -> Result<MessageSpec, Failure> {
    let subject = SubjectNameStrategy::Topic.subject(topic, "", false);
    let schema = client
        .latest(&subject)
        .await
        .map_err(|e| Failure::Runtime(format!("{topic}: {e}")))?;
    spec(&subject, &schema).map_err(|e| Failure::Runtime(format!("{subject}: {e}")))
}

fn spec(subject: &str, schema: &RegisteredSchema) -> Result<MessageSpec, String> {
    match schema.kind() {
        SchemaKind::Avro => {
            let parsed = schema.avro().map_err(|e| e.to_string())?;
            let name = parsed
                .name()
                .map_or_else(|| subject.to_owned(), |n| n.fullname(None));
            let json: Value = serde_json::from_str(schema.text()).map_err(|e| e.to_string())?;
            Ok(MessageSpec::avro(name, json))
        }
        SchemaKind::Json => {
            let mut json: Value = serde_json::from_str(schema.text()).map_err(|e| e.to_string())?;
            let name = json
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or(subject)
                .to_owned();
            if let Some(object) = json.as_object_mut() {
                object.remove("$schema");
            }
            Ok(MessageSpec::json_schema(name, json))
        }
        SchemaKind::Protobuf => Ok(MessageSpec::protobuf(subject, schema.text())),
        other => Err(format!("schemas of kind {other} are not described")),
    }
}
