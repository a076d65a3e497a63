//! [`ConsumerBuilder`]: the settings, their defaults, and the validation
//! `build` does before anything connects.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::BaseConsumer;
use tower::util::BoxCloneService;
use tower::{Layer, Service};

use crate::config::{validate_topic, Config};
use crate::error::{Decision, Error, ErrorHandlerFn, Operation};
use crate::middleware::Stack;
use crate::shutdown::ShutdownHandle;
use crate::{Ack, Batch, BatchHandler, BoxError, Handler, Message};

use super::commit_mode::CommitMode;
use super::context::XConsumerContext;
use super::dispatch::Order;
use super::kind::{Batching, Kind, Streaming};
use super::pipeline::Limits;
use super::rebalance::{Listener, Rebalance};
use super::run::{BatchConsumer, Consumer};
use super::shared::Shared;
use super::{pipeline, rebalance, start_offsets, status, transaction};

pub(super) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_REVOKE_GRACE: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_MAX_IN_FLIGHT_PER_PARTITION: usize = 5_000;
pub(super) const DEFAULT_MAX_IN_FLIGHT: usize = 50_000;
pub(super) const DEFAULT_BATCH_SIZE: usize = 1_000;
pub(super) const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// xkafka's `fetch.queue.backoff.ms` unless one is given (librdkafka: 1000).
pub(super) const DEFAULT_FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// xkafka's `check.crcs` unless one is given (librdkafka: false): a
/// record corrupted on disk or on the wire becomes [`Error::Consume`]
/// instead of reaching a handler.
pub(super) const DEFAULT_CHECK_CRCS: &str = "true";

/// Builds a [`Consumer`] (see [`Consumer::builder`]) or a [`BatchConsumer`]
/// (see [`BatchConsumer::builder`]); the settings they share are on every
/// kind.
#[must_use = "call .build() to create the consumer"]
pub struct ConsumerBuilder<K: Kind = Streaming> {
    group: String,
    brokers: Vec<String>,
    topics: Vec<String>,
    config: Config,
    error_handler: Option<ErrorHandlerFn>,
    stack: Stack<K::Request, Ack>,
    service: Option<BoxCloneService<K::Request, Ack, BoxError>>,
    commit_mode: CommitMode,
    shutdown_timeout: Duration,
    concurrency: usize,
    order: Order,
    limits: Limits,
    revoke_grace: Duration,
    batch_size: usize,
    batch_timeout: Duration,
    transactional: Option<crate::Producer>,
    boundary: transaction::Boundary,
    /// The transaction settings given (`transaction_interval`, ...): a
    /// consumer that is not transactional refuses them.
    transaction_settings: Vec<&'static str>,
    not_before: Option<pipeline::NotBeforeFn>,
    listeners: rebalance::Listeners,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
}

