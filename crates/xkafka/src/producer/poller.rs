//! The delivery thread: the one thread that serves the producer's main
//! queue (delivery reports, client errors, logs, statistics).
//!
//! rdkafka's `ThreadedProducer` does the same through `BaseProducer::poll`,
//! which wraps every delivery report in a `BorrowedMessage` holding a clone
//! of an `Arc` of its event (two atomic operations per message) and reports
//! each error event twice. This loop reads librdkafka's event directly: the
//! reports of one event are an array of messages, served in order, and the
//! message a few places ahead is prefetched while one is served (the
//! report's timestamp lies on a line of librdkafka's message nothing on this
//! thread has touched yet).
//!
//! Who owns what: [`PolledProducer`] handles share the client and the
//! thread; the thread holds its own reference to the client, so a handle
//! dropped from inside a callback (on this thread) never joins the thread
//! itself, and the client is destroyed by whichever goes last.

use std::ffi::CStr;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext as _;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer as _};

use super::context::XProducerContext;
use crate::convert::Fetched;

/// The name of the thread that serves the producer's events (and runs the
/// delivery callbacks).
pub(crate) const THREAD_NAME: &str = "producer polling thread";

/// How long one wait on the queue lasts: how soon the thread sees that it
/// must stop when nothing arrives.
const POLL_MS: i32 = 100;

/// How many reports ahead of the one being served are prefetched.
const PREFETCH_AHEAD: usize = 8;

/// A librdkafka producer with its delivery thread. Clones share both; the
/// last handle dropped stops the thread and waits for it (unless it is that
/// thread, then the thread finishes by itself).
pub(crate) struct PolledProducer {
    producer: Arc<BaseProducer<XProducerContext>>,
    stop: Arc<AtomicBool>,
    thread: Option<Arc<JoinHandle<()>>>,
}

impl PolledProducer {
    /// Creates the client and starts its delivery thread.
    pub(crate) fn new(config: &ClientConfig, context: XProducerContext) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn({
                let producer = producer.clone();
                let stop = stop.clone();
                move || run(&producer, &stop)
            })
            .map_err(|err| {
                tracing::error!(%err, "cannot start the producer's delivery thread");
                KafkaError::ClientCreation(format!("cannot start the delivery thread: {err}"))
            })?;
        Ok(PolledProducer {
            producer,
            stop,
            thread: Some(Arc::new(thread)),
        })
    }
}

impl Clone for PolledProducer {
    fn clone(&self) -> Self {
        PolledProducer {
            producer: self.producer.clone(),
            stop: self.stop.clone(),
            thread: self.thread.clone(),
        }
    }
}

impl Deref for PolledProducer {
    type Target = BaseProducer<XProducerContext>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl Drop for PolledProducer {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take().and_then(Arc::into_inner) else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        if thread.thread().id() == std::thread::current().id() {
            // Dropped by a callback: the thread stops once it returns, and
            // its reference to the client is then the last.
            return;
        }
        if thread.join().is_err() {
            tracing::error!("the producer's delivery thread panicked");
        }
    }
}

/// The delivery thread's loop: serves events until told to stop. What is
/// reported after that is served by the client's own drop (it purges and
/// serves the reports for up to 500 ms).
#[allow(unsafe_code)]
fn run(producer: &BaseProducer<XProducerContext>, stop: &AtomicBool) {
    // SAFETY: a live client; the handle is released by `Queue`'s drop,
    // before the thread's reference to the client.
    let queue = Queue(unsafe { rdsys::rd_kafka_queue_get_main(producer.client().native_ptr()) });
    let mut messages = Vec::new();
    while !stop.load(Ordering::Acquire) {
        // SAFETY: a live queue.
        let event = unsafe { rdsys::rd_kafka_queue_poll(queue.0, POLL_MS) };
        if !event.is_null() {
            serve(producer.context(), &Event(event), &mut messages);
        }
    }
}

