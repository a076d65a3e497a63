//! The error type of xkafka, and what the mandatory error handler decides.

use std::fmt;
use std::sync::Arc;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::BoxError;

/// The Kafka client operation an [`Error::Kafka`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// A background error of the client (e.g. all brokers down, a fatal
    /// idempotent-producer error, an authentication failure).
    Client,
    /// Creating the client.
    Create,
    /// Subscribing to the topics.
    Subscribe,
    /// Controlling the fetch: pausing or resuming partitions for
    /// backpressure. (Errors of the fetch itself, like a broker going away,
    /// arrive as [`Operation::Client`]: librdkafka reports them once, as
    /// client errors.)
    Poll,
    /// Storing a processed offset.
    StoreOffset,
    /// Committing offsets to the group coordinator.
    Commit,
    /// Assigning or revoking partitions during a rebalance.
    Rebalance,
    /// Leaving the group and closing the client. For the producer: `close`
    /// stopped waiting for delivery callbacks that had not run yet (see
    /// [`Error::Incomplete`]).
    Close,
    /// Handing a message to librdkafka's queue.
    Enqueue,
    /// Flushing the producer: at close, messages the broker had not
    /// acknowledged within the close timeout were purged (see
    /// [`Error::Incomplete`]).
    Flush,
    /// Initialising a transactional producer (finding the transaction
    /// coordinator, fencing older instances with the same
    /// `transactional.id`).
    InitTransactions,
    /// Beginning a transaction.
    BeginTransaction,
    /// Committing a transaction (with a consumer: adding its offsets to the
    /// transaction, then committing).
    CommitTransaction,
    /// Aborting a transaction, or reading its messages again afterwards.
    AbortTransaction,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Client => "kafka client",
            Operation::Create => "creating the kafka client",
            Operation::Subscribe => "subscribing",
            Operation::Poll => "polling",
            Operation::StoreOffset => "storing an offset",
            Operation::Commit => "committing offsets",
            Operation::Rebalance => "rebalancing",
            Operation::Close => "closing",
            Operation::Enqueue => "enqueueing a message",
            Operation::Flush => "flushing the producer",
            Operation::InitTransactions => "initialising transactions",
            Operation::BeginTransaction => "beginning a transaction",
            Operation::CommitTransaction => "committing a transaction",
            Operation::AbortTransaction => "aborting a transaction",
        })
    }
}

