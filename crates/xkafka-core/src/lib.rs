//! The message, handler and middleware model of [xkafka], with no Kafka client
//! in it.
//!
//! Most users depend on `xkafka`, which re-exports everything here together
//! with the librdkafka-backed consumer and producer. This crate exists so that
//! handlers and middleware can be written and unit-tested without building
//! librdkafka.
//!
//! * [`Message`] — the request: topic, partition, offset, key, value, headers,
//!   timestamp, group.
//! * [`Handler`] — an `async fn(Message)` returning an outcome ([`Ack`] or an
//!   error); a [`tower::Service`] once [`Handler::into_service`] is called.
//! * [`middleware`] — tower layers, plus [`middleware::from_fn`].
//!
//! [xkafka]: https://docs.rs/xkafka

mod ack;
mod batch;
mod delivery;
pub mod extract;
mod handler;
mod headers;
mod message;
pub mod middleware;
pub mod router;

pub use ack::{Ack, IntoOutcome};
pub use batch::{Batch, BatchHandler, BatchHandlerService};
pub use delivery::Delivery;
pub use handler::{Handler, HandlerService};
pub use headers::{Header, Headers};
pub use message::{Message, MessageBuilder, Timestamp};
pub use router::Router;

/// The error type of handlers and middleware: any error, boxed (tower's
/// convention, so that generic tower layers compose).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