/// A queue handle of librdkafka's, released when dropped.
struct Queue(*mut rdsys::rd_kafka_queue_t);

impl Drop for Queue {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the handle `rd_kafka_queue_get_main` gave, released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0) }
    }
}

/// An event of librdkafka's, destroyed when dropped (with the messages of
/// a delivery report event).
pub(crate) struct Event(pub(crate) *mut rdsys::rd_kafka_event_t);

impl Drop for Event {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: an event the queue handed over, destroyed once.
        unsafe { rdsys::rd_kafka_event_destroy(self.0) }
    }
}

/// Serves one event. `messages` is the thread's buffer for the messages of
/// delivery report events (kept to reuse its allocation).
#[allow(unsafe_code)]
pub(crate) fn serve(
    context: &XProducerContext,
    event: &Event,
    messages: &mut Vec<*const rdsys::rd_kafka_message_t>,
) {
    // SAFETY (all calls below): a live event, read according to its type.
    match unsafe { rdsys::rd_kafka_event_type(event.0) } {
        rdsys::RD_KAFKA_EVENT_DR => {
            let count = unsafe { rdsys::rd_kafka_event_message_count(event.0) };
            messages.clear();
            messages.reserve(count);
            // SAFETY: room for `count` pointers; librdkafka writes `got` of
            // them, which then live as long as the event.
            let got = unsafe {
                rdsys::rd_kafka_event_message_array(event.0, messages.as_mut_ptr(), count)
            };
            unsafe { messages.set_len(got.min(count)) };
            for (i, &message) in messages.iter().enumerate() {
                if let Some(&ahead) = messages.get(i + PREFETCH_AHEAD) {
                    prefetch_timestamp(ahead);
                }
                // SAFETY: the event keeps its messages alive.
                let message = unsafe { Fetched::from_ptr(message) };
                // The callbacks catch the user's panics; this only keeps an
                // unforeseen one from stopping the thread, which would leave
                // every later report unserved.
                let served = catch_unwind(AssertUnwindSafe(|| {
                    context.report(message, message.opaque());
                }));
                if served.is_err() {
                    tracing::error!("a delivery report's handling panicked");
                }
            }
            messages.clear();
        }
        rdsys::RD_KAFKA_EVENT_ERROR => {
            let code = unsafe { rdsys::rd_kafka_event_error(event.0) };
            let reason = unsafe { text(rdsys::rd_kafka_event_error_string(event.0)) };
            let _ = catch_unwind(AssertUnwindSafe(|| {
                context.client_error(KafkaError::Global(code.into()), reason.trim());
            }));
        }
        rdsys::RD_KAFKA_EVENT_LOG => {
            let mut fac = std::ptr::null();
            let mut line = std::ptr::null();
            let mut level = 0;
            let found =
                unsafe { rdsys::rd_kafka_event_log(event.0, &mut fac, &mut line, &mut level) };
            if found == 0 {
                let (fac, line) = unsafe { (text(fac), text(line)) };
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    context.log(log_level(level), fac.trim(), line.trim());
                }));
            }
        }
        rdsys::RD_KAFKA_EVENT_STATS => {
            let json = unsafe { rdsys::rd_kafka_event_stats(event.0) };
            if !json.is_null() {
                let json = unsafe { CStr::from_ptr(json) };
                let _ = catch_unwind(AssertUnwindSafe(|| context.stats_raw(json.to_bytes())));
            }
        }
        // OAuth token refreshes are not enabled on this context; nothing
        // else is routed to a producer's main queue.
        _ => {}
    }
}

/// librdkafka's text, lossy; empty for none.
///
/// # Safety
/// `ptr` is null or a NUL-terminated string that outlives the result.
#[allow(unsafe_code)]
unsafe fn text<'a>(ptr: *const std::ffi::c_char) -> std::borrow::Cow<'a, str> {
    if ptr.is_null() {
        return "".into();
    }
    // SAFETY: the caller's promise.
    unsafe { CStr::from_ptr(ptr) }.to_string_lossy()
}

