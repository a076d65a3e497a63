//! librdkafka callbacks of the producer: delivery reports, errors, logs.

use std::cell::RefCell;
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use tokio::sync::oneshot;

use super::driver::Completion;
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
    /// librdkafka's delivery thread, with no task in between.
    Callback(Completion),
}

pub(crate) type ProducerErrorFn = Arc<dyn Fn(&Error) + Send + Sync>;

pub(crate) struct XProducerContext {
    pub(crate) name: Arc<str>,
    pub(crate) error_handler: ProducerErrorFn,
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
    type DeliveryOpaque = Box<DeliveryTarget>;

    fn delivery(&self, result: &DeliveryResult<'_>, target: Box<DeliveryTarget>) {
        // The topic comes from the opaque: reading librdkafka's name back
        // would cost a string check and an allocation per message.
        let topic = match &*target {
            DeliveryTarget::Waiter { topic, .. } => topic.clone(),
            DeliveryTarget::Callback(completion) => completion.topic().clone(),
        };
        let report = match result {
            Ok(msg) => Ok(Delivery::new(topic, msg.partition(), msg.offset())
                .with_timestamp(crate::convert::timestamp(msg.timestamp()))),
            Err((err, msg)) => Err((err.clone(), topic, msg.partition())),
        };
        match *target {
            // The receiver is gone when the caller stopped waiting (cancelled
            // `publish`); the report is then of no use to anyone.
            DeliveryTarget::Waiter { tx, .. } => {
                let _ = tx.send(report.map_err(|(err, _, _)| err));
            }
            DeliveryTarget::Callback(completion) => {
                completion.finish(
                    report.map_err(|(source, topic, partition)| Error::Delivery {
                        topic,
                        partition: (partition >= 0).then_some(partition),
                        source,
                    }),
                );
            }
        }
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
