//! A running consumer's status, readable from any thread without a broker
//! round trip: the poll thread publishes a snapshot of what only it knows
//! (its partitions' trackers and pauses) every [`PUBLISH_EVERY`], and the
//! things that must stay fresh even when the poll thread is stuck — when it
//! last made progress, the group's state — are atomics read at request
//! time. [`health`](crate::health) judges a snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::offsets::TopicPartition;

/// How often the poll thread refreshes the snapshot.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Where a consumer stands in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GroupState {
    /// Built, `run` not called yet.
    Idle,
    /// Running, waiting for its first assignment.
    Joining,
    /// Holds an assignment (possibly empty: more members than partitions).
    Stable,
    /// Partitions were revoked and no new assignment has arrived yet.
    Rebalancing,
    /// Shutting down.
    Stopping,
    /// `run` returned.
    Stopped,
}

impl GroupState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => GroupState::Joining,
            2 => GroupState::Stable,
            3 => GroupState::Rebalancing,
            4 => GroupState::Stopping,
            5 => GroupState::Stopped,
            _ => GroupState::Idle,
        }
    }
}

/// Why a partition is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PauseReason {
    /// Its buffer is full (`max_in_flight_per_partition` or
    /// `max_in_flight`); it resumes when half drained.
    Backpressure,
    /// Held behind an unfinished message (see [`Error::Stalled`](crate::Error::Stalled)).
    Stalled,
    /// Being revoked, or the consumer is stopping: it drains and goes.
    Closing,
    /// Its next message is not due yet (a retry tier's backoff, see
    /// [`ConsumerBuilder::not_before`](crate::ConsumerBuilder::not_before)).
    NotDue,
}

/// One assigned partition, as the consumer sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PartitionStatus {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset the consumer will read: librdkafka's position,
    /// which passes transaction markers and aborted records it read past,
    /// or one past the last message handed to a handler when librdkafka
    /// has none (just assigned, or set back to a message not due yet).
    pub position: Option<i64>,
    /// The offset stored (the next to read after a restart, once
    /// committed): one past the contiguous run of finished messages.
    pub stored: Option<i64>,
    /// The last committed offset this consumer knows of.
    pub committed: Option<i64>,
    /// The partition's high watermark as librdkafka last saw it (no broker
    /// round trip).
    pub high_watermark: Option<i64>,
    /// High watermark − committed offset. On a transactional input it
    /// stays at least 1 once everything is read: the last offset of the
    /// log is the transaction's marker, never handed over nor committed
    /// past (see `fetchable`).
    pub lag: Option<i64>,
    /// High watermark − [`position`](Self::position): what there is to
    /// read that the consumer has not read yet; 0 once it read everything,
    /// the last transaction's marker included. With `read_committed`, a
    /// transaction still open on the input counts too, though nothing of
    /// it can be read before it ends.
    pub fetchable: Option<i64>,
    /// Messages fetched and not finished.
    pub in_flight: usize,
    /// Why it is paused, if it is.
    pub paused: Option<PauseReason>,
    /// The oldest unfinished message: its offset, and for how long it has
    /// held the partition's offset (since it became the oldest unfinished
    /// one). A handler stuck on it shows here.
    pub oldest_unfinished: Option<Unfinished>,
    /// How long ago a message of this partition last finished.
    #[serde(with = "secs_opt")]
    pub last_handled_ago: Option<Duration>,
    /// How long ago the committed offset last moved (or since the
    /// partition was assigned, if it has not moved).
    #[serde(with = "secs")]
    pub committed_unchanged_for: Duration,
}

/// The oldest unfinished message of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unfinished {
    /// Its offset.
    pub offset: i64,
    /// How long it has been the oldest unfinished message.
    #[serde(with = "secs")]
    pub held_for: Duration,
}

/// Outcome counters since `run` started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Counters {
    /// Handled with success.
    pub succeeded: u64,
    /// Skipped.
    pub skipped: u64,
    /// Failed (whatever the error handler decided).
    pub failed: u64,
    /// Assignments received.
    pub assignments: u64,
    /// Transactions committed (transactional mode).
    pub transactions_committed: u64,
    /// Transactions aborted (transactional mode).
    pub transactions_aborted: u64,
}