/// librdkafka's syslog level, as rdkafka maps it.
fn log_level(level: i32) -> RDKafkaLogLevel {
    match level {
        0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

/// Asks the CPU for the line of `message` that holds its timestamp (a hint:
/// nothing is read, so any address is harmless).
#[inline]
fn prefetch_timestamp(message: *const rdsys::rd_kafka_message_t) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // The timestamp follows the message's public part and its queue
        // link (`rd_kafka_msg_t` in rdkafka_msg.h).
        let line = message
            .cast::<i8>()
            .wrapping_add(std::mem::size_of::<rdsys::rd_kafka_message_t>() + 24);
        // SAFETY: a prefetch never faults, whatever the address.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(line)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = message;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::mpsc;
    use std::time::Duration;

    use rdkafka::producer::BaseRecord;

    use super::*;
    use crate::producer::driver::{Hooks, Pending, Stats};
    use crate::{Delivery, Error};

    /// One report as the producer-wide callback saw it: the thread it ran
    /// on, and where the message landed.
    type Seen = (Option<String>, Result<(i32, i64), String>);

    /// Every report is served, in order, on the delivery thread; a clone
    /// dropped leaves the thread serving; the last handle dropped stops it
    /// and waits for it, releasing the client (and so the context).
    #[test]
    fn the_delivery_thread_serves_every_report_and_ends_with_the_last_handle() {
        const N: usize = 3_000;
        let cluster = crate::mock::EmbeddedCluster::start(1).unwrap();
        cluster.create_topic("poller", 3).unwrap();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "5");
        let (tx, seen) = mpsc::channel::<Seen>();
        let tx = std::sync::Mutex::new(tx);
        let hooks = Arc::new(Hooks {
            name: "poller-test".into(),
            error_handler: Arc::new(|_| {}),
            on_delivery: Some(Arc::new(move |report: &Result<Delivery, Error>| {
                let thread = std::thread::current().name().map(str::to_owned);
                let landed = match report {
                    Ok(d) => Ok((d.partition, d.offset)),
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.lock().unwrap().send((thread, landed));
            })),
            pending: Pending::default(),
            stats: Stats::default(),
        });
        let context = XProducerContext {
            fence: None,
            hooks: hooks.clone(),
            topics: Default::default(),
        };
        let producer = PolledProducer::new(&config, context).unwrap();
        let send = |i: usize| {
            hooks.pending.add();
            let key = format!("k{i}");
            producer
                .send(
                    BaseRecord::with_opaque_to("poller", 0usize)
                        .key(&key)
                        .payload("v"),
                )
                .unwrap();
        };
        let next = || {
            seen.recv_timeout(Duration::from_secs(30))
                .expect("a report")
        };

        for i in 0..N {
            send(i);
        }
        let mut last: HashMap<i32, i64> = HashMap::new();
        for _ in 0..N {
            let (thread, landed) = next();
            assert_eq!(thread.as_deref(), Some(THREAD_NAME));
            let (partition, offset) = landed.expect("delivered");
            if let Some(previous) = last.insert(partition, offset) {
                assert!(
                    offset > previous,
                    "partition {partition}: offset {offset} reported after {previous}"
                );
            }
        }
        assert_eq!(last.len(), 3, "keys spread over the three partitions");
        assert_eq!(hooks.pending.count(), 0, "every report settled its count");

        drop(producer.clone());
        send(N);
        let (thread, landed) = next();
        assert_eq!(thread.as_deref(), Some(THREAD_NAME));
        assert!(landed.is_ok(), "{landed:?}");

        drop(producer);
        assert_eq!(
            Arc::strong_count(&hooks),
            1,
            "the client (holding the context) outlived its last handle"
        );
    }
}
