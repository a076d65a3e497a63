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
    match try_enqueue(client, message, target.into_opaque()) {
        Ok(()) => Ok(()),
        Err(Refused::Full(opaque)) => enqueue_when_room(client, message, opaque).await,
        Err(Refused::Failed(err)) => Err(err),
    }
}

/// Why librdkafka did not take a message.
pub(crate) enum Refused {
    /// Its queue (`queue.buffering.max.messages`) is full: try again once
    /// deliveries made room. The opaque comes back with it.
    Full(usize),
    /// Not accepted at all; the opaque was dropped without calling anything.
    Failed(Error),
}

/// One synchronous attempt to hand `message` to librdkafka. No future is
/// involved: the publish paths that must keep up with librdkafka call this
/// first and only build the waiting future when the queue is full.
pub(crate) fn try_enqueue(
    client: &ThreadedProducer<XProducerContext>,
    message: &Message,
    opaque: usize,
) -> Result<(), Refused> {
    let topic = message.topic();
    if let Err(err) = validate_topic(topic) {
        drop(DeliveryTarget::from_opaque(opaque));
        return Err(Refused::Failed(err));
    }
    let mut record = BaseRecord::with_opaque_to(topic, opaque);
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
    match client.send(record) {
        Ok(()) => Ok(()),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
            Err(Refused::Full(back.delivery_opaque))
        }
        Err((source, back)) => {
            // Not accepted: the caller reports it; the target is dropped
            // without calling anything.
            drop(DeliveryTarget::from_opaque(back.delivery_opaque));
            Err(Refused::Failed(match source {
                KafkaError::MessageProduction(_) => Error::Delivery {
                    topic: message.topic_arc().clone(),
                    partition: message.partition(),
                    source,
                },
                other => Error::kafka(Operation::Enqueue, other),
            }))
        }
    }
}

/// Backpressure: waits for deliveries to make room in librdkafka's queue
/// instead of failing, then hands the message over.
pub(crate) async fn enqueue_when_room(
    client: &ThreadedProducer<XProducerContext>,
    message: &Message,
    opaque: usize,
) -> Result<(), Error> {
    // Cancelled while waiting (the caller dropped the future): the opaque
    // was never handed over and must not leak.
    let mut unsent = Unsent(opaque);
    loop {
        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
        // 0 left behind is the opaque that owns nothing.
        match try_enqueue(client, message, std::mem::take(&mut unsent.0)) {
            Ok(()) => return Ok(()),
            Err(Refused::Full(back)) => unsent.0 = back,
            Err(Refused::Failed(err)) => return Err(err),
        }
    }
}

/// An opaque librdkafka has not taken; dropping it drops its target
/// without calling anything.
struct Unsent(usize);

impl Drop for Unsent {
    fn drop(&mut self) {
        drop(DeliveryTarget::from_opaque(self.0));
    }
}
