//! Prometheus metrics (feature `metrics`).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `xkafka_messages_consumed_total` | topic, partition, outcome (`success`, `skip`, `fail`) | every message a handler settled, whatever the outcome |
//! | `xkafka_handler_duration_seconds` | topic | handling time (histogram), per message or per batch |
//! | `xkafka_messages_in_flight` | topic | messages inside the handler stack now |
//! | `xkafka_retries_total` | topic | calls beyond the first, made by the retry layer |
//! | `xkafka_dead_lettered_total` | topic | messages published to a dead-letter topic |
//! | `xkafka_retry_tier_moves_total` | topic, tier (`1`, `2`, …), reason (`failed`, `follows`) | messages a [retry-topics](crate::retry_topics) layer moved to a retry tier: after a failure, or behind an earlier message of their key |
//! | `xkafka_messages_published_total` | topic, outcome (`success`, `fail`) | publishes through the producer layer |
//! | `xkafka_committed_offset` | topic, partition | last committed offset (next to read) |
//! | `xkafka_consumer_lag` | topic, partition | high watermark (librdkafka's, from the last fetch) − committed offset |
//! | `xkafka_stalled_offset` | topic, partition | offset of the unfinished message a paused partition is stalled behind (present only while stalled) |
//! | `xkafka_transaction_isolations_total` | topic, outcome (`found`, `none`) | exactly-once: searches, one message per transaction, for the input whose output made every commit abort; `found`: the input was given to the error handler |
//!
//! The per-partition gauges of a partition are removed when it is revoked
//! from the consumer, so that no stale series stays behind.
//!
//! Label values come from the messages, never from user input that could
//! change the label set, so recording never panics.
//!
//! ```no_run
//! use xkafka::metrics::Metrics;
//! use xkafka::{Consumer, Decision, Message};
//!
//! # fn build() -> Result<(), xkafka::Error> {
//! let metrics = Metrics::new();
//! let consumer = Consumer::builder("billing")
//!     .brokers(["127.0.0.1:9092"])
//!     .topics(["orders"])
//!     .metrics(&metrics) // committed offsets and lag per partition
//!     .error_handler(|_| Decision::Stop)
//!     .layer(metrics.layer()) // outermost: sees every outcome
//!     .handler(|_m: Message| async {})
//!     .build()?;
//! // Serve `metrics.render()` on /metrics (see the `metrics` example).
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tower::{Layer, Service};
use xkafka_core::middleware::retry::AttemptLog;

use crate::{Ack, Batch, BoxError, Delivery, Message};

struct Families {
    consumed: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    retries: IntCounterVec,
    dead_lettered: IntCounterVec,
    retry_tier: IntCounterVec,
    published: IntCounterVec,
    committed: IntGaugeVec,
    lag: IntGaugeVec,
    stalled: IntGaugeVec,
    isolations: IntCounterVec,
}

