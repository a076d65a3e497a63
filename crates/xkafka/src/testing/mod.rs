//! Test your own handlers the way you test an axum app: no cluster for the
//! logic, the embedded one for the wiring.
//!
//! - [`HandlerTest`] runs messages built in the test through a consumer's
//!   handler **with its whole middleware stack** and its error handler, and
//!   says what happened ([`Outcome`]: success, skip, failure with the error
//!   handler's decision, panic). Under `#[tokio::test(start_paused = true)]`
//!   a retry layer's backoff takes no real time.
//! - [`RecordingProducer`] is a [`Producer`](crate::Producer) that records what is published
//!   instead of sending it (through a [`DeadLetterLayer`](crate::dlq::DeadLetterLayer)
//!   too), and can be told to fail.
//! - [`TestCluster`] starts the embedded cluster, creates topics, publishes
//!   fixtures (each bounded by a timeout) and reads topics back — everything
//!   in them, so duplicates show ([`TestCluster::read_exactly`](crate::testing::TestCluster::read_exactly) fails on
//!   them); [`run_until`] runs your real
//!   [`Consumer`](crate::Consumer) until it handled N messages or committed given offsets.
//!   Every wait has a timeout and an error ([`KitError`]) saying what did
//!   not happen.
//!
//! ```
//! use std::time::Duration;
//! use xkafka::dlq::DeadLetterLayer;
//! use xkafka::middleware::retry::{Backoff, RetryLayer};
//! use xkafka::testing::{run_until, HandlerTest, Outcome, RecordingProducer, TestCluster, Until};
//! use xkafka::{Ack, BoxError, Consumer, Decision, Message};
//!
//! async fn bill(msg: Message) -> Result<Ack, BoxError> {
//!     match msg.value_str() {
//!         Some(amount) if amount.parse::<u32>().is_ok() => Ok(Ack::Success),
//!         _ => Err("not an amount".into()),
//!     }
//! }
//!
//! // The service as main() builds it, with the brokers left to the caller.
//! fn billing(dead_letters: xkafka::Producer) -> xkafka::ConsumerBuilder {
//!     Consumer::builder("billing")
//!         .error_handler(|_| Decision::Stop)
//!         .layer(DeadLetterLayer::new(dead_letters, "orders.dlq"))
//!         .layer(RetryLayer::new(Backoff::new().initial_delay(Duration::from_secs(1)).max_attempts(5)))
//!         .handler(bill)
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 1. No broker: the handler and its middleware, message by message.
//! //    (Paused time: five attempts with 1 s, 2 s, 4 s, 8 s backoffs take
//! //    no real time.)
//! let recorder = RecordingProducer::new()?;
//! let test = HandlerTest::new(billing(recorder.producer()))?;
//! let ok = Message::builder("orders").partition(0).offset(1).value("12").build();
//! assert_eq!(test.call(ok).await, Outcome::Success);
//! let bad = Message::builder("orders").partition(0).offset(2).value("twelve").build();
//! assert_eq!(test.call(bad).await, Outcome::Skip, "dead-lettered, then skipped");
//! let dead = recorder.published_to("orders.dlq");
//! assert_eq!(dead[0].value_str(), Some("twelve"));
//! # Ok(()) }
//! ```
//!
//! And with the embedded cluster (real client, real group, real commits):
//!
//! ```
//! # use std::time::Duration;
//! # use xkafka::testing::{run_until, TestCluster, Until};
//! # use xkafka::{Ack, Consumer, Decision, Message};
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = TestCluster::start()?;
//! cluster.create_topic("orders", 2)?;
//! cluster
//!     .publish((0..10).map(|i| Message::builder("orders").key(format!("{i}")).value("1").build()))
//!     .await?;
//! let consumer = Consumer::builder("billing")
//!     .brokers([cluster.brokers()])
//!     .topics(["orders"])
//!     .config("auto.offset.reset", "earliest")
//!     .error_handler(|_| Decision::Stop)
//!     .handler(|_m: Message| async { Ack::Success })
//!     .build()?;
//! let summary = run_until(consumer, Until::Handled(10), Duration::from_secs(30)).await?;
//! assert_eq!(summary.succeeded, 10);
//! # Ok(()) }
//! ```

mod cluster;
mod handler_test;
mod kit_error;
mod recording;
mod run_until;

pub use cluster::{TestCluster, DEFAULT_PUBLISH_TIMEOUT};
pub use handler_test::{HandlerTest, Outcome};
pub use kit_error::KitError;
pub use recording::RecordingProducer;
pub use run_until::{run_until, Runnable, Until};