/// Everything that can go wrong in xkafka, each with a message a human can
/// act on.
///
/// Configuration errors come out of `build()`; run-time errors reach the
/// mandatory error handler (see [`Decision`]) and, when it decides to stop,
/// are returned by `Consumer::run`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No broker address was given.
    #[error("no brokers configured: call `.brokers([\"host:port\"])` or set `bootstrap.servers`")]
    MissingBrokers,
    /// A consumer without topics.
    #[error("no topics configured: call `.topics([...])` with at least one topic")]
    MissingTopics,
    /// A consumer with an empty group id.
    #[error("the consumer group id is empty: give `Consumer::builder` a group id")]
    MissingGroupId,
    /// A consumer or producer without its mandatory error handler.
    #[error(
        "no error handler: call `.error_handler(...)`; xkafka requires one so that no error goes unseen"
    )]
    MissingErrorHandler,
    /// A consumer without a handler.
    #[error("no handler: call `.handler(...)` or `.service(...)`")]
    MissingHandler,
    /// A topic name Kafka would reject.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopic {
        /// The rejected name.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// librdkafka rejected a property (unknown name or invalid value).
    #[error("invalid librdkafka property `{key}` = {value}: {reason}")]
    InvalidConfig {
        /// The property name.
        key: String,
        /// The value, quoted, or `<redacted>` for secrets.
        value: String,
        /// librdkafka's explanation.
        reason: String,
    },
    /// A property that xkafka sets itself because its guarantees depend on it.
    #[error("`{key}` cannot be set to {value:?}: {reason}")]
    ReservedConfig {
        /// The property name.
        key: String,
        /// The value given.
        value: String,
        /// Why xkafka owns it.
        reason: &'static str,
    },
    /// Built or run outside a tokio runtime.
    #[error("no tokio runtime: xkafka consumers and producers must be built and run inside one")]
    NoRuntime,
    /// A handler (with its middleware) failed on a message.
    #[error("handler failed on {topic}[{partition}]@{offset}: {source}")]
    Handler {
        /// The message's topic.
        topic: Arc<str>,
        /// The message's partition.
        partition: i32,
        /// The message's offset.
        offset: i64,
        /// What the handler returned.
        #[source]
        source: BoxError,
    },
    /// The Kafka client failed.
    #[error("{operation} failed: {source}{}", with_reason(.reason.as_deref()))]
    Kafka {
        /// What was being done.
        operation: Operation,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
        /// librdkafka's own explanation of a client error event, when it
        /// gave one: which broker, and why (e.g. "SSL handshake failed: …
        /// certificate verify failed"). Secret property values are scrubbed
        /// from it.
        reason: Option<String>,
    },
    /// A published message was not acknowledged by the broker.
    #[error("delivery to {topic} failed: {source}")]
    Delivery {
        /// The target topic.
        topic: Arc<str>,
        /// The target partition, when one was given.
        partition: Option<i32>,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A producer middleware failed the publish.
    #[error("publish failed: {0}")]
    Publish(#[source] BoxError),
    /// librdkafka fetched a record it cannot hand over: a batch in a
    /// compression codec it was built without ("Not implemented"), a record
    /// that fails its CRC check, one too large to fetch. The partition does
    /// not move past it by itself: skip it by committing past it (or fix the
    /// client build). librdkafka's poll does not say which partition; it is
    /// named when exactly one assigned partition is positioned at `offset`.
    #[error("consuming {}@{offset} failed: {reason}", consume_partition(partition.as_ref()))]
    Consume {
        /// The record's topic and partition, when known.
        partition: Option<crate::TopicPartition>,
        /// The offset librdkafka failed at.
        offset: i64,
        /// librdkafka's explanation.
        reason: Box<str>,
        /// librdkafka's error code.
        #[source]
        code: RDKafkaErrorCode,
    },
    /// A partition stopped flowing: the message at `offset` has not finished
    /// while `behind` later messages did, and the partition is paused because
    /// the consumer tracks at most
    /// [`max_in_flight_per_partition`](crate::ConsumerBuilder::max_in_flight_per_partition)
    /// messages of it. Its committed offset cannot pass that message. Reported
    /// once per stall; the partition resumes when the message finishes.
    #[error(
        "{topic}[{partition}] is stalled: the message at offset {offset} has not finished while \
         {behind} later ones did; the partition is paused until it does"
    )]
    Stalled {
        /// The partition's topic.
        topic: Arc<str>,
        /// The partition.
        partition: i32,
        /// The unfinished message's offset.
        offset: i64,
        /// Finished messages held behind it.
        behind: usize,
    },
    /// Code of xkafka or of the application panicked on a consumer's poll
    /// thread or in one of librdkafka's callbacks (rebalance, commit, error,
    /// log). The consumer stopped (bounded, as for a shutdown): its state
    /// after a panic cannot be trusted.
    #[error("{place} panicked: {message}")]
    Panicked {
        /// Where: `"the poll thread"`, `"the rebalance callback"`, ...
        place: &'static str,
        /// The panic's message.
        message: String,
    },
    /// The producer was closed before this publish.
    #[error("the producer is closed")]
    ProducerClosed,
    /// A user callback panicked: a delivery callback (`on_delivery` or a
    /// `publish_async_with` callback) or a producer middleware completing an
    /// asynchronous publish. The panic was caught where it happened and the
    /// client goes on; a middleware's publish fails with this error.
    ///
    /// (A panicking error handler cannot be told about itself: that panic is
    /// caught too and logged with `tracing` at error level.)
    #[error("{callback} panicked{}: {message}", on_topic(topic.as_deref()))]
    CallbackPanicked {
        /// Which callback: `"the on_delivery callback"`, `"a publish_async_with
        /// callback"` or `"a producer middleware"`.
        callback: &'static str,
        /// The topic of the message it was called for.
        topic: Option<Arc<str>>,
        /// The panic's message.
        message: String,
    },
    /// Closing the producer could not finish everything within its bound.
    ///
    /// With [`Operation::Flush`]: `count` messages the broker had not
    /// acknowledged when the close timeout expired were purged (their
    /// callbacks or `publish` callers get an error; they may or may not have
    /// been written). With [`Operation::Close`]: `count` delivery callbacks
    /// had still not run when `close` stopped waiting for them; they run when
    /// librdkafka reports those messages.
    #[error("{operation} failed: {}", incomplete(*operation, *count, source.as_ref()))]
    Incomplete {
        /// [`Operation::Flush`] or [`Operation::Close`].
        operation: Operation,
        /// How many messages (see above).
        count: usize,
        /// librdkafka's error, when it gave one (the flush's result).
        #[source]
        source: Option<KafkaError>,
    },
    /// A threshold or bound that cannot mean what it says (zero, or
    /// absurdly large).
    #[error("`{name}` = {value:?} is not accepted: {reason}")]
    InvalidThreshold {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: std::time::Duration,
        /// What is accepted.
        reason: &'static str,
    },
    /// Transactions used the wrong way: a producer without a
    /// `transactional.id` given to a transactional consumer, one producer
    /// driven by two consumers, `commit_transaction` with no transaction
    /// open, a producer that was fenced and cannot transact any more, a
    /// transactional consumer whose handlers did not finish in time for its
    /// transaction to commit. The text says which.
    #[error("transactions: {0}")]
    Transactional(String),
    /// The producer was closed or dropped before the broker acknowledged the
    /// message; it may or may not have been written.
    #[error("no delivery report for a message to {topic}: the producer closed first")]
    Undelivered {
        /// The target topic.
        topic: Arc<str>,
    },
}

