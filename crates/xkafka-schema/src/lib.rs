//! Typed messages with a Schema Registry for [xkafka]: the Confluent wire
//! format (magic byte 0, a 4-byte big-endian schema id, the payload), a
//! cached registry client, subject name strategies, and for Avro, Protobuf
//! and JSON Schema a handler extractor ([`Avro<T>`], [`Proto<T>`],
//! [`JsonSchema<T>`]) and a producer encoder ([`AvroEncoder`],
//! [`ProtoEncoder`], [`JsonSchemaEncoder`]).
//!
//! HTTP lives here, not in `xkafka-core`: the core stays free of any
//! network client.
//!
//! ```no_run
//! use apache_avro::AvroSchema;
//! use serde::{Deserialize, Serialize};
//! use xkafka_core::{Ack, Handler};
//! use xkafka_schema::{Avro, AvroEncoder, RegistryClient, SchemaRegistryLayer};
//!
//! #[derive(AvroSchema, Serialize, Deserialize)]
//! #[avro(namespace = "shop")]
//! struct Order {
//!     id: i64,
//!     total_cents: i64,
//! }
//!
//! async fn handle(Avro(order): Avro<Order>) -> Ack {
//!     println!("order {} for {}", order.id, order.total_cents);
//!     Ack::Success
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = RegistryClient::builder("http://127.0.0.1:8081/apis/ccompat/v7").build()?;
//! // Consumer side: the layer resolves the writer's schema, the extractor decodes.
//! let layer = SchemaRegistryLayer::new(registry.clone());
//! let service = tower::Layer::layer(&layer, handle.into_service());
//! // Producer side: registers `shop.Order` under `orders-value`, then frames.
//! let bytes = AvroEncoder::<Order>::new(registry)
//!     .encode("orders", &Order { id: 1, total_cents: 990 })
//!     .await?;
//! # let _ = (service, bytes); Ok(()) }
//! ```
//!
//! [xkafka]: https://docs.rs/xkafka

pub mod asyncapi;
mod avro;
mod client;
mod error;
mod json;
mod proto;
mod resolve;
mod subject;
pub mod wire;

pub use apache_avro;
pub use avro::{Avro, AvroEncoder};
pub use client::{RegisteredSchema, RegistryClient, RegistryClientBuilder, SchemaKind};
pub use error::SchemaError;
pub use json::{JsonSchema, JsonSchemaEncoder};
pub use prost;
pub use proto::{encode_indexes, split_indexes, Proto, ProtoEncoder};
pub use resolve::{SchemaRegistryLayer, SchemaRegistryService, WriterSchema};
pub use schemars;
pub use subject::SubjectNameStrategy;
