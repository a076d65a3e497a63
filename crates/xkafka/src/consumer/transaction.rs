//! Exactly-once consume-transform-produce: the consumer's side of a Kafka
//! transaction (EOS v2, KIP-447). Only the poll thread touches it, through
//! the pipeline, which decides *when* a transaction ends (`pipeline.rs`:
//! the barrier); this file knows *what* a transaction holds and how it ends.
//!
//! What handlers publish through the transactional producer, and the
//! offsets of the messages they handled, go into one transaction: committed
//! together, or aborted together and read again. One transaction spans many
//! messages: it ends every `max_messages` dispatched messages or `interval`
//! after its first one, whichever comes first, at a barrier where every
//! dispatched message has settled — so the offsets sent cover exactly the
//! messages whose output is in it, whatever the concurrency and ordering.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;

use super::offsets::TopicPartition;
use crate::error::Error;
use crate::Producer;

/// Default: a transaction ends after this many messages...
pub(crate) const DEFAULT_MAX_MESSAGES: usize = 10_000;
/// ...or this long after its first message (Kafka Streams' default commit
/// interval with exactly-once).
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
/// After this many commits in a row failed in an abortable way, the
/// transactions hold one message each until the input whose output makes
/// them fail is found (or as many as the failed transaction held passed).
const ISOLATE_AFTER: u32 = 2;

/// When a transaction ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Boundary {
    pub(crate) max_messages: usize,
    pub(crate) interval: Duration,
}

/// The open transaction, seen from the consumer.
///
/// How much it holds: a transaction ends at a barrier, where every message
/// dispatched in it has settled; so that the barrier comes within its
/// interval whatever the handlers' speed, the messages dispatched and not
/// settled are bounded by a *window* of about half an interval's worth of
/// handling, measured (see [`window`](Self::window)). Without it, a fast
/// fetch filled the open transaction with everything the in-flight bounds
/// allow, and its barrier waited seconds for slow handlers to get through
/// it: transactions of 10,000 messages instead of one per interval, and
/// nothing committed at all under restarts every few seconds.
pub(crate) struct Transaction {
    producer: Producer,
    boundary: Boundary,
    /// When the first message of the open transaction was dispatched.
    opened_at: Option<Instant>,
    /// Messages dispatched in the open transaction.
    messages: usize,
    /// Per partition, the first offset dispatched in the open transaction:
    /// where the partition is read again from if it aborts.
    from: FxHashMap<TopicPartition, i64>,
    /// A handler failed and the error handler stopped on it: what it
    /// published before failing is in the open transaction, which must not
    /// commit.
    pub(crate) poisoned: bool,
    /// Messages settled per second while transactions were open, as last
    /// measured when the window was the limit (`None`: not measured yet).
    rate: Option<f64>,
    /// The window was full at some point of the open transaction: its
    /// rate is the handlers' (not the input's).
    window_hit: bool,
    /// Commits in a row that failed in an abortable way.
    failed_commits: u32,
    /// Isolating: transactions hold one message each, for this many more
    /// transactions (see [`commit_failed`](Self::commit_failed)).
    isolating: Option<usize>,
    /// Isolating: the message whose transaction, holding it alone, failed
    /// once; a second failure alone convicts it.
    suspect: Option<(TopicPartition, i64)>,
}

/// What a failed commit leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Abort and read the transaction's messages again.
    Abort,
    /// Abort, and give this message to the error handler: alone in its
    /// transaction, its output still could not be committed.
    Isolated(TopicPartition, i64),
}

impl Transaction {
    pub(crate) fn new(producer: Producer, boundary: Boundary) -> Self {
        Transaction {
            producer,
            boundary,
            opened_at: None,
            messages: 0,
            from: FxHashMap::default(),
            poisoned: false,
            rate: None,
            window_hit: false,
            failed_commits: 0,
            isolating: None,
            suspect: None,
        }
    }

