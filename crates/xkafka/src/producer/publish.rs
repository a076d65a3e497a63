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

use super::context::{DeliveryTarget, XProducerContext};
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

pub(crate) async fn publish(
    client: &ThreadedProducer<XProducerContext>,
    message: Message,
) -> Result<Delivery, Error> {
    let topic = message.topic_arc().clone();
    let partition = message.partition();
    let (tx, rx) = oneshot::channel();
    let target = DeliveryTarget::Waiter {
        tx,
        topic: topic.clone(),
    };
    enqueue(client, &message, target).await?;
    if let Some(signal) = message.extensions().get::<EnqueueSignal>() {
        signal.set();
    }
    match rx.await {
        Ok(Ok(delivery)) => Ok(delivery),
        Ok(Err(source)) => Err(Error::Delivery {
            topic,
            partition,
            source,
        }),
        // librdkafka dropped the opaque without a report: the client is gone.
        Err(_) => Err(Error::Undelivered { topic }),
    }
}

/// Hands `message` to librdkafka with `target` as its delivery opaque,
/// waiting (not failing) while librdkafka's queue is full.
pub(crate) async fn enqueue(
    client: &ThreadedProducer<XProducerContext>,
    message: &Message,
    target: DeliveryTarget,
) -> Result<(), Error> {
    let topic = message.topic();
    validate_topic(topic)?;
    let mut record = BaseRecord::with_opaque_to(topic, Box::new(target));
    if let Some(p) = message.partition() {
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
            Ok(()) => return Ok(()),
            // Backpressure: librdkafka's queue (queue.buffering.max.messages)
            // is full; wait for deliveries to make room instead of failing.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
            }
            Err((source, back)) => {
                // Not accepted: the caller reports it; the opaque (and a
                // completion in it) must not report it a second time.
                if let DeliveryTarget::Callback(completion) = *back.delivery_opaque {
                    completion.forget();
                }
                return Err(match source {
                    KafkaError::MessageProduction(_) => Error::Delivery {
                        topic: message.topic_arc().clone(),
                        partition: message.partition(),
                        source,
                    },
                    other => Error::kafka(Operation::Enqueue, other),
                });
            }
        }
    }
}
