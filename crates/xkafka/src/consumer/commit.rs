//! Storing and committing offsets through librdkafka: the helpers the poll
//! loop, the pipeline (manual commits, drains) and the rebalance callback
//! share.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::TopicPartition;
use super::shared::Shared;
use crate::error::{Error, Operation};

pub(crate) fn is_nothing_to_commit(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset)
}

fn tpl_of(offsets: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (tp, off) in offsets {
        // add_partition_offset only fails for invalid offsets; ours are >= 0.
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*off));
    }
    tpl
}

/// A commit the group refused because it is rebalancing, or because the
/// member's generation moved on meanwhile (with an incremental rebalance
/// the partitions kept go on being handled, and committed, while the group
/// rebalances). The offsets stay stored: the next commit takes them along
/// (see [`with_deferred`]), or the revocation's if the partition goes.
fn is_deferred_by_rebalance(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::RebalanceInProgress | RDKafkaErrorCode::IllegalGeneration)
    )
}

/// `offsets`, plus the stored offsets an earlier commit left uncommitted
/// (refused during a rebalance) for partitions still ours. A revoked
/// partition's stored offset is forgotten at revocation, so nothing here
/// can move another member's offsets backwards.
fn with_deferred(
    shared: &Shared,
    mut offsets: Vec<(TopicPartition, i64)>,
) -> Vec<(TopicPartition, i64)> {
    let ledger = shared.ledger();
    for (tp, off) in ledger.uncommitted(None) {
        if ledger.assigned.contains(&tp) && !offsets.iter().any(|(t, _)| *t == tp) {
            offsets.push((tp, off));
        }
    }
    offsets
}

/// Synchronously commits `offsets` (next offsets to consume), with any an
/// earlier commit left behind; errors go to the error handler, except a
/// refusal by a rebalancing group (the offsets stay stored and go with the
/// next commit). Returns whether the commit succeeded.
pub(crate) fn commit_sync<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    shared: &Shared,
    offsets: Vec<(TopicPartition, i64)>,
) -> bool {
    let offsets = with_deferred(shared, offsets);
    if offsets.is_empty() {
        return true;
    }
    match consumer.commit(&tpl_of(&offsets), CommitMode::Sync) {
        Ok(()) => {
            let mut ledger = shared.ledger();
            for (tp, off) in &offsets {
                ledger.mark_committed(tp, *off);
            }
            true
        }
        Err(e) if is_nothing_to_commit(&e) => true,
        Err(e) if is_deferred_by_rebalance(&e) => {
            tracing::info!(group = %shared.group, error = %e, partitions = offsets.len(), "commit deferred: the group is rebalancing");
            false
        }
        Err(e) => {
            shared.report(Error::kafka(Operation::Commit, e));
            false
        }
    }
}

/// Stores each `(partition, next offset)` in one librdkafka call, skipping
/// partitions no longer ours (storing would fail with librdkafka's
/// "erroneous state", or worse, succeed for a partition another member now
/// owns). Returns what was stored.
pub(crate) fn store_batch<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    shared: &Shared,
    offsets: &[(TopicPartition, i64)],
) -> Vec<(TopicPartition, i64)> {
    let ours: Vec<(TopicPartition, i64)> = {
        let mut ledger = shared.ledger();
        let (ours, gone): (Vec<_>, Vec<_>) = offsets
            .iter()
            .cloned()
            .partition(|(tp, _)| ledger.assigned.contains(tp));
        ledger.revoked_skipped_stores += gone.len() as u64;
        ours
    };
    if ours.is_empty() {
        return ours;
    }
    match consumer.store_offsets(&tpl_of(&ours)) {
        Ok(()) => {
            let mut ledger = shared.ledger();
            for (tp, off) in &ours {
                ledger.stored.insert(tp.clone(), *off);
            }
            ours
        }
        // Revoked between our check and the store: expected, not an error.
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {
            shared.ledger().revoked_skipped_stores += ours.len() as u64;
            Vec::new()
        }
        Err(e) => {
            shared.report(Error::kafka(Operation::StoreOffset, e));
            Vec::new()
        }
    }
}
