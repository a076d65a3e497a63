//! Kafka transactions on a producer built with a `transactional.id`: the
//! plain API (`begin` / publish / `commit` / `abort`, on [`Producer`]) and
//! the blocking steps a transactional consumer drives from its poll thread.
//!
//! librdkafka keeps one transaction per producer and puts every message
//! produced between `begin` and `commit` in it, from whichever clone or
//! thread: so the owner of the boundaries must be one party, either the
//! application (the plain API) or one consumer (see
//! [`ConsumerBuilder::transactional`](crate::ConsumerBuilder::transactional)),
//! never both — the state here enforces it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;
use rdkafka::TopicPartitionList;

use super::fence::Fence;
use super::poller::PolledProducer;
use crate::error::{Error, Operation};

/// Default bound of one transaction operation (init, commit, abort).
pub(crate) const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times `init_transactions` is called, each with the whole
/// operation bound, while it runs out of time (librdkafka goes on with it
/// between the calls).
const INIT_ATTEMPTS: u32 = 4;

/// Where a transactional producer is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `init_transactions` has not succeeded yet.
    Uninit,
    /// Initialised, no transaction open.
    Ready,
    /// A transaction is open.
    Open,
    /// A commit was asked for and ran out of time while librdkafka goes on
    /// with it: only the commit may be called again, to resume it
    /// (librdkafka refuses an abort as a conflicting call).
    Committing,
    /// A fatal error (fenced by a newer instance with the same
    /// `transactional.id`, for one): the producer cannot transact again.
    Failed,
}

/// The transactional side of a producer.
pub(crate) struct Transactions {
    pub(crate) id: String,
    phase: Mutex<Phase>,
    /// Set when a consumer drives the boundaries.
    owner: Mutex<Option<Arc<str>>>,
    busy: AtomicBool,
    pub(crate) timeout: Duration,
    /// Which handlers may still publish into the open transaction; also
    /// tells which transactions aborted (see `fence.rs`).
    pub(crate) fence: Arc<Fence>,
}

