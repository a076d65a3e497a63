//! Non-blocking retries through retry topics with delay tiers.
//!
//! A message that fails moves to `<topic>.retry.1` (due after the first
//! delay), then `<topic>.retry.2`, …, then the dead-letter topic — while
//! the main topic keeps flowing. Only once the broker acknowledged the copy
//! does the original count as skipped (its offset may move), as with
//! [`DeadLetterLayer`](crate::dlq::DeadLetterLayer). [`permanent`](crate::middleware::retry::permanent)
//! errors go straight to the dead-letter topic. A move to a tier that
//! fails (librdkafka reports the delivery failed) goes to the dead-letter
//! topic instead; no publish is abandoned while librdkafka still owns it
//! (the producer's `message.timeout.ms` bounds it).
//!
//! The consumer of the retry tiers waits for each message's due time
//! without blocking anything: [`ConsumerBuilder::not_before`](crate::ConsumerBuilder::not_before) with [`due`]
//! pauses a partition whose next message is not due yet and resumes it at
//! its due time; the poll loop never sleeps, and the other partitions and
//! tiers flow.
//!
//! **Key order** is optional ([`RetryTopics::keep_key_order`], with one
//! consumer for the main topic and the tiers set up by
//! [`RetryTopics::subscribe`]): while a key has a message in the tiers,
//! later messages of that key follow it there instead of overtaking it.
//! Without it (the default, as in Spring's retry topics) a failed message
//! is overtaken by the later messages of its key.
//!
//! With [`Metrics::layer`](crate::metrics::Metrics::layer) outside this
//! layer, each move is counted by tier (`xkafka_retry_tier_moves_total`).
//! Headers are carried from tier to tier, `traceparent` included: with the
//! trace-context layers the trace of a message continues in every tier.
//!
//! ```no_run
//! use std::time::Duration;
//! use xkafka::retry_topics::{due, RetryTopics};
//! use xkafka::{Ack, BoxError, Consumer, Decision, Message, Producer};
//!
//! async fn handle(msg: Message) -> Result<Ack, BoxError> {
//!     // Calls a downstream service that may be down for minutes.
//!     Ok(Ack::Success)
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let producer = Producer::builder("orders-retries")
//!     .brokers(["127.0.0.1:9092"])
//!     .error_handler(|err| eprintln!("{err}"))
//!     .build()?;
//! let retries = RetryTopics::new(producer, "orders")
//!     .tiers([Duration::from_secs(1), Duration::from_secs(30), Duration::from_secs(300)]);
//! retries.ensure_topics("127.0.0.1:9092", Duration::from_secs(10)).await?;
//!
//! let main = Consumer::builder("billing")
//!     .brokers(["127.0.0.1:9092"])
//!     .topics(["orders"])
//!     .error_handler(|_| Decision::Stop)
//!     .layer(retries.layer())
//!     .handler(handle)
//!     .build()?;
//! let tiers = Consumer::builder("billing-retries")
//!     .brokers(["127.0.0.1:9092"])
//!     .topics(retries.tier_topics())
//!     .not_before(due)
//!     .error_handler(|_| Decision::Stop)
//!     .layer(retries.layer())
//!     .handler(handle)
//!     .build()?;
//! let (a, b) = tokio::join!(main.run(std::future::pending()), tiers.run(std::future::pending()));
//! # a?; b?; Ok(()) }
//! ```

pub mod headers;
mod key_order;
mod subscribe;
mod tiers;

pub use headers::due;
pub use key_order::KeyOrderError;
pub use tiers::{RetryPublishFailed, RetryTopics, RetryTopicsLayer, RetryTopicsService};
