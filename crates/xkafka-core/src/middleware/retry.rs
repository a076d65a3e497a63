//! Retry with exponential backoff.
//!
//! The wait happens inside the handler call, so it occupies only the
//! message's own lane (its partition, or its key slot): the consumer keeps
//! polling and the other lanes keep flowing while one message backs off.
//!
//! ```
//! use std::time::Duration;
//! use xkafka_core::middleware::retry::{permanent, Attempt, Backoff, RetryLayer};
//! use xkafka_core::{Ack, BoxError, Message};
//!
//! async fn handle(msg: Message) -> Result<Ack, BoxError> {
//!     let attempt = msg.extensions().get::<Attempt>().map_or(1, |a| a.0);
//!     match msg.value_str() {
//!         None => Err(permanent("no payload: retrying cannot help")),
//!         Some(_) if attempt < 3 => Err("database busy".into()), // transient
//!         Some(_) => Ok(Ack::Success),
//!     }
//! }
//!
//! let layer = RetryLayer::new(
//!     Backoff::new()
//!         .initial_delay(Duration::from_millis(100))
//!         .multiplier(2.0)
//!         .max_delay(Duration::from_secs(5))
//!         .max_attempts(10)
//!         .max_elapsed(Duration::from_secs(60))
//!         .jitter(0.2),
//! );
//! # let _ = (layer, handle);
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tower::{Layer, Service, ServiceExt};

use crate::batch::Batch;
use crate::message::Message;
use crate::BoxError;

/// The attempt number (1 for the first call), set in the message's
/// extensions before each call (on every message of a batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(pub u32);

/// What the retry layer did to one message, readable by outer layers (a
/// dead-letter layer puts it in headers). Insert an empty one into the
/// message's extensions before the retry layer runs; the retry layer fills
/// it in (clones share it).
#[derive(Clone, Debug, Default)]
pub struct AttemptLog(Arc<Mutex<AttemptRecord>>);

/// The contents of an [`AttemptLog`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Calls made so far.
    pub attempts: u32,
    /// When the first call failed.
    pub first_failure: Option<SystemTime>,
    /// Whether a dead-letter layer published the message after the last
    /// failure.
    pub dead_lettered: bool,
    /// The retry tier (1-based) a retry-topics layer moved the message to.
    pub retry_tier: Option<u32>,
    /// It was moved there without being handled, behind an earlier message
    /// of its key (retry topics keeping key order).
    pub followed: bool,
}

impl AttemptLog {
    /// What was recorded.
    pub fn get(&self) -> AttemptRecord {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log already in `message`, or a new one inserted into it: layers
    /// that read it (dead letters, metrics) share one.
    pub fn of(message: &mut Message) -> AttemptLog {
        if let Some(log) = message.extensions().get::<AttemptLog>() {
            return log.clone();
        }
        let log = AttemptLog::default();
        message.extensions_mut().insert(log.clone());
        log
    }

    /// Notes that the message went to a dead-letter topic.
    pub fn mark_dead_lettered(&self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dead_lettered = true;
    }

    /// Notes that the message moved to retry tier `tier` (1-based);
    /// `followed`: without being handled, behind an earlier message of its
    /// key.
    pub fn mark_retry_tier(&self, tier: u32, followed: bool) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.retry_tier = Some(tier);
        r.followed = followed;
    }

    fn record(&self, attempt: u32, failed: bool) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.attempts = r.attempts.max(attempt);
        if failed && r.first_failure.is_none() {
            r.first_failure = Some(SystemTime::now());
        }
    }
}

/// An error that retrying cannot fix: the retry layer gives up at once
/// (Go xkafka's `ErrPermanent`). Wrap with [`permanent`].
#[derive(Debug)]
pub struct Permanent(pub BoxError);

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "permanent: {}", self.0)
    }
}

impl std::error::Error for Permanent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Marks an error as permanent (not retried).
pub fn permanent(error: impl Into<BoxError>) -> BoxError {
    Box::new(Permanent(error.into()))
}