impl<K: Kind> ConsumerBuilder<K> {
    fn new(group: String) -> Self {
        ConsumerBuilder {
            group,
            brokers: Vec::new(),
            topics: Vec::new(),
            config: Config::new(),
            error_handler: None,
            stack: Stack::new(),
            service: None,
            commit_mode: CommitMode::default(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            concurrency: 1,
            order: Order::default(),
            limits: Limits {
                per_partition: DEFAULT_MAX_IN_FLIGHT_PER_PARTITION,
                total: DEFAULT_MAX_IN_FLIGHT,
                stall_after: pipeline::DEFAULT_STALL_AFTER,
            },
            revoke_grace: DEFAULT_REVOKE_GRACE,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_timeout: DEFAULT_BATCH_TIMEOUT,
            transactional: None,
            transaction_settings: Vec::new(),
            not_before: None,
            listeners: Vec::new(),
            boundary: transaction::Boundary {
                max_messages: transaction::DEFAULT_MAX_MESSAGES,
                interval: transaction::DEFAULT_INTERVAL,
            },
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// **Exactly-once**: handlers publish through `producer` (built with
    /// [`transactional_id`](crate::ProducerBuilder::transactional_id)), and
    /// what they publish commits in one Kafka transaction with the offsets
    /// of the messages they handled ([`CommitMode::Transactional`]). Give
    /// the same producer (a clone) to the handler and to a
    /// [`DeadLetterLayer`](crate::dlq::DeadLetterLayer): its dead letters
    /// join the transaction too. The consumer begins and commits the
    /// producer's transactions; the producer serves this consumer only.
    ///
    /// How a transaction ends: after
    /// [`transaction_max_messages`](Self::transaction_max_messages) messages
    /// or [`transaction_interval`](Self::transaction_interval) after its
    /// first one, the consumer stops handing out messages until every
    /// message dispatched in the transaction has finished — with
    /// [`concurrency`](Self::concurrency) and any [`Order`], queued ones
    /// included — then sends their offsets and commits. So the offsets in
    /// a transaction cover exactly the messages whose output is in it.
    ///
    /// What aborts a transaction (its output never becomes visible to
    /// `read_committed` readers, and every partition it read is read again
    /// from its first message in it): a failure the error handler stops on
    /// (the consumer stops); handlers still running when the transaction
    /// timeout or, on a revoke, the revoke grace runs out; a commit that
    /// fails with an abortable error (the error goes to the error handler,
    /// whose decision stands); partitions lost in a rebalance. Fenced by a
    /// newer instance (same `transactional.id`, or a newer group
    /// generation), the consumer reports it and stops. Shutdown commits
    /// what finished within the shutdown timeout.
    ///
    /// An input whose output the broker refuses every time (too large for
    /// the output topic, say) would abort every transaction holding it.
    /// After two abortable commit failures in a row, transactions hold one
    /// message each until it is found; read again, it fails without its
    /// handler being called, as a [permanent](crate::middleware::retry::permanent)
    /// failure of that message: a
    /// [`DeadLetterLayer`](crate::dlq::DeadLetterLayer) dead-letters it (in
    /// the transaction that commits past it, when it publishes through this
    /// producer), and without one the error handler decides. A batch
    /// consumer's error handler is told.
    ///
    /// ```no_run
    /// use xkafka::{Ack, BoxError, Consumer, Decision, Message, Producer};
    ///
    /// # async fn run() -> Result<(), xkafka::Error> {
    /// let producer = Producer::builder("enricher")
    ///     .brokers(["127.0.0.1:9092"])
    ///     .transactional_id("enricher-0")
    ///     .error_handler(|err| eprintln!("{err}"))
    ///     .build()?;
    /// let output = producer.clone();
    /// let consumer = Consumer::builder("enricher")
    ///     .brokers(["127.0.0.1:9092"])
    ///     .topics(["orders"])
    ///     .transactional(producer)
    ///     .error_handler(|_| Decision::Stop)
    ///     .handler(move |msg: Message| {
    ///         let output = output.clone();
    ///         async move {
    ///             let enriched = Message::builder("orders.enriched")
    ///                 .key(msg.key().cloned().unwrap_or_default())
    ///                 .value(msg.value_str().unwrap_or_default().to_uppercase())
    ///                 .build();
    ///             output.publish(enriched).await?;
    ///             Ok::<_, BoxError>(Ack::Success)
    ///         }
    ///     })
    ///     .build()?;
    /// consumer.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
    /// # Ok(()) }
    /// ```
    pub fn transactional(mut self, producer: crate::Producer) -> Self {
        self.transactional = Some(producer);
        self.commit_mode = CommitMode::Transactional;
        self
    }

    /// Handles each message no earlier than `due` says (`None`: at once):
    /// a partition whose next message is not due is paused until it is,
    /// and its fetch position set back to that message — nothing waits in
    /// a handler, the poll loop never sleeps, other partitions flow. A
    /// message is never handled before its due time; how late depends on
    /// the fetch after the resume (lower `fetch.wait.max.ms` for less).
    /// For retry tiers: [`retry_topics::due`](crate::retry_topics::due).
    pub fn not_before<F>(mut self, due: F) -> Self
    where
        F: Fn(&Message) -> Option<std::time::SystemTime> + Send + Sync + 'static,
    {
        self.not_before = Some(Arc::new(due));
        self
    }

    /// Calls `listener` on every change of the assignment, on the poll
    /// thread inside the rebalance: [`Rebalance::Assigned`] before any
    /// message of those partitions reaches a handler,
    /// [`Rebalance::Revoked`] once their handlers finished and what they
    /// processed was committed. Keep it short (the group waits for it). A
    /// panic in it is caught and goes to the error handler as
    /// [`Error::CallbackPanicked`]. Listeners add up: each one given is
    /// called, in order.
    ///
    /// ```
    /// use xkafka::{Consumer, Decision, Message, Rebalance};
    ///
    /// let consumer = Consumer::builder("billing")
    ///     .brokers(["127.0.0.1:9092"])
    ///     .topics(["orders"])
    ///     .on_rebalance(|event: &Rebalance| match event {
    ///         Rebalance::Assigned(partitions) => println!("got {partitions:?}"),
    ///         Rebalance::Revoked { partitions, .. } => println!("lost {partitions:?}"),
    ///         _ => {}
    ///     })
    ///     .error_handler(|_| Decision::Stop)
    ///     .handler(|_m: Message| async {})
    ///     .build()?;
    /// # Ok::<(), xkafka::Error>(())
    /// ```
    pub fn on_rebalance<F>(mut self, listener: F) -> Self
    where
        F: Fn(&Rebalance) + Send + Sync + 'static,
    {
        self.listeners
            .push(Arc::new(rebalance::FnListener(listener)));
        self
    }

    /// A crate-internal listener (retry topics' key order).
    pub(crate) fn listener(mut self, listener: Arc<dyn Listener>) -> Self {
        if !self.listeners.iter().any(|l| Arc::ptr_eq(l, &listener)) {
            self.listeners.push(listener);
        }
        self
    }

    /// Transactional mode: a transaction ends once this many messages were
    /// dispatched in it (default 10,000).
    ///
    /// Only for a transactional consumer: set on any other, `build` refuses
    /// it rather than ignore it.
    pub fn transaction_max_messages(mut self, n: usize) -> Self {
        self.boundary.max_messages = n;
        self.transaction_settings.push("transaction_max_messages");
        self
    }

    /// Transactional mode: a transaction ends this long after its first
    /// message (default 100 ms, as Kafka Streams' exactly-once commit
    /// interval). Longer means fewer commits (more throughput) and more
    /// latency for `read_committed` readers of the output, and more to
    /// handle again after an abort.
    ///
    /// The interval plus the producer's
    /// [`transaction_timeout`](crate::ProducerBuilder::transaction_timeout)
    /// (the wait for the handlers and the commit) must be shorter than the
    /// producer's `transaction.timeout.ms` (librdkafka's default 60 s),
    /// past which the broker aborts the transaction: `build` refuses it
    /// otherwise. Only for a transactional consumer: set on any other,
    /// `build` refuses it rather than ignore it.
    pub fn transaction_interval(mut self, interval: Duration) -> Self {
        self.boundary.interval = interval;
        self.transaction_settings.push("transaction_interval");
        self
    }

    /// Publishes committed offsets and consumer lag (librdkafka's cached
    /// high watermark − committed offset) per assigned partition to
    /// `metrics`, every second. Message counts come from
    /// [`Metrics::layer`](crate::metrics::Metrics::layer).
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics.clone());
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

    /// Topics to subscribe to (a name starting with `^` is a regex, as in
    /// librdkafka).
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics.extend(topics.into_iter().map(Into::into));
        self
    }

    /// Sets a raw librdkafka property (passed through untouched, except the
    /// few xkafka's guarantees depend on: see [`build`](Self::build)).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.set(key, value);
        self
    }