/// xkafka's metric families in a Prometheus registry; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The metrics, in a registry of their own.
    pub fn new() -> Self {
        Metrics::with_registry(Registry::new())
            .expect("a fresh registry has none of our metric names")
    }

    /// The metrics, registered in `registry` (e.g. the application's).
    /// Fails if the names are registered there already.
    pub fn with_registry(registry: Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        let families = Families {
            consumed: counter(
                "xkafka_messages_consumed_total",
                "Messages settled by a handler, by outcome",
                &["topic", "partition", "outcome"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "xkafka_handler_duration_seconds",
                    "Time spent in the handler stack",
                ),
                &["topic"],
            )?,
            in_flight: gauge(
                "xkafka_messages_in_flight",
                "Messages inside the handler stack",
                &["topic"],
            )?,
            retries: counter(
                "xkafka_retries_total",
                "Handler calls beyond the first",
                &["topic"],
            )?,
            dead_lettered: counter(
                "xkafka_dead_lettered_total",
                "Messages published to a dead-letter topic",
                &["topic"],
            )?,
            retry_tier: counter(
                "xkafka_retry_tier_moves_total",
                "Messages moved to a retry tier, by tier and reason",
                &["topic", "tier", "reason"],
            )?,
            published: counter(
                "xkafka_messages_published_total",
                "Messages published, by outcome",
                &["topic", "outcome"],
            )?,
            committed: gauge(
                "xkafka_committed_offset",
                "Last committed offset (next to read)",
                &["topic", "partition"],
            )?,
            lag: gauge(
                "xkafka_consumer_lag",
                "High watermark minus committed offset",
                &["topic", "partition"],
            )?,
            stalled: gauge(
                "xkafka_stalled_offset",
                "Offset of the unfinished message a paused partition waits for",
                &["topic", "partition"],
            )?,
            isolations: counter(
                "xkafka_transaction_isolations_total",
                "Searches for an input whose output makes every transaction abort, by outcome",
                &["topic", "outcome"],
            )?,
        };
        registry.register(Box::new(families.consumed.clone()))?;
        registry.register(Box::new(families.duration.clone()))?;
        registry.register(Box::new(families.in_flight.clone()))?;
        registry.register(Box::new(families.retries.clone()))?;
        registry.register(Box::new(families.dead_lettered.clone()))?;
        registry.register(Box::new(families.retry_tier.clone()))?;
        registry.register(Box::new(families.published.clone()))?;
        registry.register(Box::new(families.committed.clone()))?;
        registry.register(Box::new(families.lag.clone()))?;
        registry.register(Box::new(families.stalled.clone()))?;
        registry.register(Box::new(families.isolations.clone()))?;
        Ok(Metrics {
            registry,
            families: Arc::new(families),
        })
    }

    /// The registry the metrics live in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the registry, in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// A layer for consumers (messages or batches): counts outcomes,
    /// durations, in-flight messages, retries and dead letters. Add it first
    /// (outermost).
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer {
            metrics: self.clone(),
        }
    }

    /// A layer for producers: counts publishes by outcome.
    pub fn producer_layer(&self) -> PublishMetricsLayer {
        PublishMetricsLayer {
            metrics: self.clone(),
        }
    }

    /// The committed offset and lag of one partition.
    pub(crate) fn record_position(
        &self,
        topic: &str,
        partition: i32,
        committed: i64,
        high: Option<i64>,
    ) {
        let partition = partition.to_string();
        let labels = [topic, partition.as_str()];
        self.families
            .committed
            .with_label_values(&labels)
            .set(committed);
        if let Some(high) = high {
            self.families
                .lag
                .with_label_values(&labels)
                .set((high - committed).max(0));
        }
    }
}

impl Metrics {
    /// Counts the end of a search for an input whose output made every
    /// transaction abort: `found` when it was isolated.
    pub(crate) fn record_isolation(&self, topic: &str, found: bool) {
        let outcome = if found { "found" } else { "none" };
        self.families
            .isolations
            .with_label_values(&[topic, outcome])
            .inc();
    }

    /// Sets (`Some`) or clears the offset a stalled partition waits for.
    pub(crate) fn record_stall(&self, topic: &str, partition: i32, offset: Option<i64>) {
        let partition = partition.to_string();
        let labels = [topic, partition.as_str()];
        match offset {
            Some(offset) => self.families.stalled.with_label_values(&labels).set(offset),
            None => {
                let _ = self.families.stalled.remove_label_values(&labels);
            }
        }
    }

    /// Removes the per-partition gauges of a partition this consumer no
    /// longer owns: its new owner reports them.
    pub(crate) fn forget_partition(&self, topic: &str, partition: i32) {
        let partition = partition.to_string();
        let labels = [topic, partition.as_str()];
        for family in [
            &self.families.committed,
            &self.families.lag,
            &self.families.stalled,
        ] {
            let _ = family.remove_label_values(&labels);
        }
    }
}

/// Counts what passes through; see [`Metrics::layer`].
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

type Boxed<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl Families {
    /// What the retry, dead-letter and retry-topics layers recorded of one
    /// message.
    fn attempts(&self, topic: &str, record: &xkafka_core::middleware::retry::AttemptRecord) {
        if record.attempts > 1 {
            self.retries
                .with_label_values(&[topic])
                .inc_by(u64::from(record.attempts - 1));
        }
        if record.dead_lettered {
            self.dead_lettered.with_label_values(&[topic]).inc();
        }
        if let Some(tier) = record.retry_tier {
            let reason = if record.followed { "follows" } else { "failed" };
            self.retry_tier
                .with_label_values(&[topic, &tier.to_string(), reason])
                .inc();
        }
    }
}

fn outcome(result: &Result<Ack, BoxError>) -> &'static str {
    match result {
        Ok(Ack::Success) => "success",
        Ok(Ack::Skip) => "skip",
        Err(_) => "fail",
    }
}