    /// The only message of the open transaction, if it holds one.
    fn single(&self) -> Option<(TopicPartition, i64)> {
        (self.messages == 1)
            .then(|| self.from.iter().next().map(|(tp, o)| (tp.clone(), *o)))
            .flatten()
    }

    /// The most messages the open transaction may hold.
    fn max_messages(&self) -> usize {
        if self.isolating.is_some() {
            1
        } else {
            self.boundary.max_messages
        }
    }

    /// The open transaction's commit failed in an abortable way (call
    /// before aborting it). An output the broker always refuses (too large
    /// for its topic, a topic not authorised) fails every transaction that
    /// holds it; read again, its input would abort the next one, forever.
    /// So after [`ISOLATE_AFTER`] such failures in a row, transactions
    /// hold one message each until one fails alone: that message is the
    /// cause — when it fails alone twice in a row: the first transaction
    /// after an abort can fail for the aborted one's sake (librdkafka's
    /// idempotent producer reports "skipped sequence numbers" for it),
    /// which must not convict an innocent message. The search is bounded:
    /// it ends after twice as many transactions as the failed one held
    /// messages, plus one per suspect.
    pub(crate) fn commit_failed(&mut self) -> AfterFailure {
        if let (Some(left), Some(single)) = (self.isolating, self.single()) {
            if self.suspect.as_ref() == Some(&single) {
                self.isolating = None;
                self.suspect = None;
                self.failed_commits = 0;
                return AfterFailure::Isolated(single.0, single.1);
            }
            self.suspect = Some(single);
            self.isolating = Some(left + 1);
            return AfterFailure::Abort;
        }
        self.failed_commits += 1;
        if self.failed_commits >= ISOLATE_AFTER && self.isolating.is_none() {
            self.isolating = Some((2 * self.messages).max(2));
        }
        AfterFailure::Abort
    }

    /// Whether transactions hold one message each, searching for the cause
    /// of failed commits.
    pub(crate) fn is_isolating(&self) -> bool {
        self.isolating.is_some()
    }

    /// How many messages may be dispatched and not settled in the open
    /// transaction: half an interval's worth at the measured rate, at least
    /// `floor` (what keeps every handler busy: concurrency × batch size,
    /// twice over).
    pub(crate) fn window(&self, floor: usize) -> usize {
        let floor = floor.max(1);
        self.rate.map_or(floor, |rate| {
            let half = rate * self.boundary.interval.as_secs_f64() / 2.0;
            (half.min(usize::MAX as f64 / 2.0) as usize).max(floor)
        })
    }

    /// The window was full: the open transaction measures the handlers.
    pub(crate) fn window_hit(&mut self) {
        self.window_hit = true;
    }

    /// Measures the rate of the transaction that is ending (its messages
    /// all settled): the handlers' rate when the window held it back, else
    /// at most a raise (a quiet input says nothing of the handlers).
    fn measure(&mut self) {
        let Some(opened) = self.opened_at else {
            return;
        };
        let seconds = opened.elapsed().as_secs_f64().max(1e-3);
        let measured = self.messages as f64 / seconds;
        self.rate = Some(match self.rate {
            Some(rate) if !self.window_hit => rate.max(measured),
            _ => measured,
        });
    }

    /// A message of `tp` at `offset` was dispatched.
    pub(crate) fn dispatched(&mut self, tp: &TopicPartition, offset: i64) {
        self.messages += 1;
        self.opened_at.get_or_insert_with(Instant::now);
        if let Some(first) = self.from.get_mut(tp) {
            *first = (*first).min(offset);
        } else {
            self.from.insert(tp.clone(), offset);
        }
    }

    /// How long until the open transaction is due by its interval (`None`:
    /// no message in it yet).
    pub(crate) fn due_in(&self) -> Option<Duration> {
        self.opened_at
            .map(|at| self.boundary.interval.saturating_sub(at.elapsed()))
    }

    /// Whether the open transaction holds `max_messages` messages.
    pub(crate) fn full(&self) -> bool {
        self.messages >= self.max_messages()
    }

