//! The publishing limit: `rd_kafka_produce` on a cached topic handle, with
//! delivery reports read as event message arrays by a thread of their own.

use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xkafka::raw::rdkafka::bindings as rd;

use crate::clock::Clock;
use crate::vocab::{payload, producer_settings, BoxResult, RUN_TIMEOUT};

/// Publishes in flight at once in `publish_sync` (as ours and the safe loop).
pub(crate) const SYNC_IN_FLIGHT: u64 = 64;

/// `RD_KAFKA_PARTITION_UA` (a C macro bindgen leaves out): the partitioner
/// picks.
const PARTITION_UA: i32 = -1;

/// A producer client with delivery reports as events; destroyed on drop.
struct Client(*mut rd::rd_kafka_t);

// SAFETY: librdkafka's client handle is thread-safe: the delivery thread
// only polls its main queue, the sending thread only produces.
unsafe impl Send for Client {}
// SAFETY: as above.
unsafe impl Sync for Client {}

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: a handle `rd_kafka_new` returned, destroyed once, after
        // the delivery thread stopped (see `Deliveries::stop`).
        unsafe { rd::rd_kafka_destroy(self.0) }
    }
}

impl Client {
    /// A producer with ours' settings (see `producer_settings`).
    fn new(brokers: &str) -> BoxResult<Client> {
        let mut settings = vec![("bootstrap.servers", brokers)];
        settings.extend(producer_settings());
        let mut error = [0 as std::ffi::c_char; 512];
        // SAFETY: a new configuration, set with NUL-terminated strings and a
        // buffer of its stated size; `rd_kafka_new` takes it over on
        // success, and it is destroyed here on every failure.
        unsafe {
            let conf = rd::rd_kafka_conf_new();
            for (key, value) in settings {
                let (key, value) = (CString::new(key)?, CString::new(value)?);
                let set = rd::rd_kafka_conf_set(
                    conf,
                    key.as_ptr(),
                    value.as_ptr(),
                    error.as_mut_ptr(),
                    error.len(),
                );
                if set != rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK {
                    rd::rd_kafka_conf_destroy(conf);
                    let why = CStr::from_ptr(error.as_ptr()).to_string_lossy();
                    return Err(format!("{key:?}: {why}").into());
                }
            }
            rd::rd_kafka_conf_set_events(conf, rd::RD_KAFKA_EVENT_DR);
            let rk = rd::rd_kafka_new(
                rd::rd_kafka_type_t::RD_KAFKA_PRODUCER,
                conf,
                error.as_mut_ptr(),
                error.len(),
            );
            if rk.is_null() {
                rd::rd_kafka_conf_destroy(conf);
                let why = CStr::from_ptr(error.as_ptr()).to_string_lossy();
                return Err(format!("rd_kafka_new: {why}").into());
            }
            Ok(Client(rk))
        }
    }
}

/// A topic handle, created once; destroyed on drop (before its client).
struct Topic(*mut rd::rd_kafka_topic_t);

impl Drop for Topic {
    fn drop(&mut self) {
        // SAFETY: a handle `rd_kafka_topic_new` returned, destroyed once.
        unsafe { rd::rd_kafka_topic_destroy(self.0) }
    }
}

