//! # xkafka
//!
//! Kafka consumers and producers that feel like writing an HTTP service: a
//! [`Message`] is the request, a [`Handler`] holds the business logic, and
//! [`middleware`] (tower layers) adds logging, retries, metrics… around it.
//! librdkafka (through the `rdkafka` crate) speaks the protocol.
//!
//! ## Consuming
//!
//! ```no_run
//! use xkafka::{Ack, BoxError, Consumer, Decision, Error, Message};
//!
//! async fn handle(msg: Message) -> Result<Ack, BoxError> {
//!     let Some(order) = msg.value_str() else {
//!         return Ok(Ack::Skip); // not text: not ours, skip on purpose
//!     };
//!     println!("order {order} from {}", msg.location());
//!     Ok(Ack::Success)
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Error> {
//!     let consumer = Consumer::builder("order-service")
//!         .brokers(["127.0.0.1:9092"])
//!         .topics(["orders"])
//!         .error_handler(|err| {
//!             eprintln!("{err}");
//!             if err.message_location().is_some() { Decision::Stop } else { Decision::Continue }
//!         })
//!         .handler(handle)
//!         .build()?;
//!     let summary = consumer.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//!     println!("{} handled", summary.succeeded);
//!     Ok(())
//! }
//! ```
//!
//! ## A complete service
//!
//! A router with typed handlers, behind retries, panic recovery, a
//! dead-letter topic, logging, metrics and trace propagation (features
//! `metrics` and `opentelemetry`):
//!
//! ```no_run
//! # #[cfg(all(feature = "metrics", feature = "opentelemetry"))]
//! # mod service {
//! use std::time::Duration;
//!
//! use serde::Deserialize;
//! use xkafka::dlq::DeadLetterLayer;
//! use xkafka::extract::{AddStateLayer, Json, Key, State};
//! use xkafka::metrics::Metrics;
//! use xkafka::middleware::logging::LoggingLayer;
//! use xkafka::middleware::recover::RecoverLayer;
//! use xkafka::middleware::retry::{permanent, Backoff, RetryLayer};
//! use xkafka::middleware::trace_context::{ExtractLayer, InjectLayer};
//! use xkafka::{Ack, BoxError, Consumer, Decision, Error, Message, Order, Producer, Router};
//!
//! #[derive(Deserialize)]
//! struct OrderPlaced {
//!     id: u64,
//!     total_cents: u64,
//! }
//!
//! #[derive(Clone)]
//! struct App {
//!     notifications: Producer,
//! }
//!
//! async fn order_placed(
//!     State(app): State<App>,
//!     Key(customer): Key<u64>,
//!     Json(order): Json<OrderPlaced>,
//! ) -> Result<Ack, BoxError> {
//!     if order.total_cents == 0 {
//!         return Err(permanent("an order cannot be free")); // straight to the DLQ
//!     }
//!     let note = Message::builder("notifications")
//!         .key(customer.to_string())
//!         .value(format!("order {} received", order.id))
//!         .build();
//!     app.notifications.publish(note).await?; // carries the trace context
//!     Ok(Ack::Success)
//! }
//!
//! pub async fn run(brokers: &str, metrics: Metrics) -> Result<(), Error> {
//!     let producer = Producer::builder("billing")
//!         .brokers([brokers])
//!         .error_handler(|err| tracing::error!(%err, "producer"))
//!         .layer(metrics.producer_layer())
//!         .layer(InjectLayer)
//!         .build()?;
//!     let router = Router::new()
//!         .route("orders", order_placed)
//!         .fallback(|_m: Message| async { Ack::Skip });
//!     let consumer = Consumer::builder("billing")
//!         .brokers([brokers])
//!         .topics(["orders", "audit"])
//!         .concurrency(16)
//!         .order(Order::PerKey)
//!         .metrics(&metrics)
//!         .error_handler(|err: &Error| if err.is_fatal() { Decision::Stop } else { Decision::Continue })
//!         .layer(metrics.layer())
//!         .layer(ExtractLayer)
//!         .layer(LoggingLayer::new())
//!         .layer(DeadLetterLayer::new(producer.clone(), "orders.dlq"))
//!         .layer(RetryLayer::new(Backoff::new().max_attempts(5).max_elapsed(Duration::from_secs(30))))
//!         .layer(RecoverLayer::new())
//!         .layer(AddStateLayer::new(App { notifications: producer.clone() }))
//!         .service(router)
//!         .build()?;
//!     consumer.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//!     producer.close().await;
//!     Ok(())
//! }
//! # }
//! ```
//!
//! Serve `metrics.render()` on `/metrics` (see `examples/metrics.rs`).
//!
//! ## Guarantees
//!
//! * An offset is stored only after the handler and its middleware finished
//!   with success or skip — or the error handler explicitly skipped the
//!   failure. A failed message is never silently passed over.
//! * The [`CommitMode`] names the delivery guarantee truthfully: `Auto` and
//!   `Manual` are at-least-once, `AtMostOnce` commits before handling, and
//!   `Transactional` is exactly-once for consume-transform-produce (below).
//! * Every error no middleware handled reaches the mandatory error handler,
//!   which decides ([`Decision`]) whether to stop; it never sees a non-error.
//! * [`Consumer`]s run handlers with [`ConsumerBuilder::concurrency`] and an
//!   [`Order`] (per partition, per key, unordered); the stored offset is the
//!   contiguous low watermark of finished messages, and full buffers pause
//!   partitions instead of stalling the poll loop. [`BatchConsumer`] does the
//!   same for batches. What a partition tracks is bounded even behind one
//!   message that never finishes: the partition pauses and the error handler
//!   receives [`Error::Stalled`] naming that message.
//! * `run` is cancellation-safe: dropping its future (a timeout, a losing
//!   `select!` branch, an aborted task) stops the consumer exactly as a
//!   shutdown does — nothing more is handled, what was handled is committed,
//!   the member leaves its group.
//! * A panic of the application's code never disables a consumer silently:
//!   in a handler or a middleware (its `poll_ready` too) it is that message's
//!   failure; anywhere else on the poll thread (a tracing subscriber called
//!   from librdkafka's callbacks) the consumer stops and `run` returns
//!   [`Error::Panicked`].
//! * A record librdkafka fetched but cannot hand over (a compression codec
//!   it lacks, a failed CRC) is [`Error::Consume`], naming its partition and
//!   offset.
//! * A handler that awaits never holds up polling. For speed, a call whose
//!   lane is idle starts on the poll thread and, if it finishes without
//!   waiting, settles there with no task switch; at its first real wait it
//!   continues on a tokio task. So do not block inside a handler (CPU-heavy
//!   or blocking calls): use `tokio::task::spawn_blocking`, as in any async
//!   code.
//! * Shutdown is bounded, even with unreachable brokers.
//! * Producers default to `acks=all` and idempotence.
//!
//! ## Exactly-once consume-transform-produce
//!
//! Give the consumer a producer built with
//! [`transactional_id`](ProducerBuilder::transactional_id) through
//! [`ConsumerBuilder::transactional`], and publish with that producer from
//! the handler (and from a [`DeadLetterLayer`](dlq::DeadLetterLayer)): what
//! the handlers publish and the offsets of the messages they handled then
//! commit in one Kafka transaction, many messages per transaction (every
//! [`transaction_interval`](ConsumerBuilder::transaction_interval), 100 ms by
//! default). A `read_committed` reader of the output sees each input's
//! output exactly once, whatever crashes, rebalances or zombie instances
//! happen; failures abort the transaction and read its messages again. See
//! [`ConsumerBuilder::transactional`] for how a transaction ends under
//! concurrency, and [`Producer::begin_transaction`] for transactions in a
//! service that is not a consumer.
//!
//! ## Bad input
//!
//! A consumer meets whatever producers send; nothing is filtered before the
//! handler, and nothing a producer sends can crash or stall the consumer:
//!
//! * **Keys and values** arrive byte for byte. An empty value is `Some` of
//!   zero bytes, a null value (a tombstone) is `None` — likewise for keys;
//!   [`Message::key_str`] / [`Message::value_str`] are `None` when the bytes
//!   are not UTF-8.
//! * **Size**: a producer refuses a message over its `message.max.bytes`
//!   (librdkafka's default: 1,000,000 bytes) with an error from `publish`,
//!   never truncating it; raise it, within the broker's limit (Kafka's
//!   default: about 1 MiB), for bigger ones. A consumer needs no setting:
//!   librdkafka returns a record larger than `fetch.max.bytes` /
//!   `max.partition.fetch.bytes` whole, up to `receive.message.max.bytes`
//!   (100 MB).
//! * **Headers** keep their wire order and duplicates ([`Headers::get`] is
//!   the last one, [`Headers::get_all`] every one); a null value is `None`,
//!   distinct from an empty one; values are kept byte for byte. A header
//!   *name* that is not UTF-8 is decoded lossily (U+FFFD, see
//!   [`Header::from_wire`]) and cut at a NUL byte (librdkafka hands names
//!   over as C strings).
//! * **Extractors**: a key or value that does not decode is a typed
//!   [`extract::Rejection`] naming the message. `Json<T>` gives
//!   `Rejection::Json` for invalid JSON, JSON of the wrong type or an empty
//!   value, and `MissingValue` for a null one; `Key<T>` gives `MissingKey`
//!   for a null key and `InvalidKey` for one that is not UTF-8 or does not
//!   parse (an empty key is a key). By default a rejection is a failure like
//!   any other: the error handler receives [`Error::Handler`] with the
//!   rejection as its source; [`Decision::Continue`] skips the message
//!   (counted in [`Summary::failed_skipped`]), [`Decision::Stop`] stops the
//!   consumer without storing its offset, so it is read again.
//!   [`extract::SkipRejectedLayer`] skips it instead ([`Summary::skipped`]);
//!   [`dlq::DeadLetterLayer`] publishes its original bytes to a dead-letter
//!   topic, then skips it ([`dlq::DeadLetterInfo`] reads the copy's
//!   `x-dlq-*` headers back).
//! * **Trace context** (feature `opentelemetry`): a missing, garbled, not
//!   UTF-8 or all-zero `traceparent` starts a new trace; an invalid
//!   `tracestate` is dropped; the message is handled as usual.
//!
//! Unless the error handler says [`Decision::Stop`], the consumer moves on
//! and commits past every such message (`tests/bad_input.rs`, on a real
//! broker; the parsers are property-tested in `tests/fuzz.rs` of both
//! crates).
//!
//! ## Middleware order
//!
//! The first middleware added is the outermost, as in Go xkafka's `Use` and
//! tower's `ServiceBuilder` — see [`middleware`].
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `metrics` | Prometheus metrics (`xkafka::metrics`) |
//! | `opentelemetry` | W3C trace-context propagation (`middleware::trace_context`) |
//! | `ssl` | TLS (`security.protocol` = `ssl` / `sasl_ssl`): librdkafka built against the system's OpenSSL (Debian: `libssl-dev`, `pkg-config`) |
//! | `sasl` | SASL/SCRAM-SHA-256/512 and PLAIN, implemented by librdkafka itself (no Cyrus SASL); SCRAM needs OpenSSL, so `sasl` turns on `ssl` |
//! | `gssapi` | SASL/GSSAPI (Kerberos) through Cyrus SASL: `libsasl2-dev` to build, a GSSAPI plugin (`libsasl2-modules-gssapi-mit`) and a keytab to run |
//!
//! Without them, `build()` fails rather than the client at run time:
//! `security.protocol` = `ssl` / `sasl_ssl` is an [`Error::InvalidConfig`]
//! ("OpenSSL not available at build time"), a SCRAM mechanism an
//! [`Error::Kafka`] ("No provider for SASL mechanism SCRAM-SHA-512").
//! SASL/PLAIN works in every build.
//!
//! Security settings are ordinary librdkafka properties. Secret values
//! (`sasl.password`, `ssl.key.password`, `sasl.oauthbearer.client.secret`…,
//! see [`Config::is_secret`]) never appear in `Debug` output, errors or logs:
//!
//! ```no_run
//! use xkafka::{Error, Producer};
//! use xkafka::raw::rdkafka::error::RDKafkaErrorCode;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let producer = Producer::builder("orders-api")
//!     .brokers(["kafka-1.internal:9093"])
//!     .config("security.protocol", "sasl_ssl")          // sasl_plaintext without TLS
//!     .config("sasl.mechanisms", "SCRAM-SHA-512")        // or PLAIN, SCRAM-SHA-256
//!     .config("sasl.username", "orders-api")
//!     .config("sasl.password", std::env::var("KAFKA_PASSWORD")?)
//!     .config("ssl.ca.location", "/etc/kafka/ca.pem")    // the broker's CA
//!     .error_handler(|err: &Error| {
//!         // A wrong password arrives here as a client error (and a publish
//!         // fails once `message.timeout.ms` passed).
//!         if err.kafka_code() == Some(RDKafkaErrorCode::Authentication) {
//!             eprintln!("check the Kafka credentials: {err}");
//!         }
//!     })
//!     .build()?;
//! # drop(producer);
//! # Ok(())
//! # }
//! ```
//!
//! ## Operating it: status and health
//!
//! [`Consumer::status_handle`] reads a running consumer's
//! [`ConsumerStatus`](consumer::ConsumerStatus) from anywhere, without a
//! broker round trip: group state and member, and per partition the
//! position, stored and committed offsets, lag, messages in flight, why it
//! is paused, and the oldest unfinished message with how long it has held
//! the partition. [`health::HealthCheck`] judges it against thresholds (a
//! stalled poll thread, a stuck handler, a group that never settles, a
//! committed offset held by a failing message — each named with its
//! partition and offset), and with the `http` feature
//! [`health::router`] serves `/healthz`, `/readyz` and `/status` for
//! Kubernetes. [`Producer::status`] does the same for a producer.
//!
//! ## Testing your handlers
//!
//! [`testing`] tests a service the way one tests an axum app:
//! [`testing::HandlerTest`] runs messages built in the test through the
//! consumer's whole middleware stack and error handler (no broker; retries
//! under paused tokio time take no real time), [`testing::RecordingProducer`]
//! captures what the handler (or its dead-letter layer) publishes, and
//! [`testing::TestCluster`] with [`testing::run_until`] runs the real
//! consumer on the embedded cluster ([`mock::EmbeddedCluster`], librdkafka's
//! in-process mock brokers) until it handled what the test expects.

pub mod admin;
mod config;
pub mod consumer;
mod convert;
pub mod dlq;
mod error;
#[doc = include_str!("guide.md")]
pub mod guide {}
pub mod health;
mod log;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(any(test, feature = "testing"))]
pub mod mock;
mod producer;
pub mod raw;
pub mod retry_topics;
mod secret;
mod shutdown;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use xkafka_core::{extract, middleware, router};
pub use xkafka_core::{
    Ack, Batch, BatchHandler, BoxError, Delivery, Handler, Header, Headers, Message,
    MessageBuilder, Router, Timestamp,
};

/// How handlers become tower services, for code that names those types (a
/// custom layer's bounds, a hand-written handler): the machinery behind
/// [`Handler`] and [`BatchHandler`].
pub mod handler {
    pub use xkafka_core::{BatchHandlerService, HandlerService, IntoOutcome};
}

pub use config::Config;
pub use consumer::{
    BatchConsumer, CommitMode, Consumer, ConsumerBuilder, Order, Rebalance, Summary, TopicPartition,
};
pub use error::{Decision, Error, Operation};
pub use producer::{CloseReport, Producer, ProducerBuilder, ProducerStatus};
pub use shutdown::ShutdownHandle;

/// The README's examples, compiled as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
