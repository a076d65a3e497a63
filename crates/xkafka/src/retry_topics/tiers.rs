//! The retry tiers: [`RetryTopics`] (where a failed message goes next,
//! the copy it gets there) and the middleware that sends it
//! ([`RetryTopicsLayer`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tower::{Layer, Service};
use xkafka_core::middleware::retry::{is_permanent, AttemptLog, AttemptRecord};

use crate::consumer::Listener;
use crate::dlq::DeadLetterFailed;
use crate::{Ack, Batch, BoxError, Error, Message, Producer};

use super::headers::{self, carry};
use super::key_order::{KeyOrder, KeyOrderError, Place, Step};

const MAX_ERROR_LEN: usize = 4096;
const DEFAULT_REBUILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Retry tiers for one source topic: their delays, topics and the
/// dead-letter topic after the last. Cheap to clone.
#[derive(Clone)]
pub struct RetryTopics {
    inner: Arc<Tiers>,
}

#[derive(Clone)]
struct Tiers {
    producer: Producer,
    source: String,
    delays: Vec<Duration>,
    topics: Vec<Arc<str>>,
    dead_letter_topic: Arc<str>,
    rebuild_timeout: Duration,
    key_order: Option<Arc<KeyOrder>>,
}

/// Why a message moves to a tier.
#[derive(Clone, Copy, Debug)]
enum Cause<'a> {
    /// Its handler failed with this error.
    Failed(&'a str),
    /// An earlier message of its key (this original offset) is in the tiers.
    Follows(i64),
}

impl RetryTopics {
    /// Tiers for `source` (default: one tier of 1 s), published with
    /// `producer` (keep it durable: `acks=all`, the default); dead letters
    /// go to `<source>.dlq`.
    pub fn new(producer: Producer, source: impl Into<String>) -> Self {
        let source = source.into();
        let dlq: Arc<str> = format!("{source}.dlq").into();
        RetryTopics {
            inner: Arc::new(Tiers {
                producer,
                topics: vec![format!("{source}.retry.1").into()],
                delays: vec![Duration::from_secs(1)],
                source,
                dead_letter_topic: dlq,
                rebuild_timeout: DEFAULT_REBUILD_TIMEOUT,
                key_order: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Tiers)) -> Self {
        let t = Arc::make_mut(&mut self.inner);
        f(t);
        if t.key_order.is_some() {
            // Made anew: its topics may have changed.
            t.key_order = Some(t.new_key_order());
        }
        self
    }

    /// **Keeps per-key order** (off by default): while a key has a message
    /// in the tiers, later messages of that key follow it there (moved
    /// without being handled, header [`headers::FOLLOWS`]) instead of
    /// overtaking it; each is handled once every earlier message of its key
    /// succeeded or was dead-lettered. Messages without key are not ordered.
    ///
    /// What it takes:
    /// - **One consumer for the main topic and the tiers**, set up by
    ///   [`subscribe`](Self::subscribe), with a co-partitioning assignor
    ///   (`range`: librdkafka's default for the classic protocol; with
    ///   `group.protocol=consumer` set `group.remote.assignor=range`) —
    ///   the build fails otherwise, as it does for a consumer without the
    ///   tiers' topics or `not_before`, or a batch consumer. So a backlog in
    ///   the tiers shares that consumer's members with the main topic.
    /// - **An ordered consumer**: `Order::Partition` (the default, with any
    ///   concurrency) or `Order::PerKey`, not `Order::Unordered`.
    /// - **With exactly-once** ([`ConsumerBuilder::transactional`](crate::ConsumerBuilder::transactional)): the
    ///   copies are published with the consumer's producer (or one without
    ///   transactions). A copy published, or a copy settled, in a
    ///   transaction that aborts counts as never done: the input read again
    ///   is handled (or follows) again, nothing is lost.
    ///
    /// What it costs:
    /// - **After each assignment**, before the first message of a partition
    ///   is handled, that partition of every tier is read from the group's
    ///   committed offset to its end (what is waiting there, by key):
    ///   the partition's start is delayed by that read. An attempt that
    ///   takes longer than [`rebuild_timeout`](Self::rebuild_timeout) (or
    ///   fails) is retried, going on from where it stopped: the partition
    ///   waits, no message fails for it.
    /// - **A failing key holds its later messages back** for the tiers'
    ///   delays (and sends them through the tiers: more publishes), and a
    ///   message dead-lettered lets the next of its key go — that is the
    ///   order kept, not a cost one can tune.
    /// - Memory: one entry per key and message in the tiers.
    /// - Each message takes a lock of its partition (uncontended unless
    ///   concurrency is high).
    pub fn keep_key_order(self) -> Self {
        let mut me = self;
        let t = Arc::make_mut(&mut me.inner);
        t.key_order = Some(t.new_key_order());
        me
    }

    /// What [`subscribe`](Self::subscribe) adds to a consumer: the source
    /// and tier topics, and (keeping key order) the rebalance listener.
    pub(super) fn subscription(&self) -> (Vec<String>, Option<Arc<dyn Listener>>) {
        let topics = std::iter::once(self.inner.source.clone())
            .chain(self.tier_topics())
            .collect();
        let listener = self
            .inner
            .key_order
            .clone()
            .map(|order| order as Arc<dyn Listener>);
        (topics, listener)
    }

    /// The tiers' delays, in order: tier `n` is `<source>.retry.<n>`
    /// (1-based). An empty list sends failures straight to the dead-letter
    /// topic.
    pub fn tiers(self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.edit(|t| {
            t.delays = delays.into_iter().collect();
            t.topics = (1..=t.delays.len())
                .map(|n| format!("{}.retry.{n}", t.source).into())
                .collect();
        })
    }

    /// The dead-letter topic after the last tier (default `<source>.dlq`).
    pub fn dead_letter_topic(self, topic: impl Into<Arc<str>>) -> Self {
        self.edit(|t| {
            t.dead_letter_topic = topic.into();
        })
    }

    /// Ignored. A retry or dead-letter publish is not timed out here: a
    /// publish abandoned while librdkafka still owns the message may be
    /// delivered after all (a copy in the tiers reported as failed). Its
    /// bound is the producer's `message.timeout.ms`, after which librdkafka
    /// reports the delivery failed. The rebuild of key order has its own
    /// bound, [`rebuild_timeout`](Self::rebuild_timeout).
    #[deprecated(
        note = "publishes are bounded by the producer's message.timeout.ms; the key-order \
                rebuild by rebuild_timeout"
    )]
    pub fn timeout(self, _timeout: Duration) -> Self {
        self
    }

