//! Rebalance listeners: code that must know which partitions the consumer
//! holds (a cache per partition, the per-key order of retry topics).
//!
//! A listener runs on the poll thread inside the rebalance, so what it
//! sees is exact: `Assigned` comes before any message of those partitions
//! reaches a handler, `Revoked` after their handlers finished and what they
//! processed was committed (unless `lost`). Keep it short: the group waits.

use std::sync::Arc;

use super::offsets::TopicPartition;
use crate::config::Config;

/// A change of the consumer's assignment, given to
/// [`ConsumerBuilder::on_rebalance`](crate::ConsumerBuilder::on_rebalance)
/// listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rebalance {
    /// These partitions are now the consumer's (under the cooperative and
    /// KIP-848 protocols, in addition to those it kept).
    Assigned(Vec<TopicPartition>),
    /// These partitions are no longer the consumer's.
    Revoked {
        /// The partitions.
        partitions: Vec<TopicPartition>,
        /// The assignment was lost (the member was fenced or timed out):
        /// another member may already own them, so nothing was committed.
        lost: bool,
    },
}

/// What the consumer calls; a closure given to `on_rebalance` is one, and
/// crate-internal listeners (retry topics' key order) also learn the
/// client's final configuration once it is built.
pub(crate) trait Listener: Send + Sync {
    /// The consumer is being built as `build` says; an error fails the
    /// build.
    fn bind(&self, _build: &Binding<'_>) -> Result<(), crate::Error> {
        Ok(())
    }
    fn on_rebalance(&self, event: &Rebalance);
}

pub(crate) type Listeners = Vec<Arc<dyn Listener>>;

/// What a crate-internal listener learns of the consumer being built.
pub(crate) struct Binding<'a> {
    /// The client's final configuration (brokers, security, group).
    pub(crate) config: &'a Config,
    /// The topics it subscribes to.
    pub(crate) topics: &'a [String],
    /// Whether it has a `not_before`.
    pub(crate) not_before: bool,
    /// A batch consumer.
    pub(crate) batches: bool,
    /// The producer whose transactions it drives (exactly-once).
    pub(crate) transactional: Option<&'a crate::Producer>,
}

/// A user's closure.
pub(crate) struct FnListener<F>(pub(crate) F);

impl<F> Listener for FnListener<F>
where
    F: Fn(&Rebalance) + Send + Sync,
{
    fn on_rebalance(&self, event: &Rebalance) {
        (self.0)(event);
    }
}
