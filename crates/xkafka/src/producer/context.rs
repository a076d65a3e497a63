//! librdkafka callbacks of the producer: delivery reports, errors, logs.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use tokio::sync::oneshot;

use super::driver::{Hooks, MessageCallback};
use crate::convert::{Fetched, TopicNames};
use crate::error::Error;
use crate::log::forward_log;
use crate::secret::scrub;
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

pub(crate) struct XProducerContext {
    /// The user's callbacks; its pending count includes the
    /// `DeliveryTarget::Async` messages whose callbacks are owed.
    pub(crate) hooks: Arc<Hooks>,
    /// Topic names for `Async` reports, used by the delivery thread only.
    /// A name carried in each message's opaque instead was cloned on the
    /// publishing thread and dropped on this one: its reference count
    /// bounced between the two cores for every message.
    pub(crate) topics: TopicNames,
    /// Transactional producers: which handlers may publish into the open
    /// transaction (see `fence.rs`).
    pub(crate) fence: Option<Arc<super::fence::Fence>>,
}

impl ClientContext for XProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(&self.hooks.name, level, fac, log_message);
    }

    // Reached through rdkafka's `BaseProducer::poll` (a flush serves
    // reports that way), which reports each error event twice.
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_echo(&error, reason) {
            self.client_error(error, reason);
        }
    }
}

impl ProducerContext for XProducerContext {
    type DeliveryOpaque = usize;

    // Reached through rdkafka's `BaseProducer::poll`, which a flush calls;
    // the delivery thread calls `report` directly.
    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (Ok(message) | Err((_, message))) = result;
        self.report(Fetched::of(message), opaque);
    }
}

impl XProducerContext {
    /// A global error (all brokers down, fatal idempotence errors, auth
    /// failures), not tied to one message: only the error handler sees it.
    pub(crate) fn client_error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.hooks
                .stats
                .brokers_down
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let reason = scrub(reason);
        // The application's subscriber runs here, on the polling thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tracing::debug!(producer = %self.hooks.name, %error, %reason, "producer client error");
        }));
        self.hooks.report(&Error::client(error, &reason));
    }

    /// Serves librdkafka's delivery report of `message`, whose delivery
    /// opaque is `opaque`.
    pub(crate) fn report(&self, message: Fetched<'_>, opaque: usize) {
        match DeliveryTarget::from_opaque(opaque) {
            DeliveryTarget::Waiter { tx, topic } => {
                let report = report_of(message, topic);
                self.count(&report);
                // The receiver is gone when the caller stopped waiting
                // (cancelled `publish`); the report is then of no use to
                // anyone.
                let _ = tx.send(report.map_err(|(err, _, _)| err));
            }
            DeliveryTarget::Async { callback } => {
                let error = message.error();
                // Read first: the timestamp lies on a line of librdkafka's
                // message that nothing has touched on this thread yet (a
                // cache miss, the largest single cost of a report, unless
                // the delivery thread prefetched it). Asked for before the
                // topic lookup, the wait overlaps it.
                let (partition, offset, timestamp) =
                    (message.partition(), message.offset(), message.timestamp());
                let topic = self.take_topic(message.topic_bytes().unwrap_or_default());
                let callback = callback.map(|c| c.into_inner().unwrap_or_else(|p| p.into_inner()));
                let Some(callback) = callback else {
                    // The common case: the producer-wide callback only, with
                    // the report built in place and lent to it.
                    let report = match error {
                        None => {
                            self.reachable();
                            Ok(Delivery::new(topic, partition, offset).with_timestamp(timestamp))
                        }
                        Some(code) => {
                            let err = KafkaError::MessageProduction(code);
                            self.count_failure(&err, &topic);
                            Err(delivery_error((err, topic, partition)))
                        }
                    };
                    self.hooks.on_delivery(&report);
                    if let Some(topic) = topic_of(report) {
                        self.keep_topic(topic);
                    }
                    self.hooks.pending.reported();
                    return;
                };
                // The message's own callback keeps the report (and its
                // topic): the thread keeps a copy.
                self.keep_topic(topic.clone());
                let report = report_of(message, topic);
                match &report {
                    Ok(_) => self.reachable(),
                    Err((err, topic, _)) => self.count_failure(err, topic),
                }
                self.hooks
                    .deliver_report(Some(callback), report.map_err(delivery_error));
                self.hooks.pending.reported();
            }
        }
    }
}

