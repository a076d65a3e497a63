//! The offset tracker: per partition, which dispatched offsets are still
//! open (queued, running, or failed and held), and so which offset may be
//! stored.
//!
//! Handlers finish out of order under concurrency; the offset to store is
//! the *contiguous low watermark*: the lowest offset still open, or one past
//! the highest dispatched offset when nothing is open. It never passes a
//! message that has not finished with success or skip.

use std::collections::VecDeque;

/// One partition's open offsets, in dispatch (= offset) order.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    /// `(offset, settled)`, ascending; settled entries are popped from the
    /// front as soon as everything before them is settled too.
    open: VecDeque<(i64, bool)>,
    /// One past the highest offset dispatched; `None` before the first.
    end: Option<i64>,
    /// The last watermark handed out by [`OffsetTracker::advance`].
    stored: Option<i64>,
    unsettled: usize,
    /// Messages settled so far (for the status: when one last finished).
    finished: u64,
}

impl OffsetTracker {
    pub(crate) fn new() -> Self {
        OffsetTracker::default()
    }

    /// A message at `offset` was handed to a handler.
    pub(crate) fn dispatched(&mut self, offset: i64) {
        match self.open.back() {
            Some(&(last, _)) if offset <= last => {
                // librdkafka delivers a partition in order; anything else
                // (a duplicate after a seek) is placed where it belongs.
                if let Err(at) = self.open.binary_search_by_key(&offset, |e| e.0) {
                    self.open.insert(at, (offset, false));
                    self.unsettled += 1;
                }
            }
            _ => {
                self.open.push_back((offset, false));
                self.unsettled += 1;
            }
        }
        self.end = Some(self.end.map_or(offset + 1, |e| e.max(offset + 1)));
    }

    /// The message at `offset` finished with success or skip (or its failure
    /// was skipped on purpose). A failure that is held is simply never
    /// settled.
    /// Returns whether it was open.
    pub(crate) fn settled(&mut self, offset: i64) -> bool {
        let mut was_open = false;
        // Usually the oldest open offset (handlers finish in order): no search.
        let found = match self.open.front() {
            Some(&(first, _)) if first == offset => Ok(0),
            _ => self.open.binary_search_by_key(&offset, |e| e.0),
        };
        if let Ok(at) = found {
            if !self.open[at].1 {
                self.open[at].1 = true;
                self.unsettled -= 1;
                self.finished += 1;
                was_open = true;
            }
        }
        while self.open.front().is_some_and(|e| e.1) {
            self.open.pop_front();
        }
        was_open
    }

    /// The offset it is safe to store (the next one to read), if any message
    /// was dispatched.
    pub(crate) fn watermark(&self) -> Option<i64> {
        match self.open.front() {
            Some(&(first_open, _)) => Some(first_open),
            None => self.end,
        }
    }

    /// The watermark, if it moved since the last call.
    pub(crate) fn advance(&mut self) -> Option<i64> {
        let mark = self.watermark()?;
        if self.stored.is_some_and(|s| s >= mark) {
            return None;
        }
        self.stored = Some(mark);
        Some(mark)
    }

    /// The oldest dispatched message not settled yet.
    pub(crate) fn oldest_unsettled(&self) -> Option<i64> {
        self.open.front().map(|e| e.0)
    }

    /// The offset after the last dispatched message.
    pub(crate) fn end(&self) -> Option<i64> {
        self.end
    }

    /// Messages settled since the tracker was made.
    pub(crate) fn finished(&self) -> u64 {
        self.finished
    }

    /// Dispatched messages not settled yet.
    pub(crate) fn unsettled(&self) -> usize {
        self.unsettled
    }

    /// Entries held, settled or not: everything from the watermark on. This
    /// is the partition's memory (and buffer fill): one unfinished message
    /// keeps every later one tracked, however many finished.
    pub(crate) fn tracked(&self) -> usize {
        self.open.len()
    }

    /// When an unfinished message holds finished ones behind it: its offset
    /// and how many finished after it.
    pub(crate) fn held(&self) -> Option<(i64, usize)> {
        let &(first, settled) = self.open.front()?;
        let behind = self.open.len() - self.unsettled;
        (!settled && behind > 0).then_some((first, behind))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn watermark_waits_for_the_lowest_open_offset() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.watermark(), None);
        for o in 10..15 {
            t.dispatched(o);
        }
        t.settled(12);
        t.settled(11);
        assert_eq!(t.advance(), Some(10), "10 still open");
        t.settled(10);
        assert_eq!(t.advance(), Some(13));
        assert_eq!(t.advance(), None, "unchanged");
        t.settled(14);
        t.settled(13);
        assert_eq!(t.advance(), Some(15));
        assert_eq!(t.unsettled(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_not_waited_for() {
        // Compacted topics and transaction markers leave holes.
        let mut t = OffsetTracker::new();
        for o in [3, 7, 20] {
            t.dispatched(o);
        }
        for o in [20, 3, 7] {
            t.settled(o);
        }
        assert_eq!(t.watermark(), Some(21));
    }

    #[test]
    fn settled_entries_behind_an_open_one_stay_tracked() {
        let mut t = OffsetTracker::new();
        for o in 0..10 {
            t.dispatched(o);
        }
        assert_eq!(t.held(), None, "nothing finished yet");
        for o in 1..10 {
            t.settled(o);
        }
        assert_eq!(t.unsettled(), 1);
        assert_eq!(t.tracked(), 10, "0 holds the nine behind it");
        assert_eq!(t.held(), Some((0, 9)));
        t.settled(0);
        assert_eq!(t.tracked(), 0);
        assert_eq!(t.held(), None);
    }

    #[derive(Clone, Debug)]
    enum Fate {
        Succeed,
        Skip,
        Fail,
        Unfinished,
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            6 => Just(Fate::Succeed),
            2 => Just(Fate::Skip),
            1 => Just(Fate::Fail),
            1 => Just(Fate::Unfinished),
        ]
    }

    proptest! {
        /// For random fates and random completion orders, the stored offset
        /// never passes the first unfinished or failed message, and reaches
        /// the end once everything completed.
        #[test]
        fn never_passes_an_open_message(
            start in 0i64..1_000,
            steps in proptest::collection::vec((1i64..4, fate()), 1..200),
            order in any::<proptest::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let mut t = OffsetTracker::new();
            let mut offset = start;
            let mut plan = Vec::new();
            for (gap, fate) in steps {
                t.dispatched(offset);
                plan.push((offset, fate));
                offset += gap;
            }
            let end = plan.last().unwrap().0 + 1;
            // A random interleaving of completions (Fisher-Yates on a seed).
            let mut completions: Vec<_> = plan.iter().filter(|(_, f)| matches!(f, Fate::Succeed | Fate::Skip)).map(|(o, _)| *o).collect();
            let mut rng = seed ^ (order.index(1 << 20) as u64);
            for i in (1..completions.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                completions.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let blocked = plan.iter().find(|(_, f)| matches!(f, Fate::Fail | Fate::Unfinished)).map(|(o, _)| *o);
            let mut last = None;
            for o in completions {
                t.settled(o);
                if let Some(mark) = t.advance() {
                    prop_assert!(last.is_none_or(|l| mark > l), "watermark went backwards");
                    if let Some(b) = blocked {
                        prop_assert!(mark <= b, "stored {mark} past open offset {b}");
                    }
                    last = Some(mark);
                }
            }
            let final_mark = t.watermark().unwrap();
            match blocked {
                Some(b) => prop_assert_eq!(final_mark, b, "held at the first open offset"),
                None => prop_assert_eq!(final_mark, end, "reaches the end"),
            }
        }
    }
}
