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

/// A message that fails on the main topic and in the first retry tier is
/// handled three times, by two consumers, and every call is in the trace of
/// the span that published it: the retry copies carry `traceparent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_continues_across_retry_tiers() {
    use xkafka::retry_topics::{headers, RetryTopics};
    use xkafka::{Ack, BoxError};

    let (exporter, provider) = exporter();
    let source = topic("trace-rt", 1).await;
    let (trace_id, _) = publish_three(&source).await;
    let retries = RetryTopics::new(producer(), source.as_str())
        .tiers([Duration::from_millis(100), Duration::from_millis(100)]);
    retries
        .ensure_topics(&brokers(), Duration::from_secs(10))
        .await
        .unwrap();
    // (key, attempt) → the trace of the handler's span.
    let seen: Arc<Mutex<HashMap<(String, usize), TraceId>>> = Arc::default();
    let record = seen.clone();
    let consumer = retries
        .subscribe(xkafka::Consumer::builder(unique("trace-rt-g")))
        .brokers([brokers()])
        .config("auto.offset.reset", "earliest")
        .config("fetch.wait.max.ms", "50")
        .error_handler(|err| panic!("unexpected: {err}"))
        .layer(ExtractLayer)
        .layer(retries.layer())
        .handler(move |m: Message| {
            let record = record.clone();
            async move {
                let attempt: usize = m
                    .headers()
                    .get_str(headers::ATTEMPT)
                    .map_or(0, |a| a.parse().unwrap());
                let id = tracing::Span::current()
                    .context()
                    .span()
                    .span_context()
                    .trace_id();
                let key = m.key_str().unwrap().to_owned();
                record.lock().unwrap().insert((key.clone(), attempt), id);
                if key == "traced" && attempt < 2 {
                    return Err::<Ack, BoxError>("downstream is down".into());
                }
                Ok(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let probe = seen.clone();
    let summary = consumer
        .run(until(
            move || probe.lock().unwrap().len() >= 5,
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    for attempt in 0..=2 {
        assert_eq!(
            seen.get(&("traced".to_owned(), attempt)),
            Some(&trace_id),
            "attempt {attempt}: the publisher's trace ({seen:?})"
        );
    }
    assert_eq!(summary.skipped, 2, "moved twice: {summary:?}");
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let in_trace = spans
        .iter()
        .filter(|s| s.name == "kafka.process" && s.span_context.trace_id() == trace_id)
        .count();
    assert!(
        in_trace >= 3,
        "one process span per call in the trace, {in_trace} found"
    );
}