/// What a librdkafka report says, with the message's topic.
fn report_of(
    message: Fetched<'_>,
    topic: Arc<str>,
) -> Result<Delivery, (KafkaError, Arc<str>, i32)> {
    match message.error() {
        None => Ok(Delivery::new(topic, message.partition(), message.offset())
            .with_timestamp(message.timestamp())),
        Some(code) => Err((
            KafkaError::MessageProduction(code),
            topic,
            message.partition(),
        )),
    }
}

/// The topic a delivery result carries, taken back.
fn topic_of(result: Result<Delivery, Error>) -> Option<Arc<str>> {
    match result {
        Ok(delivery) => Some(delivery.topic),
        Err(Error::Delivery { topic, .. }) => Some(topic),
        Err(_) => None,
    }
}

impl XProducerContext {
    /// The shared name of a reported message's topic, moved out of this
    /// thread's cache of the last one (thread-local: no lock, no shared
    /// line) when it has the same bytes; else looked up in the shared set.
    /// Moved rather than cloned, and put back with
    /// [`keep_topic`](Self::keep_topic) once the report is done with: a
    /// clone and its drop were two atomic operations per report, about a
    /// quarter of this callback's own time in `publish_async`. Any name
    /// with the same bytes will do, whichever producer made it.
    fn take_topic(&self, name: &[u8]) -> Arc<str> {
        let cached = LAST_TOPIC.try_with(|last| {
            // While a report's callbacks run the cache is empty: a callback
            // that flushes the producer (and so serves reports inside this
            // one) looks their names up in the shared set.
            last.try_borrow_mut()
                .ok()?
                .take_if(|topic| topic.as_bytes() == name)
        });
        match cached {
            Ok(Some(topic)) => topic,
            // Another topic, or the thread is exiting (a producer dropped
            // by a thread-local's destructor reports its purged messages).
            _ => self.topics.get(&String::from_utf8_lossy(name)),
        }
    }

    /// Keeps `topic` as this thread's last reported one.
    fn keep_topic(&self, topic: Arc<str>) {
        let _ = LAST_TOPIC.try_with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Some(topic);
            }
        });
    }

    /// An acknowledged message: the brokers are reachable again.
    fn reachable(&self) {
        use std::sync::atomic::Ordering;
        let down = &self.hooks.stats.brokers_down;
        if down.load(Ordering::Relaxed) {
            down.store(false, Ordering::Release);
        }
    }

    /// A direct asynchronous publish's failed report: counted as a
    /// failure, and subtracted from the reports that count deliveries.
    fn count_failure(&self, err: &KafkaError, topic: &str) {
        self.note_failure(err, topic);
        self.hooks
            .stats
            .failed_reports
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn count(&self, report: &Result<Delivery, (KafkaError, Arc<str>, i32)>) {
        use std::sync::atomic::Ordering;
        let stats = &self.hooks.stats;
        match report {
            Ok(_) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.reachable();
            }
            Err((err, topic, _)) => self.note_failure(err, topic),
        }
    }

    fn note_failure(&self, err: &KafkaError, topic: &str) {
        let stats = &self.hooks.stats;
        stats
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("delivery to {topic} failed: {err}"));
    }
}

fn delivery_error((source, topic, partition): (KafkaError, Arc<str>, i32)) -> Error {
    Error::Delivery {
        topic,
        partition: (partition >= 0).then_some(partition),
        source,
    }
}

/// The error event a thread has just reported: what `is_echo` compares.
#[derive(PartialEq, Eq)]
struct ErrorEvent {
    code: Option<RDKafkaErrorCode>,
    /// Where the reason's text lives: inside the event itself.
    at: usize,
    reason: String,
}

thread_local! {
    /// The topic of the last `Async` report this thread handled (see
    /// `XProducerContext::topic_name`).
    static LAST_TOPIC: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
    /// The error event this thread has just reported.
    static LAST_EVENT: RefCell<Option<ErrorEvent>> = const { RefCell::new(None) };
}