/// Whether an error (or one of its sources) is [`Permanent`].
pub fn is_permanent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<Permanent>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// When to try again: `initial_delay × multiplier^(attempt − 1)`, capped at
/// `max_delay`, spread by ± `jitter` (a fraction), until `max_attempts`
/// calls were made or the next wait would end after `max_elapsed`.
///
/// Defaults follow Go xkafka: 200 ms, × 1.5, jitter 0.1, capped at 30 s,
/// 100 retries (101 attempts), 5 minutes in all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial_delay: Duration,
    multiplier: f64,
    jitter: f64,
    max_delay: Duration,
    max_attempts: u32,
    max_elapsed: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_delay: Duration::from_millis(200),
            multiplier: 1.5,
            jitter: 0.1,
            max_delay: Duration::from_secs(30),
            max_attempts: 101,
            max_elapsed: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The defaults.
    pub fn new() -> Self {
        Backoff::default()
    }

    /// Wait before the second attempt.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Growth of the wait from one attempt to the next (≥ 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier.max(1.0);
        self
    }

    /// Random spread of each wait, as a fraction (0 = exact, 0.2 = ±20 %).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Longest single wait.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Most calls, the first included (1 = no retry).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Longest time from the first call to the start of the last one.
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = elapsed;
        self
    }

    /// The wait after failed attempt `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_delay.as_secs_f64() * self.multiplier.powi(exp);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    fn jittered(&self, attempt: u32) -> Duration {
        let base = self.delay(attempt);
        if self.jitter == 0.0 {
            return base;
        }
        let spread = 1.0 + self.jitter * (2.0 * fastrand::f64() - 1.0);
        base.mul_f64(spread.max(0.0))
    }
}

/// A request the retry layer can repeat: cloned per attempt, with the
/// attempt number recorded.
pub trait Retryable: Clone {
    /// Records the attempt number before a call.
    fn set_attempt(&mut self, attempt: Attempt);

    /// Notes how a call ended, in the [`AttemptLog`]s the request carries.
    fn log_attempt(&self, attempt: Attempt, failed: bool);
}

impl Retryable for Message {
    fn set_attempt(&mut self, attempt: Attempt) {
        self.extensions_mut().insert(attempt);
    }

    fn log_attempt(&self, attempt: Attempt, failed: bool) {
        if let Some(log) = self.extensions().get::<AttemptLog>() {
            log.record(attempt.0, failed);
        }
    }
}

impl Retryable for Batch {
    fn set_attempt(&mut self, attempt: Attempt) {
        for m in self.messages_mut() {
            m.extensions_mut().insert(attempt);
        }
    }

    fn log_attempt(&self, attempt: Attempt, failed: bool) {
        for m in self.messages() {
            m.log_attempt(attempt, failed);
        }
    }
}

/// Retries failed calls with [`Backoff`]; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct RetryLayer {
    backoff: Backoff,
}

impl RetryLayer {
    /// A retry layer with this backoff.
    pub fn new(backoff: Backoff) -> Self {
        RetryLayer { backoff }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            backoff: self.backoff,
        }
    }
}

/// The service made by [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    backoff: Backoff,
}

