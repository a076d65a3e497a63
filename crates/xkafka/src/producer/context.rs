//! librdkafka callbacks of the producer: delivery reports, errors, logs.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use tokio::sync::oneshot;

use super::driver::{run_callbacks, MessageCallback, OnDeliveryFn, Pending};
use crate::convert::TopicNames;
use crate::error::{Error, Operation};
use crate::log::{forward_log, scrub};
use crate::Delivery;

/// Where librdkafka's delivery report for one message goes.
pub(crate) type DeliverySender = oneshot::Sender<Result<Delivery, KafkaError>>;

/// The delivery opaque of one message.
pub(crate) enum DeliveryTarget {
    /// A `publish` (or a middleware stack) waits for it.
    Waiter {
        tx: DeliverySender,
        /// The message's topic, so that the report need not allocate it.
        topic: Arc<str>,
    },
    /// `publish_async` without middleware: the callbacks run right in
    /// librdkafka's delivery thread, with no task in between. Only the
    /// message's own callback travels with it; the producer-wide one and the
    /// pending count live in the context (no per-message reference counts).
    Async {
        // In a Mutex only to be Sync, as librdkafka's opaques must be.
        callback: Option<Mutex<MessageCallback>>,
    },
}

impl DeliveryTarget {
    /// The opaque librdkafka carries with the message. The common case, an
    /// asynchronous publish without a callback of its own, needs nothing
    /// (0) and allocates nothing; the rest travel boxed, as an address.
    pub(crate) fn into_opaque(self) -> usize {
        match self {
            DeliveryTarget::Async { callback: None } => 0,
            target => Box::into_raw(Box::new(target)).expose_provenance(),
        }
    }

    /// Takes back what [`into_opaque`](Self::into_opaque) made.
    ///
    /// Each opaque must be taken back exactly once: librdkafka hands it to
    /// the delivery callback once per message it accepted, and returns it
    /// with a message it refused.
    #[allow(unsafe_code)]
    pub(crate) fn from_opaque(opaque: usize) -> Self {
        if opaque == 0 {
            return DeliveryTarget::Async { callback: None };
        }
        // SAFETY: a non-zero opaque is the address of a leaked
        // `Box<DeliveryTarget>` (see `into_opaque`), reclaimed only here and
        // only once (see above).
        *unsafe {
            Box::from_raw(std::ptr::with_exposed_provenance_mut::<DeliveryTarget>(
                opaque,
            ))
        }
    }
}

pub(crate) type ProducerErrorFn = Arc<dyn Fn(&Error) + Send + Sync>;

pub(crate) struct XProducerContext {
    pub(crate) name: Arc<str>,
    pub(crate) error_handler: ProducerErrorFn,
    pub(crate) on_delivery: Option<OnDeliveryFn>,
    /// Counts `DeliveryTarget::Async` messages whose callbacks are owed.
    pub(crate) pending: Arc<Pending>,
    /// Topic names for `Async` reports, used by the delivery thread only.
    /// A name carried in each message's opaque instead was cloned on the
    /// publishing thread and dropped on this one: its reference count
    /// bounced between the two cores for every message.
    pub(crate) topics: TopicNames,
}

impl ClientContext for XProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(&self.name, level, fac, log_message);
    }

    // Global errors (all brokers down, fatal idempotence errors, auth
    // failures) are not tied to one message: only the error handler sees them.
    fn error(&self, error: KafkaError, reason: &str) {
        if is_echo(&error, reason) {
            return;
        }
        let reason = scrub(reason);
        tracing::debug!(producer = %self.name, %error, %reason, "producer client error");
        (self.error_handler)(&Error::kafka(Operation::Client, error));
    }
}

impl ProducerContext for XProducerContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let target = DeliveryTarget::from_opaque(opaque);
        let topic = match &target {
            DeliveryTarget::Waiter { topic, .. } => topic.clone(),
            DeliveryTarget::Async { .. } => {
                let message = match result {
                    Ok(msg) | Err((_, msg)) => msg,
                };
                self.topics.get(message.topic())
            }
        };
        let report = match result {
            Ok(msg) => Ok(Delivery::new(topic, msg.partition(), msg.offset())
                .with_timestamp(crate::convert::timestamp(msg.timestamp()))),
            Err((err, msg)) => Err((err.clone(), topic, msg.partition())),
        };
        match target {
            // The receiver is gone when the caller stopped waiting (cancelled
            // `publish`); the report is then of no use to anyone.
            DeliveryTarget::Waiter { tx, .. } => {
                let _ = tx.send(report.map_err(|(err, _, _)| err));
            }
            DeliveryTarget::Async { callback } => {
                let callback = callback.map(|c| c.into_inner().unwrap_or_else(|p| p.into_inner()));
                let topic = match &report {
                    Ok(delivery) => delivery.topic.clone(),
                    Err((_, topic, _)) => topic.clone(),
                };
                run_callbacks(
                    &topic,
                    self.on_delivery.as_ref(),
                    callback,
                    report.map_err(delivery_error),
                );
                self.pending.done();
            }
        }
    }
}

fn delivery_error((source, topic, partition): (KafkaError, Arc<str>, i32)) -> Error {
    Error::Delivery {
        topic,
        partition: (partition >= 0).then_some(partition),
        source,
    }
}

thread_local! {
    /// The error event this thread has just reported.
    static LAST_EVENT: RefCell<Option<(Option<RDKafkaErrorCode>, String)>> =
        const { RefCell::new(None) };
}

/// Whether this call is the second delivery of the error event this thread
/// has just reported. rdkafka 0.39's producer poll hands every error event to
/// `ClientContext::error` twice in a row on the polling thread
/// (`Client::poll_event`, then `BaseProducer::handle_error_event`): without
/// this the error handler saw each error twice.
fn is_echo(error: &KafkaError, reason: &str) -> bool {
    let event = (error.rdkafka_error_code(), reason.to_owned());
    LAST_EVENT.with(|last| {
        let mut last = last.borrow_mut();
        if last.as_ref() == Some(&event) {
            *last = None;
            true
        } else {
            *last = Some(event);
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_event_is_reported_once() {
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        let transport = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        let calls = [
            (&down, "1/1 brokers are down"),
            (&down, "1/1 brokers are down"),
            (&transport, "broker 1: connection refused"),
            (&transport, "broker 1: connection refused"),
            // The same error again is a new event.
            (&transport, "broker 1: connection refused"),
            (&transport, "broker 1: connection refused"),
        ];
        let reported: Vec<bool> = calls.iter().map(|(e, r)| !is_echo(e, r)).collect();
        assert_eq!(reported, [true, false, true, false, true, false]);
    }
}
