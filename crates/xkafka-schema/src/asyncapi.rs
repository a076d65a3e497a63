//! An AsyncAPI 3.0 document from the service's own types: channels are
//! topics, operations are what the consumer receives (with its group) and
//! what the producers send, messages carry the schemas of the handlers'
//! typed extractors, with the Kafka bindings.
//!
//! ```
//! use apache_avro::AvroSchema;
//! use serde::{Deserialize, Serialize};
//! use xkafka_schema::asyncapi::AsyncApi;
//! use xkafka_schema::Avro;
//!
//! #[derive(AvroSchema, Serialize, Deserialize)]
//! #[avro(namespace = "shop")]
//! struct Order {
//!     id: i64,
//! }
//!
//! let doc = AsyncApi::new("orders service", "1.0.0")
//!     .server("kafka", "127.0.0.1:9092")
//!     .receive::<Avro<Order>>("orders", "billing")
//!     .to_json();
//! assert_eq!(doc["asyncapi"], "3.0.0");
//! assert_eq!(doc["operations"]["receive-orders"]["action"], "receive");
//! ```

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::{Avro, JsonSchema};

/// The Kafka bindings' version this module writes.
const KAFKA_BINDING: &str = "0.5.0";

/// One message of the document: its name and payload schema.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageSpec {
    /// The message's name (a record's full name: `shop.Order`).
    pub name: String,
    /// The payload's `schemaFormat` (Avro, JSON Schema, Protobuf).
    pub schema_format: String,
    /// The schema, as that format writes it (JSON, or a `.proto` file's
    /// text as a JSON string).
    pub schema: Value,
    /// Whether the payload is framed with a registry id (the Kafka
    /// binding's `schemaIdLocation: payload`).
    pub registry_framed: bool,
}

impl MessageSpec {
    /// An Avro message (schema in Avro's JSON form).
    pub fn avro(name: impl Into<String>, schema: Value) -> Self {
        MessageSpec {
            name: name.into(),
            schema_format: "application/vnd.apache.avro+json;version=1.9.0".into(),
            schema,
            registry_framed: true,
        }
    }

    /// A JSON Schema (draft-07) message.
    pub fn json_schema(name: impl Into<String>, schema: Value) -> Self {
        MessageSpec {
            name: name.into(),
            schema_format: "application/schema+json;version=draft-07".into(),
            schema,
            registry_framed: true,
        }
    }

    /// A Protobuf message: the `.proto` file's text.
    pub fn protobuf(name: impl Into<String>, proto: impl Into<String>) -> Self {
        MessageSpec {
            name: name.into(),
            schema_format: "application/vnd.google.protobuf;version=3".into(),
            schema: Value::String(proto.into()),
            registry_framed: true,
        }
    }
}

/// A typed payload that can describe itself in a document: the typed
/// extractors of this crate.
pub trait DescribeMessage {
    /// The message's name and schema.
    fn describe() -> MessageSpec;
}

impl<T: apache_avro::AvroSchema> DescribeMessage for Avro<T> {
    fn describe() -> MessageSpec {
        let schema = T::get_schema();
        let name = schema
            .name()
            .map(|n| n.fullname(None))
            .unwrap_or_else(|| std::any::type_name::<T>().to_owned());
        MessageSpec::avro(name, serde_json::to_value(&schema).unwrap_or(Value::Null))
    }
}

impl<T: schemars::JsonSchema> DescribeMessage for JsonSchema<T> {
    fn describe() -> MessageSpec {
        // Draft-07: the JSON Schema version AsyncAPI 3.0 documents name.
        let mut schema = schemars::generate::SchemaSettings::draft07()
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value();
        if let Some(object) = schema.as_object_mut() {
            object.remove("$schema");
        }
        MessageSpec::json_schema(T::schema_name(), schema)
    }
}

#[derive(Clone, Debug)]
struct Operation {
    action: &'static str,
    topic: String,
    group: Option<String>,
    message: String,
}

/// Builds an AsyncAPI 3.0 document.
#[derive(Clone, Debug)]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    servers: Vec<(String, String)>,
    channels: BTreeMap<String, (Option<i32>, Vec<String>)>,
    messages: BTreeMap<String, MessageSpec>,
    operations: Vec<Operation>,
}

