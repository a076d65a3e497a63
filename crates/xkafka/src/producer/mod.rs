//! The producer: publish messages synchronously or asynchronously, through a
//! middleware stack.

mod context;
#[cfg(test)]
mod delivery_cost;
mod driver;
pub(crate) mod fence;
mod poller;
mod publish;
mod transaction;
mod transaction_api;

pub(crate) use transaction::is_resumable;

use std::fmt;
use std::future::{poll_fn, Future};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer as _, PurgeConfig};
use tokio::sync::{mpsc, watch, OnceCell};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

use crate::config::Config;
use crate::error::{Error, Operation};
use crate::middleware::Stack;
use crate::{BoxError, Delivery, Message};
use context::{DeliveryTarget, XProducerContext};
use driver::{Completion, Hooks, InFlight, OnDeliveryFn, Pending};
use poller::PolledProducer;
use publish::{EnqueueSignal, RawPublish, Refused, TopicHandles};

const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`Producer::close`] could not do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// Messages the broker had not acknowledged when the close timeout
    /// expired; they were purged and their callbacks (or `publish` callers)
    /// received an error. They may or may not have been written.
    pub undelivered: usize,
    /// Delivery callbacks that had still not run when `close` stopped
    /// waiting for them ([`Producer::CLOSE_GRACE`] after the close timeout). Normally
    /// 0: only a callback that blocks (holding up the others behind it) or a
    /// librdkafka that never reports a purged message leaves any. They run
    /// whenever librdkafka reports their messages; the error handler was
    /// told ([`Error::Incomplete`] with [`Operation::Close`]).
    pub callbacks_pending: usize,
}

/// Publishes messages to Kafka. Cheap to clone: clones share one client.
///
/// Durable by default: `acks=all` and `enable.idempotence=true` unless the
/// configuration says otherwise.
///
/// With idempotence, librdkafka (2.12) lets a partition have at most 5
/// *messages* in flight, not 5 requests; while it waits for the broker's
/// answer, messages queued longer than `linger.ms` make its broker thread
/// poll without a timeout: a busy loop, one core, for as long as the broker
/// takes to answer. A slow broker (a garbage collection, a disk stall) thus
/// makes every idempotent producer spin. On a machine shared with the broker
/// (tests, a laptop) the spinning producers can take its CPU and prolong the
/// stall: in our 2-core benchmark, two producers publishing 1,000 messages a
/// second with `linger.ms=0` turned broker pauses of tens of milliseconds
/// into stalls of up to 1.5 s (BENCHMARKS.md, "What was found and fixed").
///
/// Close it with [`close`](Self::close). Dropping the last clone instead
/// blocks the dropping thread briefly (it joins the producer's delivery thread and
/// gives librdkafka 500 ms to report purged messages): without middleware,
/// messages still in flight are purged and their callbacks get an error
/// before the drop returns; with middleware, asynchronous publishes in
/// flight keep the client alive until their real outcome (at most
/// `message.timeout.ms`) and complete on the runtime.
///
/// ```no_run
/// use xkafka::{Message, Producer};
///
/// # async fn run() -> Result<(), xkafka::Error> {
/// let producer = Producer::builder("orders-api")
///     .brokers(["127.0.0.1:9092"])
///     .config("linger.ms", "5")
///     .error_handler(|err| eprintln!("producer: {err}"))
///     .on_delivery(|report| {
///         if let Err(err) = report {
///             eprintln!("not delivered: {err}");
///         }
///     })
///     .build()?;
///
/// // Waits for the broker's acknowledgement.
/// let delivery = producer
///     .publish(Message::builder("orders").key("42").value("created").build())
///     .await?;
/// println!("stored at {}[{}]@{}", delivery.topic, delivery.partition, delivery.offset);
///
/// // Returns once librdkafka has queued the message; the outcome goes to
/// // the callbacks.
/// producer
///     .publish_async_with(Message::builder("orders").value("paid").build(), |report| {
///         println!("paid event: {report:?}");
///     })
///     .await?;
///
/// let report = producer.close().await; // flushes within the close timeout
/// assert_eq!(report.undelivered, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    // Both hold the client; dropped by `Drop for Inner`, after the topic
    // handles (see there).
    client: ManuallyDrop<PolledProducer>,
    // A Mutex because tower services are Send but not Sync; it is only held
    // to clone the service, never across a publish.
    service: ManuallyDrop<Mutex<BoxCloneService<Message, Delivery, BoxError>>>,
    in_flight: mpsc::UnboundedSender<InFlight>,
    stop_driver: watch::Sender<bool>,
    hooks: Arc<Hooks>,
    closed: AtomicBool,
    close_report: OnceCell<CloseReport>,
    close_timeout: Duration,
    config: Config,
    /// No middleware: publishes skip the tower stack (and, for
    /// `publish_async`, the driver task).
    direct: bool,
    /// Built with a `transactional.id`.
    transactions: Option<transaction::Transactions>,
    /// Topic handles for publishes without middleware; released in
    /// `Drop for Inner`, before the client.
    topics: TopicHandles,
}