impl<S, Req> Service<Req> for Retry<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    S::Response: Send,
    Req: Retryable + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let inner = self.inner.clone();
        let backoff = self.backoff;
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let mut attempt = 1;
            loop {
                let mut call = request.clone();
                call.set_attempt(Attempt(attempt));
                let result = inner.clone().oneshot(call).await.map_err(Into::into);
                request.log_attempt(Attempt(attempt), result.is_err());
                let error: BoxError = match result {
                    Ok(response) => return Ok(response),
                    Err(e) => e,
                };
                if attempt >= backoff.max_attempts || is_permanent(&*error) {
                    return Err(error);
                }
                let wait = backoff.jittered(attempt);
                if started.elapsed() + wait > backoff.max_elapsed {
                    return Err(error);
                }
                tracing::debug!(attempt, ?wait, %error, "retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;
    use crate::{Ack, BatchHandler, Handler};

    fn exact() -> Backoff {
        Backoff::new()
            .initial_delay(Duration::from_millis(200))
            .multiplier(1.5)
            .jitter(0.0)
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let b = exact().max_delay(Duration::from_millis(400));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(2), Duration::from_millis(300));
        assert_eq!(b.delay(3), Duration::from_millis(400), "capped");
        assert_eq!(b.delay(1000), Duration::from_millis(400));
        let spread = Backoff::new().jitter(0.5);
        for _ in 0..100 {
            let d = spread.jittered(1);
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_millis(300),
                "{d:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fails_twice_then_succeeds_after_the_documented_delays() {
        let calls: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
        let seen = calls.clone();
        let handler = move |m: Message| {
            let seen = seen.clone();
            async move {
                let attempt = m.extensions().get::<Attempt>().unwrap().0;
                seen.lock().unwrap().push((attempt, Instant::now()));
                if attempt < 3 {
                    Err("transient")
                } else {
                    Ok(Ack::Success)
                }
            }
        };
        let svc = RetryLayer::new(exact()).layer(handler.into_service());
        let start = Instant::now();
        let out = svc.oneshot(Message::builder("t").build()).await.unwrap();
        assert_eq!(out, Ack::Success);
        let calls = calls.lock().unwrap().clone();
        let attempts: Vec<u32> = calls.iter().map(|c| c.0).collect();
        assert_eq!(attempts, [1, 2, 3]);
        assert_eq!(calls[1].1 - start, Duration::from_millis(200));
        assert_eq!(
            calls[2].1 - start,
            Duration::from_millis(500),
            "200 ms then 300 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_attempt_log_tells_outer_layers_what_happened() {
        let handler = |_m: Message| async { Err::<(), _>("down") };
        let log = AttemptLog::default();
        let msg = Message::builder("t").extension(log.clone()).build();
        let svc = RetryLayer::new(exact().max_attempts(3)).layer(handler.into_service());
        assert!(svc.oneshot(msg).await.is_err());
        let record = log.get();
        assert_eq!(record.attempts, 3);
        assert!(record.first_failure.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let handler = move |_m: Message| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>(permanent("bad input")) }
        };
        let err = RetryLayer::new(exact())
            .layer(handler.into_service())
            .oneshot(Message::builder("t").build())
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(is_permanent(&*err));
        assert_eq!(err.to_string(), "permanent: bad input");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_or_max_elapsed() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let handler = move |_m: Message| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>("down") }
        };
        let svc = RetryLayer::new(exact().max_attempts(4)).layer(handler.clone().into_service());
        assert!(svc.oneshot(Message::builder("t").build()).await.is_err());
        assert_eq!(calls.swap(0, Ordering::Relaxed), 4);

        // 200 + 300 + 450 = 950 ms; the next wait (675 ms) would end past 1.5 s.
        let svc = RetryLayer::new(exact().max_elapsed(Duration::from_millis(1500)))
            .layer(handler.into_service());
        let start = Instant::now();
        assert!(svc.oneshot(Message::builder("t").build()).await.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        assert_eq!(start.elapsed(), Duration::from_millis(950));
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_retried_whole_and_honour_permanent() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let handler = move |batch: Batch| {
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                let attempt = batch.messages()[1].extensions().get::<Attempt>().unwrap().0;
                assert_eq!(attempt, n, "every message carries the attempt");
                if n == 1 {
                    Err::<(), BoxError>("transient".into())
                } else {
                    Err(permanent("schema mismatch"))
                }
            }
        };
        let batch = Batch::new(vec![
            Message::builder("t").build(),
            Message::builder("t").build(),
        ]);
        let err = RetryLayer::new(exact())
            .layer(BatchHandler::into_service(handler))
            .oneshot(batch)
            .await
            .unwrap_err();
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "retried once, stopped at the permanent error"
        );
        assert!(is_permanent(&*err));
    }
}