/// Whether this call is the second delivery of the error event this thread
/// has just reported.
///
/// rdkafka 0.39.0's producer poll hands every error event to
/// `ClientContext::error` twice in a row, on the polling thread:
/// `Client::poll_event` reports it and returns the event, then
/// `BaseProducer::poll` reports it again (`handle_error_event`). Both calls
/// read the reason from the same live event, so they pass the *same* string
/// (same address, same text): that is what is recognised here, rather than
/// any two equal errors in a row. Two distinct events with the same text
/// carry their text at different addresses unless the first was freed and
/// its memory reused for the second, so this filter does not merge repeated
/// errors while they are queued together, and is reset after each echo.
/// It cannot tell a freed-and-reused address from a second report, though:
/// should rdkafka stop reporting twice, it could still drop some repeats.
/// The test `rdkafka_reports_each_producer_error_event_twice` pins the
/// double report in the locked rdkafka, so an upgrade that fixes it fails
/// loudly, and this filter must then go.
///
/// (rdkafka turns a reason that is not UTF-8 into a fresh lossy copy per
/// call: such a reason, recognised by its replacement characters, is
/// compared by text only.)
fn is_echo(error: &KafkaError, reason: &str) -> bool {
    let event = ErrorEvent {
        code: error.rdkafka_error_code(),
        at: reason.as_ptr().addr(),
        reason: reason.to_owned(),
    };
    LAST_EVENT.with(|last| {
        let mut last = last.borrow_mut();
        let echo = last.as_ref().is_some_and(|previous| {
            previous.code == event.code
                && previous.reason == event.reason
                && (previous.at == event.at || event.reason.contains('\u{FFFD}'))
        });
        *last = if echo { None } else { Some(event) };
        echo
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
    use rdkafka::producer::{Producer as _, ThreadedProducer};

    use super::*;

    #[test]
    fn each_error_event_is_reported_once() {
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        let transport = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        // Each event's text, as rdkafka passes it twice: the same string.
        let all_down = String::from("1/1 brokers are down");
        let refused = String::from("broker 1: connection refused");
        let refused_again = String::from("broker 1: connection refused");
        let calls = [
            (&down, all_down.as_str()),
            (&down, all_down.as_str()),
            (&transport, refused.as_str()),
            (&transport, refused.as_str()),
            // The same error again is a new event, even at the same address.
            (&transport, refused.as_str()),
            (&transport, refused.as_str()),
            // Two events with the same text, queued together: both reported.
            (&transport, refused.as_str()),
            (&transport, refused_again.as_str()),
        ];
        let reported: Vec<bool> = calls.iter().map(|(e, r)| !is_echo(e, r)).collect();
        assert_eq!(
            reported,
            [true, false, true, false, true, false, true, true]
        );
    }

    /// One `error` call: code, the reason's address and text, the thread.
    type Call = (
        Option<RDKafkaErrorCode>,
        usize,
        String,
        std::thread::ThreadId,
    );

    /// Records every `error` call as rdkafka makes it.
    struct Recorder {
        calls: Mutex<Vec<Call>>,
        enough: AtomicBool,
    }

    impl ClientContext for Recorder {
        fn error(&self, error: KafkaError, reason: &str) {
            let mut calls = self.calls.lock().unwrap();
            calls.push((
                error.rdkafka_error_code(),
                reason.as_ptr().addr(),
                reason.to_owned(),
                std::thread::current().id(),
            ));
            if calls.len() >= 6 {
                self.enough.store(true, Ordering::SeqCst);
            }
        }
    }

    impl ProducerContext for Recorder {
        type DeliveryOpaque = ();
        fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
    }

    /// What `is_echo` undoes, pinned: if an rdkafka upgrade stops reporting
    /// each producer error event twice (same string, same thread, one right
    /// after the other), this fails, and `is_echo` must be removed.
    #[test]
    fn rdkafka_reports_each_producer_error_event_twice() {
        let recorder = Recorder {
            calls: Mutex::default(),
            enough: AtomicBool::new(false),
        };
        let producer = ThreadedProducer::<Recorder>::from_config_and_context(
            ClientConfig::new()
                // Nothing listens there: connection refused, all brokers down.
                .set("bootstrap.servers", "127.0.0.1:1")
                .set("reconnect.backoff.ms", "10")
                .set("reconnect.backoff.max.ms", "50"),
            recorder,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !producer.context().enough.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let calls = producer.context().calls.lock().unwrap().clone();
        assert!(calls.len() >= 6, "too few client errors: {calls:?}");
        let pairs = calls.len() / 2;
        for pair in calls.chunks_exact(2).take(pairs) {
            assert!(
                pair[0] == pair[1],
                "rdkafka no longer reports each error event twice in a row (remove \
                 `is_echo`): {calls:#?}"
            );
        }
        // Distinct events follow each other: the pairs are not one error
        // repeated.
        let texts: std::collections::HashSet<&str> = calls.iter().map(|c| c.2.as_str()).collect();
        assert!(texts.len() >= 2, "{calls:#?}");
    }
}
