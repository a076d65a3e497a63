//! Throughput clock: the time from the first message to the last one, so
//! that group joins and client start-up are not counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub(crate) struct Clock {
    target: u64,
    count: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

impl Clock {
    pub(crate) fn new(target: u64) -> Self {
        Clock {
            target,
            count: AtomicU64::new(0),
            first: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// Starts the clock now rather than at the first tick: for publishing,
    /// whose first delivery report comes only after `linger.ms` and a round
    /// trip, while the rest of the reports then arrive in bursts.
    pub(crate) fn start(&self) {
        let mut first = self.first.lock().unwrap();
        if first.is_none() {
            *first = Some(Instant::now());
        }
    }

    /// Counts `n` messages; returns whether the target is reached.
    pub(crate) fn tick(&self, n: u64) -> bool {
        let before = self.count.fetch_add(n, Ordering::AcqRel);
        let now_count = before + n;
        if before == 0 {
            self.start();
        }
        if now_count >= self.target && before < self.target {
            *self.last.lock().unwrap() = Some(Instant::now());
        }
        now_count >= self.target
    }

    pub(crate) fn done(&self) -> bool {
        self.count.load(Ordering::Acquire) >= self.target
    }

    /// The number of messages the clock waits for.
    pub(crate) fn target(&self) -> u64 {
        self.target
    }

    /// When the first and the last message were counted, once the target
    /// is reached.
    pub(crate) fn span(&self) -> Option<(Instant, Instant)> {
        Some((
            (*self.first.lock().unwrap())?,
            (*self.last.lock().unwrap())?,
        ))
    }

    /// Messages per second between the first and the last message.
    pub(crate) fn rate(&self) -> Result<f64, String> {
        let first = self.first.lock().unwrap().ok_or("no message arrived")?;
        let last = self.last.lock().unwrap().ok_or_else(|| {
            format!(
                "only {} of {} messages arrived",
                self.count.load(Ordering::Acquire),
                self.target
            )
        })?;
        let secs = (last - first).as_secs_f64().max(1e-9);
        Ok((self.target.saturating_sub(1)) as f64 / secs)
    }
}