/// librdkafka's text for `ERR__FENCED` (`rd_kafka_err2str`), which its
/// fatal error event quotes.
const FENCED_TEXT: &str = "This instance has been fenced by a newer instance";

fn with_reason(reason: Option<&str>) -> String {
    reason.map(|r| format!(" ({r})")).unwrap_or_default()
}

fn on_topic(topic: Option<&str>) -> String {
    topic
        .map(|t| format!(" on a message to {t}"))
        .unwrap_or_default()
}

fn incomplete(operation: Operation, count: usize, source: Option<&KafkaError>) -> String {
    let what = match operation {
        Operation::Flush => format!(
            "{count} message(s) not acknowledged within the close timeout were purged \
             (they may or may not have been written)"
        ),
        _ => format!("{count} delivery callback(s) had not run when close returned"),
    };
    match source {
        Some(source) => format!("{what}: {source}"),
        None => what,
    }
}

fn consume_partition(partition: Option<&crate::TopicPartition>) -> String {
    match partition {
        Some(tp) => tp.to_string(),
        None => "an unknown partition".to_owned(),
    }
}

impl Error {
    /// What was being done, for errors of a client operation
    /// ([`Error::Kafka`], [`Error::Incomplete`]).
    pub fn operation(&self) -> Option<Operation> {
        match self {
            Error::Kafka { operation, .. } | Error::Incomplete { operation, .. } => {
                Some(*operation)
            }
            _ => None,
        }
    }

    pub(crate) fn kafka(operation: Operation, source: KafkaError) -> Self {
        // librdkafka may quote part of a secret property's value when it
        // cannot create a client.
        let source = match source {
            KafkaError::ClientCreation(reason) => {
                KafkaError::ClientCreation(crate::secret::scrub(&reason).into_owned())
            }
            other => other,
        };
        Error::Kafka {
            operation,
            source,
            reason: None,
        }
    }

    /// A client error event with librdkafka's reason. An empty reason, or
    /// one the source's `Display` already shows (the code's own text), is
    /// left out.
    pub(crate) fn client(source: KafkaError, reason: &str) -> Self {
        let reason = crate::secret::scrub(reason);
        let reason = reason.trim();
        let repeats = source.to_string().contains(reason);
        Error::Kafka {
            operation: Operation::Client,
            reason: (!reason.is_empty() && !repeats).then(|| reason.to_owned()),
            source,
        }
    }

