//! Middleware: [`tower::Layer`]s around handlers and around publishing.
//!
//! Every tower layer works (`tower::timeout::TimeoutLayer`,
//! `tower::limit::RateLimitLayer`, …) and a middleware can be written as an
//! async closure with [`from_fn`], as short as Go xkafka's `MiddlewareFunc`.
//!
//! # Order
//!
//! Middleware added first is the **outermost**: it sees the message first and
//! the outcome last, exactly like Go xkafka's `Use(a, b, c)` and tower's
//! `ServiceBuilder::new().layer(a).layer(b).layer(c)`:
//!
//! ```text
//! a.before → b.before → c.before → handler → c.after → b.after → a.after
//! ```
//!
//! [`Stack`] applies a list of layers in that order and is what consumers and
//! producers use internally.

mod from_fn;
pub mod logging;
pub mod recover;
pub mod retry;
mod stack;
#[cfg(feature = "opentelemetry")]
pub mod trace_context;

pub use from_fn::{from_fn, FromFn, FromFnLayer, Next};
pub use stack::Stack;
