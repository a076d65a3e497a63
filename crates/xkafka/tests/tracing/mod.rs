//! Trace propagation on the real broker, checked with OpenTelemetry's
//! in-memory exporter. A test binary of its own: it installs the global
//! `tracing` subscriber.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::common::*;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use xkafka::middleware::trace_context::{ExtractLayer, InjectLayer};
use xkafka::{Batch, BatchConsumer, Decision, Message, Producer};

fn exporter() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static INIT: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    INIT.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("xkafka-tests");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        (exporter, provider)
    })
}

/// Publishes "traced" inside a `checkout` span, "plain" outside any span and
/// "garbled" with a garbage `traceparent`; returns the checkout span's ids.
async fn publish_three(topic: &str) -> (TraceId, SpanId) {
    let producer = Producer::builder("xkafka-tests-trace")
        .brokers([brokers()])
        .error_handler(|err| eprintln!("producer: {err}"))
        .layer(InjectLayer)
        .build()
        .unwrap();
    let span = tracing::info_span!("checkout");
    let ids = {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.trace_id(), sc.span_id())
    };
    let traced = Message::builder(topic).partition(0).key("traced").build();
    producer.publish(traced).instrument(span).await.unwrap();
    producer
        .publish(Message::builder(topic).partition(0).key("plain").build())
        .await
        .unwrap();
    let garbled = Message::builder(topic)
        .partition(0)
        .key("garbled")
        .header("traceparent", "00-nonsense")
        .build();
    producer.publish(garbled).await.unwrap();
    producer.close().await;
    (ids.0, ids.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumed_message_continues_the_producers_trace() {
    let (exporter, provider) = exporter();
    let topic = topic("trace", 1).await;
    let (trace_id, checkout_span) = publish_three(&topic).await;
    assert_ne!(
        trace_id,
        TraceId::INVALID,
        "the subscriber records OpenTelemetry spans"
    );

    let seen: Arc<Mutex<HashMap<String, TraceId>>> = Arc::default();
    let record = seen.clone();
    let consumer = consumer(&unique("trace-g"), &topic)
        .error_handler(|err| panic!("unexpected: {err}"))
        .layer(ExtractLayer)
        .handler(move |m: Message| {
            let record = record.clone();
            async move {
                let id = tracing::Span::current()
                    .context()
                    .span()
                    .span_context()
                    .trace_id();
                record
                    .lock()
                    .unwrap()
                    .insert(m.key_str().unwrap().to_owned(), id);
            }
        })
        .build()
        .unwrap();
    let probe = seen.clone();
    consumer
        .run(until(
            move || probe.lock().unwrap().len() >= 3,
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen["traced"], trace_id,
        "same trace as the publishing span"
    );
    for key in ["plain", "garbled"] {
        assert_ne!(seen[key], trace_id, "{key}: a new trace");
        assert_ne!(seen[key], TraceId::INVALID, "{key}: still traced");
    }
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let process = spans
        .iter()
        .find(|s| s.name == "kafka.process" && s.span_context.trace_id() == trace_id)
        .expect("a kafka.process span in the producer's trace");
    assert_eq!(
        process.parent_span_id, checkout_span,
        "child of the span that published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_span_links_every_message() {
    let (exporter, provider) = exporter();
    let topic = topic("trace-batch", 1).await;
    let (trace_id, checkout_span) = publish_three(&topic).await;
    let handled: Arc<Mutex<usize>> = Arc::default();
    let counter = handled.clone();
    let consumer = BatchConsumer::builder(unique("trace-batch-g"))
        .brokers([brokers()])
        .topics([topic.as_str()])
        .config("auto.offset.reset", "earliest")
        .batch_size(3)
        .batch_timeout(Duration::from_secs(2))
        .error_handler(|_| Decision::Stop)
        .layer(ExtractLayer)
        .handler(move |b: Batch| {
            *counter.lock().unwrap() += b.len();
            async {}
        })
        .build()
        .unwrap();
    let probe = handled.clone();
    consumer
        .run(until(
            move || *probe.lock().unwrap() >= 3,
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let batch = spans
        .iter()
        .find(|s| {
            s.name == "kafka.batch"
                && s.links
                    .iter()
                    .any(|l| l.span_context.trace_id() == trace_id)
        })
        .expect("a kafka.batch span linked to the traced message");
    let linked: Vec<_> = batch
        .links
        .iter()
        .map(|l| (l.span_context.trace_id(), l.span_context.span_id()))
        .collect();
    assert_eq!(
        linked,
        [(trace_id, checkout_span)],
        "only valid contexts are linked: {linked:?}"
    );
}