    /// Sets many raw librdkafka properties.
    pub fn configs<I, N, V>(mut self, entries: I) -> Self
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        self.config.extend(entries);
        self
    }

    /// When offsets are committed (default [`CommitMode::Auto`]).
    pub fn commit_mode(mut self, mode: CommitMode) -> Self {
        self.commit_mode = mode;
        self
    }

    /// How many handlers may run at once (default 1: one message at a time,
    /// as Go xkafka's default). A handler that awaits never stops polling:
    /// a call may start on the poll thread (when its lane is idle) but
    /// continues on a tokio task at its first wait. Blocking calls belong in
    /// `tokio::task::spawn_blocking`.
    ///
    /// When more lanes (partitions, or key slots with [`Order::PerKey`])
    /// have work than `n` handlers may run, the next free slot goes to the
    /// lane with the most queued messages, so a backlog drains with `n`
    /// handlers busy to its end; a lane passed over 4 × `n` times is served
    /// next whatever its backlog.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Which messages may run in parallel (default [`Order::PerPartition`]).
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// How many messages of one partition may be fetched and not yet
    /// finished before that partition is paused (default 5,000; for a batch
    /// consumer at least twice the batch size). Other
    /// partitions keep flowing; it resumes when half drained.
    ///
    /// The count runs from the oldest unfinished message on, finished or
    /// not: with [`Order::PerKey`] or [`Order::Unordered`], one message that
    /// never finishes holds every later one (its offset cannot be committed
    /// past it), so the partition pauses at this bound — plus at most one
    /// poll round (512 messages) already fetched — and the error handler
    /// receives [`Error::Stalled`] naming that message.
    ///
    /// Pausing is not free: librdkafka drops what it prefetched for the
    /// partition and fetches it again on resume. Keep the bounds well above
    /// one poll round (512 messages): a sequential consumer bounded at 500
    /// handled 256 msg/s on Tansu, against over 7,000 msg/s at 1,000.
    pub fn max_in_flight_per_partition(mut self, n: usize) -> Self {
        self.limits.per_partition = n.max(1);
        self
    }

    /// How long a partition paused at its
    /// [bound](Self::max_in_flight_per_partition) may wait behind the same
    /// unfinished message before the error handler receives
    /// [`Error::Stalled`] (default 30 s). A message waiting its turn behind
    /// its key or for a permit is ordinary backpressure and is over within
    /// a few handler calls; one unfinished this long is running too long
    /// (or waits behind one that is).
    pub fn stall_after(mut self, threshold: Duration) -> Self {
        self.limits.stall_after = threshold;
        self
    }

    /// How many messages may be fetched and not yet finished over all
    /// partitions before every partition is paused (default 50,000). Keep it
    /// above the per-partition bound times the partitions you expect to be
    /// backlogged: a partition that fills it pauses all the others until the
    /// total has drained by half.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.limits.total = n.max(1);
        self
    }

    /// How long a revocation waits for the running handlers of the revoked
    /// partitions before committing and releasing them (default 5 s).
    pub fn revoke_grace(mut self, grace: Duration) -> Self {
        self.revoke_grace = grace;
        self
    }

    /// Bound on the whole shutdown: in-flight message, final commit, leaving
    /// the group (default 10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The mandatory error handler. It receives every failed message no
    /// middleware handled ([`Error::Handler`]), every client error (poll,
    /// offset store, commit, rebalance) and every partition stalled behind
    /// an unfinished message ([`Error::Stalled`]: `Continue` waits for it,
    /// `Stop` stops) — never anything else — and returns a [`Decision`]. It runs on the poll thread or a handler's
    /// task: keep it short.
    pub fn error_handler<F>(mut self, handler: F) -> Self
    where
        F: Fn(&Error) -> Decision + Send + Sync + 'static,
    {
        self.error_handler = Some(Arc::new(handler));
        self
    }

    /// Validates everything and creates the client.
    ///
    /// xkafka sets `enable.auto.offset.store=false` (offsets are stored only
    /// after processing) and `enable.auto.commit` according to the
    /// [`CommitMode`]; setting either to something else is an error rather
    /// than being silently overridden.
    ///
    /// Unless given, `fetch.queue.backoff.ms` is 10 (librdkafka's default
    /// is 1000): with 1 s, a consumer faster than 100,000 messages a second
    /// but slower than its fetcher stopped for most of a second each time
    /// its local queue passed `queued.min.messages` (measured on Apache
    /// Kafka: 2 of 3 runs stalled 0.9 s, at a quarter of the rate). The
    /// queue stays bounded by `queued.min.messages` and
    /// `queued.max.messages.kbytes` either way.
    ///
    /// Unless given, `check.crcs` is true (librdkafka's default is false):
    /// a record whose CRC does not match, corrupted on disk or on the wire,
    /// becomes [`Error::Consume`] naming its partition and offset instead
    /// of reaching the handler. librdkafka checks a whole record batch and
    /// skips a batch that fails, going on with the next one. Cost: see
    /// BENCHMARKS.md. `isolation.level` is `read_committed` unless given
    /// (librdkafka's default too).
    ///
    /// Refused, each with an error that says why: a `heartbeat.interval.ms`
    /// above a third of `session.timeout.ms` (librdkafka's defaults, 3 s
    /// and 45 s, stand in for one not given; not checked under KIP-848,
    /// where the broker owns both); on a transactional consumer,
    /// `isolation.level=read_uncommitted`, and a
    /// [`transaction_interval`](Self::transaction_interval) that with the
    /// producer's transaction timeout reaches its `transaction.timeout.ms`;
    /// [`transaction_interval`](Self::transaction_interval) or
    /// [`transaction_max_messages`](Self::transaction_max_messages) on a
    /// consumer that is not transactional.
    pub fn build(self) -> Result<K::Consumer, Error> {
        if self.group.trim().is_empty() {
            return Err(Error::MissingGroupId);
        }
        let error_handler = self.error_handler.ok_or(Error::MissingErrorHandler)?;
        let handler = self.service.ok_or(Error::MissingHandler)?;
        if self.topics.is_empty() {
            return Err(Error::MissingTopics);
        }
        for topic in &self.topics {
            if !topic.starts_with('^') {
                validate_topic(topic)?;
            }
        }
        let mut config = self.config;
        config.resolve_brokers(&self.brokers)?;
        config.check_heartbeat()?;
        if config.is_true("enable.auto.offset.store") == Some(true) {
            return Err(Error::ReservedConfig {
                key: "enable.auto.offset.store".into(),
                value: config
                    .get("enable.auto.offset.store")
                    .unwrap_or_default()
                    .into(),
                reason: "xkafka stores offsets itself, only after a message is processed",
            });
        }
        let transaction = match (self.commit_mode, self.transactional) {
            (CommitMode::Transactional, Some(producer)) => {
                if self.boundary.max_messages == 0 {
                    return Err(Error::Transactional(
                        "transaction_max_messages must be at least 1".into(),
                    ));
                }
                if self.boundary.interval.is_zero() {
                    return Err(Error::Transactional(
                        "transaction_interval must be more than zero".into(),
                    ));
                }
                transaction::check_bounds(&producer, self.boundary.interval)?;
                if let Some(level) = config.get("isolation.level") {
                    if !level.trim().eq_ignore_ascii_case("read_committed") {
                        return Err(Error::ReservedConfig {
                            key: "isolation.level".into(),
                            value: level.into(),
                            reason: "a transactional consumer reads read_committed: with \
                                     read_uncommitted it would handle records of transactions \
                                     that later abort, and commit output for input that never \
                                     happened, which breaks exactly-once",
                        });
                    }
                }
                Some((producer, self.boundary))
            }
            (CommitMode::Transactional, None) => {
                return Err(Error::Transactional(
                    "CommitMode::Transactional needs the producer the handlers publish with: \
                     use .transactional(producer)"
                        .into(),
                ))
            }
            (mode, Some(_)) => {
                return Err(Error::Transactional(format!(
                    "a transactional producer was given, then .commit_mode({mode:?}): \
                     choose one"
                )))
            }
            (mode, None) => {
                if let Some(setting) = self.transaction_settings.first() {
                    return Err(Error::Transactional(format!(
                        "{setting} was set on a consumer that is not transactional \
                         (CommitMode::{mode:?}): it bounds the transactions of \
                         .transactional(producer) only, and would be silently ignored; remove \
                         it, or make the consumer transactional"
                    )));
                }
                None
            }
        };
        let auto_commit = self.commit_mode == CommitMode::Auto;
        if let Some(given) = config.is_true("enable.auto.commit") {
            if given != auto_commit {
                return Err(Error::ReservedConfig {
                    key: "enable.auto.commit".into(),
                    value: config.get("enable.auto.commit").unwrap_or_default().into(),
                    reason: "choose when offsets are committed with `.commit_mode(...)`",
                });
            }
        }
        if let Some(group) = config.get("group.id") {
            if group != self.group {
                return Err(Error::ReservedConfig {
                    key: "group.id".into(),
                    value: group.into(),
                    reason: "the group id is the one given to `Consumer::builder`",
                });
            }
        }
        if config.get("fetch.queue.backoff.ms").is_none() {
            // librdkafka's 1 s default stalls a consumer that is fast but
            // slower than its fetcher: past `queued.min.messages` fetching
            // stops for the whole second even though the queue drains in a
            // fraction of it (BENCHMARKS.md, "The fetch queue backoff").
            // The queue's bounds, hence memory, do not depend on it.
            config.set("fetch.queue.backoff.ms", DEFAULT_FETCH_QUEUE_BACKOFF_MS);
        }
        if config.get("check.crcs").is_none() {
            // librdkafka's default (false) hands a record corrupted on disk
            // or on the wire to the handler as if it were sound.
            config.set("check.crcs", DEFAULT_CHECK_CRCS);
        }
        if config.get("isolation.level").is_none() {
            // librdkafka's default too; set so that it shows, and so that
            // a transactional consumer never depends on a default.
            config.set("isolation.level", "read_committed");
        }
        config
            .set("group.id", self.group.clone())
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", auto_commit.to_string());
        let client_config = config.to_client_config()?;
        #[allow(unused_mut)]
        let mut shared = Shared::new(
            self.group.into(),
            error_handler,
            ShutdownHandle::new(),
            self.revoke_grace,
        );
        #[cfg(feature = "metrics")]
        {
            shared.metrics = self.metrics;
        }
        let binding = rebalance::Binding {
            config: &config,
            topics: &self.topics,
            not_before: self.not_before.is_some(),
            batches: K::BATCHES,
            transactional: transaction.as_ref().map(|(p, _)| p),
        };
        for listener in &self.listeners {
            listener.bind(&binding)?;
        }
        shared.listeners = self.listeners;
        if transaction.is_some() {
            shared.start_offsets = Some(start_offsets::StartOffsets::from_config(&config));
        }
        let protocol = match config.get("group.protocol") {
            Some(p) if p.eq_ignore_ascii_case("consumer") => "consumer",
            _ => "classic",
        };
        shared.board = Arc::new(status::Board::new(
            shared.group.to_string(),
            protocol.into(),
        ));
        let shared = Arc::new(shared);
        let context = XConsumerContext::new(shared.clone());
        let client = BaseConsumer::from_config_and_context(&client_config, context)
            .map_err(|e| Error::kafka(Operation::Create, e))?;
        if let Some((producer, _)) = &transaction {
            // Last, once nothing else can refuse the build: refuses a
            // producer another consumer (or the application) already
            // drives, and otherwise binds the producer to this consumer
            // for good.
            producer.transactions()?.take_control(&shared.group)?;
        }
        let handler = if transaction.is_some() {
            K::skip_refused(handler)
        } else {
            handler
        };
        let service = self.stack.apply_boxed(handler);
        let mut limits = self.limits;
        if K::BATCHES {
            // Pausing drops librdkafka's prefetched messages of the partition;
            // a limit below two batches would pause and refetch every batch.
            limits.per_partition = limits.per_partition.max(2 * self.batch_size);
            limits.total = limits.total.max(limits.per_partition);
        }
        Ok(K::wrap(Consumer {
            shared,
            client,
            runner: K::runner(service, self.batch_size, self.batch_timeout),
            commit_mode: self.commit_mode,
            concurrency: self.concurrency,
            order: self.order,
            limits,
            shutdown_timeout: self.shutdown_timeout,
            topics: self.topics,
            config,
            transaction,
            not_before: self.not_before,
        }))
    }
}