impl<S> Service<Message> for MetricsService<S>
where
    S: Service<Message, Response = Ack>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Ack;
    type Error = BoxError;
    type Future = Boxed<Ack>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut message: Message) -> Self::Future {
        let f = self.metrics.families.clone();
        let topic = message.topic_arc().clone();
        let partition = message.partition().unwrap_or(-1).to_string();
        let log = AttemptLog::of(&mut message);
        f.in_flight.with_label_values(&[&*topic]).inc();
        let started = Instant::now();
        let future = self.inner.call(message);
        Box::pin(async move {
            let result = future.await.map_err(Into::into);
            f.in_flight.with_label_values(&[&*topic]).dec();
            f.duration
                .with_label_values(&[&*topic])
                .observe(started.elapsed().as_secs_f64());
            f.consumed
                .with_label_values(&[&*topic, &partition, outcome(&result)])
                .inc();
            f.attempts(&topic, &log.get());
            result
        })
    }
}

impl<S> Service<Batch> for MetricsService<S>
where
    S: Service<Batch, Response = Ack>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Ack;
    type Error = BoxError;
    type Future = Boxed<Ack>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut batch: Batch) -> Self::Future {
        let f = self.metrics.families.clone();
        // Shared with the layers inside (dead letters, retry topics), which
        // record what they did with each message.
        let logs: Vec<AttemptLog> = batch
            .messages_mut()
            .iter_mut()
            .map(AttemptLog::of)
            .collect();
        let labels: Vec<(Arc<str>, String)> = batch
            .iter()
            .map(|m| {
                (
                    m.topic_arc().clone(),
                    m.partition().unwrap_or(-1).to_string(),
                )
            })
            .collect();
        for (topic, _) in &labels {
            f.in_flight.with_label_values(&[&**topic]).inc();
        }
        let started = Instant::now();
        let observer = batch.clone();
        let future = self.inner.call(batch);
        Box::pin(async move {
            let result = future.await.map_err(Into::into);
            let elapsed = started.elapsed().as_secs_f64();
            let whole = outcome(&result);
            for ((topic, _), log) in labels.iter().zip(&logs) {
                f.attempts(topic, &log.get());
            }
            for ((topic, partition), recorded) in labels.iter().zip(observer.peek_outcomes()) {
                let kind = match recorded {
                    Some(Ok(Ack::Success)) => "success",
                    Some(Ok(Ack::Skip)) => "skip",
                    Some(Err(())) => "fail",
                    None => whole,
                };
                f.in_flight.with_label_values(&[&**topic]).dec();
                f.consumed
                    .with_label_values(&[&**topic, partition, kind])
                    .inc();
            }
            if let Some((topic, _)) = labels.first() {
                f.duration.with_label_values(&[&**topic]).observe(elapsed);
            }
            result
        })
    }
}

/// Counts publishes; see [`Metrics::producer_layer`].
#[derive(Clone, Debug)]
pub struct PublishMetricsLayer {
    metrics: Metrics,
}

impl<S> Layer<S> for PublishMetricsLayer {
    type Service = PublishMetrics<S>;

