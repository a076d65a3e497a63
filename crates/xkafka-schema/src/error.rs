//! What can go wrong between a record, its schema and the registry.

use xkafka_core::BoxError;

/// An error of the registry client, the wire format or a codec.
///
/// [`is_retriable`](SchemaError::is_retriable) tells the two families apart:
/// a registry that cannot be reached (or answers 5xx) may answer later, so
/// the message is failed with a plain error (a retry layer retries it; the
/// consumer does not store its offset), while bad input and refused
/// schemas never get better and become a rejection for the error handler or
/// the dead-letter layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A setting was refused when the client or codec was built.
    #[error("invalid schema registry configuration: {0}")]
    Config(String),
    /// The registry could not be reached, timed out, or answered with a
    /// server error. Retriable.
    #[error("schema registry {url} unreachable: {reason}")]
    Unreachable {
        /// The request's URL.
        url: String,
        /// What failed (connection refused, timeout, HTTP 503 ...).
        reason: String,
    },
    /// The registry has no schema with this id.
    #[error("unknown schema id {id}: the registry has no such schema")]
    UnknownId {
        /// The id the record carries.
        id: u32,
    },
    /// The registry refused the schema as incompatible with the subject's
    /// earlier versions (HTTP 409).
    #[error("schema refused as incompatible for subject {subject}: {message}")]
    Incompatible {
        /// The subject it was registered under.
        subject: String,
        /// The registry's explanation.
        message: String,
    },
    /// The registry refused the credentials (HTTP 401 / 403).
    #[error("schema registry refused the credentials ({status}): {message}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The registry's explanation.
        message: String,
    },
    /// Any other answer the client cannot use.
    #[error("schema registry answered {status} to {url}: {message}")]
    Registry {
        /// The HTTP status.
        status: u16,
        /// The request's URL.
        url: String,
        /// The body, or the registry's `message`.
        message: String,
    },
    /// The first byte is not the wire format's magic byte 0.
    #[error("wrong magic byte {found:#04x} (the schema registry wire format starts with 0x00)")]
    WrongMagic {
        /// The byte found.
        found: u8,
    },
    /// Fewer bytes than the wire format's header (or message indexes) need.
    #[error("truncated: {len} byte(s), the schema registry wire format needs at least {needed}")]
    Truncated {
        /// The payload's length.
        len: usize,
        /// What the header needs.
        needed: usize,
    },
    /// The schema the registry returned is not a valid schema of its kind,
    /// or is of another kind than the codec's.
    #[error("schema {id} cannot be used: {reason}")]
    Schema {
        /// The schema id (0 for a local schema not yet registered).
        id: u32,
        /// Why.
        reason: String,
    },
    /// The payload does not match the writer's schema, or the writer's
    /// schema cannot be read as the handler's type.
    #[error("payload does not match schema {id}: {source}")]
    Payload {
        /// The writer's schema id.
        id: u32,
        /// The codec's explanation.
        #[source]
        source: BoxError,
    },
    /// A value could not be encoded with its own schema.
    #[error("cannot encode the value: {0}")]
    Encode(#[source] BoxError),
}

impl SchemaError {
    /// Whether the same call may succeed later: the registry was
    /// unreachable, timed out or answered with a server error.
    pub fn is_retriable(&self) -> bool {
        matches!(self, SchemaError::Unreachable { .. })
    }
}
