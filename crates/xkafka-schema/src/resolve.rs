//! The layer that reads a record's wire-format header and looks its schema
//! up, before the handler's typed extractors run (extractors are
//! synchronous; the registry is not).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};
use xkafka_core::extract::Rejection;
use xkafka_core::{BoxError, Message};

use crate::avro::ReaderSchemas;
use crate::client::{RegisteredSchema, RegistryClient, SchemaKind};
use crate::error::SchemaError;
use crate::wire;

/// The writer's schema of the message's value, put in its extensions by
/// [`SchemaRegistryLayer`] and read by [`Avro`](crate::Avro).
#[derive(Clone, Debug)]
pub struct WriterSchema {
    /// The schema the value was written with.
    pub schema: Arc<RegisteredSchema>,
    pub(crate) readers: Arc<ReaderSchemas>,
}

/// Resolves the schema of each message's value through the registry
/// (cached by id), so that handlers can take [`Avro<T>`](crate::Avro).
///
/// * A value that is not in the wire format (wrong magic byte, fewer than 5
///   bytes) or names an id the registry does not have is a
///   [`Rejection::Decode`]: the error handler or a dead-letter layer sees it
///   with the message's location.
/// * A registry that cannot be reached is a retriable [`SchemaError`]
///   ([`SchemaError::is_retriable`]): a retry layer inside retries it;
///   otherwise the error handler gets it, and with `Decision::Stop` the
///   message's offset is not stored, so the group reads it again.
/// * A message without a value (a tombstone) passes untouched.
#[derive(Clone, Debug)]
pub struct SchemaRegistryLayer {
    client: RegistryClient,
    readers: Arc<ReaderSchemas>,
}

impl SchemaRegistryLayer {
    /// Resolves schemas with `client`.
    pub fn new(client: RegistryClient) -> Self {
        SchemaRegistryLayer {
            client,
            readers: Arc::default(),
        }
    }
}

impl<S> Layer<S> for SchemaRegistryLayer {
    type Service = SchemaRegistryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SchemaRegistryService {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service made by [`SchemaRegistryLayer`].
#[derive(Clone, Debug)]
pub struct SchemaRegistryService<S> {
    layer: SchemaRegistryLayer,
    inner: S,
}

/// The registry-framed format, as rejections name it.
pub(crate) const WIRE_FORMAT: &str = "schema registry wire format";

pub(crate) fn rejection(message: &Message, format: &'static str, error: SchemaError) -> BoxError {
    Box::new(Rejection::Decode {
        location: message.location(),
        format,
        source: Box::new(error),
    })
}

/// The writer's schema (checked to be of `kind`) and the payload after the
/// 5-byte header: what every typed extractor starts from.
pub(crate) fn writer_of<'m>(
    message: &'m Message,
    format: &'static str,
    kind: SchemaKind,
) -> Result<(&'m WriterSchema, &'m [u8]), BoxError> {
    let Some(value) = message.value() else {
        return Err(Box::new(Rejection::MissingValue {
            location: message.location(),
        }));
    };
    let Some(writer) = message.extensions().get::<WriterSchema>() else {
        return Err(Box::new(Rejection::MissingState {
            type_name: "xkafka_schema::WriterSchema (add SchemaRegistryLayer to the consumer)",
        }));
    };
    let (_, payload) = wire::split(value).map_err(|e| rejection(message, WIRE_FORMAT, e))?;
    if writer.schema.kind() != kind {
        let reason = format!(
            "it is a {} schema, the handler reads {format}",
            writer.schema.kind()
        );
        let id = writer.schema.id();
        return Err(rejection(
            message,
            format,
            SchemaError::Schema { id, reason },
        ));
    }
    Ok((writer, payload))
}

impl<S> Service<Message> for SchemaRegistryService<S>
where
    S: Service<Message> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut message: Message) -> Self::Future {
        // The clone that was made ready goes into the future (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            if let Some(value) = message.value() {
                let id = match wire::split(value) {
                    Ok((id, _)) => id,
                    Err(e) => return Err(rejection(&message, WIRE_FORMAT, e)),
                };
                let schema = match layer.client.cached(id) {
                    Some(schema) => schema,
                    None => match layer.client.schema_by_id(id).await {
                        Ok(schema) => schema,
                        Err(e) if e.is_retriable() => return Err(Box::new(e) as BoxError),
                        Err(e) => return Err(rejection(&message, WIRE_FORMAT, e)),
                    },
                };
                message.extensions_mut().insert(WriterSchema {
                    schema,
                    readers: layer.readers.clone(),
                });
            }
            inner.call(message).await.map_err(Into::into)
        })
    }
}
