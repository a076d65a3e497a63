//! Avro: the `Avro<T>` extractor and the producer's encoder.

use std::any::TypeId;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use apache_avro::schema::AvroSchema;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use xkafka_core::extract::FromMessage;
use xkafka_core::{BoxError, Message};

use crate::client::{RegistryClient, SchemaKind};
use crate::error::SchemaError;
use crate::resolve::{rejection, writer_of};
use crate::subject::SubjectNameStrategy;
use crate::wire;

const FORMAT: &str = "Avro";

/// The value, decoded from Avro written with the schema its id names (the
/// writer's), read as `T`'s own schema (the reader's): Avro schema
/// resolution fills fields the writer did not have from their defaults.
///
/// Needs [`SchemaRegistryLayer`](crate::SchemaRegistryLayer) among the
/// consumer's layers.
#[derive(Clone, Debug, PartialEq)]
pub struct Avro<T>(pub T);

/// The reader schema to resolve to, or none when the writer's schema is
/// the reader's (no resolution needed).
type Reader = Option<Arc<Schema>>;

/// Per writer id and handler type: its [`Reader`].
#[derive(Debug, Default)]
pub(crate) struct ReaderSchemas {
    by_type: RwLock<HashMap<(u32, TypeId), Reader>>,
}

impl ReaderSchemas {
    fn reader<T: AvroSchema + 'static>(
        &self,
        writer_id: u32,
        writer: &Schema,
    ) -> Option<Arc<Schema>> {
        let key = (writer_id, TypeId::of::<T>());
        if let Some(found) = self
            .by_type
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return found.clone();
        }
        let reader = T::get_schema();
        let reader = (reader.canonical_form() != writer.canonical_form()).then(|| Arc::new(reader));
        self.by_type
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, reader.clone());
        reader
    }
}

impl<T> FromMessage for Avro<T>
where
    T: AvroSchema + DeserializeOwned + 'static,
{
    type Rejection = BoxError;

    fn from_message(message: &mut Message) -> Result<Self, BoxError> {
        let (writer, mut payload) = writer_of(message, FORMAT, SchemaKind::Avro)?;
        let id = writer.schema.id();
        let schema = writer
            .schema
            .avro()
            .map_err(|e| rejection(message, FORMAT, e))?;
        let reader = writer.readers.reader::<T>(id, schema);
        let mismatch = |source: BoxError| SchemaError::Payload { id, source };
        let decoded = apache_avro::from_avro_datum(schema, &mut payload, reader.as_deref())
            .map_err(|e| rejection(message, FORMAT, mismatch(Box::new(e))))?;
        if !payload.is_empty() {
            let extra = format!("{} byte(s) after the record", payload.len());
            return Err(rejection(message, FORMAT, mismatch(extra.into())));
        }
        apache_avro::from_value::<T>(&decoded)
            .map(Avro)
            .map_err(|e| rejection(message, FORMAT, mismatch(Box::new(e))))
    }
}

/// Encodes `T` for the producer in the wire format, registering `T`'s
/// schema under the strategy's subject on first use (then cached: one
/// registry call per subject).
pub struct AvroEncoder<T> {
    client: RegistryClient,
    strategy: SubjectNameStrategy,
    is_key: bool,
    schema: Schema,
    text: String,
    record_name: String,
    _type: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for AvroEncoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroEncoder")
            .field("client", &self.client)
            .field("strategy", &self.strategy)
            .field("is_key", &self.is_key)
            .field("record", &self.record_name)
            .finish_non_exhaustive()
    }
}

impl<T: AvroSchema + Serialize> AvroEncoder<T> {
    /// An encoder of values (subjects `<topic>-value` by default).
    pub fn new(client: RegistryClient) -> Self {
        let schema = T::get_schema();
        // The full JSON form, not the parsing canonical form: that one drops
        // defaults, which schema evolution needs.
        let text = serde_json::to_string(&schema).unwrap_or_else(|_| schema.canonical_form());
        let record_name = schema
            .name()
            .map(|n| n.fullname(None))
            .unwrap_or_else(|| std::any::type_name::<T>().to_owned());
        AvroEncoder {
            client,
            strategy: SubjectNameStrategy::default(),
            is_key: false,
            schema,
            text,
            record_name,
            _type: PhantomData,
        }
    }

    /// The subject name strategy (default [`SubjectNameStrategy::Topic`]).
    pub fn strategy(mut self, strategy: SubjectNameStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Encodes keys rather than values (subjects `<topic>-key`).
    pub fn for_keys(mut self) -> Self {
        self.is_key = true;
        self
    }

    /// The schema's text as registered.
    pub fn schema_text(&self) -> &str {
        &self.text
    }

    /// The subject this encoder registers under for `topic`.
    pub fn subject(&self, topic: &str) -> String {
        self.strategy.subject(topic, &self.record_name, self.is_key)
    }

    /// `value` in the wire format, for a record of `topic`.
    pub async fn encode(&self, topic: &str, value: &T) -> Result<Vec<u8>, SchemaError> {
        let id = self
            .client
            .register(&self.subject(topic), SchemaKind::Avro, &self.text)
            .await?;
        self.encode_with_id(id, value)
    }

    /// `value` framed with a known schema id (no registry call).
    pub fn encode_with_id(&self, id: u32, value: &T) -> Result<Vec<u8>, SchemaError> {
        let value = apache_avro::to_value(value).map_err(|e| SchemaError::Encode(Box::new(e)))?;
        let datum = apache_avro::to_avro_datum(&self.schema, value)
            .map_err(|e| SchemaError::Encode(Box::new(e)))?;
        Ok(wire::frame(id, &datum))
    }
}