impl Producer {
    /// How long [`close_within`](Self::close_within) waits, after its
    /// timeout, for the callbacks of the messages it gave up on.
    pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

    /// Starts a producer; `name` becomes librdkafka's `client.id`.
    pub fn builder(name: impl Into<String>) -> ProducerBuilder {
        ProducerBuilder {
            name: name.into(),
            brokers: Vec::new(),
            config: Config::new(),
            error_handler: None,
            on_delivery: None,
            stack: Stack::new(),
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            transaction_timeout: transaction::DEFAULT_OPERATION_TIMEOUT,
            offline: false,
        }
    }

    /// Publishes `message` and waits until the broker acknowledged it (with
    /// the producer's `acks`), returning where it landed.
    ///
    /// Cancel it by dropping the future (e.g. with `tokio::time::timeout`):
    /// waiting stops at once, but a message librdkafka already queued may
    /// still be written. librdkafka gives up on its own after
    /// `message.timeout.ms`.
    pub async fn publish(&self, message: Message) -> Result<Delivery, Error> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::ProducerClosed);
        }
        if self.inner.direct {
            return publish::publish(&self.inner.client, Some(&self.inner.topics), message).await;
        }
        self.service()
            .oneshot(message)
            .await
            .map_err(Error::from_boxed_publish)
    }

    /// Publishes `message` without waiting for the broker: returns as soon as
    /// librdkafka has queued it (waiting only while its queue is full). The
    /// outcome goes to the producer's [`on_delivery`](ProducerBuilder::on_delivery)
    /// callback, exactly once — also for messages still in flight when the
    /// producer closes. Without middleware the callbacks run on librdkafka's
    /// delivery thread (keep them short); with middleware, on a tokio task
    /// that runs the middleware to the end.
    ///
    /// An `Err` means the message was not accepted (closed producer, invalid
    /// topic, message too large, middleware refusal); callbacks are then not
    /// called.
    // Not an `async fn`: its future would move `message` once more (from
    // the argument's slot to the body's local) on its first poll; an
    // `async move` block uses the captured message in place. It still does
    // nothing before it is polled.
    #[allow(clippy::manual_async_fn)]
    pub fn publish_async(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        async move {
            if self.inner.direct {
                // One synchronous attempt first; the waiting future is built
                // (boxed) only when librdkafka's queue is full. Nested futures
                // are copied whole each time one is moved into another, and
                // that showed as the largest share of our cost per publish.
                return match self.try_enqueue_direct(&message, None) {
                    Ok(()) => Ok(()),
                    Err(Refused::Full(opaque)) => {
                        Box::pin(self.enqueue_direct_when_room(&message, opaque)).await
                    }
                    Err(Refused::Failed(err)) => Err(err),
                };
            }
            Box::pin(self.enqueue(message, None)).await
        }
    }

    /// [`publish_async`](Self::publish_async), plus a callback for this one
    /// message, called exactly once after the producer-wide callback.
    pub async fn publish_async_with<F>(&self, message: Message, callback: F) -> Result<(), Error>
    where
        F: FnOnce(Result<Delivery, Error>) + Send + 'static,
    {
        self.enqueue(message, Some(Box::new(callback))).await
    }

    async fn enqueue(
        &self,
        mut message: Message,
        callback: Option<driver::MessageCallback>,
    ) -> Result<(), Error> {
        if self.inner.direct {
            return match self.try_enqueue_direct(&message, callback) {
                Ok(()) => Ok(()),
                Err(Refused::Full(opaque)) => self.enqueue_direct_when_room(&message, opaque).await,
                Err(Refused::Failed(err)) => Err(err),
            };
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::ProducerClosed);
        }
        let topic = message.topic_arc().clone();
        let signal = EnqueueSignal::default();
        message.extensions_mut().insert(signal.clone());
        let mut service = self.service();
        service.ready().await.map_err(Error::from_boxed_publish)?;
        let mut future = service.call(message);
        // Drive the middleware here, in the caller's task, until the message
        // is in librdkafka's queue: that keeps the caller's order and needs no
        // task switch. The rest (waiting for the report) moves to the driver.
        let finished = poll_fn(|cx| match future.as_mut().poll(cx) {
            Poll::Ready(result) => Poll::Ready(Some(result)),
            Poll::Pending if signal.is_set() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        if let Some(result) = finished {
            // Completed without ever waiting for a report: a refusal, or a
            // middleware answering by itself.
            return match result {
                Ok(delivery) => {
                    Completion::new(topic, self.inner.hooks.clone(), callback).finish(Ok(delivery));
                    Ok(())
                }
                Err(err) => Err(Error::from_boxed_publish(err)),
            };
        }
        let completion = Completion::new(topic, self.inner.hooks.clone(), callback);
        // If the driver is gone, the returned value drops here and the
        // completion reports `Undelivered`.
        let _ = self.inner.in_flight.send(InFlight { future, completion });
        Ok(())
    }

    /// Without middleware: straight into librdkafka, the callbacks run by
    /// its delivery thread. One attempt, without waiting.
    fn try_enqueue_direct(
        &self,
        message: &Message,
        callback: Option<driver::MessageCallback>,
    ) -> Result<(), Refused> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Refused::Failed(Error::ProducerClosed));
        }
        // Counted before librdkafka can report it, uncounted if refused
        // (while the queue is full it stays counted: it is still owed).
        self.inner.hooks.pending.add();
        let target = DeliveryTarget::Async {
            callback: callback.map(Mutex::new),
        };
        // A match rather than returning the result held in a local: the
        // common `Ok` then writes no copy of the (large) error variant.
        match publish::try_enqueue(
            &self.inner.client,
            Some(&self.inner.topics),
            message,
            target.into_opaque(),
        ) {
            Ok(()) => Ok(()),
            Err(Refused::Failed(err)) => {
                self.inner.hooks.pending.done();
                Err(Refused::Failed(err))
            }
            Err(full) => Err(full),
        }
    }

    /// The rest of [`try_enqueue_direct`](Self::try_enqueue_direct) when
    /// librdkafka's queue was full.
    async fn enqueue_direct_when_room(
        &self,
        message: &Message,
        opaque: usize,
    ) -> Result<(), Error> {
        // Owed until librdkafka takes the message; refused or cancelled
        // (the caller dropped this future), nothing will be called for it.
        let owed = Owed(&self.inner.hooks.pending);
        let result = publish::enqueue_when_room(
            &self.inner.client,
            Some(&self.inner.topics),
            message,
            opaque,
        )
        .await;
        if result.is_ok() {
            // Accepted: its delivery report settles the count.
            std::mem::forget(owed);
        }
        result
    }

    fn service(&self) -> BoxCloneService<Message, Delivery, BoxError> {
        self.inner
            .service
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Flushes and closes within the configured close timeout; see
    /// [`close_within`](Self::close_within).
    pub async fn close(&self) -> CloseReport {
        self.close_within(self.inner.close_timeout).await
    }

    /// Stops accepting messages, waits up to `timeout` for the queued ones to
    /// be acknowledged, then purges what is left: every pending `publish` and
    /// callback gets its outcome (an error for purged messages) before this
    /// returns. Closing again (from any clone) returns the first report.
    ///
    /// Bounded: returns at the latest `timeout` + [`Producer::CLOSE_GRACE`] after it
    /// was called, whatever the broker or the callbacks do (see
    /// [`CloseReport::callbacks_pending`]). When messages had to be purged,
    /// the error handler receives [`Error::Incomplete`] with
    /// [`Operation::Flush`] and their number.
    pub async fn close_within(&self, timeout: Duration) -> CloseReport {
        self.inner.closed.store(true, Ordering::Release);
        *self
            .inner
            .close_report
            .get_or_init(|| self.inner.shut_down(timeout))
            .await
    }

    /// The producer's status now, without a broker round trip.
    pub fn status(&self) -> ProducerStatus {
        use std::sync::atomic::Ordering::Acquire;
        let stats = &self.inner.hooks.stats;
        ProducerStatus {
            name: self.inner.name.to_string(),
            transactional: self.is_transactional(),
            in_flight: usize::try_from(self.inner.client.in_flight_count()).unwrap_or(0),
            callbacks_pending: self.inner.hooks.pending.count(),
            delivered: self.delivered(),
            failed: stats.failed.load(Acquire),
            last_error: stats
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            brokers_reachable: !stats.brokers_down.load(Acquire),
            closed: self.inner.closed.load(Acquire),
        }
    }

    /// Messages the broker acknowledged. The direct asynchronous
    /// publishes' are their reports less their failures, the failures read
    /// second: a report counted in between is missed for now, never a
    /// failure counted as a delivery.
    fn delivered(&self) -> u64 {
        use std::sync::atomic::Ordering::SeqCst;
        let stats = &self.inner.hooks.stats;
        let reports = self.inner.hooks.pending.reports() as u64;
        let failed = stats.failed_reports.load(SeqCst);
        stats.delivered.load(SeqCst) + reports.saturating_sub(failed)
    }

    /// The librdkafka properties the producer was built with (a
    /// transactional consumer checks its transaction bounds against them).
    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The producer's name (`client.id`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

/// A producer's status: see [`Producer::status`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ProducerStatus {
    /// The producer's name (`client.id`).
    pub name: String,
    /// Built with a `transactional.id`.
    pub transactional: bool,
    /// Messages librdkafka holds (queued or sent) that the broker has not
    /// acknowledged yet.
    pub in_flight: usize,
    /// Asynchronous publishes whose delivery callbacks have not run yet.
    pub callbacks_pending: usize,
    /// Messages the broker acknowledged.
    pub delivered: u64,
    /// Messages that could not be delivered.
    pub failed: u64,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// `false` after librdkafka reported every broker down, until a message
    /// is acknowledged again (an idle producer learns it at its next one).
    pub brokers_reachable: bool,
    /// `close` was called.
    pub closed: bool,
}