    /// With [`keep_key_order`](Self::keep_key_order): the bound of one
    /// attempt to read what a partition has in the tiers after an
    /// assignment (default 60 s). An attempt that runs out is retried,
    /// going on from where it stopped; meanwhile the partition waits.
    pub fn rebuild_timeout(self, timeout: Duration) -> Self {
        self.edit(|t| t.rebuild_timeout = timeout)
    }

    /// The tier topics, in order (what the tiers' consumer subscribes to).
    pub fn tier_topics(&self) -> Vec<String> {
        self.inner.topics.iter().map(|t| t.to_string()).collect()
    }

    /// The dead-letter topic.
    pub fn dead_letter(&self) -> &str {
        &self.inner.dead_letter_topic
    }

    /// Creates the tier and dead-letter topics that are missing, with the
    /// source topic's partition count; an error says what could not be
    /// created (e.g. the cluster forbids it: create them by hand then).
    pub async fn ensure_topics(&self, brokers: &str, timeout: Duration) -> Result<(), Error> {
        let partitions =
            crate::admin::partition_count(brokers, &self.inner.source, timeout).await?;
        let mut wanted: Vec<(&str, i32)> = self
            .inner
            .topics
            .iter()
            .map(|t| (&**t, partitions))
            .collect();
        wanted.push((&self.inner.dead_letter_topic, partitions));
        crate::admin::ensure_topics(brokers, &wanted, &crate::Config::new(), timeout).await
    }