    fn layer(&self, inner: S) -> PublishMetrics<S> {
        PublishMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service made by [`PublishMetricsLayer`].
#[derive(Clone, Debug)]
pub struct PublishMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> Service<Message> for PublishMetrics<S>
where
    S: Service<Message, Response = Delivery>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Delivery;
    type Error = BoxError;
    type Future = Boxed<Delivery>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let published = self.metrics.families.published.clone();
        let topic = message.topic_arc().clone();
        let future = self.inner.call(message);
        Box::pin(async move {
            let result = future.await.map_err(Into::into);
            let kind = if result.is_ok() { "success" } else { "fail" };
            published.with_label_values(&[&*topic, kind]).inc();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;
    use xkafka_core::middleware::retry::{Backoff, RetryLayer};

    use super::*;
    use crate::{BatchHandler, Handler};

    fn value(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    }

    #[tokio::test]
    async fn every_outcome_and_retry_is_counted() {
        let metrics = Metrics::new();
        let handler = |m: Message| async move {
            match m.offset() {
                Some(0) => Ok(Ack::Success),
                Some(1) => Ok(Ack::Skip),
                _ => Err("boom"),
            }
        };
        let retry = RetryLayer::new(
            Backoff::new()
                .initial_delay(std::time::Duration::ZERO)
                .max_attempts(2),
        );
        let svc = metrics.layer().layer(retry.layer(handler.into_service()));
        for offset in 0..3 {
            let msg = Message::builder("t").partition(4).offset(offset).build();
            let _ = svc.clone().oneshot(msg).await;
        }
        let text = metrics.render();
        for outcome in ["success", "skip", "fail"] {
            let line = format!("xkafka_messages_consumed_total{{outcome=\"{outcome}\",partition=\"4\",topic=\"t\"}}");
            assert_eq!(value(&text, &line), Some(1.0), "{outcome}: {text}");
        }
        assert_eq!(
            value(&text, "xkafka_retries_total{topic=\"t\"}"),
            Some(1.0),
            "the failing one was retried once"
        );
        assert_eq!(
            value(&text, "xkafka_handler_duration_seconds_count{topic=\"t\"}"),
            Some(3.0)
        );
        assert_eq!(
            value(&text, "xkafka_messages_in_flight{topic=\"t\"}"),
            Some(0.0)
        );
    }

    #[tokio::test]
    async fn batch_messages_count_by_their_own_outcome() {
        let metrics = Metrics::new();
        let handler = |b: Batch| async move {
            b.fail(1, "bad one");
            Ok::<(), BoxError>(())
        };
        let svc = metrics.layer().layer(BatchHandler::into_service(handler));
        let batch = Batch::new(
            (0..3)
                .map(|o| Message::builder("t").partition(0).offset(o).build())
                .collect(),
        );
        svc.oneshot(batch).await.unwrap();
        let text = metrics.render();
        let line = |o: &str| {
            format!("xkafka_messages_consumed_total{{outcome=\"{o}\",partition=\"0\",topic=\"t\"}}")
        };
        assert_eq!(value(&text, &line("success")), Some(2.0), "{text}");
        assert_eq!(value(&text, &line("fail")), Some(1.0), "{text}");
    }

    #[tokio::test]
    async fn retry_tier_moves_are_counted_per_tier_in_both_forms() {
        let recorder = crate::testing::RecordingProducer::new().unwrap();
        let tiers = crate::retry_topics::RetryTopics::new(recorder.producer(), "t")
            .tiers([std::time::Duration::from_millis(10); 2]);
        let metrics = Metrics::new();
        // Streaming: a message fails on the main topic, then in tier 1.
        let failing = |_m: Message| async { Err::<Ack, BoxError>("down".into()) };
        let svc = metrics
            .layer()
            .layer(tiers.layer().layer(failing.into_service()));
        let main = Message::builder("t")
            .partition(0)
            .offset(1)
            .key("k")
            .build();
        assert_eq!(svc.clone().oneshot(main).await.unwrap(), Ack::Skip);
        let copy = recorder.published_to("t.retry.1").pop().expect("moved");
        assert_eq!(svc.oneshot(copy).await.unwrap(), Ack::Skip);
        // Batch: two of three fail on the main topic.
        let handler = |b: Batch| async move {
            b.fail(0, "down");
            b.fail(2, "down");
            Ok::<(), BoxError>(())
        };
        let svc = metrics
            .layer()
            .layer(tiers.layer().layer(BatchHandler::into_service(handler)));
        let batch = Batch::new(
            (0..3)
                .map(|o| Message::builder("t").partition(0).offset(o).build())
                .collect(),
        );
        svc.oneshot(batch).await.unwrap();
        let text = metrics.render();
        let moves = |topic: &str, tier: u32| {
            value(
                &text,
                &format!("xkafka_retry_tier_moves_total{{reason=\"failed\",tier=\"{tier}\",topic=\"{topic}\"}}"),
            )
        };
        assert_eq!(moves("t", 1), Some(3.0), "{text}");
        assert_eq!(moves("t.retry.1", 2), Some(1.0), "{text}");
    }

    #[test]
    fn a_forgotten_partition_leaves_no_series() {
        let metrics = Metrics::new();
        metrics.record_position("t", 0, 10, Some(15));
        metrics.record_position("t", 1, 3, Some(3));
        metrics.record_stall("t", 0, Some(10));
        let text = metrics.render();
        assert_eq!(
            value(&text, "xkafka_consumer_lag{partition=\"0\",topic=\"t\"}"),
            Some(5.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "xkafka_stalled_offset{partition=\"0\",topic=\"t\"}"),
            Some(10.0),
            "{text}"
        );
        metrics.forget_partition("t", 0);
        let text = metrics.render();
        assert!(!text.contains("partition=\"0\""), "{text}");
        assert_eq!(
            value(
                &text,
                "xkafka_committed_offset{partition=\"1\",topic=\"t\"}"
            ),
            Some(3.0),
            "the other partition stays: {text}"
        );
        metrics.record_stall("t", 1, Some(3));
        metrics.record_stall("t", 1, None);
        assert!(!metrics.render().contains("xkafka_stalled_offset{"));
    }

    #[test]
    fn registering_twice_is_an_error_not_a_panic() {
        let registry = Registry::new();
        assert!(Metrics::with_registry(registry.clone()).is_ok());
        assert!(Metrics::with_registry(registry).is_err());
    }
}