/// A publish counted in [`Pending`] that is given up unless forgotten.
struct Owed<'a>(&'a Pending);

impl Drop for Owed<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

impl Inner {
    async fn shut_down(&self, timeout: Duration) -> CloseReport {
        let deadline = Instant::now() + timeout;
        // Keep a slice of the budget to collect the reports of purged messages.
        let reserve = (timeout / 5).min(Duration::from_millis(500));
        let flush_for = timeout.saturating_sub(reserve);
        // Not `self.client.clone()`: that would clone the `ManuallyDrop`.
        let client = PolledProducer::clone(&self.client);
        let flush = tokio::task::spawn_blocking(move || client.flush(flush_for));
        // The flush ends by itself after `flush_for`; the deadline only
        // guards against a blocking pool too busy to start it.
        let flushed = tokio::time::timeout_at(deadline, flush).await;
        let left = usize::try_from(self.client.in_flight_count()).unwrap_or(0);
        let undelivered = match flushed {
            Ok(Ok(Ok(()))) => left,
            Ok(Ok(Err(source))) => {
                // A flush that timed out while the last reports were
                // arriving lost nothing: report only what is really left.
                if left > 0 {
                    self.report_unflushed(left, Some(source));
                }
                left
            }
            Ok(Err(_)) | Err(_) => {
                // The flush panicked (only librdkafka's bindings could) or
                // never started.
                if left > 0 {
                    self.report_unflushed(left, None);
                }
                left
            }
        };
        if undelivered > 0 {
            // Their reports (with a purge error) reach the callbacks from
            // the delivery thread.
            self.client
                .purge(PurgeConfig::default().queue().inflight().non_blocking());
        }
        let _ = tokio::time::timeout_at(deadline, self.hooks.pending.drained()).await;
        // Whatever is still waiting now gets `Undelivered` from the driver.
        let _ = self.stop_driver.send(true);
        let _ = tokio::time::timeout_at(
            deadline + Producer::CLOSE_GRACE,
            self.hooks.pending.drained(),
        )
        .await;
        let callbacks_pending = self.hooks.pending.count();
        if callbacks_pending > 0 {
            let error = Error::Incomplete {
                operation: Operation::Close,
                count: callbacks_pending,
                source: None,
            };
            tracing::warn!(producer = %self.name, %error, "close: giving up waiting for callbacks");
            self.hooks.report(&error);
        }
        CloseReport {
            undelivered,
            callbacks_pending,
        }
    }

