//! W3C trace-context propagation through message headers (feature
//! `opentelemetry`).
//!
//! * On publish, [`InjectLayer`] writes the current span's context
//!   (`traceparent`, `tracestate`) into the message's headers.
//! * On consume, [`ExtractLayer`] reads them and handles the message in a
//!   `kafka.process` span whose parent is the producer's span — so the
//!   handler's spans (and the logging layer's) join the producer's trace. A
//!   batch is handled in a `kafka.batch` span *linked* to every message's
//!   context.
//!
//! It works with any OpenTelemetry exporter: install
//! `tracing_opentelemetry::layer()` in your `tracing` subscriber. A missing
//! or garbled `traceparent` simply starts a new trace.
//!
//! ```
//! use xkafka_core::middleware::trace_context::{ExtractLayer, InjectLayer};
//! let (_producer_side, _consumer_side) = (InjectLayer, ExtractLayer);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::batch::Batch;
use crate::headers::{Header, Headers};
use crate::message::Message;
use crate::BoxError;

struct HeaderInjector<'a>(&'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Replace, not append: a re-published message carries the new context.
        self.0.remove(key);
        self.0.push(Header::new(key, value));
    }
}

struct HeaderExtractor<'a>(&'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get_str(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(Header::name).collect()
    }
}

/// The context carried by `headers` (empty when there is none, or it does
/// not parse).
pub fn extract(headers: &Headers) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `context` into `headers` as `traceparent` / `tracestate`.
pub fn inject(context: &Context, headers: &mut Headers) {
    TraceContextPropagator::new().inject_context(context, &mut HeaderInjector(headers));
}

/// Producer side: injects the current span's context; see the [module
/// docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct InjectLayer;

impl<S> Layer<S> for InjectLayer {
    type Service = Inject<S>;

    fn layer(&self, inner: S) -> Inject<S> {
        Inject { inner }
    }
}

/// The service made by [`InjectLayer`].
#[derive(Clone, Debug)]
pub struct Inject<S> {
    inner: S,
}

impl<S: Service<Message>> Service<Message> for Inject<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut message: Message) -> Self::Future {
        let context = tracing::Span::current().context();
        if context.span().span_context().is_valid() {
            inject(&context, message.headers_mut());
        }
        self.inner.call(message)
    }
}

/// Consumer side: continues the producer's trace; see the [module
/// docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtractLayer;

impl<S> Layer<S> for ExtractLayer {
    type Service = Extract<S>;

    fn layer(&self, inner: S) -> Extract<S> {
        Extract { inner }
    }
}

/// The service made by [`ExtractLayer`].
#[derive(Clone, Debug)]
pub struct Extract<S> {
    inner: S,
}

type Boxed<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S> Service<Message> for Extract<S>
where
    S: Service<Message>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Boxed<S::Response>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let span = tracing::info_span!(
            "kafka.process",
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.destination.name = %message.topic(),
            messaging.kafka.destination.partition = message.partition(),
            messaging.kafka.message.offset = message.offset(),
        );
        let parent = extract(message.headers());
        if parent.span().span_context().is_valid() {
            // Fails only without an OpenTelemetry layer, where there is no
            // trace to continue anyway.
            let _ = span.set_parent(parent);
        }
        let future = span.in_scope(|| self.inner.call(message));
        Box::pin(async move { future.await.map_err(Into::into) }.instrument(span))
    }
}

impl<S> Service<Batch> for Extract<S>
where
    S: Service<Batch>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Boxed<S::Response>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, batch: Batch) -> Self::Future {
        let span = tracing::info_span!(
            "kafka.batch",
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.batch.message_count = batch.len(),
        );
        // One span for many messages: each producer's context is a link.
        for message in batch.iter() {
            let context = extract(message.headers());
            let span_context = context.span().span_context().clone();
            if span_context.is_valid() {
                span.add_link(span_context);
            }
        }
        let future = span.in_scope(|| self.inner.call(batch));
        Box::pin(async move { future.await.map_err(Into::into) }.instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "00-zz-yy-01",
            "00-00000000000000000000000000000000-0000000000000000-01",
        ] {
            let mut headers = Headers::new();
            headers.insert("traceparent", bad);
            assert!(
                !extract(&headers).span().span_context().is_valid(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_valid_traceparent_round_trips() {
        let mut headers = Headers::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let context = extract(&headers);
        let sc = context.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = Headers::new();
        out.insert("traceparent", "old");
        inject(&context, &mut out);
        assert_eq!(
            out.get_all("traceparent").count(),
            1,
            "replaced, not appended"
        );
        assert_eq!(
            out.get_str("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }
}
