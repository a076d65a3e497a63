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
//!
//! # The suite
//!
//! | layer | module | consumer | batch | producer |
//! |---|---|---|---|---|
//! | retry with backoff | [`retry`] | ✓ | ✓ (whole batch) | ✓ |
//! | panic recovery | [`recover`] | ✓ | ✓ | ✓ |
//! | logging (`tracing`) | [`logging`] | ✓ | ✓ | ✓ |
//! | timeout | `tower::timeout::TimeoutLayer` | ✓ | ✓ | ✓ |
//! | trace context (feature `opentelemetry`) | `trace_context` | extract | links | inject |
//! | typed extractors, skip rejections | [`crate::extract`] | ✓ | | |
//! | dead letters, metrics | `xkafka::dlq`, `xkafka::metrics` | ✓ | ✓ | metrics |
//!
//! # Timeouts
//!
//! tower's `TimeoutLayer` bounds a handler; a message that takes too long
//! fails with tower's `Elapsed` error, routed like any other failure (retry,
//! dead letter, error handler). The handler's future is dropped, so put it
//! inside the retry layer to bound each attempt, or outside to bound them
//! all:
//!
//! ```
//! use std::time::Duration;
//! use tower::timeout::TimeoutLayer;
//! let per_message = TimeoutLayer::new(Duration::from_secs(2));
//! # let _ = per_message;
//! ```

mod from_fn;
pub mod logging;
pub mod recover;
pub mod retry;
mod stack;
#[cfg(feature = "opentelemetry")]
pub mod trace_context;

pub use from_fn::{from_fn, FromFn, FromFnLayer, Next};
pub use stack::Stack;