    /// Whether the open transaction should end now.
    pub(crate) fn due(&self) -> bool {
        self.messages >= self.max_messages()
            || self
                .opened_at
                .is_some_and(|at| at.elapsed() >= self.boundary.interval)
    }

    /// Whether any message was dispatched in the open transaction.
    pub(crate) fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// The partitions the open transaction read from.
    pub(crate) fn partitions(&self) -> impl Iterator<Item = &TopicPartition> {
        self.from.keys()
    }

    /// How long one transaction operation may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.producer
            .transactions()
            .map_or(Duration::from_secs(30), |t| t.timeout)
    }

    /// Whether a fatal error (fencing) ended the producer's transactions.
    pub(crate) fn is_failed(&self) -> bool {
        self.producer.transactions().is_ok_and(|t| t.is_failed())
    }

    /// Sends `offsets` (the next offset to read, per partition) with the
    /// consumer's group metadata and commits. Blocking, bounded by
    /// `timeout`. The next transaction is opened by [`begin`](Self::begin).
    pub(crate) fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        offsets: &[(TopicPartition, i64)],
        timeout: Duration,
    ) -> Result<(), Error> {
        let txn = self.producer.transactions()?;
        let group = consumer.group_metadata().ok_or_else(|| {
            Error::Transactional(
                "the consumer has no group metadata (not in a group yet): its offsets cannot \
                 join the transaction"
                    .into(),
            )
        })?;
        let tpl = offset_list(offsets);
        let with_offsets = (!offsets.is_empty()).then_some((&tpl, &group));
        txn.commit_with_offsets(self.producer.client(), with_offsets, timeout)?;
        if self.isolating.is_none() {
            self.measure();
        }
        self.failed_commits = 0;
        self.isolating = self
            .isolating
            .and_then(|n| n.checked_sub(1).filter(|n| *n > 0));
        if self.isolating.is_none() || self.single() == self.suspect {
            self.suspect = None;
        }
        self.reset();
        Ok(())
    }

    /// Opens the next transaction.
    pub(crate) fn begin(&self) -> Result<(), Error> {
        self.producer.transactions()?.begin(self.producer.client())
    }

    /// Aborts the open transaction; returns where each partition it read
    /// from must be read again, and whether the abort worked.
    pub(crate) fn abort(
        &mut self,
        timeout: Duration,
    ) -> (Vec<(TopicPartition, i64)>, Result<(), Error>) {
        let rewind: Vec<(TopicPartition, i64)> = self.from.drain().collect();
        self.reset();
        let result = self
            .producer
            .transactions()
            .and_then(|txn| txn.abort(self.producer.client(), timeout));
        (rewind, result)
    }

    fn reset(&mut self) {
        self.from.clear();
        self.messages = 0;
        self.opened_at = None;
        self.poisoned = false;
        self.window_hit = false;
    }
}

fn offset_list(offsets: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (tp, offset) in offsets {
        // Only fails for an invalid offset; ours are >= 0.
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset));
    }
    tpl
}

/// The transaction's end at shutdown, carried to the close thread: the
/// commit (or abort) must happen before the consumer leaves its group, or
/// the group's generation no longer accepts the offsets.
pub(crate) struct Ending {
    pub(crate) transaction: Transaction,
    /// Commit these offsets; `None`: abort.
    pub(crate) commit: Option<Vec<(TopicPartition, i64)>>,
}