    /// The middleware for the main topic's consumer and for the tiers'
    /// consumer: a failure moves the message to its next tier (or the
    /// dead-letter topic), and the original counts as skipped once that
    /// copy is acknowledged. If the move to a tier fails (librdkafka
    /// reports the delivery failed: refused, or not acknowledged within
    /// `message.timeout.ms`), the message goes to the dead-letter topic
    /// instead; only if that fails too does the original failure (with
    /// both publish errors attached) go on to the error handler.
    pub fn layer(&self) -> RetryTopicsLayer {
        RetryTopicsLayer {
            tiers: self.clone(),
        }
    }

    /// The copy of `original` for tier `tier` (0-based), due its delay from
    /// now.
    fn copy_for(&self, original: &Message, tier: usize, cause: Cause<'_>) -> Message {
        let t = &self.inner;
        let now = now_ms();
        let h = original.headers();
        let carried = |name: &str| h.get_str(name).map(str::to_owned);
        let mut b = carry(original, t.topics[tier].clone());
        if let Some(p) = original.partition() {
            // Same partition number: the tiers have the source's count, so
            // a key keeps its partition (and its order within a tier).
            b = b.partition(p);
        }
        let first = |name: &str, fallback: Option<String>| carried(name).or(fallback);
        let due = now + u64::try_from(t.delays[tier].as_millis()).unwrap_or(u64::MAX);
        // Its own failures: a move behind its key is not one.
        let attempt = match cause {
            Cause::Failed(_) => attempt_of(original) + 1,
            Cause::Follows(_) => attempt_of(original),
        };
        b = b
            .header(headers::ATTEMPT, attempt.to_string())
            .header(headers::TIER, (tier + 1).to_string())
            .header(headers::DUE, due.to_string());
        let error = match cause {
            Cause::Failed(error) => Some(cut(error)),
            Cause::Follows(head) => {
                b = b.header(headers::FOLLOWS, head.to_string());
                None
            }
        };
        for (name, value) in [
            (
                headers::LAST_ERROR,
                error.clone().or_else(|| carried(headers::LAST_ERROR)),
            ),
            (
                headers::ORIGINAL_TOPIC,
                first(headers::ORIGINAL_TOPIC, Some(original.topic().to_owned())),
            ),
            (
                headers::ORIGINAL_PARTITION,
                first(
                    headers::ORIGINAL_PARTITION,
                    original.partition().map(|p| p.to_string()),
                ),
            ),
            (
                headers::ORIGINAL_OFFSET,
                first(
                    headers::ORIGINAL_OFFSET,
                    original.offset().map(|o| o.to_string()),
                ),
            ),
            (
                headers::ORIGINAL_TIMESTAMP,
                first(
                    headers::ORIGINAL_TIMESTAMP,
                    original.timestamp().map(|ts| ts.millis().to_string()),
                ),
            ),
            (
                headers::FIRST_ERROR,
                first(headers::FIRST_ERROR, error.clone()),
            ),
            (
                headers::FIRST_FAILURE,
                first(
                    headers::FIRST_FAILURE,
                    error.as_ref().map(|_| now.to_string()),
                ),
            ),
        ] {
            if let Some(value) = value {
                b = b.header(name, value);
            }
        }
        b.build()
    }

    /// The message as the dead-letter topic should see it: from its
    /// original topic, partition and offset, without the retry headers.
    fn as_original(&self, message: &Message) -> Message {
        let h = message.headers();
        let Some(topic) = h.get_str(headers::ORIGINAL_TOPIC) else {
            return message.clone();
        };
        let mut b = carry(message, topic.to_owned());
        if let Some(p) = h
            .get_str(headers::ORIGINAL_PARTITION)
            .and_then(|p| p.parse().ok())
        {
            b = b.partition(p);
        }
        if let Some(o) = h
            .get_str(headers::ORIGINAL_OFFSET)
            .and_then(|o| o.parse().ok())
        {
            b = b.offset(o);
        }
        if let Some(ts) = h
            .get_str(headers::ORIGINAL_TIMESTAMP)
            .and_then(|t| t.parse().ok())
        {
            b = b.timestamp_millis(ts);
        }
        if let Some(g) = message.group() {
            b = b.group(g.to_owned());
        }
        b.build()
    }

