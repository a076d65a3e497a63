//! [`RecordingProducer`]: a producer that records what it is asked to
//! publish instead of sending it.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::{BoxError, Delivery, Error, Message, Producer};

/// A [`Producer`] that records what is published and acknowledges it at
/// once, without a broker (librdkafka is created without brokers and never
/// connects). Offsets count up per topic and partition from 0; a message
/// without a partition lands in partition 0.
#[derive(Clone)]
pub struct RecordingProducer {
    log: Arc<Recorded>,
    producer: Producer,
}

#[derive(Default)]
struct Recorded {
    messages: Mutex<Vec<Message>>,
    next: Mutex<BTreeMap<(Arc<str>, i32), i64>>,
    failures: Mutex<VecDeque<String>>,
}

impl RecordingProducer {
    /// A recording producer; must be called inside a tokio runtime.
    pub fn new() -> Result<Self, Error> {
        let log = Arc::new(Recorded::default());
        let producer = Producer::builder("xkafka-recording")
            .offline()
            .error_handler(|err| tracing::debug!(%err, "recording producer"))
            .layer(RecordLayer(log.clone()))
            .build()?;
        Ok(RecordingProducer { log, producer })
    }

    /// The producer to hand to the code under test (clones record into the
    /// same log).
    pub fn producer(&self) -> Producer {
        self.producer.clone()
    }

    /// Everything published so far, in order (failed publishes excluded).
    pub fn published(&self) -> Vec<Message> {
        self.log
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What was published to `topic`, in order.
    pub fn published_to(&self, topic: &str) -> Vec<Message> {
        self.published()
            .into_iter()
            .filter(|m| m.topic() == topic)
            .collect()
    }

    /// The next `count` publishes fail with `reason` (as a broker refusal
    /// would: `publish` returns an error and nothing is recorded).
    pub fn fail_next(&self, count: usize, reason: impl Into<String>) {
        let reason = reason.into();
        let mut failures = self.log.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.extend(std::iter::repeat_n(reason, count));
    }
}

impl fmt::Debug for RecordingProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingProducer")
            .field("published", &self.published().len())
            .finish_non_exhaustive()
    }
}

/// The producer middleware that answers in place of the broker.
#[derive(Clone)]
struct RecordLayer(Arc<Recorded>);

impl<S> Layer<S> for RecordLayer {
    type Service = RecordService;
    fn layer(&self, _inner: S) -> RecordService {
        RecordService(self.0.clone())
    }
}

#[derive(Clone)]
struct RecordService(Arc<Recorded>);

impl Service<Message> for RecordService {
    type Response = Delivery;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Delivery, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let failure = self
            .0
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        if let Some(reason) = failure {
            return std::future::ready(Err(reason.into()));
        }
        let topic = message.topic_arc().clone();
        let partition = message.partition().unwrap_or(0);
        let offset = {
            let mut next = self.0.next.lock().unwrap_or_else(|p| p.into_inner());
            let slot = next.entry((topic.clone(), partition)).or_insert(0);
            *slot += 1;
            *slot - 1
        };
        self.0
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
        std::future::ready(Ok(Delivery::new(topic, partition, offset)))
    }
}