impl<K: Kind> fmt::Debug for ConsumerBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("group", &self.group)
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("config", &self.config)
            .field("commit_mode", &self.commit_mode)
            .field("concurrency", &self.concurrency)
            .field("order", &self.order)
            .field("limits", &self.limits)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("layers", &self.stack.len())
            .field("kind", &std::any::type_name::<K>())
            .field("has_handler", &self.service.is_some())
            .field("has_error_handler", &self.error_handler.is_some())
            .finish()
    }
}

/// What [`ConsumerBuilder::into_test_parts`] hands the test kit.
pub(crate) type TestParts = (
    Arc<str>,
    BoxCloneService<Message, Ack, BoxError>,
    ErrorHandlerFn,
);

impl ConsumerBuilder<Streaming> {
    /// The group, the handler with its middleware, and the error handler:
    /// what [`testing::HandlerTest`](crate::testing::HandlerTest) runs
    /// messages through, without a client.
    pub(crate) fn into_test_parts(self) -> Result<TestParts, Error> {
        let error_handler = self.error_handler.ok_or(Error::MissingErrorHandler)?;
        let handler = self.service.ok_or(Error::MissingHandler)?;
        Ok((
            self.group.into(),
            self.stack.apply_boxed(handler),
            error_handler,
        ))
    }