    fn report_unflushed(&self, count: usize, source: Option<KafkaError>) {
        let error = Error::Incomplete {
            operation: Operation::Flush,
            count,
            source,
        };
        tracing::warn!(producer = %self.name, %error, "close timeout: purging undelivered messages");
        self.hooks.report(&error);
    }
}

impl Drop for Inner {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // librdkafka wants its topic handles back before its client goes.
        self.topics.release();
        // SAFETY: taken here once, and `self` is never used again. The
        // service holds a client too; the last one dropped stops the
        // delivery thread (without joining it when a callback running on
        // that thread drops the last `Producer`: see `poller`).
        unsafe {
            drop(ManuallyDrop::take(&mut self.service));
            drop(ManuallyDrop::take(&mut self.client));
        }
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .field("pending_callbacks", &self.inner.hooks.pending.count())
            .finish_non_exhaustive()
    }
}

type ProducerErrorHandler = Arc<dyn Fn(&Error) + Send + Sync>;

/// Builds a [`Producer`]; see [`Producer::builder`].
#[must_use = "call .build() to create the producer"]
pub struct ProducerBuilder {
    name: String,
    brokers: Vec<String>,
    config: Config,
    error_handler: Option<ProducerErrorHandler>,
    on_delivery: Option<OnDeliveryFn>,
    stack: Stack<Message, Delivery>,
    close_timeout: Duration,
    transaction_timeout: Duration,
    /// No broker at all (the test kit's recording producer): librdkafka
    /// gets no `bootstrap.servers` and never connects.
    offline: bool,
}

