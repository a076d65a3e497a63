//! The offset ledger: which partitions we own, which offsets are stored
//! (processed) and which are committed, plus the per-outcome counters.
//!
//! Shared by the poll loop and the rebalance callbacks (both run on the poll
//! thread, so the lock is uncontended) and read by `run` for its summary.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// A topic and partition.
#[derive(Clone, Debug, Eq, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
}

impl TopicPartition {
    /// A topic-partition.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

// By value, like the derived impl would; but the consumer interns its topic
// names, so the pointer comparison usually decides without reading the
// strings (`Arc<str>`'s own `==` always compares the bytes).
impl PartialEq for TopicPartition {
    fn eq(&self, other: &Self) -> bool {
        self.partition == other.partition
            && (Arc::ptr_eq(&self.topic, &other.topic) || self.topic == other.topic)
    }
}

// By value, consistent with `eq`.
impl std::hash::Hash for TopicPartition {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.topic.hash(state);
        self.partition.hash(state);
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) assigned: BTreeSet<TopicPartition>,
    /// Next offset to consume, per partition, as stored after processing.
    pub(crate) stored: BTreeMap<TopicPartition, i64>,
    /// Last offset known committed, per partition (kept after revocation for
    /// the summary).
    pub(crate) committed: BTreeMap<TopicPartition, i64>,
    pub(crate) succeeded: u64,
    pub(crate) skipped: u64,
    pub(crate) failed: u64,
    pub(crate) failed_skipped: u64,
    pub(crate) abandoned: u64,
    pub(crate) assignments: u64,
    pub(crate) revoked_skipped_stores: u64,
    pub(crate) transactions_committed: u64,
    pub(crate) transactions_aborted: u64,
}

impl Ledger {
    /// Offsets stored but not yet committed, for the given partitions (all
    /// when `only` is `None`).
    pub(crate) fn uncommitted(
        &self,
        only: Option<&BTreeSet<TopicPartition>>,
    ) -> Vec<(TopicPartition, i64)> {
        self.stored
            .iter()
            .filter(|(tp, _)| only.is_none_or(|set| set.contains(*tp)))
            .filter(|(tp, off)| self.committed.get(*tp).is_none_or(|c| c < *off))
            .map(|(tp, off)| (tp.clone(), *off))
            .collect()
    }

    pub(crate) fn mark_committed(&mut self, tp: &TopicPartition, offset: i64) {
        let entry = self.committed.entry(tp.clone()).or_insert(offset);
        if *entry < offset {
            *entry = offset;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_is_what_is_stored_past_the_commit() {
        let a = TopicPartition::new("t", 0);
        let b = TopicPartition::new("t", 1);
        let mut ledger = Ledger::default();
        ledger.stored.insert(a.clone(), 10);
        ledger.stored.insert(b.clone(), 5);
        ledger.mark_committed(&a, 10);
        assert_eq!(ledger.uncommitted(None), vec![(b.clone(), 5)]);
        ledger.mark_committed(&b, 3);
        ledger.mark_committed(&b, 2); // never goes backwards
        assert_eq!(ledger.committed[&b], 3);
        let only_a: BTreeSet<_> = [a].into_iter().collect();
        assert!(ledger.uncommitted(Some(&only_a)).is_empty());
    }
}
