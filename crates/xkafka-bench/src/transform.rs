//! The consume-transform-produce job both sides run (see `eos`): what a run
//! is given, how it commits, what it yields, and the watcher that times it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::clock::Clock;
use crate::vocab::{BoxResult, RUN_TIMEOUT};

/// The at-least-once runs' `auto.commit.interval.ms` (librdkafka's default
/// is 5 s, which would measure the timer, not the pipeline).
pub(crate) const ALO_COMMIT_INTERVAL_MS: u64 = 100;

/// How often [`Watch`] asks the coordinator for the group's offsets.
const WATCH_EVERY: Duration = Duration::from_millis(5);

/// How a pipeline commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Exactly-once: one transaction per interval.
    Transactional(Duration),
    /// At-least-once: auto commit, plain idempotent producer.
    AtLeastOnce,
}

/// One run's job: read `messages` from `input`, write one output each to
/// `output`.
pub(crate) struct Job<'a> {
    pub(crate) brokers: &'a str,
    pub(crate) input: &'a str,
    pub(crate) output: &'a str,
    pub(crate) messages: u64,
    /// The input's end offset per partition (partition = index).
    pub(crate) ends: &'a [i64],
    /// See [`crate::eos::Plan::raw_drain`].
    pub(crate) raw_drain: bool,
}

/// One run's figures.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outcome {
    /// Messages per second, first input handled → last input handled.
    pub(crate) consumed: f64,
    /// Messages per second, first input handled → every output committed
    /// (offsets at the end, outputs acknowledged).
    pub(crate) committed: f64,
    /// Last input handled → everything committed, in milliseconds.
    pub(crate) tail_ms: f64,
}

impl Outcome {
    /// The figures of a run timed by `clock` (inputs) and `watch`.
    pub(crate) fn of(clock: &Clock, committed_at: Option<Instant>) -> BoxResult<Outcome> {
        let consumed = clock.rate()?;
        let (first, last) = clock.span().ok_or("no input handled")?;
        let committed_at = committed_at.ok_or_else(|| {
            format!(
                "the group's offsets did not reach the end within {} s",
                RUN_TIMEOUT.as_secs()
            )
        })?;
        let secs = (committed_at - first).as_secs_f64().max(1e-9);
        Ok(Outcome {
            consumed,
            committed: clock.target().saturating_sub(1) as f64 / secs,
            tail_ms: committed_at.saturating_duration_since(last).as_secs_f64() * 1e3,
        })
    }
}

/// Watches a group from a thread of its own: done once its committed
/// offsets reach `ends` and `delivered` reached the number of messages.
/// The same watcher times both sides.
pub(crate) struct Watch {
    done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    at: Arc<Mutex<Option<Instant>>>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts watching `group`'s offsets on `job.input`.
    pub(crate) fn start(job: &Job<'_>, group: &str, delivered: Arc<AtomicU64>) -> BoxResult<Self> {
        // Not subscribed: it never joins the group, it only asks the
        // coordinator (OffsetFetch). The coordinator answers with the
        // committed offsets; those of a transaction count once its commit
        // marker is written. read_uncommitted: librdkafka then does not ask
        // for "stable" offsets, which the coordinator refuses
        // (UNSTABLE_OFFSET_COMMIT) while any transaction of the group is
        // pending, and librdkafka retries only after a backoff — that would
        // time the retry, not the commit.
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", job.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..job.ends.len() {
            tpl.add_partition(job.input, p as i32);
        }
        let ends = job.ends.to_vec();
        let input = job.input.to_owned();
        let expected = job.messages;
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let at = Arc::new(Mutex::new(None));
        let (d, s, a) = (done.clone(), stop.clone(), at.clone());
        let thread = std::thread::Builder::new()
            .name("bench-watch".into())
            .spawn(move || {
                let deadline = Instant::now() + RUN_TIMEOUT;
                while !s.load(Ordering::Acquire) && Instant::now() < deadline {
                    let reached = delivered.load(Ordering::Acquire) >= expected
                        && client
                            .committed_offsets(tpl.clone(), Duration::from_secs(5))
                            .is_ok_and(|c| at_end(&c, &input, &ends));
                    if reached {
                        *a.lock().unwrap() = Some(Instant::now());
                        d.store(true, Ordering::Release);
                        return;
                    }
                    std::thread::sleep(WATCH_EVERY);
                }
            })?;
        Ok(Watch {
            done,
            stop,
            at,
            thread: Some(thread),
        })
    }

    /// Whether everything is committed.
    pub(crate) fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// A probe for [`done`](Self::done) that outlives `self`'s borrow.
    pub(crate) fn probe(&self) -> impl Fn() -> bool + Send + 'static {
        let done = self.done.clone();
        move || done.load(Ordering::Acquire)
    }

    /// Stops watching; when everything was committed, if it was.
    pub(crate) fn finish(mut self) -> Option<Instant> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        *self.at.lock().unwrap()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn at_end(committed: &TopicPartitionList, topic: &str, ends: &[i64]) -> bool {
    ends.iter().enumerate().all(|(p, &end)| {
        end == 0
            || matches!(committed.find_partition(topic, p as i32).map(|e| e.offset()),
                Some(Offset::Offset(o)) if o >= end)
    })
}