impl Transactions {
    pub(crate) fn new(id: String, timeout: Duration) -> Self {
        Transactions {
            id,
            phase: Mutex::new(Phase::Uninit),
            owner: Mutex::new(None),
            busy: AtomicBool::new(false),
            timeout,
            fence: Arc::default(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the boundaries to consumer group `group`; refused when another
    /// consumer or the application already uses them.
    pub(crate) fn take_control(&self, group: &Arc<str>) -> Result<(), Error> {
        let mut owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = owner.as_ref() {
            return Err(Error::Transactional(format!(
                "producer `{}` already drives the transactions of consumer group `{current}`; \
                 give each transactional consumer a producer of its own",
                self.id
            )));
        }
        if *self.phase() != Phase::Uninit {
            return Err(Error::Transactional(format!(
                "producer `{}` was already used with begin/commit_transaction; a consumer must \
                 own its transactions from the start",
                self.id
            )));
        }
        *owner = Some(group.clone());
        Ok(())
    }

    /// Claims the plain API's one call at a time: `false` while another
    /// call runs. Released with [`release`](Self::release).
    pub(super) fn claim(&self) -> bool {
        !self.busy.swap(true, Ordering::AcqRel)
    }

    /// Ends the call [`claim`](Self::claim) admitted.
    pub(super) fn release(&self) {
        self.busy.store(false, Ordering::Release);
    }

    pub(super) fn owned_by(&self) -> Option<Arc<str>> {
        self.owner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Initialises (once) and begins a transaction. Blocking.
    pub(crate) fn begin(&self, client: &PolledProducer) -> Result<(), Error> {
        let mut phase = self.phase();
        match *phase {
            Phase::Open | Phase::Committing => {
                return Err(Error::Transactional(format!(
                    "producer `{}` already has an open transaction",
                    self.id
                )))
            }
            Phase::Failed => return Err(self.failed()),
            Phase::Uninit => {
                // A timed-out init is still under way in librdkafka ("retry
                // call to resume"): call it again, as a commit is resumed.
                // Its coordinator may need longer than one bound to move
                // off a broker that is cut off (found by the network fault
                // campaign, seed 202).
                let mut attempt = 1;
                loop {
                    match client.init_transactions(self.timeout) {
                        Ok(()) => break,
                        Err(e) if is_resumable_kafka(&e) && attempt < INIT_ATTEMPTS => {
                            tracing::warn!(
                                producer = %self.id, attempt, error = %e,
                                "initialising transactions ran out of time; resuming"
                            );
                            attempt += 1;
                        }
                        Err(e) => {
                            return Err(self.fail_if_fatal(
                                &mut phase,
                                Operation::InitTransactions,
                                e,
                            ))
                        }
                    }
                }
                *phase = Phase::Ready;
            }
            Phase::Ready => {}
        }
        client
            .begin_transaction()
            .map_err(|e| self.fail_if_fatal(&mut phase, Operation::BeginTransaction, e))?;
        *phase = Phase::Open;
        Ok(())
    }

    /// Adds a consumer's offsets to the open transaction, then commits it
    /// (flushing what was published first). Blocking, bounded by
    /// `timeout`; retriable errors are retried within it. After an
    /// abortable error the transaction stays open and must be aborted;
    /// after running out of time ([`is_resumable`]) it must be committed
    /// again (librdkafka goes on with the commit and refuses an abort).
    ///
    /// The bound is shared by the steps: sending the offsets and waiting
    /// for what is in flight take what they need of its first half, the
    /// commit itself has the rest — so a slow delivery cannot leave the
    /// commit no time at all.
    pub(crate) fn commit_with_offsets(
        &self,
        client: &PolledProducer,
        offsets: Option<(&TopicPartitionList, &ConsumerGroupMetadata)>,
        timeout: Duration,
    ) -> Result<(), Error> {
        let mut phase = self.phase();
        if *phase != Phase::Committing {
            self.expect_open(*phase)?;
        }
        let started = std::time::Instant::now();
        let deadline = started + timeout;
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        if *phase == Phase::Open {
            let first_half = started + timeout / 2;
            let left_of_half = || first_half.saturating_duration_since(std::time::Instant::now());
            if let Some((offsets, group)) = offsets {
                retrying(&self.id, left_of_half, |t| {
                    client.send_offsets_to_transaction(offsets, group, t)
                })
                .map_err(|e| self.fail_if_fatal(&mut phase, Operation::CommitTransaction, e))?;
            }
            // rdkafka's `commit_transaction` flushes first, and its flush
            // polls in steps of 100 ms that run to their end whenever a
            // message is still in flight — while this producer's own
            // thread serves the delivery reports. Waiting for them here
            // costs what they take, not 100 ms per transaction.
            while client.in_flight_count() > 0 && !left_of_half().is_zero() {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        let committed = retrying(&self.id, left, |t| client.commit_transaction(t));
        if let Err(e) = committed {
            let resumable = is_resumable_kafka(&e);
            let err = self.fail_if_fatal(&mut phase, Operation::CommitTransaction, e);
            if *phase != Phase::Failed {
                *phase = if resumable {
                    Phase::Committing
                } else {
                    Phase::Open
                };
            }
            return Err(err);
        }
        self.fence.advance(false);
        *phase = Phase::Ready;
        Ok(())
    }

    /// Commits the open transaction (the plain API). Blocking.
    pub(crate) fn commit(&self, client: &PolledProducer, timeout: Duration) -> Result<(), Error> {
        self.commit_with_offsets(client, None, timeout)
    }

    /// Whether a fatal error ended this producer's transactions.
    pub(crate) fn is_failed(&self) -> bool {
        *self.phase() == Phase::Failed
    }

    /// Aborts the open transaction: what it published is never visible to
    /// `read_committed` readers. Blocking. Nothing open: nothing to do.
    pub(crate) fn abort(&self, client: &PolledProducer, timeout: Duration) -> Result<(), Error> {
        let mut phase = self.phase();
        match *phase {
            Phase::Open => {}
            Phase::Committing => {
                return Err(Error::Transactional(format!(
                    "producer `{}`: a commit that ran out of time is still under way in \
                     librdkafka; it must be committed again (to resume it), not aborted",
                    self.id
                )))
            }
            Phase::Failed => return Err(self.failed()),
            Phase::Uninit | Phase::Ready => return Ok(()),
        }
        // First: a handler of this transaction still running is refused
        // from now on, and one enqueueing now is aborted with it.
        self.fence.advance(true);
        // Resumed within the bound when it runs out of time once.
        let deadline = std::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        retrying(&self.id, left, |t| client.abort_transaction(t))
            .map_err(|e| self.fail_if_fatal(&mut phase, Operation::AbortTransaction, e))?;
        *phase = Phase::Ready;
        Ok(())
    }

    fn expect_open(&self, phase: Phase) -> Result<(), Error> {
        match phase {
            Phase::Open => Ok(()),
            Phase::Committing => Err(Error::Transactional(format!(
                "producer `{}`: a commit that ran out of time is still under way; commit again \
                 to resume it",
                self.id
            ))),
            Phase::Failed => Err(self.failed()),
            Phase::Uninit | Phase::Ready => Err(Error::Transactional(format!(
                "producer `{}` has no open transaction: call begin_transaction first",
                self.id
            ))),
        }
    }

    fn failed(&self) -> Error {
        Error::Transactional(format!(
            "producer `{}` hit a fatal transaction error earlier (fenced by a newer instance \
             with the same transactional.id, or timed out); build a new producer",
            self.id
        ))
    }

    fn fail_if_fatal(&self, phase: &mut Phase, operation: Operation, e: KafkaError) -> Error {
        if matches!(&e, KafkaError::Transaction(t) if t.is_fatal()) {
            *phase = Phase::Failed;
        }
        Error::kafka(operation, e)
    }
}

/// Whether a transaction step failed only for want of time, librdkafka
/// going on with it in the background: the same call resumes it, and any
/// other transactional call is refused as conflicting.
fn is_resumable_kafka(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_retriable() && !t.txn_requires_abort() && !t.is_fatal())
}

/// Whether `err` (from a commit) left the commit under way: commit again.
pub(crate) fn is_resumable(err: &Error) -> bool {
    matches!(err, Error::Kafka { source, .. } if is_resumable_kafka(source))
}

/// Runs a transaction step again while librdkafka says it may be retried
/// and time is left.
fn retrying(
    id: &str,
    left: impl Fn() -> Duration,
    mut step: impl FnMut(Duration) -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    loop {
        match step(left()) {
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && !e.txn_requires_abort() && !left().is_zero() =>
            {
                tracing::debug!(producer = %id, error = %e, "transaction step: retrying");
                std::thread::sleep(Duration::from_millis(50).min(left()));
            }
            other => return other,
        }
    }
}
