//! The innermost producer service: hands a message to librdkafka and waits
//! for the broker's acknowledgement.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use tokio::sync::oneshot;
use tower::Service;

use super::context::XProducerContext;
use crate::config::validate_topic;
use crate::convert::owned_headers;
use crate::error::{Error, Operation};
use crate::{BoxError, Delivery, Message};

/// How long to wait before retrying when librdkafka's queue is full: short,
/// since the queue drains at broker speed.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(1);

/// Set once librdkafka accepted the message: `publish_async` returns then.
#[derive(Clone, Default)]
pub(crate) struct EnqueueSignal(Arc<AtomicBool>);

impl EnqueueSignal {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

#[derive(Clone)]
pub(crate) struct RawPublish {
    pub(crate) client: ThreadedProducer<XProducerContext>,
}

impl Service<Message> for RawPublish {
    type Response = Delivery;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Delivery, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move { publish(&client, message).await.map_err(Into::into) })
    }
}

async fn publish(
    client: &ThreadedProducer<XProducerContext>,
    message: Message,
) -> Result<Delivery, Error> {
    let topic = message.topic_arc().clone();
    validate_topic(&topic)?;
    let partition = message.partition();
    let delivery_error = |source: KafkaError| Error::Delivery {
        topic: topic.clone(),
        partition,
        source,
    };
    let (tx, rx) = oneshot::channel();
    let mut record = BaseRecord::with_opaque_to(&topic, Box::new(tx));
    if let Some(p) = partition {
        record = record.partition(p);
    }
    if let Some(key) = message.key() {
        record = record.key(key.as_ref());
    }
    if let Some(value) = message.value() {
        record = record.payload(value.as_ref());
    }
    if let Some(ts) = message.timestamp() {
        record = record.timestamp(ts.millis());
    }
    if let Some(headers) = owned_headers(message.headers()) {
        record = record.headers(headers);
    }
    loop {
        match client.send(record) {
            Ok(()) => break,
            // Backpressure: librdkafka's queue (queue.buffering.max.messages)
            // is full; wait for deliveries to make room instead of failing.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
            }
            Err((source, _)) => {
                return Err(match source {
                    KafkaError::MessageProduction(_) => delivery_error(source),
                    other => Error::kafka(Operation::Enqueue, other),
                })
            }
        }
    }
    if let Some(signal) = message.extensions().get::<EnqueueSignal>() {
        signal.set();
    }
    match rx.await {
        Ok(Ok(delivery)) => Ok(delivery),
        Ok(Err(source)) => Err(delivery_error(source)),
        // librdkafka dropped the opaque without a report: the client is gone.
        Err(_) => Err(Error::Undelivered { topic }),
    }
}