impl ProducerBuilder {
    pub(crate) fn offline(mut self) -> Self {
        self.offline = true;
        self
    }

    /// Makes the producer transactional (librdkafka's `transactional.id`):
    /// see [`Producer::begin_transaction`], or hand it to a consumer with
    /// [`ConsumerBuilder::transactional`](crate::ConsumerBuilder::transactional)
    /// for exactly-once consume-transform-produce.
    ///
    /// The id must be stable across restarts of the same instance and
    /// unique among the instances running at once: a new producer with the
    /// same id fences the old one (its open transaction is aborted and it
    /// can no longer commit), which is what makes a restarted instance safe
    /// from its zombie predecessor.
    pub fn transactional_id(mut self, id: impl Into<String>) -> Self {
        self.config.set("transactional.id", id);
        self
    }

    /// Bound on each transaction operation (initialising, committing,
    /// aborting; default 30 s). librdkafka's `transaction.timeout.ms`
    /// (default 60 s) is another bound: how long the broker lets a
    /// transaction stay open before aborting it. `build` refuses a
    /// `transaction_timeout` that is not shorter than
    /// `transaction.timeout.ms` (a commit within it could find its
    /// transaction aborted by the broker: fenced, fatal). A
    /// `transaction.timeout.ms` above the broker's
    /// `transaction.max.timeout.ms` (15 min by default) is refused by the
    /// broker at the first transaction, a fatal
    /// `InvalidTransactionTimeout` error that names that setting.
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
    }

    /// Bootstrap brokers, `host:port` each.
    pub fn brokers<I, S>(mut self, brokers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.brokers.extend(brokers.into_iter().map(Into::into));
        self
    }

    /// Sets a raw librdkafka property (passed through untouched).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.set(key, value);
        self
    }

    /// Sets many raw librdkafka properties.
    pub fn configs<I, K, V>(mut self, entries: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.config.extend(entries);
        self
    }

    /// The mandatory error handler: receives client-level errors that belong
    /// to no single message (all brokers down, fatal idempotence errors,
    /// authentication failures), what `close` had to give up
    /// ([`Error::Incomplete`]), and the panics of the other callbacks
    /// ([`Error::CallbackPanicked`]). Called from librdkafka's thread (and
    /// from `close`): keep it short. A panic in it is caught and logged with
    /// `tracing`; the producer goes on.
    pub fn error_handler<F>(mut self, handler: F) -> Self
    where
        F: Fn(&Error) + Send + Sync + 'static,
    {
        self.error_handler = Some(Arc::new(handler));
        self
    }

    /// A callback for the outcome of every [`Producer::publish_async`]
    /// message, called exactly once per accepted message. A panic in it is
    /// caught and reported to the error handler; the message's own callback
    /// (from [`Producer::publish_async_with`]) still runs.
    pub fn on_delivery<F>(mut self, callback: F) -> Self
    where
        F: Fn(&Result<Delivery, Error>) + Send + Sync + 'static,
    {
        self.on_delivery = Some(Arc::new(callback));
        self
    }

    /// Adds a middleware around publishing; the first added is outermost.
    ///
    /// A middleware that panics while it runs in the caller's task
    /// ([`Producer::publish`], or [`Producer::publish_async`] until the
    /// message is queued) unwinds there, as any future would. Once
    /// `publish_async` returned, the rest runs on the runtime, where a panic
    /// is caught: that publish fails with [`Error::CallbackPanicked`], which
    /// the error handler receives too, and the others go on.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxCloneService<Message, Delivery, BoxError>> + Send + Sync + 'static,
        L::Service: Service<Message, Response = Delivery> + Clone + Send + 'static,
        <L::Service as Service<Message>>::Error: Into<BoxError>,
        <L::Service as Service<Message>>::Future: Send + 'static,
    {
        self.stack.push(layer);
        self
    }

    /// How long [`Producer::close`] waits for acknowledgements (default 10 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Validates the configuration and starts the producer. Must be called
    /// inside a tokio runtime.
    pub fn build(self) -> Result<Producer, Error> {
        let error_handler = self.error_handler.ok_or(Error::MissingErrorHandler)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let mut config = self.config;
        if self.offline {
            // Only librdkafka's "no bootstrap.servers" warning would log.
            config.set("log_level", "3");
        } else {
            config.resolve_brokers(&self.brokers)?;
        }
        if config.get("client.id").is_none() {
            config.set("client.id", self.name.clone());
        }
        // Durable unless told otherwise: the Go original lowered this to acks=1.
        for (key, value) in [("acks", "all"), ("enable.idempotence", "true")] {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        let transactions = match config.get("transactional.id") {
            Some(id) if id.trim().is_empty() => {
                return Err(Error::Transactional(
                    "transactional.id is empty: give each instance a stable, unique id".into(),
                ))
            }
            Some(id) => {
                if self.transaction_timeout.is_zero() {
                    return Err(Error::Transactional(
                        "transaction_timeout must be more than zero".into(),
                    ));
                }
                config.check_transaction_timeout(self.transaction_timeout)?;
                Some(transaction::Transactions::new(
                    id.to_owned(),
                    self.transaction_timeout,
                ))
            }
            None => None,
        };
        let client_config = config.to_client_config()?;
        let name: Arc<str> = self.name.into();
        let hooks = Arc::new(Hooks {
            name: name.clone(),
            error_handler,
            on_delivery: self.on_delivery,
            pending: Pending::default(),
            stats: driver::Stats::default(),
        });
        let context = XProducerContext {
            hooks: hooks.clone(),
            topics: Default::default(),
            fence: transactions.as_ref().map(|t| t.fence.clone()),
        };
        let client = PolledProducer::new(&client_config, context)
            .map_err(|e| Error::kafka(Operation::Create, e))?;
        let direct = self.stack.is_empty();
        let service = self.stack.apply(RawPublish {
            client: client.clone(),
        });
        let (in_flight, incoming) = mpsc::unbounded_channel();
        let (stop_driver, stop) = watch::channel(false);
        runtime.spawn(driver::drive(incoming, stop));
        Ok(Producer {
            inner: Arc::new(Inner {
                name,
                client: ManuallyDrop::new(client),
                service: ManuallyDrop::new(Mutex::new(service)),
                in_flight,
                stop_driver,
                hooks,
                closed: AtomicBool::new(false),
                close_report: OnceCell::new(),
                close_timeout: self.close_timeout,
                config,
                direct,
                transactions,
                topics: TopicHandles::default(),
            }),
        })
    }
}

impl fmt::Debug for ProducerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProducerBuilder")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("config", &self.config)
            .field("layers", &self.stack.len())
            .field("close_timeout", &self.close_timeout)
            .field("transaction_timeout", &self.transaction_timeout)
            .finish_non_exhaustive()
    }
}
