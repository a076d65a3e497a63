//! JSON Schema: the `JsonSchema<T>` extractor and the producer's encoder.
//! The payload after the 5-byte header is plain JSON; the schema comes from
//! `T`'s `schemars::JsonSchema` derive.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;
use xkafka_core::extract::FromMessage;
use xkafka_core::{BoxError, Message};

use crate::client::{RegistryClient, SchemaKind};
use crate::error::SchemaError;
use crate::resolve::{rejection, writer_of};
use crate::subject::SubjectNameStrategy;
use crate::wire;

const FORMAT: &str = "JSON Schema";

/// The value, decoded from JSON written with a JSON Schema the registry
/// knows (beside the core's plain [`Json`](xkafka_core::extract::Json)).
/// Needs [`SchemaRegistryLayer`](crate::SchemaRegistryLayer). The payload
/// is checked by deserializing into `T` (types, required fields), not by a
/// JSON Schema validator.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonSchema<T>(pub T);

impl<T: DeserializeOwned> FromMessage for JsonSchema<T> {
    type Rejection = BoxError;

    fn from_message(message: &mut Message) -> Result<Self, BoxError> {
        let (writer, payload) = writer_of(message, FORMAT, SchemaKind::Json)?;
        let id = writer.schema.id();
        serde_json::from_slice(payload)
            .map(JsonSchema)
            .map_err(|e| {
                rejection(
                    message,
                    FORMAT,
                    SchemaError::Payload {
                        id,
                        source: Box::new(e),
                    },
                )
            })
    }
}

/// Encodes `T` as JSON in the wire format, registering its JSON Schema
/// (from `schemars`) under the strategy's subject on first use.
pub struct JsonSchemaEncoder<T> {
    client: RegistryClient,
    strategy: SubjectNameStrategy,
    is_key: bool,
    text: String,
    title: String,
    _type: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for JsonSchemaEncoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonSchemaEncoder")
            .field("client", &self.client)
            .field("title", &self.title)
            .finish_non_exhaustive()
    }
}

impl<T: schemars::JsonSchema + Serialize> JsonSchemaEncoder<T> {
    /// An encoder of values (subjects `<topic>-value` by default).
    pub fn new(client: RegistryClient) -> Self {
        let schema = schemars::schema_for!(T);
        let text = serde_json::to_string(&schema).unwrap_or_default();
        JsonSchemaEncoder {
            client,
            strategy: SubjectNameStrategy::default(),
            is_key: false,
            text,
            title: T::schema_name().into_owned(),
            _type: PhantomData,
        }
    }

    /// The subject name strategy (default [`SubjectNameStrategy::Topic`]).
    pub fn strategy(mut self, strategy: SubjectNameStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Encodes keys rather than values.
    pub fn for_keys(mut self) -> Self {
        self.is_key = true;
        self
    }

    /// The JSON Schema as registered.
    pub fn schema_text(&self) -> &str {
        &self.text
    }

    /// `value` in the wire format, for a record of `topic`.
    pub async fn encode(&self, topic: &str, value: &T) -> Result<Vec<u8>, SchemaError> {
        let subject = self.strategy.subject(topic, &self.title, self.is_key);
        let id = self
            .client
            .register(&subject, SchemaKind::Json, &self.text)
            .await?;
        let json = serde_json::to_vec(value).map_err(|e| SchemaError::Encode(Box::new(e)))?;
        Ok(wire::frame(id, &json))
    }
}