/// A consumer's status at one moment; see [`StatusHandle::snapshot`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// The consumer group.
    pub group: String,
    /// The member id the coordinator gave this consumer, once joined.
    pub member_id: Option<String>,
    /// Where it stands in its group.
    pub state: GroupState,
    /// How long it has been in that state.
    #[serde(with = "secs")]
    pub state_for: Duration,
    /// The group protocol: `classic` or `consumer` (KIP-848).
    pub protocol: String,
    /// The assigned partitions.
    pub partitions: Vec<PartitionStatus>,
    /// How long ago the poll thread last made progress (polled, or settled
    /// finished messages while draining); `None` before `run`.
    #[serde(with = "secs_opt")]
    pub last_poll_ago: Option<Duration>,
    /// How old the per-partition figures are (they are refreshed by the
    /// poll thread every 100 ms; a stuck poll thread leaves them old).
    #[serde(with = "secs")]
    pub partitions_age: Duration,
    /// Outcome counters.
    pub counters: Counters,
    /// A fatal client error (or a panic) that stopped or will stop the
    /// consumer.
    pub fatal_error: Option<String>,
    /// When the snapshot was taken.
    #[serde(skip)]
    pub taken_at: SystemTime,
}

/// Reads a consumer's [`ConsumerStatus`] from anywhere, at any time
/// (before `run`, while it runs, after it returned); never blocks on the
/// consumer. Cheap to clone. Get one with
/// [`Consumer::status_handle`](crate::Consumer::status_handle).
#[derive(Clone, Debug)]
pub struct StatusHandle {
    board: Arc<Board>,
}

impl StatusHandle {
    pub(crate) fn new(board: Arc<Board>) -> Self {
        StatusHandle { board }
    }

    /// The status now: the poll thread's last published figures (at most
    /// about 100 ms old while it runs) with the fresh state and progress.
    pub fn snapshot(&self) -> ConsumerStatus {
        self.board.snapshot()
    }
}

/// What the poll thread publishes; the atomics are written by whoever
/// changes them (the poll thread, the rebalance callback, `run`).
#[derive(Debug)]
pub(crate) struct Board {
    group: String,
    protocol: String,
    started: Instant,
    state: AtomicU8,
    /// Milliseconds since `started`.
    state_since: AtomicU64,
    /// Milliseconds since `started` + 1 (0: never).
    last_progress: AtomicU64,
    published: Mutex<Published>,
    fatal: Mutex<Option<String>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub(crate) at: Instant,
    pub(crate) member_id: Option<String>,
    pub(crate) partitions: Vec<PartitionStatus>,
    pub(crate) counters: Counters,
}