    /// The tier (0-based) a failure of `message` moves to, or `None`: the
    /// dead-letter topic.
    fn next_tier(&self, message: &Message, error: &BoxError) -> Option<usize> {
        let attempt = attempt_of(message);
        (attempt < self.inner.delays.len() && !is_permanent(error.as_ref())).then_some(attempt)
    }

    async fn handle_failure(
        &self,
        original: Message,
        error: BoxError,
        log: AttemptLog,
    ) -> Result<Ack, BoxError> {
        match self.next_tier(&original, &error) {
            Some(tier) => {
                let text = error.to_string();
                match self
                    .move_to(&original, tier, Cause::Failed(&text), &log)
                    .await
                {
                    Ok(()) => Ok(Ack::Skip),
                    Err(publish) => {
                        let failure = Box::new(publish.with(error));
                        self.send_dead_letter(&original, failure, &log, 1).await
                    }
                }
            }
            None => self.send_dead_letter(&original, error, &log, 1).await,
        }
    }

    /// Dead-letters `original` (as consumed from its original topic) after
    /// `error`; `failed`: 1 if this call of the handler failed, 0 if it was
    /// not handled (it followed its key). Not timed out: librdkafka's
    /// delivery report decides.
    async fn send_dead_letter(
        &self,
        original: &Message,
        error: BoxError,
        log: &AttemptLog,
        failed: usize,
    ) -> Result<Ack, BoxError> {
        let view = self.as_original(original);
        let first_failure = original
            .headers()
            .get_str(headers::FIRST_FAILURE)
            .and_then(|ms| ms.parse().ok())
            .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)));
        let record = AttemptRecord {
            attempts: u32::try_from(attempt_of(original) + failed).unwrap_or(u32::MAX),
            first_failure: first_failure.or(log.get().first_failure),
            ..log.get()
        };
        let topic = &self.inner.dead_letter_topic;
        let dead = crate::dlq::dead_letter(&view, topic, &error, record);
        match self.inner.producer.publish(dead).await {
            Ok(delivery) => {
                log.mark_dead_lettered();
                tracing::warn!(
                    message = %view.location(),
                    dead_letter = %format_args!("{}[{}]@{}", delivery.topic, delivery.partition, delivery.offset),
                    %error,
                    "dead-lettered",
                );
                Ok(Ack::Skip)
            }
            Err(publish) => Err(Box::new(DeadLetterFailed {
                error,
                topic: topic.clone(),
                publish,
            })),
        }
    }

    /// Publishes the copy of `original` for tier `tier` (0-based) and waits
    /// for librdkafka's delivery report — never abandoned before it: an
    /// abandoned publish may still be delivered.
    async fn move_to(
        &self,
        original: &Message,
        tier: usize,
        cause: Cause<'_>,
        log: &AttemptLog,
    ) -> Result<(), PublishFailed> {
        let t = &self.inner;
        let copy = self.copy_for(original, tier, cause);
        let delivery = t
            .producer
            .publish(copy)
            .await
            .map_err(|publish| PublishFailed {
                topic: t.topics[tier].clone(),
                publish: Some(publish),
            })?;
        let number = u32::try_from(tier + 1).unwrap_or(u32::MAX);
        log.mark_retry_tier(number, matches!(cause, Cause::Follows(_)));
        tracing::info!(
            message = %original.location(),
            tier = tier + 1,
            retry = %format_args!("{}[{}]@{}", delivery.topic, delivery.partition, delivery.offset),
            cause = ?cause,
            "moved to a retry tier",
        );
        Ok(())
    }

    /// The streaming path with key order kept: see [`key_order`].
    async fn ordered<S>(
        &self,
        order: &KeyOrder,
        place: Place,
        message: Message,
        log: AttemptLog,
        inner: S,
    ) -> Result<Ack, BoxError>
    where
        S: Service<Message, Response = Ack>,
        S::Error: Into<BoxError>,
    {
        let slot = order.slot(place.partition)?;
        let gens = order.gens();
        let mut chain = slot.chain.lock().await;
        if chain.is_none() {
            let partition = place.partition;
            let shared = self.clone();
            // Set if this handler is dropped (shutdown): the read stops.
            let cancelled = CancelOnDrop(Arc::new(AtomicBool::new(false)));
            let flag = cancelled.0.clone();
            let read = tokio::task::spawn_blocking(move || {
                shared
                    .inner
                    .key_order
                    .as_ref()
                    .expect("key order is on")
                    .read(partition, &flag)
            })
            .await
            .map_err(|e| KeyOrderError::Rebuild {
                partition,
                reason: e.to_string(),
            })??;
            tracing::info!(
                topic = %self.inner.source,
                partition,
                keys_waiting = read.keys_waiting(),
                "read what the retry tiers hold for key order",
            );
            *chain = Some(read);
        }
        let step = chain.as_mut().expect("just built").step(&place, &*gens);
        let (key, offset) = (&place.key, place.original_offset);
        // A copy from a tier leaves the chain once settled (success, moved
        // on, dead-lettered, or handed to the error handler, which skips it
        // or stops the consumer — a restart reads the tiers anew), in the
        // transaction its offset commits in.
        let from_tier = place.tier > 0;
        let settle = || async {
            if from_tier {
                slot.settle(key, offset, gens.current(), &*gens).await;
            }
        };
        match step {
            Step::AlreadyMoved => return Ok(Ack::Skip),
            Step::Follow => {
                // Registered before the publish: nothing of its key can
                // overtake it while the copy is in flight.
                let added = order.publish_generation(&*gens);
                chain.as_mut().expect("built").add(key, offset, added);
                drop(chain);
                let tier = place.tier.min(self.inner.delays.len().saturating_sub(1));
                let head = Cause::Follows(offset);
                let outcome = match self.move_to(&message, tier, head, &log).await {
                    Ok(()) => Ok(Ack::Skip),
                    Err(publish) => {
                        slot.unadd(key, offset, added).await;
                        let waits = "it waits behind an earlier message of its key".into();
                        let failure = Box::new(publish.with(waits));
                        self.send_dead_letter(&message, failure, &log, 0).await
                    }
                };
                settle().await;
                return outcome;
            }
            Step::Handle => drop(chain),
        }
        let mut inner = inner;
        let result = inner.call(message.clone()).await.map_err(Into::into);
        let outcome = match result {
            Ok(ack) => Ok(ack),
            Err(error) => match self.next_tier(&message, &error) {
                Some(tier) => {
                    // In the chain before the publish, as above.
                    let added = order.publish_generation(&*gens);
                    slot.add(key, offset, added).await;
                    let text = error.to_string();
                    let failed = Cause::Failed(&text);
                    match self.move_to(&message, tier, failed, &log).await {
                        Ok(()) => Ok(Ack::Skip),
                        Err(publish) => {
                            slot.unadd(key, offset, added).await;
                            let failure = Box::new(publish.with(error));
                            self.send_dead_letter(&message, failure, &log, 1).await
                        }
                    }
                }
                None => self.send_dead_letter(&message, error, &log, 1).await,
            },
        };
        settle().await;
        outcome
    }
}