    /// Turns a middleware error back into an [`Error`] when it is one.
    pub(crate) fn from_boxed_publish(err: BoxError) -> Self {
        match err.downcast::<Error>() {
            Ok(err) => *err,
            Err(other) => Error::Publish(other),
        }
    }

    /// The failed message's `(topic, partition, offset)`, for
    /// [`Error::Handler`].
    pub fn message_location(&self) -> Option<(&str, i32, i64)> {
        match self {
            Error::Handler {
                topic,
                partition,
                offset,
                ..
            } => Some((topic, *partition, *offset)),
            _ => None,
        }
    }

    /// Whether librdkafka flagged the error as fatal: the client cannot
    /// continue (e.g. a fenced idempotent producer).
    ///
    /// librdkafka's `Fenced` code counts as fatal wherever it shows: it is
    /// raised only as a fatal error, but a producer's client error event
    /// carries it without the fatal flag (rdkafka's `KafkaError::Global`
    /// has none).
    pub fn is_fatal(&self) -> bool {
        let source = match self {
            Error::Kafka { source, .. } | Error::Delivery { source, .. } => source,
            _ => return false,
        };
        matches!(source, KafkaError::MessageConsumptionFatal(_))
            || matches!(source, KafkaError::Transaction(e) if e.is_fatal())
            || matches!(
                source.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::Fenced)
            )
    }

    /// Whether a transaction operation failed in a way that leaves the
    /// transaction to be aborted (librdkafka's "abortable" errors: a
    /// message of the transaction could not be delivered, the consumer
    /// group's generation moved on, ...). The producer can transact again
    /// after [`Producer::abort_transaction`](crate::Producer::abort_transaction).
    pub fn requires_abort(&self) -> bool {
        matches!(self, Error::Kafka { source: KafkaError::Transaction(e), .. } if e.txn_requires_abort())
    }

    /// Whether a newer instance with the same `transactional.id` (or a newer
    /// member of the consumer group) took over: this instance must stop.
    ///
    /// As librdkafka reports it: a transactional producer's fencing
    /// (`PRODUCER_FENCED`, or `INVALID_PRODUCER_EPOCH` on a transactional
    /// request) is a fatal error with the code `Fenced` (librdkafka's
    /// `ERR__FENCED`), returned by the transaction calls and raised once as
    /// a fatal client error; a static member replaced by another with its
    /// `group.instance.id` gets `FENCED_INSTANCE_ID`.
    ///
    /// `INVALID_PRODUCER_EPOCH` by itself is not fencing: on an idempotent
    /// (not transactional) producer it fails the messages of one produce
    /// request, and librdkafka bumps the epoch and carries on (a delivery
    /// error, neither fenced nor fatal). It counts as fenced only when
    /// librdkafka made it fatal.
    pub fn is_fenced(&self) -> bool {
        match self.kafka_code() {
            Some(
                RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::FencedInstanceId,
            ) => true,
            Some(RDKafkaErrorCode::InvalidProducerEpoch) => self.is_fatal(),
            // The fatal error event: its code is `Fatal`, and librdkafka's
            // text names the underlying one ("Fatal error: Local: This
            // instance has been fenced by a newer instance: ...").
            Some(RDKafkaErrorCode::Fatal) => matches!(
                self,
                Error::Kafka { reason: Some(reason), .. } if reason.contains(FENCED_TEXT)
            ),
            _ => false,
        }
    }

    /// librdkafka's error code, when the error comes from librdkafka.
    pub fn kafka_code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            Error::Kafka { source, .. } | Error::Delivery { source, .. } => {
                source.rdkafka_error_code()
            }
            Error::Incomplete { source, .. } => source.as_ref()?.rdkafka_error_code(),
            Error::Consume { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What the mandatory error handler decides about an error.
///
/// The handler is called for every error no middleware handled: failed
/// messages ([`Error::Handler`]), every client error (poll, offset store,
/// commit, rebalance) and every stalled partition ([`Error::Stalled`]). It
/// is never called with anything that is not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Keep consuming. For a failed message this **skips it explicitly**: its
    /// offset is stored as if it had been handled and it is counted as
    /// skipped. For a client error (librdkafka usually recovers by itself:
    /// broker down, coordinator moved) the consumer carries on.
    Continue,
    /// Stop the consumer: `run` returns this error after a bounded shutdown.
    /// A failed message's offset is **not** stored, so the next consumer of
    /// the group receives that message again.
    Stop,
}