    /// Adds a middleware; the first added is the outermost.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxCloneService<Message, Ack, BoxError>> + Send + Sync + 'static,
        L::Service: Service<Message, Response = Ack> + Clone + Send + 'static,
        <L::Service as Service<Message>>::Error: Into<BoxError>,
        <L::Service as Service<Message>>::Future: Send + 'static,
    {
        // Retry topics keeping key order check the consumer at build.
        if let Some(l) = crate::retry_topics::RetryTopicsLayer::downcast(&layer) {
            self = self.listener(l);
        }
        self.stack.push(layer);
        self
    }

    /// The handler: an `async fn(Message)` returning `()`, [`Ack`] or a
    /// `Result` of either.
    pub fn handler<H, T>(self, handler: H) -> Self
    where
        H: Handler<T>,
        T: 'static,
    {
        self.service(handler.into_service())
    }

    /// The handler as any tower service.
    pub fn service<S>(mut self, service: S) -> Self
    where
        S: Service<Message, Response = Ack> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        use tower::ServiceExt;
        self.service = Some(BoxCloneService::new(service.map_err(Into::into)));
        self
    }
}

impl ConsumerBuilder<Batching> {
    /// Adds a batch middleware; the first added is the outermost.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxCloneService<Batch, Ack, BoxError>> + Send + Sync + 'static,
        L::Service: Service<Batch, Response = Ack> + Clone + Send + 'static,
        <L::Service as Service<Batch>>::Error: Into<BoxError>,
        <L::Service as Service<Batch>>::Future: Send + 'static,
    {
        // Retry topics keeping key order refuse a batch consumer at build.
        if let Some(l) = crate::retry_topics::RetryTopicsLayer::downcast(&layer) {
            self = self.listener(l);
        }
        self.stack.push(layer);
        self
    }