/// Sets its flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Tiers {
    fn new_key_order(&self) -> Arc<KeyOrder> {
        Arc::new(KeyOrder::new(
            self.source.as_str().into(),
            self.topics.clone(),
            self.rebuild_timeout,
            self.producer.clone(),
        ))
    }
}

/// How many failed attempts a message has behind it (its tier; 0 on the
/// main topic).
fn attempt_of(message: &Message) -> usize {
    message
        .headers()
        .get_str(headers::ATTEMPT)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// A retry publish that failed.
struct PublishFailed {
    topic: Arc<str>,
    publish: Option<Error>,
}

impl PublishFailed {
    fn with(self, error: BoxError) -> RetryPublishFailed {
        RetryPublishFailed {
            error,
            topic: self.topic,
            publish: self.publish,
        }
    }
}

impl fmt::Debug for RetryTopics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryTopics")
            .field("source", &self.inner.source)
            .field("delays", &self.inner.delays)
            .field("dead_letter_topic", &self.inner.dead_letter_topic)
            .finish_non_exhaustive()
    }
}

/// The retry publish failed: the original failure stands (and the message
/// goes to the dead-letter topic instead).
#[derive(Debug, thiserror::Error)]
#[error("{error} (and moving it to the retry topic {topic} failed: {})", publish.as_ref().map_or_else(|| "timed out".to_owned(), ToString::to_string))]
pub struct RetryPublishFailed {
    /// The handler's failure.
    #[source]
    pub error: BoxError,
    /// The retry topic.
    pub topic: Arc<str>,
    /// Why the publish failed (`None`: it timed out; no longer happens,
    /// the delivery report decides).
    pub publish: Option<Error>,
}