impl Ending {
    /// Commits or aborts within `timeout`: `Some(offsets)` when it
    /// committed, `None` when there was nothing to commit; an error when a
    /// transaction with messages could not commit (it was aborted).
    pub(crate) fn finish<C: ConsumerContext>(
        mut self,
        consumer: &BaseConsumer<C>,
        timeout: Duration,
    ) -> Result<Option<Vec<(TopicPartition, i64)>>, Error> {
        if self.transaction.is_failed() {
            // Fenced: nothing can be committed or aborted any more (the
            // broker aborted it already).
            return Ok(None);
        }
        let empty = self.transaction.is_empty();
        match self.commit.take() {
            Some(offsets) if !empty => match self.transaction.commit(consumer, &offsets, timeout) {
                Ok(()) => Ok(Some(offsets)),
                Err(err) => {
                    let _ = self.transaction.abort(timeout);
                    Err(err)
                }
            },
            _ => {
                self.transaction.abort(timeout).1?;
                if empty {
                    Ok(None)
                } else {
                    Err(Error::Transactional(
                        "the consumer stopped with messages of the open transaction unfinished \
                         (or after a failure it stopped on): the transaction was aborted, and \
                         its messages will be read again"
                            .into(),
                    ))
                }
            }
        }
    }
}

/// Refuses a transactional consumer whose transactions the broker would
/// abort while they run: one stays open up to `interval` after its first
/// message, then waits for its handlers and commits within the producer's
/// `transaction_timeout`; the transaction coordinator aborts any that is
/// open longer than the producer's `transaction.timeout.ms`, and the
/// commit then fails as fenced (fatal: the consumer stops).
pub(super) fn check_bounds(producer: &crate::Producer, interval: Duration) -> Result<(), Error> {
    let operation = producer.transactions()?.timeout;
    let Some((broker, shown)) = producer.config().transaction_timeout() else {
        return Ok(());
    };
    if interval.saturating_add(operation) < broker {
        return Ok(());
    }
    Err(Error::Transactional(format!(
        "transaction_interval ({interval:?}) plus the producer's transaction_timeout \
         ({operation:?}) must be shorter than its {shown}: a transaction stays open for the \
         interval, then waits for its handlers and commits within transaction_timeout, and the \
         broker aborts any transaction open longer than transaction.timeout.ms (librdkafka then \
         reports the commit as fenced, and the consumer stops). Shorten the interval or the \
         producer's transaction_timeout, or raise its transaction.timeout.ms"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transaction(max_messages: usize, interval: Duration) -> Transaction {
        let producer = Producer::builder("txn-unit")
            .brokers(["127.0.0.1:1"])
            .transactional_id("txn-unit")
            .error_handler(|_| {})
            .build()
            .unwrap();
        Transaction::new(
            producer,
            Boundary {
                max_messages,
                interval,
            },
        )
    }

    #[tokio::test]
    async fn a_transaction_remembers_where_each_partition_started_and_ends_at_its_bounds() {
        let mut txn = transaction(3, Duration::from_secs(3600));
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        assert!(txn.is_empty() && !txn.due() && !txn.full());
        txn.dispatched(&a, 10);
        txn.dispatched(&b, 4);
        assert!(!txn.full(), "2 of 3");
        // A message placed before an earlier one (after a seek) moves the
        // rewind point back.
        txn.dispatched(&a, 8);
        assert!(txn.full() && txn.due());
        let mut partitions: Vec<_> = txn.partitions().cloned().collect();
        partitions.sort();
        assert_eq!(partitions, [a.clone(), b.clone()]);

        // Nothing was begun (no broker): the abort has nothing to abort,
        // and still hands back every rewind point and empties the
        // transaction.
        let (mut rewind, result) = txn.abort(Duration::from_millis(10));
        rewind.sort();
        assert_eq!(rewind, [(a, 8), (b, 4)]);
        assert!(result.is_ok());
        assert!(txn.is_empty() && !txn.due() && txn.partitions().next().is_none());
    }

    #[tokio::test]
    async fn a_transaction_is_due_its_interval_after_its_first_message() {
        let mut txn = transaction(1_000, Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            !txn.due(),
            "the interval runs from the first message, not from the start"
        );
        txn.dispatched(&TopicPartition::new("t", 0), 0);
        assert!(!txn.due());
        std::thread::sleep(Duration::from_millis(40));
        assert!(txn.due() && !txn.full());
    }
}