impl AsyncApi {
    /// A document for the service `title` at `version`.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        AsyncApi {
            title: title.into(),
            version: version.into(),
            description: None,
            servers: Vec::new(),
            channels: BTreeMap::new(),
            messages: BTreeMap::new(),
            operations: Vec::new(),
        }
    }

    /// The service's description.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// A Kafka server (`host:port` of a bootstrap broker).
    pub fn server(mut self, name: impl Into<String>, host: impl Into<String>) -> Self {
        self.servers.push((name.into(), host.into()));
        self
    }

    /// The topic's partition count, for its channel binding.
    pub fn partitions(mut self, topic: &str, partitions: i32) -> Self {
        self.channels.entry(topic.to_owned()).or_default().0 = Some(partitions);
        self
    }

    /// The consumer group `group` receives `M` from `topic`.
    pub fn receive<M: DescribeMessage>(self, topic: &str, group: &str) -> Self {
        self.receive_message(topic, group, M::describe())
    }

    /// The service sends `M` to `topic`.
    pub fn send<M: DescribeMessage>(self, topic: &str) -> Self {
        self.send_message(topic, M::describe())
    }

    /// [`receive`](Self::receive) with a message described by hand (a
    /// schema from the registry, a Protobuf file).
    pub fn receive_message(mut self, topic: &str, group: &str, message: MessageSpec) -> Self {
        let name = self.add_message(topic, message);
        self.operations.push(Operation {
            action: "receive",
            topic: topic.to_owned(),
            group: Some(group.to_owned()),
            message: name,
        });
        self
    }

    /// [`send`](Self::send) with a message described by hand.
    pub fn send_message(mut self, topic: &str, message: MessageSpec) -> Self {
        let name = self.add_message(topic, message);
        self.operations.push(Operation {
            action: "send",
            topic: topic.to_owned(),
            group: None,
            message: name,
        });
        self
    }

    fn add_message(&mut self, topic: &str, message: MessageSpec) -> String {
        let name = key(&message.name);
        let channel = self.channels.entry(topic.to_owned()).or_default();
        if !channel.1.contains(&name) {
            channel.1.push(name.clone());
        }
        self.messages.insert(name.clone(), message);
        name
    }

    /// The document.
    pub fn to_json(&self) -> Value {
        let mut info = json!({ "title": self.title, "version": self.version });
        if let Some(text) = &self.description {
            info["description"] = text.clone().into();
        }
        let servers: serde_json::Map<String, Value> = self
            .servers
            .iter()
            .map(|(name, host)| (key(name), json!({ "host": host, "protocol": "kafka" })))
            .collect();
        let channels: serde_json::Map<String, Value> = self
            .channels
            .iter()
            .map(|(topic, (partitions, names))| {
                let messages: serde_json::Map<String, Value> = names
                    .iter()
                    .map(|n| {
                        (
                            n.clone(),
                            json!({ "$ref": format!("#/components/messages/{n}") }),
                        )
                    })
                    .collect();
                let mut binding = json!({ "topic": topic, "bindingVersion": KAFKA_BINDING });
                if let Some(p) = partitions {
                    binding["partitions"] = (*p).into();
                }
                (
                    key(topic),
                    json!({
                        "address": topic,
                        "messages": messages,
                        "bindings": { "kafka": binding },
                    }),
                )
            })
            .collect();
        let mut operations = serde_json::Map::new();
        for op in &self.operations {
            let channel = key(&op.topic);
            let mut value = json!({
                "action": op.action,
                "channel": { "$ref": format!("#/channels/{channel}") },
                "messages": [{ "$ref": format!("#/channels/{channel}/messages/{}", op.message) }],
            });
            if let Some(group) = &op.group {
                value["bindings"] = json!({ "kafka": {
                    "groupId": { "type": "string", "enum": [group] },
                    "bindingVersion": KAFKA_BINDING,
                }});
            }
            let mut id = format!("{}-{channel}", op.action);
            if operations.contains_key(&id) {
                id = format!("{id}-{}", op.message);
            }
            operations.insert(id, value);
        }
        let messages: serde_json::Map<String, Value> = self
            .messages
            .iter()
            .map(|(name, m)| {
                let mut message = json!({
                    "name": m.name,
                    "payload": { "schemaFormat": m.schema_format, "schema": m.schema },
                });
                if m.registry_framed {
                    message["bindings"] = json!({ "kafka": {
                        "schemaIdLocation": "payload",
                        "schemaIdPayloadEncoding": "confluent",
                        "bindingVersion": KAFKA_BINDING,
                    }});
                }
                (name.clone(), message)
            })
            .collect();
        json!({
            "asyncapi": "3.0.0",
            "info": info,
            "servers": servers,
            "channels": channels,
            "operations": operations,
            "components": { "messages": messages },
        })
    }
}

/// A component key: AsyncAPI allows `[A-Za-z0-9.\-_]` only.
fn key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