pub(crate) type ErrorHandlerFn = Arc<dyn Fn(&Error) -> Decision + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_error_names_the_message() {
        let err = Error::Handler {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            source: "db down".into(),
        };
        assert_eq!(err.to_string(), "handler failed on orders[2]@41: db down");
        assert_eq!(err.message_location(), Some(("orders", 2, 41)));
        assert!(!err.is_fatal());
    }

    #[test]
    fn client_errors_carry_librdkafkas_reason() {
        let ssl = || KafkaError::Global(RDKafkaErrorCode::SSL);
        let err = Error::client(ssl(), "ssl://b:9095/bootstrap: certificate verify failed");
        assert_eq!(
            err.to_string(),
            "kafka client failed: Global error: SSL (Local: SSL error) \
             (ssl://b:9095/bootstrap: certificate verify failed)"
        );
        assert_eq!(err.kafka_code(), Some(RDKafkaErrorCode::SSL));
        // No reason, or one that repeats the code's text: nothing added.
        for reason in ["", "  ", "Local: SSL error"] {
            let err = Error::client(ssl(), reason);
            assert_eq!(
                err.to_string(),
                "kafka client failed: Global error: SSL (Local: SSL error)"
            );
        }
    }

    #[test]
    fn client_creation_errors_do_not_quote_secrets() {
        let quoted = "Invalid sasl.oauthbearer.config: '\"' cannot appear in principal: s3\"cr3t";
        let err = Error::kafka(Operation::Create, KafkaError::ClientCreation(quoted.into()));
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("cr3t"), "{shown}");
        assert!(
            shown.contains("Invalid sasl.oauthbearer.config: <redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn an_invalid_producer_epoch_alone_is_not_fencing() {
        // An idempotent producer's failed produce request: librdkafka bumps
        // the epoch and carries on.
        let err = Error::Delivery {
            topic: "orders".into(),
            partition: Some(0),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::InvalidProducerEpoch),
        };
        assert!(!err.is_fenced(), "{err}");
        assert!(!err.is_fatal(), "{err}");
    }

    #[test]
    fn librdkafkas_fatal_fencing_event_is_fencing() {
        let fenced = Error::client(
            KafkaError::Global(RDKafkaErrorCode::Fatal),
            "Fatal error: Local: This instance has been fenced by a newer instance: \
             ProduceRequest for t [0] with 1 message(s) failed",
        );
        assert!(fenced.is_fatal() && fenced.is_fenced(), "{fenced}");
        let other = Error::client(
            KafkaError::Global(RDKafkaErrorCode::Fatal),
            "Fatal error: Local: Gap-less ordering would not be guaranteed if proceeding: ...",
        );
        assert!(other.is_fatal() && !other.is_fenced(), "{other}");
        // librdkafka's normalised code, as a producer's client error event
        // carries it (no fatal flag: it is fatal all the same).
        let event = Error::client(
            KafkaError::Global(RDKafkaErrorCode::Fenced),
            "Failed to end transaction: Local: This instance has been fenced by a newer instance",
        );
        assert!(event.is_fenced() && event.is_fatal(), "{event}");
    }

    #[test]
    fn publish_errors_round_trip_through_box() {
        let boxed: BoxError = Box::new(Error::ProducerClosed);
        assert!(matches!(
            Error::from_boxed_publish(boxed),
            Error::ProducerClosed
        ));
        let other: BoxError = "rate limited".into();
        assert_eq!(
            Error::from_boxed_publish(other).to_string(),
            "publish failed: rate limited"
        );
    }
}
