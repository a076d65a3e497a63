//! The built consumers, [`Consumer`](crate::Consumer) and [`BatchConsumer`](crate::BatchConsumer): `run` starts
//! the poll thread and waits for shutdown; the handles read and stop them.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;

use crate::config::Config;
use crate::error::{Error, Operation};
use crate::shutdown::ShutdownHandle;

use super::commit_mode::CommitMode;
use super::context::XConsumerContext;
use super::dispatch::Order;
use super::dispatch::{CommitWait, Dispatcher, Runner};
use super::pipeline::NotBeforeFn;
use super::pipeline::{Limits, Pipeline};
use super::poll_loop::PollLoop;
use super::shared::Shared;
use super::status::GroupState;
use super::status::StatusHandle;
use super::summary::Summary;
use super::transaction;

/// How much longer than the shutdown timeout `run` waits for the poll thread
/// to report before returning without it.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(500);

/// A streaming Kafka consumer: one message at a time through a handler and
/// its middleware (or several at once with [`ConsumerBuilder::concurrency`](crate::ConsumerBuilder::concurrency)),
/// offsets stored only after processing.
///
/// ```no_run
/// use std::time::Duration;
/// use xkafka::middleware::{from_fn, Next};
/// use xkafka::{Ack, BoxError, CommitMode, Consumer, Decision, Error, Message};
///
/// async fn handle(msg: Message) -> Result<Ack, BoxError> {
///     println!("{}: {:?}", msg.location(), msg.value_str());
///     Ok(Ack::Success)
/// }
///
/// # async fn run() -> Result<(), Error> {
/// let consumer = Consumer::builder("billing")
///     .brokers(["127.0.0.1:9092"])
///     .topics(["orders"])
///     .config("auto.offset.reset", "earliest")
///     .commit_mode(CommitMode::Manual)
///     .shutdown_timeout(Duration::from_secs(5))
///     .error_handler(|err: &Error| match err {
///         // A message failed and no middleware dealt with it: stop, so that
///         // it is read again after a restart (nothing is lost).
///         Error::Handler { .. } => Decision::Stop,
///         // librdkafka recovers from most client errors by itself.
///         _ if err.is_fatal() => Decision::Stop,
///         _ => Decision::Continue,
///     })
///     .layer(from_fn(|msg: Message, next: Next| async move {
///         let started = std::time::Instant::now();
///         let outcome = next.run(msg).await;
///         println!("took {:?}", started.elapsed());
///         outcome
///     }))
///     .handler(handle)
///     .build()?;
///
/// let summary = consumer.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
/// println!("{summary:?}");
/// # Ok(()) }
/// ```
pub struct Consumer {
    pub(super) shared: Arc<Shared>,
    pub(super) client: BaseConsumer<XConsumerContext>,
    pub(super) runner: Runner,
    pub(super) commit_mode: CommitMode,
    pub(super) concurrency: usize,
    pub(super) order: Order,
    pub(super) limits: Limits,
    pub(super) shutdown_timeout: Duration,
    pub(super) topics: Vec<String>,
    pub(super) config: Config,
    pub(super) transaction: Option<(crate::Producer, transaction::Boundary)>,
    pub(super) not_before: Option<NotBeforeFn>,
}