/// The delivery thread: reads the main queue's delivery events and hands
/// each event's reports (`failed`, delivered) to `on_reports`.
struct Deliveries {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the delivery thread counts.
#[derive(Default)]
struct Counts {
    failed: AtomicU64,
}

impl Deliveries {
    fn start(
        client: &Arc<Client>,
        counts: Arc<Counts>,
        mut on_reports: impl FnMut(u64) + Send + 'static,
    ) -> Deliveries {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let client = client.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: a live client (held by this thread's `Arc`); the
            // queue handle is released below.
            let queue = unsafe { rd::rd_kafka_queue_get_main(client.0) };
            let mut reports: Vec<*const rd::rd_kafka_message_t> = Vec::with_capacity(1024);
            while !stopping.load(Ordering::Acquire) {
                // SAFETY: a live queue; an event returned is ours to
                // destroy, and its messages live until then.
                unsafe {
                    let event = rd::rd_kafka_queue_poll(queue, 100);
                    if event.is_null() {
                        continue;
                    }
                    if rd::rd_kafka_event_type(event) == rd::RD_KAFKA_EVENT_DR {
                        let count = rd::rd_kafka_event_message_count(event);
                        reports.clear();
                        reports.reserve(count);
                        let got =
                            rd::rd_kafka_event_message_array(event, reports.as_mut_ptr(), count);
                        reports.set_len(got.min(count));
                        let failed = reports
                            .iter()
                            .filter(|&&m| {
                                (*m).err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                            })
                            .count() as u64;
                        if failed > 0 {
                            counts.failed.fetch_add(failed, Ordering::Relaxed);
                        }
                        on_reports(reports.len() as u64);
                    }
                    rd::rd_kafka_event_destroy(event);
                }
            }
            // SAFETY: the handle `rd_kafka_queue_get_main` gave, released once.
            unsafe { rd::rd_kafka_queue_destroy(queue) };
        });
        Deliveries {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends one message (a copy of `key` and `value`), backing off 1 ms while
/// librdkafka's queue is full, as ours and the safe loop do.
fn send(topic: &Topic, key: &[u8], value: &[u8]) -> BoxResult<()> {
    loop {
        // SAFETY: a live topic handle; with `RD_KAFKA_MSG_F_COPY` librdkafka
        // copies both buffers before returning and never writes to them.
        let sent = unsafe {
            rd::rd_kafka_produce(
                topic.0,
                PARTITION_UA,
                rd::RD_KAFKA_MSG_F_COPY,
                value.as_ptr().cast_mut().cast(),
                value.len(),
                key.as_ptr().cast(),
                key.len(),
                std::ptr::null_mut(),
            )
        };
        if sent == 0 {
            return Ok(());
        }
        // SAFETY: reads the calling thread's last error, no pointers.
        let err = unsafe { rd::rd_kafka_last_error() };
        if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__QUEUE_FULL {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        return Err(format!("rd_kafka_produce: {err:?}").into());
    }
}

/// The keys every side sends (`k0` … `k999`), made once.
fn keys() -> Vec<Vec<u8>> {
    (0..1000).map(|i| format!("k{i}").into_bytes()).collect()
}

fn topic_handle(client: &Client, topic: &str) -> BoxResult<Topic> {
    let name = CString::new(topic)?;
    // SAFETY: a live client and a NUL-terminated name; the handle returned
    // is ours (see `Topic`).
    let handle = unsafe { rd::rd_kafka_topic_new(client.0, name.as_ptr(), std::ptr::null_mut()) };
    if handle.is_null() {
        return Err(format!("rd_kafka_topic_new {topic} failed").into());
    }
    Ok(Topic(handle))
}

/// Waits until `done()` or the run timeout.
fn wait(done: impl Fn() -> bool) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `publish_async`: messages per second from the first send to the last
/// delivery report, after a warm-up message (connected, producer id,
/// metadata), as ours.
pub(crate) fn publish_async(brokers: &str, topic: &str, messages: u64) -> BoxResult<f64> {
    let client = Arc::new(Client::new(brokers)?);
    let handle = topic_handle(&client, topic)?;
    let clock = Arc::new(Clock::new(messages));
    let counts = Arc::new(Counts::default());
    let delivered = Arc::new(AtomicU64::new(0));
    let (ticks, seen) = (clock.clone(), delivered.clone());
    let deliveries = Deliveries::start(&client, counts.clone(), move |n| {
        // The warm-up message's report is not timed.
        let before = seen.fetch_add(n, Ordering::AcqRel);
        let timed = (before + n).saturating_sub(before.max(1));
        if timed > 0 {
            ticks.tick(timed);
        }
    });
    let (keys, value) = (keys(), payload(100));
    send(&handle, &keys[0], &value)?;
    wait(|| delivered.load(Ordering::Acquire) >= 1);
    clock.start();
    for i in 0..messages {
        send(&handle, &keys[(i % 1000) as usize], &value)?;
    }
    wait(|| clock.done());
    deliveries.stop();
    drop(handle);
    let failed = counts.failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} deliveries failed").into());
    }
    Ok(clock.rate()?)
}

/// `publish_sync`: [`SYNC_IN_FLIGHT`] publishes in flight, each completed
/// by its own report (the delivery thread signals per message); messages
/// per second from the first send to the last completion, start-up
/// included, as ours and the safe loop time it.
pub(crate) fn publish_sync(brokers: &str, topic: &str, messages: u64) -> BoxResult<f64> {
    let client = Arc::new(Client::new(brokers)?);
    let handle = topic_handle(&client, topic)?;
    let counts = Arc::new(Counts::default());
    let window = Arc::new((Mutex::new(0_u64), Condvar::new()));
    let completions = window.clone();
    let deliveries = Deliveries::start(&client, counts.clone(), move |n| {
        let (in_flight, done) = &*completions;
        for _ in 0..n {
            *in_flight.lock().unwrap() -= 1;
            done.notify_one();
        }
    });
    let (keys, value) = (keys(), payload(100));
    let started = Instant::now();
    let (in_flight, done) = &*window;
    for i in 0..messages {
        {
            let mut n = in_flight.lock().unwrap();
            while *n >= SYNC_IN_FLIGHT {
                let (next, timeout) = done.wait_timeout(n, RUN_TIMEOUT).unwrap();
                if timeout.timed_out() {
                    return Err("publish_sync: no completion within the run timeout".into());
                }
                n = next;
            }
            *n += 1;
        }
        send(&handle, &keys[(i % 1000) as usize], &value)?;
    }
    wait(|| *in_flight.lock().unwrap() == 0);
    let secs = started.elapsed().as_secs_f64();
    deliveries.stop();
    drop(handle);
    let failed = counts.failed.load(Ordering::Relaxed);
    let left = *in_flight.lock().unwrap();
    if failed > 0 || left > 0 {
        return Err(format!("{failed} deliveries failed, {left} not completed").into());
    }
    Ok(messages as f64 / secs)
}