impl Board {
    pub(crate) fn new(group: String, protocol: String) -> Self {
        let started = Instant::now();
        Board {
            group,
            protocol,
            started,
            state: AtomicU8::new(0),
            state_since: AtomicU64::new(0),
            last_progress: AtomicU64::new(0),
            published: Mutex::new(Published {
                at: started,
                member_id: None,
                partitions: Vec::new(),
                counters: Counters::default(),
            }),
            fatal: Mutex::new(None),
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Once stopping, only `Stopped` may follow (a rebalance callback
    /// during the close does not make the consumer look alive again).
    pub(crate) fn set_state(&self, state: GroupState) {
        let current = self.state();
        let stopping = matches!(current, GroupState::Stopping | GroupState::Stopped);
        if current == state || (stopping && state != GroupState::Stopped) {
            return;
        }
        self.state.store(state as u8, Ordering::Release);
        self.state_since.store(self.millis(), Ordering::Release);
    }

    pub(crate) fn state(&self) -> GroupState {
        GroupState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The poll thread made progress.
    pub(crate) fn progress(&self) {
        self.last_progress
            .store(self.millis() + 1, Ordering::Release);
    }

    pub(crate) fn set_fatal(&self, error: String) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        fatal.get_or_insert(error);
    }

    pub(crate) fn publish(&self, published: Published) {
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = published;
    }

    fn snapshot(&self) -> ConsumerStatus {
        let now = self.millis();
        let published = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let last = self.last_progress.load(Ordering::Acquire);
        ConsumerStatus {
            group: self.group.clone(),
            member_id: published.member_id,
            state: self.state(),
            state_for: Duration::from_millis(
                now.saturating_sub(self.state_since.load(Ordering::Acquire)),
            ),
            protocol: self.protocol.clone(),
            partitions: published.partitions,
            last_poll_ago: (last > 0).then(|| Duration::from_millis(now.saturating_sub(last - 1))),
            partitions_age: published.at.elapsed(),
            counters: published.counters,
            fatal_error: self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            taken_at: SystemTime::now(),
        }
    }
}

/// librdkafka's position for each of `assigned` that has one: the offset
/// after the last record the consumer read, transaction markers and
/// aborted records included (a marker is never handed over, but reading
/// it moves the position). Local figures, no broker round trip; unlike
/// rdkafka's `Consumer::position`, which first asks the group thread for
/// the assignment and waits for its answer.
#[allow(unsafe_code)]
pub(crate) fn fetch_positions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    assigned: &std::collections::BTreeSet<TopicPartition>,
) -> BTreeMap<TopicPartition, i64> {
    use rdkafka::consumer::Consumer as _;
    if assigned.is_empty() {
        return BTreeMap::new();
    }
    let mut list = rdkafka::TopicPartitionList::with_capacity(assigned.len());
    for tp in assigned {
        list.add_partition(&tp.topic, tp.partition);
    }
    // SAFETY: the client and the list are alive for the call; librdkafka
    // only writes the list's offsets and errors.
    let err =
        unsafe { rdkafka::bindings::rd_kafka_position(consumer.client().native_ptr(), list.ptr()) };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return BTreeMap::new();
    }
    list.elements()
        .iter()
        .zip(assigned)
        .filter_map(|(e, tp)| match e.offset() {
            // In the order added; checked all the same.
            rdkafka::Offset::Offset(o)
                if e.error().is_ok()
                    && e.partition() == tp.partition
                    && e.topic() == &*tp.topic =>
            {
                Some((tp.clone(), o))
            }
            _ => None,
        })
        .collect()
}

/// What the poll thread remembers between publications, to tell how long
/// something has not changed.
#[derive(Default)]
pub(crate) struct Ages {
    committed: BTreeMap<TopicPartition, (Option<i64>, Instant)>,
    head: BTreeMap<TopicPartition, (i64, Instant)>,
    handled: BTreeMap<TopicPartition, (u64, Instant)>,
}

impl Ages {
    /// How long `committed` has been the partition's committed offset.
    pub(crate) fn committed(&mut self, tp: &TopicPartition, committed: Option<i64>) -> Duration {
        let now = Instant::now();
        let entry = self.committed.entry(tp.clone()).or_insert((committed, now));
        if entry.0 != committed {
            *entry = (committed, now);
        }
        entry.1.elapsed()
    }

    /// How long `head` has been the oldest unfinished offset.
    pub(crate) fn head(&mut self, tp: &TopicPartition, head: Option<i64>) -> Option<Unfinished> {
        let Some(offset) = head else {
            self.head.remove(tp);
            return None;
        };
        let now = Instant::now();
        let entry = self.head.entry(tp.clone()).or_insert((offset, now));
        if entry.0 != offset {
            *entry = (offset, now);
        }
        Some(Unfinished {
            offset,
            held_for: entry.1.elapsed(),
        })
    }

    /// How long ago the partition's finished count last moved.
    pub(crate) fn handled(&mut self, tp: &TopicPartition, finished: u64) -> Option<Duration> {
        let now = Instant::now();
        match self.handled.get_mut(tp) {
            Some(entry) if entry.0 != finished => {
                *entry = (finished, now);
                Some(Duration::ZERO)
            }
            Some(entry) => (entry.0 > 0).then(|| entry.1.elapsed()),
            None => {
                self.handled.insert(tp.clone(), (finished, now));
                (finished > 0).then_some(Duration::ZERO)
            }
        }
    }

    /// Forgets partitions no longer assigned.
    pub(crate) fn retain(&mut self, assigned: &std::collections::BTreeSet<TopicPartition>) {
        self.committed.retain(|tp, _| assigned.contains(tp));
        self.head.retain(|tp, _| assigned.contains(tp));
        self.handled.retain(|tp, _| assigned.contains(tp));
    }
}

mod secs {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod secs_opt {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