impl Consumer {
    /// A handle that stops [`run`](Self::run) from anywhere (another task, a
    /// handler, a signal listener).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shared.shutdown.clone()
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.shared.group
    }

    /// A handle that reads the consumer's [`ConsumerStatus`](crate::consumer::ConsumerStatus) at any time,
    /// from anywhere (a health endpoint: see [`crate::health`]).
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle::new(self.shared.board.clone())
    }

    /// Consumes until `shutdown` resolves, the [`ShutdownHandle`] is used, or
    /// the error handler returns [`Decision::Stop`](crate::Decision::Stop).
    ///
    /// Then it stops fetching, lets the in-flight message finish, commits
    /// what was processed, leaves the group and closes — all within the
    /// shutdown timeout; it returns within that timeout (plus half a second)
    /// even when the brokers are unreachable. Returns the error the error
    /// handler stopped on, if any.
    pub async fn run<F>(self, shutdown: F) -> Result<Summary, Error>
    where
        F: Future<Output = ()>,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let shared = self.shared.clone();
        shared.set_state(GroupState::Joining);
        // Whatever way `run` ends (returned, or its future dropped).
        let _stopped = SetOnDrop(shared.clone());
        let handle = shared.shutdown.clone();
        let (completions_tx, completions_rx) = std::sync::mpsc::channel();
        let dispatcher = Dispatcher::new(
            self.order,
            self.concurrency,
            runtime,
            self.runner,
            completions_tx,
            shared.clone(),
            match self.commit_mode {
                CommitMode::Auto => CommitWait::None,
                CommitMode::Transactional => CommitWait::Transaction,
                CommitMode::Manual => CommitWait::After,
                CommitMode::AtMostOnce => CommitWait::Before,
            },
        )
        .with_fence(
            self.transaction
                .as_ref()
                .and_then(|(producer, _)| producer.transactions().ok().map(|t| t.fence.clone())),
        );
        let mut pipeline = Pipeline::new(dispatcher, completions_rx, self.limits, self.commit_mode);
        let transactional = self.transaction.is_some();
        if let Some((producer, boundary)) = self.transaction {
            pipeline = pipeline.with_transaction(transaction::Transaction::new(producer, boundary));
        }
        let delays = self.not_before.is_some();
        if let Some(not_before) = self.not_before {
            pipeline = pipeline.with_not_before(not_before);
        }
        let poll_loop = PollLoop {
            consumer: self.client,
            shared: shared.clone(),
            shutdown_timeout: self.shutdown_timeout,
            topics: self.topics,
            delays,
            transactional,
        };
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        // From here on, dropping this future (a timeout, a `select!` that
        // chose another branch, an aborted task) stops the poll thread the
        // way a shutdown does, instead of leaving it consuming for nobody.
        let _stop_on_drop = StopOnDrop(handle.clone());
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("xkafka-poll-{}", shared.group))
            .spawn(move || {
                // `PollLoop::run` catches the loop's panics and still closes;
                // this catches one while closing (the client is then dropped
                // by the unwinding, unbounded, but `run` does not wait).
                let end = thread_shared.guard("the poll thread", || poll_loop.run(pipeline));
                if let Some(end) = end {
                    let _ = done_tx.send(end);
                }
            })
            .map_err(|e| {
                Error::kafka(
                    Operation::Create,
                    rdkafka::error::KafkaError::ClientCreation(e.to_string()),
                )
            })?;

        tokio::pin!(shutdown);
        let early = tokio::select! {
            end = &mut done_rx => Some(end),
            () = &mut shutdown => None,
            () = handle.requested() => None,
        };
        let end = match early {
            Some(end) => end.ok(),
            None => {
                handle.shutdown();
                let since = handle.since().unwrap_or_else(std::time::Instant::now);
                let deadline = since + self.shutdown_timeout + SHUTDOWN_MARGIN;
                tokio::time::timeout_at(deadline.into(), done_rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        if let Some(err) = shared.take_panic() {
            return Err(err);
        }
        if let Some(err) = shared.take_stop_error() {
            return Err(err);
        }
        let ledger = shared.ledger();
        let uncommitted = ledger.uncommitted(None).into_iter().collect();
        Ok(Summary {
            succeeded: ledger.succeeded,
            skipped: ledger.skipped,
            failed: ledger.failed,
            failed_skipped: ledger.failed_skipped,
            abandoned: ledger.abandoned,
            assignments: ledger.assignments,
            committed: ledger.committed.clone(),
            uncommitted,
            closed_cleanly: end.is_some_and(|e| e.closed_cleanly),
            transactions_committed: ledger.transactions_committed,
            transactions_aborted: ledger.transactions_aborted,
        })
    }
}

/// Marks the consumer stopped, for its status, when `run` ends.
struct SetOnDrop(Arc<Shared>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set_state(GroupState::Stopped);
    }
}

/// Requests a shutdown when dropped: `run` holds one, so that a dropped
/// `run` future stops its consumer. Harmless once the consumer stopped.
struct StopOnDrop(ShutdownHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.shared.group)
            .field("topics", &self.topics)
            .field("commit_mode", &self.commit_mode)
            .field("concurrency", &self.concurrency)
            .field("order", &self.order)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A consumer that hands its handler batches of messages (Go xkafka's
/// `BatchConsumer`): up to [`batch_size`](crate::ConsumerBuilder::batch_size)
/// messages, or what arrived within
/// [`batch_timeout`](crate::ConsumerBuilder::batch_timeout) of the first one.
///
/// Everything else — commit modes, concurrency and ordering (a batch holds
/// messages of one lane: one partition in [`Order::PerPartition`](crate::Order::PerPartition)), offsets
/// held back by failed messages, bounded shutdown — is the same as for
/// [`Consumer`](crate::Consumer).
///
/// ```no_run
/// use std::time::Duration;
/// use xkafka::{Batch, BatchConsumer, BoxError, Decision};
///
/// async fn save(batch: Batch) -> Result<(), BoxError> {
///     for (i, msg) in batch.iter().enumerate() {
///         if msg.value().is_none() {
///             batch.fail(i, "tombstones are not expected here");
///         }
///     }
///     Ok(()) // the others succeeded
/// }
///
/// # async fn run() -> Result<(), xkafka::Error> {
/// let consumer = BatchConsumer::builder("warehouse")
///     .brokers(["127.0.0.1:9092"])
///     .topics(["orders"])
///     .batch_size(500)
///     .batch_timeout(Duration::from_millis(200))
///     .error_handler(|_| Decision::Stop)
///     .handler(save)
///     .build()?;
/// consumer.run(std::future::pending()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct BatchConsumer {
    pub(super) inner: Consumer,
}

impl BatchConsumer {
    /// See [`Consumer::shutdown_handle`](crate::Consumer::shutdown_handle).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.inner.shutdown_handle()
    }

    /// See [`Consumer::status_handle`](crate::Consumer::status_handle).
    pub fn status_handle(&self) -> StatusHandle {
        self.inner.status_handle()
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        self.inner.group()
    }

    /// See [`Consumer::run`](crate::Consumer::run); a partial batch is handled when its window
    /// expires, or not at all once stopping.
    pub async fn run<F>(self, shutdown: F) -> Result<Summary, Error>
    where
        F: Future<Output = ()>,
    {
        self.inner.run(shutdown).await
    }
}