/// The middleware made by [`RetryTopics::layer`].
#[derive(Clone, Debug)]
pub struct RetryTopicsLayer {
    tiers: RetryTopics,
}

impl RetryTopicsLayer {
    /// If `layer` is a `RetryTopicsLayer` keeping key order: the listener
    /// that checks, when the consumer is built, that it can keep it.
    pub(crate) fn downcast<L: 'static>(layer: &L) -> Option<Arc<dyn Listener>> {
        let this = (layer as &dyn std::any::Any).downcast_ref::<RetryTopicsLayer>()?;
        let order: Arc<dyn Listener> = this.tiers.inner.key_order.clone()?;
        Some(order)
    }
}

impl<S> Layer<S> for RetryTopicsLayer {
    type Service = RetryTopicsService<S>;
    fn layer(&self, inner: S) -> RetryTopicsService<S> {
        RetryTopicsService {
            inner,
            tiers: self.tiers.clone(),
        }
    }
}

/// The service made by [`RetryTopicsLayer`].
#[derive(Clone, Debug)]
pub struct RetryTopicsService<S> {
    inner: S,
    tiers: RetryTopics,
}

impl<S> Service<Message> for RetryTopicsService<S>
where
    S: Service<Message, Response = Ack> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Ack;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Ack, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut message: Message) -> Self::Future {
        let log = AttemptLog::of(&mut message);
        let tiers = self.tiers.clone();
        if let Some(order) = tiers.inner.key_order.clone() {
            if let Some(place) = Place::of(&message) {
                // The handler runs later, once the order allows it: take the
                // service that was made ready, leave a clone in its place.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                return Box::pin(
                    async move { tiers.ordered(&order, place, message, log, inner).await },
                );
            }
        }
        let original = message.clone();
        let future = self.inner.call(message);
        Box::pin(async move {
            let error: BoxError = match future.await {
                Ok(ack) => return Ok(ack),
                Err(e) => e.into(),
            };
            tiers.handle_failure(original, error, log).await
        })
    }
}

/// The batch form: every failed message of the batch (recorded with
/// `Batch::fail`, or all unrecorded ones when the batch as a whole failed)
/// moves to its next tier (or the dead-letter topic) and is recorded as
/// skipped; those whose publish failed stay failed.
impl<S> Service<Batch> for RetryTopicsService<S>
where
    S: Service<Batch, Response = Ack>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Ack;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Ack, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut batch: Batch) -> Self::Future {
        if self.tiers.inner.key_order.is_some() {
            return Box::pin(async { Err(Box::new(KeyOrderError::Batch) as BoxError) });
        }
        let logs: Vec<AttemptLog> = batch
            .messages_mut()
            .iter_mut()
            .map(AttemptLog::of)
            .collect();
        let observer = batch.clone();
        let future = self.inner.call(batch);
        let tiers = self.tiers.clone();
        Box::pin(async move {
            let overall = future.await.map_err(Into::into);
            let failed = crate::dlq::failures_of(&observer, &overall);
            if failed.is_empty() {
                return overall;
            }
            for (i, error) in failed {
                let message = observer.messages()[i].clone();
                match tiers.handle_failure(message, error, logs[i].clone()).await {
                    Ok(ack) => observer.ack(i, ack),
                    Err(e) => observer.fail(i, e),
                }
            }
            Ok(Ack::Success)
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_ERROR_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests;
