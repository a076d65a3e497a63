//! The innermost producer service: hands a message to librdkafka and waits
//! for the broker's acknowledgement.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::BaseRecord;
use tokio::sync::oneshot;
use tower::Service;

use super::context::DeliveryTarget;
use super::poller::PolledProducer;
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
    pub(crate) client: PolledProducer,
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
        Box::pin(async move { publish(&client, None, message).await.map_err(Into::into) })
    }
}

pub(crate) async fn publish(
    client: &PolledProducer,
    handles: Option<&TopicHandles>,
    message: Message,
) -> Result<Delivery, Error> {
    let topic = message.topic_arc().clone();
    let partition = message.partition();
    let (tx, rx) = oneshot::channel();
    let target = DeliveryTarget::Waiter {
        tx,
        topic: topic.clone(),
    };
    enqueue(client, handles, &message, target).await?;
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
    client: &PolledProducer,
    handles: Option<&TopicHandles>,
    message: &Message,
    target: DeliveryTarget,
) -> Result<(), Error> {
    match try_enqueue(client, handles, message, target.into_opaque()) {
        Ok(()) => Ok(()),
        Err(Refused::Full(opaque)) => enqueue_when_room(client, handles, message, opaque).await,
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
///
/// With `handles` (the producer's, when it has no middleware), a message
/// without headers goes to librdkafka by topic handle (see [`TopicHandles`]).
pub(crate) fn try_enqueue(
    client: &PolledProducer,
    handles: Option<&TopicHandles>,
    message: &Message,
    opaque: usize,
) -> Result<(), Refused> {
    // Transactional: admitted (and held until enqueued) only when the
    // handler publishing, if any, belongs to the open transaction.
    let _admitted = match rdkafka::producer::Producer::context(&**client)
        .fence
        .as_deref()
        .map(super::fence::Fence::admit)
    {
        None => None,
        Some(Ok(admitted)) => Some(admitted),
        Some(Err(err)) => {
            drop(DeliveryTarget::from_opaque(opaque));
            return Err(Refused::Failed(err));
        }
    };
    if let Some(rkt) = handles
        .filter(|_| message.headers().is_empty())
        .and_then(|handles| handles.get(client, message.topic_arc()))
    {
        return produce_to(client, rkt, message, opaque);
    }
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
    client: &PolledProducer,
    handles: Option<&TopicHandles>,
    message: &Message,
    opaque: usize,
) -> Result<(), Error> {
    // Cancelled while waiting (the caller dropped the future): the opaque
    // was never handed over and must not leak.
    let mut unsent = Unsent(opaque);
    loop {
        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
        // 0 left behind is the opaque that owns nothing.
        match try_enqueue(client, handles, message, std::mem::take(&mut unsent.0)) {
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

/// Most topics a producer keeps a handle for; messages to any other go by
/// name.
const TOPIC_HANDLES: usize = 16;

/// librdkafka topic handles, kept for the producer's life (publishes
/// without middleware only). A message sent by topic name, as rdkafka's
/// `send` does, costs a fresh `CString` of the name and a lookup of the
/// topic under librdkafka's client-wide *write* lock (`rd_kafka_topic_new0`),
/// which its broker threads take for reading all the time. By handle
/// (`RD_KAFKA_VTYPE_RKT`) librdkafka only counts a reference.
///
/// Filled once per topic, read without locking or reference counting
/// (`OnceLock::get`), so concurrent publishers share them freely. Must be
/// emptied ([`release`](Self::release)) before the client is destroyed.
#[derive(Default)]
pub(crate) struct TopicHandles {
    slots: [OnceLock<TopicHandle>; TOPIC_HANDLES],
}

struct TopicHandle {
    name: Arc<str>,
    /// The `rd_kafka_topic_t *` librdkafka returned (its address; 0 if it
    /// refused the name).
    rkt: usize,
}

impl TopicHandles {
    /// The handle of `topic`, made on first use; `None` when it cannot be
    /// had (invalid name, every slot taken): the message then goes by name,
    /// which reports any error.
    fn get(&self, client: &PolledProducer, topic: &Arc<str>) -> Option<usize> {
        for slot in &self.slots {
            let handle = match slot.get() {
                Some(handle) => handle,
                None => {
                    validate_topic(topic).ok()?;
                    // Another publisher may fill this slot first, maybe with
                    // another topic: then the search goes on.
                    slot.get_or_init(|| TopicHandle::new(client, topic))
                }
            };
            if Arc::ptr_eq(&handle.name, topic) || handle.name == *topic {
                return (handle.rkt != 0).then_some(handle.rkt);
            }
        }
        None
    }

    /// Gives every handle back to librdkafka. The producer calls it before
    /// dropping its client; the handles are not used after.
    pub(crate) fn release(&mut self) {
        for slot in &mut self.slots {
            if let Some(handle) = slot.take() {
                handle.destroy();
            }
        }
    }
}

impl Drop for TopicHandles {
    fn drop(&mut self) {
        self.release();
    }
}

impl TopicHandle {
    #[allow(unsafe_code)]
    fn new(client: &PolledProducer, topic: &Arc<str>) -> Self {
        use rdkafka::producer::Producer as _;
        // Validated (no NUL).
        let rkt = match std::ffi::CString::new(topic.as_bytes()) {
            // SAFETY: the client is live and the name NUL-terminated;
            // librdkafka copies it. A null `conf` means the client's topic
            // configuration, as for a message sent by name.
            Ok(name) => unsafe {
                rdkafka::bindings::rd_kafka_topic_new(
                    client.client().native_ptr(),
                    name.as_ptr(),
                    std::ptr::null_mut(),
                )
            }
            .expose_provenance(),
            Err(_) => 0,
        };
        TopicHandle {
            name: topic.clone(),
            rkt,
        }
    }

    #[allow(unsafe_code)]
    fn destroy(self) {
        if self.rkt != 0 {
            // SAFETY: a handle `rd_kafka_topic_new` returned, destroyed once
            // (it left its slot), while the client is still live (see
            // `TopicHandles::release`).
            unsafe {
                rdkafka::bindings::rd_kafka_topic_destroy(std::ptr::with_exposed_provenance_mut(
                    self.rkt,
                ))
            }
        }
    }
}

/// Hands a message without headers to librdkafka by topic handle: what
/// rdkafka's `send` does, without the name. Same outcomes as
/// [`try_enqueue`] by name.
#[allow(unsafe_code)]
fn produce_to(
    client: &PolledProducer,
    rkt: usize,
    message: &Message,
    opaque: usize,
) -> Result<(), Refused> {
    use rdkafka::bindings as rd;
    use rdkafka::bindings::rd_kafka_vtype_t::*;
    use rdkafka::producer::Producer as _;
    use std::ffi::c_void;

    fn raw(bytes: Option<&bytes::Bytes>) -> (*mut c_void, usize) {
        match bytes {
            Some(b) => (b.as_ptr().cast_mut().cast(), b.len()),
            None => (std::ptr::null_mut(), 0),
        }
    }
    let (value, value_len) = raw(message.value());
    let (key, key_len) = raw(message.key());
    let opaque_ptr = std::ptr::with_exposed_provenance_mut::<c_void>(opaque);
    let rkt = std::ptr::with_exposed_provenance_mut::<rd::rd_kafka_topic_t>(rkt);
    let partition = message.partition().unwrap_or(-1);
    // SAFETY (both calls): the client and the topic handle are live (the
    // handle until the producer releases it, after its last publish); key
    // and value are copied by librdkafka (`RD_KAFKA_MSG_F_COPY`) before
    // this returns. The opaque is the address `DeliveryTarget::into_opaque`
    // exposed (or 0), read back by the delivery callback as rdkafka's
    // `send` would hand it.
    let err = match message.timestamp() {
        // `rd_kafka_produce` rather than `rd_kafka_producev`: the latter
        // takes and drops a reference to the topic handle around every
        // message, two atomic operations on a counter the delivery thread
        // also updates (each report drops its message's reference), so the
        // line bounced between the cores twice per message. It has no
        // timestamp argument (librdkafka stamps the message with the time
        // now, as `producev` does for 0), so a message with a timestamp of
        // its own still goes through `producev`.
        None => {
            if unsafe {
                rd::rd_kafka_produce(
                    rkt,
                    partition,
                    rd::RD_KAFKA_MSG_F_COPY,
                    value,
                    value_len,
                    key,
                    key_len,
                    opaque_ptr,
                )
            } == 0
            {
                rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            } else {
                // librdkafka keeps the reason in a thread-local, set by
                // the failed call on this thread.
                unsafe { rd::rd_kafka_last_error() }
            }
        }
        Some(ts) => unsafe {
            rd::rd_kafka_producev(
                client.client().native_ptr(),
                RD_KAFKA_VTYPE_RKT,
                rkt,
                RD_KAFKA_VTYPE_PARTITION,
                partition,
                RD_KAFKA_VTYPE_MSGFLAGS,
                rd::RD_KAFKA_MSG_F_COPY,
                RD_KAFKA_VTYPE_VALUE,
                value,
                value_len,
                RD_KAFKA_VTYPE_KEY,
                key,
                key_len,
                RD_KAFKA_VTYPE_OPAQUE,
                opaque_ptr,
                RD_KAFKA_VTYPE_TIMESTAMP,
                ts.millis(),
                RD_KAFKA_VTYPE_END,
            )
        },
    };
    if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Ok(());
    }
    let code = RDKafkaErrorCode::from(err);
    if code == RDKafkaErrorCode::QueueFull {
        return Err(Refused::Full(opaque));
    }
    // Not accepted: the caller reports it; the target is dropped without
    // calling anything.
    drop(DeliveryTarget::from_opaque(opaque));
    Err(Refused::Failed(Error::Delivery {
        topic: message.topic_arc().clone(),
        partition: message.partition(),
        source: KafkaError::MessageProduction(code),
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

    use crate::{Message, Producer};

    /// Messages per measurement: librdkafka keeps them all queued (no
    /// broker), so its queue is sized for them.
    const N: usize = 200_000;

    fn unreachable_config() -> [(&'static str, String); 3] {
        [
            // Nothing listens there: every message stays queued.
            ("bootstrap.servers", "127.0.0.1:1".to_owned()),
            ("queue.buffering.max.messages", (2 * N).to_string()),
            ("message.timeout.ms", "300000".to_owned()),
        ]
    }

    /// The publishing thread's cost per message, without a broker: what
    /// `publish_async` and the bench's owned message add to the raw
    /// producer's `send` (librdkafka's enqueue is in both). Not a test: an
    /// ignored measurement, printed, best of three.
    ///
    /// `cargo test --release -p xkafka --lib publish_cost -- --ignored --nocapture`
    /// (BENCHMARKS.md, "Our own cost per message").
    #[test]
    #[ignore]
    fn publish_cost() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let topic: Arc<str> = "cost".into();
        let value = bytes::Bytes::from(vec![b'a'; 100]);
        let raw_value = vec![b'a'; 100];
        // The bench's message (crates/xkafka-bench, `publish_async`).
        let message = |i: usize| {
            Message::builder(topic.clone())
                .key(format!("k{}", i % 1000))
                .value(value.clone())
                .build()
        };
        let best = |f: &mut dyn FnMut() -> Duration| {
            (0..3)
                .map(|_| f().as_nanos() as f64 / N as f64)
                .fold(f64::INFINITY, f64::min)
        };
        let key = best(&mut || {
            let started = Instant::now();
            for i in 0..N {
                std::hint::black_box(format!("k{}", i % 1000));
            }
            started.elapsed()
        });
        let build = best(&mut || {
            let started = Instant::now();
            for i in 0..N {
                std::hint::black_box(message(i));
            }
            started.elapsed()
        });
        let raw = best(&mut || {
            let mut config = ClientConfig::new();
            for (k, v) in unreachable_config() {
                config.set(k, v);
            }
            let producer: ThreadedProducer<DefaultProducerContext> = config.create().unwrap();
            let started = Instant::now();
            for i in 0..N {
                let key = format!("k{}", i % 1000);
                let record = BaseRecord::<_, _>::to(&topic).key(&key).payload(&raw_value);
                producer.send(record).map_err(|(e, _)| e).unwrap();
            }
            let took = started.elapsed();
            rdkafka::producer::Producer::purge(
                &producer,
                rdkafka::producer::PurgeConfig::default().queue(),
            );
            took
        });
        let ours = best(&mut || {
            runtime.block_on(async {
                let producer = Producer::builder("publish-cost")
                    .configs(unreachable_config())
                    .error_handler(|_| {})
                    .on_delivery(|_| {})
                    .build()
                    .unwrap();
                let started = Instant::now();
                for i in 0..N {
                    producer.publish_async(message(i)).await.unwrap();
                }
                let took = started.elapsed();
                producer.close_within(Duration::ZERO).await;
                took
            })
        });
        println!(
            "ns per message, best of 3: key format! {key:.0}; owned message (build + drop) \
             {build:.0}; raw send {raw:.0}; ours publish_async with the owned message {ours:.0} \
             (ours - raw {:.0}; of which the message, beyond format!, {:.0})",
            ours - raw,
            build - key
        );
        assert!(ours.is_finite() && raw.is_finite());
    }
}
