//! Logging through `tracing`: a span per message (topic, partition, offset,
//! key, group) or per batch, and one event when it is settled, with the
//! outcome and the duration. Failures are logged at `ERROR` with the error;
//! skips are told apart from successes (`outcome = "skip"`). On a producer
//! it logs each publish with where it landed (`outcome = "published"`).
//!
//! ```
//! use tracing::Level;
//! use xkafka_core::middleware::logging::LoggingLayer;
//!
//! // Successes and skips at INFO (default DEBUG), failures always at ERROR.
//! let layer = LoggingLayer::new().success_level(Level::INFO);
//! # let _ = layer;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::{Instrument, Level, Span};

use crate::ack::Ack;
use crate::batch::Batch;
use crate::delivery::Delivery;
use crate::message::Message;
use crate::BoxError;

/// How a response describes itself in logs: handlers answer an [`Ack`],
/// publishing a [`Delivery`].
pub trait LoggedOutcome {
    /// `(outcome, where)`: e.g. `("success", None)` or
    /// `("published", Some("orders[2]@41"))`.
    fn describe(&self) -> (&'static str, Option<String>);
}

impl LoggedOutcome for Ack {
    fn describe(&self) -> (&'static str, Option<String>) {
        match self {
            Ack::Success => ("success", None),
            Ack::Skip => ("skip", None),
        }
    }
}

impl LoggedOutcome for Delivery {
    fn describe(&self) -> (&'static str, Option<String>) {
        let at = format!("{}[{}]@{}", self.topic, self.partition, self.offset);
        ("published", Some(at))
    }
}

/// How a request names itself in logs.
pub trait Loggable {
    /// The span the request is handled in.
    fn span(&self) -> Span;
}

/// Longest key shown in a span; keys can be large binary blobs.
const KEY_SHOWN: usize = 64;

impl Loggable for Message {
    fn span(&self) -> Span {
        let key = self.key().map(|k| {
            let shown = &k[..k.len().min(KEY_SHOWN)];
            String::from_utf8_lossy(shown).into_owned()
        });
        tracing::info_span!(
            "kafka.message",
            topic = %self.topic(),
            partition = self.partition(),
            offset = self.offset(),
            key = key.as_deref(),
            group = self.group(),
        )
    }
}

impl Loggable for Batch {
    fn span(&self) -> Span {
        let first = self.messages().first();
        tracing::info_span!(
            "kafka.batch",
            size = self.len(),
            first = first.map(Message::location).as_deref(),
            last = self.messages().last().map(Message::location).as_deref(),
            group = first.and_then(Message::group),
        )
    }
}

/// Logs each message or batch; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct LoggingLayer {
    success_level: Level,
}

impl Default for LoggingLayer {
    fn default() -> Self {
        LoggingLayer {
            success_level: Level::DEBUG,
        }
    }
}

impl LoggingLayer {
    /// Successes and skips at `DEBUG`, failures at `ERROR`.
    pub fn new() -> Self {
        LoggingLayer::default()
    }

    /// The level of success and skip events.
    pub fn success_level(mut self, level: Level) -> Self {
        self.success_level = level;
        self
    }
}

impl<S> Layer<S> for LoggingLayer {
    type Service = Logging<S>;

    fn layer(&self, inner: S) -> Logging<S> {
        Logging {
            inner,
            success_level: self.success_level,
        }
    }
}

/// The service made by [`LoggingLayer`].
#[derive(Clone, Debug)]
pub struct Logging<S> {
    inner: S,
    success_level: Level,
}

macro_rules! event_at {
    ($level:expr, $($arg:tt)+) => {
        match $level {
            Level::TRACE => tracing::trace!($($arg)+),
            Level::DEBUG => tracing::debug!($($arg)+),
            Level::INFO => tracing::info!($($arg)+),
            Level::WARN => tracing::warn!($($arg)+),
            _ => tracing::error!($($arg)+),
        }
    };
}

impl<S, Req> Service<Req> for Logging<S>
where
    S: Service<Req>,
    S::Response: LoggedOutcome + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    Req: Loggable,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let span = request.span();
        let level = self.success_level;
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let started = Instant::now();
                let result = future.await.map_err(Into::into);
                let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
                match &result {
                    Ok(response) => {
                        let (outcome, at) = response.describe();
                        event_at!(level, outcome, at = at.as_deref(), elapsed_ms, "done")
                    }
                    Err(error) => {
                        tracing::error!(outcome = "fail", elapsed_ms, error = %error, "failed")
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tower::ServiceExt;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use crate::Handler;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[tokio::test]
    async fn outcomes_are_logged_at_their_levels_inside_the_message_span() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_max_level(Level::INFO)
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let handler = |m: Message| async move {
            match m.offset() {
                Some(0) => Ok(Ack::Success),
                Some(1) => Ok(Ack::Skip),
                _ => Err("db down"),
            }
        };
        let svc = LoggingLayer::new()
            .success_level(Level::INFO)
            .layer(handler.into_service());
        for offset in 0..3 {
            let msg = Message::builder("orders")
                .partition(2)
                .offset(offset)
                .key("customer-7")
                .group("billing")
                .build();
            let _ = svc.clone().oneshot(msg).await;
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("INFO") && lines[0].contains("outcome=\"success\""),
            "{text}"
        );
        assert!(
            lines[1].contains("INFO") && lines[1].contains("outcome=\"skip\""),
            "{text}"
        );
        assert!(
            lines[2].contains("ERROR") && lines[2].contains("error=db down"),
            "{text}"
        );
        for line in &lines {
            assert!(
                line.contains("kafka.message{topic=orders partition=2"),
                "{line}"
            );
            assert!(
                line.contains("key=\"customer-7\" group=\"billing\""),
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn publishes_are_logged_with_where_they_landed() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_max_level(Level::INFO)
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let publish = tower::service_fn(|m: Message| async move {
            Ok::<_, BoxError>(Delivery::new(m.topic_arc().clone(), 1, 41))
        });
        let svc = LoggingLayer::new()
            .success_level(Level::INFO)
            .layer(publish);
        svc.oneshot(Message::builder("orders").build())
            .await
            .unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("outcome=\"published\" at=\"orders[1]@41\""),
            "{text}"
        );
    }

    #[tokio::test]
    async fn successes_stay_quiet_at_the_default_level() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_max_level(Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let svc = LoggingLayer::new().layer((|_m: Message| async {}).into_service());
        svc.oneshot(Message::builder("t").build()).await.unwrap();
        assert!(out.0.lock().unwrap().is_empty());
    }
}