    /// The batch handler: an `async fn(Batch)` returning `()`, [`Ack`] or a
    /// `Result` of either; it may record per-message outcomes on the batch.
    pub fn handler<H, T>(self, handler: H) -> Self
    where
        H: BatchHandler<T>,
        T: 'static,
    {
        self.service(handler.into_service())
    }

    /// The batch handler as any tower service.
    pub fn service<S>(mut self, service: S) -> Self
    where
        S: Service<Batch, Response = Ack> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        use tower::ServiceExt;
        self.service = Some(BoxCloneService::new(service.map_err(Into::into)));
        self
    }

    /// The most messages in one batch (default 1,000).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// The longest a batch waits for more messages, from its first message
    /// (default 5 s); a partial batch is handled when it expires even if no
    /// further message arrives.
    pub fn batch_timeout(mut self, timeout: Duration) -> Self {
        self.batch_timeout = timeout;
        self
    }
}

impl Consumer {
    /// Starts a consumer of consumer group `group` (librdkafka's `group.id`).
    pub fn builder(group: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(group.into())
    }
}

impl BatchConsumer {
    /// Starts a batch consumer of consumer group `group`.
    pub fn builder(group: impl Into<String>) -> ConsumerBuilder<Batching> {
        ConsumerBuilder::new(group.into())
    }
}
