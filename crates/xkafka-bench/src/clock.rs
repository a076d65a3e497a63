//! Throughput clock: the time from the first message to the last one, so
//! that group joins and client start-up are not counted — or, for
//! consumers, from the end of a warm-up share of the messages
//! ([`Clock::steady`]), so that librdkafka's first fetches are not counted
//! either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// [`Clock::steady`] leaves the first `1 / WARM_UP_SHARE` of the messages
/// out of the timed span.
pub(crate) const WARM_UP_SHARE: u64 = 10;

pub(crate) struct Clock {
    target: u64,
    /// The count whose tick starts the clock (1: the first message).
    from: u64,
    /// The count when the clock started (the tick that reached `from` may
    /// have counted a whole batch).
    counted_at_start: AtomicU64,
    count: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

impl Clock {
    pub(crate) fn new(target: u64) -> Self {
        Clock {
            target,
            from: 1,
            counted_at_start: AtomicU64::new(0),
            count: AtomicU64::new(0),
            first: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// A consumer's clock: started at the message `target / 10` (the
    /// warm-up share), so that the rate is the steady one. A consume run of
    /// 100k messages lasts 40 to 70 ms, and its first 10 to 15 ms are
    /// librdkafka's start-up fetches — a first response of about 1,000
    /// messages, then a wait for the next — not the clients' work; counted,
    /// they made run-to-run swings of ±0.2 in the ratios.
    pub(crate) fn steady(target: u64) -> Self {
        Clock {
            from: (target / WARM_UP_SHARE).max(1),
            ..Clock::new(target)
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
        if before < self.from && now_count >= self.from {
            // Tick-based starts only: `start()` from a publisher leaves
            // `counted_at_start` at 0, as its first report is timed too.
            if self.first.lock().unwrap().is_none() {
                self.counted_at_start.store(now_count, Ordering::Release);
            }
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
        let timed = self
            .target
            .saturating_sub(self.counted_at_start.load(Ordering::Acquire).max(1));
        Ok(timed as f64 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_clock_times_only_what_follows_the_warm_up() {
        let clock = Clock::steady(1_000);
        // A batch of 50 crosses nothing, the next one crosses 100 (the
        // warm-up share): the clock starts there, with 150 counted.
        assert!(!clock.tick(50));
        assert!(clock.span().is_none());
        assert!(!clock.tick(100));
        assert_eq!(clock.counted_at_start.load(Ordering::Acquire), 150);
        assert!(clock.tick(850));
        let (first, last) = clock.span().unwrap();
        let rate = clock.rate().unwrap();
        let expected = 850.0 / (last - first).as_secs_f64().max(1e-9);
        assert!(
            (rate - expected).abs() <= expected * 1e-9,
            "{rate} vs {expected}"
        );
    }

    #[test]
    fn a_plain_clock_starts_at_the_first_message() {
        let clock = Clock::new(10);
        clock.tick(1);
        assert_eq!(clock.counted_at_start.load(Ordering::Acquire), 1);
        // A publisher's explicit start comes before any report.
        let publisher = Clock::new(10);
        publisher.start();
        publisher.tick(1);
        assert_eq!(publisher.counted_at_start.load(Ordering::Acquire), 0);
    }
}
