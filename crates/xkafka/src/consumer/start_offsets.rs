//! Where a transactional consumer starts reading a partition it was just
//! assigned: the group's committed offset, asked for here, on the poll
//! thread, rather than by librdkafka's assignment state machine.
//!
//! Why: a member killed inside its transaction's commit leaves a pending
//! transactional offset commit, and until the broker aborts that
//! transaction (after its `transaction.timeout.ms`) an offset query with
//! `isolation.level=read_committed` gets `UNSTABLE_OFFSET_COMMIT`.
//! librdkafka (2.12) retries such a query, but when a rebalance lands
//! while it is in flight, it puts the partition back on its pending list
//! with the *invalid* offset, which its state machine reads as "no
//! committed offset": the partition starts from `auto.offset.reset`, and
//! everything since the beginning is handled, and committed, again (or,
//! with `latest`, everything up to the end is skipped). The storm of
//! transactional members showed it (2,438 inputs with two committed
//! outputs); `tests/transactions.rs` reproduces it with one pending commit
//! and one rebalance. A query that fails outright is no better there: a
//! partition whose offset librdkafka could not fetch is never started.
//!
//! The cure: assign with explicit offsets, and only those. The rebalance
//! callback asks once, briefly; when the answer is not there, the
//! partitions are *withheld*: librdkafka is not told to assign them (its
//! group membership waits for that call, heartbeating), and the poll loop
//! asks again between its rounds (`XConsumerContext::serve_withheld`),
//! with backoff, until the offsets are known, the partitions are revoked
//! or lost, or the consumer stops. The poll loop keeps polling meanwhile,
//! so `max.poll.interval.ms` is honoured and its progress (what the health
//! check's `PollStalled` judges) moves. There is no bound after which the
//! partitions are handed to librdkafka's own query: every path out of the
//! wait either knows where to start or does not start at all. A partition
//! without a committed offset starts where `auto.offset.reset` says.
//!
//! This module only asks and keeps the wait's bookkeeping; the context
//! (`context.rs`) assigns, withholds and tells the error handler.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::TopicPartition;
use crate::config::Config;
use crate::error::{Error, Operation};

/// The first query's bound, inside the rebalance callback; and the shortest
/// bound of a later one. An answer that takes longer is asked for again
/// from the poll loop.
pub(crate) const FIRST_QUERY: Duration = Duration::from_millis(500);
/// The longest a later query blocks the poll thread: a slow coordinator
/// still gets that long to answer, and progress is marked at least this
/// often (well inside any sensible `PollStalled` threshold).
const LONGEST_QUERY: Duration = Duration::from_secs(2);
/// Backoff after a failed query (an error answer): doubles from the first
/// to the last, as librdkafka's `retry.backoff.ms` / `retry.backoff.max.ms`
/// defaults do.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LAST_BACKOFF: Duration = Duration::from_secs(1);
/// librdkafka's default `max.poll.interval.ms`.
const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);

/// Where a partition with no committed offset starts (`auto.offset.reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reset {
    Beginning,
    End,
    /// `error`: left to librdkafka, which raises it.
    Error,
}

impl Reset {
    fn parse(value: Option<&str>) -> Reset {
        match value.map(str::to_ascii_lowercase).as_deref() {
            Some("smallest" | "earliest" | "beginning") => Reset::Beginning,
            Some("error") => Reset::Error,
            // librdkafka's default is `largest`.
            _ => Reset::End,
        }
    }

    fn offset(self) -> Offset {
        match self {
            Reset::Beginning => Offset::Beginning,
            Reset::End => Offset::End,
            Reset::Error => Offset::Invalid,
        }
    }
}

/// How a transactional consumer resolves the start of its new partitions.
#[derive(Clone, Debug)]
pub(crate) struct StartOffsets {
    reset: Reset,
    /// A slow answer (a pending transaction, a slow coordinator) goes to
    /// the error handler once the wait has lasted this long: 0.8 ×
    /// `max.poll.interval.ms`, where this consumer used to stop waiting.
    slow_after: Duration,
}

/// Why a query did not give every partition's start.
#[derive(Debug)]
pub(crate) enum Unresolved {
    /// No answer within the query's bound.
    TimedOut,
    /// The query failed.
    Failed(KafkaError),
    /// The query answered, with an error for this partition.
    Partition {
        topic: String,
        partition: i32,
        code: RDKafkaErrorCode,
    },
}

impl Unresolved {
    /// A slow answer rather than a failure: no answer yet, or a pending
    /// transaction holding the offset.
    fn is_slow(&self) -> bool {
        matches!(self, Unresolved::TimedOut)
            || self.kind() == Some(RDKafkaErrorCode::UnstableOffsetCommit)
    }

    /// The kind the error handler is told about once per wait.
    fn kind(&self) -> Option<RDKafkaErrorCode> {
        match self {
            Unresolved::TimedOut => Some(RDKafkaErrorCode::OperationTimedOut),
            Unresolved::Failed(err) => err.rdkafka_error_code(),
            Unresolved::Partition { code, .. } => Some(*code),
        }
    }

    fn into_error(self, partitions: usize, waited: Duration) -> Error {
        let (source, which) = match self {
            Unresolved::TimedOut => (
                KafkaError::OffsetFetch(RDKafkaErrorCode::OperationTimedOut),
                String::new(),
            ),
            Unresolved::Failed(err) => (err, String::new()),
            Unresolved::Partition {
                topic,
                partition,
                code,
            } => (
                KafkaError::OffsetFetch(code),
                format!(" ({topic}/{partition})"),
            ),
        };
        Error::Kafka {
            operation: Operation::Rebalance,
            source,
            reason: Some(format!(
                "the group's committed offsets of {partitions} assigned partition(s){which} \
                 are unknown after {:.1} s; they are not read until they are known \
                 (never from auto.offset.reset), and the query is repeated",
                waited.as_secs_f64()
            )),
        }
    }
}

impl StartOffsets {
    pub(crate) fn from_config(config: &Config) -> Self {
        let max_poll = config
            .get("max.poll.interval.ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_MAX_POLL_INTERVAL, Duration::from_millis);
        StartOffsets {
            reset: Reset::parse(config.get("auto.offset.reset")),
            slow_after: max_poll.mul_f64(0.8),
        }
    }

    /// Asks the group's committed offsets of `tpl`'s partitions, waiting
    /// at most `timeout`: every partition's start (its committed offset, or
    /// where `auto.offset.reset` says when it has none), or why not.
    pub(crate) fn query<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
        timeout: Duration,
    ) -> Result<TopicPartitionList, Unresolved> {
        if tpl.count() == 0 {
            return Ok(tpl.clone());
        }
        let committed = match consumer.committed_offsets(tpl.clone(), timeout) {
            Ok(committed) => committed,
            Err(err) if is_timeout(&err) => return Err(Unresolved::TimedOut),
            Err(err) => return Err(Unresolved::Failed(err)),
        };
        self.starts(tpl, |topic, partition| {
            let answer = committed.find_partition(topic, partition)?;
            Some((answer.error(), answer.offset()))
        })
    }

    /// `tpl` with each partition's start, from the query's `answer` for
    /// it (its error, its committed offset).
    fn starts(
        &self,
        tpl: &TopicPartitionList,
        answer: impl Fn(&str, i32) -> Option<(KafkaResult<()>, Offset)>,
    ) -> Result<TopicPartitionList, Unresolved> {
        let mut starts = tpl.clone();
        for e in tpl.elements() {
            let start = match answer(e.topic(), e.partition()) {
                Some((Ok(()), Offset::Offset(o))) if o >= 0 => Offset::Offset(o),
                Some((Ok(()), _)) => self.reset.offset(),
                Some((Err(err), _)) => {
                    return Err(Unresolved::Partition {
                        topic: e.topic().to_owned(),
                        partition: e.partition(),
                        code: err
                            .rdkafka_error_code()
                            .unwrap_or(RDKafkaErrorCode::Unknown),
                    })
                }
                // librdkafka answers for every partition asked; one left
                // out is not taken as "no committed offset".
                None => {
                    return Err(Unresolved::Partition {
                        topic: e.topic().to_owned(),
                        partition: e.partition(),
                        code: RDKafkaErrorCode::UnknownPartition,
                    })
                }
            };
            // Only fails for a partition not in the list; it is.
            let _ = starts.set_partition_offset(e.topic(), e.partition(), start);
        }
        Ok(starts)
    }
}

fn is_timeout(err: &KafkaError) -> bool {
    err.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut)
}

/// Partitions the group assigned to this member whose start is not known
/// yet, not assigned to librdkafka until it is; and the wait's state.
pub(crate) struct Withheld {
    tpl: TopicPartitionList,
    /// Incremental (cooperative, KIP-848) assignment, or eager.
    pub(crate) cooperative: bool,
    since: Instant,
    next_query: Instant,
    /// Failed and timed-out queries in a row, for the backoff.
    failures: u32,
    timeouts: u32,
    /// The kinds of failure the error handler was told about.
    told: BTreeSet<i32>,
    /// The consumer is stopping: librdkafka was told "nothing" so that it
    /// can leave the group; the partitions are only remembered, so that
    /// their revocation is not passed on as if they had been assigned.
    released: bool,
}

impl Withheld {
    pub(crate) fn new(tpl: &TopicPartitionList, cooperative: bool) -> Self {
        let now = Instant::now();
        Withheld {
            tpl: tpl.clone(),
            cooperative,
            since: now,
            next_query: now,
            failures: 0,
            timeouts: 0,
            told: BTreeSet::new(),
            released: false,
        }
    }

    /// More partitions of an incremental assignment.
    pub(crate) fn add(&mut self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            if self.tpl.find_partition(e.topic(), e.partition()).is_none() {
                self.tpl.add_partition(e.topic(), e.partition());
            }
        }
    }

    /// The partitions withheld.
    pub(crate) fn tpl(&self) -> &TopicPartitionList {
        &self.tpl
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tpl.count() == 0
    }

    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    /// Takes `partitions` out (revoked): returns those that were withheld,
    /// never assigned to librdkafka.
    pub(crate) fn remove(
        &mut self,
        partitions: &BTreeSet<TopicPartition>,
    ) -> BTreeSet<TopicPartition> {
        let mut kept = TopicPartitionList::with_capacity(self.tpl.count());
        let mut removed = BTreeSet::new();
        for e in self.tpl.elements() {
            let tp = partitions
                .iter()
                .find(|tp| &*tp.topic == e.topic() && tp.partition == e.partition());
            match tp {
                Some(tp) => {
                    removed.insert(tp.clone());
                }
                None => {
                    kept.add_partition(e.topic(), e.partition());
                }
            }
        }
        self.tpl = kept;
        removed
    }

    pub(crate) fn is_released(&self) -> bool {
        self.released
    }

    pub(crate) fn release(&mut self) {
        self.released = true;
    }

    /// Whether the next query is due.
    pub(crate) fn due(&self, now: Instant) -> bool {
        !self.released && now >= self.next_query
    }

    /// The next query's bound: longer after each timeout, so that a slow
    /// coordinator gets to answer.
    pub(crate) fn query_timeout(&self) -> Duration {
        FIRST_QUERY
            .saturating_mul(1 << self.timeouts.min(8))
            .min(LONGEST_QUERY)
    }

    /// Records a query that did not resolve, and when to ask again (a timed
    /// out one: after as long as it waited, so the poll thread spends at
    /// most half its time asking; a failed one: after a backoff). Returns
    /// the error for the error handler when this kind is new in this wait:
    /// a failure at once, a slow answer once the wait has lasted
    /// `slow_after` (a pending transaction holds the offsets for up to its
    /// `transaction.timeout.ms`: waiting is normal).
    pub(crate) fn failed(&mut self, why: Unresolved, start: &StartOffsets) -> Option<Error> {
        let now = Instant::now();
        match why {
            Unresolved::TimedOut => {
                self.next_query = now + self.query_timeout();
                self.timeouts = self.timeouts.saturating_add(1);
            }
            _ => {
                self.next_query = now + backoff(self.failures);
                self.failures = self.failures.saturating_add(1);
            }
        }
        let waited = now.saturating_duration_since(self.since);
        if why.is_slow() && waited < start.slow_after {
            return None;
        }
        let kind = why.kind().map_or(i32::MIN, |code| code as i32);
        self.told
            .insert(kind)
            .then(|| why.into_error(self.tpl.count(), waited))
    }
}

/// The wait after the `failures`+1-th failed query in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.min(16))
        .min(LAST_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_offset_reset_maps_to_a_start_offset_with_librdkafkas_default() {
        for (value, reset) in [
            (Some("earliest"), Reset::Beginning),
            (Some("smallest"), Reset::Beginning),
            (Some("Beginning"), Reset::Beginning),
            (Some("latest"), Reset::End),
            (Some("largest"), Reset::End),
            (Some("end"), Reset::End),
            (Some("error"), Reset::Error),
            (None, Reset::End),
        ] {
            assert_eq!(Reset::parse(value), reset, "{value:?}");
        }
        assert_eq!(Reset::Error.offset(), Offset::Invalid);
    }

    #[test]
    fn a_slow_answer_is_reported_after_most_of_the_max_poll_interval() {
        let config: Config = [("max.poll.interval.ms", "10000")].into_iter().collect();
        let start = StartOffsets::from_config(&config);
        assert_eq!(start.slow_after, Duration::from_secs(8));
        assert_eq!(start.reset, Reset::End);
        let start = StartOffsets::from_config(&Config::new());
        assert_eq!(start.slow_after, Duration::from_secs(240));
    }

    fn one(topic: &str, partition: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        tpl
    }

    #[test]
    fn only_an_answer_without_error_gives_a_start() {
        let config: Config = [("auto.offset.reset", "earliest")].into_iter().collect();
        let start = StartOffsets::from_config(&config);
        let asked = one("t", 0);
        let answer = |result: KafkaResult<()>, offset: Offset| {
            move |topic: &str, partition: i32| {
                (topic == "t" && partition == 0).then(|| (result.clone(), offset))
            }
        };
        let starts = start
            .starts(&asked, answer(Ok(()), Offset::Offset(50)))
            .unwrap();
        assert_eq!(starts.elements()[0].offset(), Offset::Offset(50));
        // No committed offset: auto.offset.reset.
        let starts = start
            .starts(&asked, answer(Ok(()), Offset::Invalid))
            .unwrap();
        assert_eq!(starts.elements()[0].offset(), Offset::Beginning);
        // An error for the partition, or no answer for it: no start (the
        // old code handed such a partition to librdkafka's own query).
        let auth = Err(KafkaError::OffsetFetch(
            RDKafkaErrorCode::GroupAuthorizationFailed,
        ));
        match start.starts(&asked, answer(auth, Offset::Invalid)) {
            Err(Unresolved::Partition { code, .. }) => {
                assert_eq!(code, RDKafkaErrorCode::GroupAuthorizationFailed)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            start.starts(&asked, |_: &str, _: i32| None),
            Err(Unresolved::Partition { partition: 0, .. })
        ));
    }

    #[test]
    fn failures_back_off_and_are_told_once_per_kind_slow_answers_only_late() {
        let config: Config = [("max.poll.interval.ms", "1000")].into_iter().collect();
        let start = StartOffsets::from_config(&config);
        let mut w = Withheld::new(&one("t", 0), false);
        assert!(w.due(Instant::now()));
        let auth = || {
            Unresolved::Failed(KafkaError::MetadataFetch(
                RDKafkaErrorCode::GroupAuthorizationFailed,
            ))
        };
        let told = w.failed(auth(), &start).expect("a failure is told at once");
        assert!(
            told.to_string().contains("never from auto.offset.reset"),
            "{told}"
        );
        assert!(!w.due(Instant::now()), "backs off");
        for _ in 0..10 {
            assert!(w.failed(auth(), &start).is_none(), "told once");
        }
        assert_eq!(backoff(0), FIRST_BACKOFF);
        assert_eq!(backoff(30), LAST_BACKOFF);
        // Slow answers: quiet until 0.8 s of waiting, then told once; each
        // query may wait longer, up to the bound.
        assert_eq!(w.query_timeout(), FIRST_QUERY);
        assert!(w.failed(Unresolved::TimedOut, &start).is_none());
        assert_eq!(w.query_timeout(), FIRST_QUERY * 2);
        w.since = Instant::now() - Duration::from_secs(1);
        assert!(w.failed(Unresolved::TimedOut, &start).is_some());
        assert!(w.failed(Unresolved::TimedOut, &start).is_none());
        assert_eq!(w.query_timeout(), LONGEST_QUERY);
        w.release();
        w.next_query = Instant::now();
        assert!(!w.due(Instant::now()), "a released wait asks no more");
    }

    #[test]
    fn a_revocation_takes_withheld_partitions_out() {
        let mut tpl = one("t", 0);
        tpl.add_partition("t", 1);
        let mut w = Withheld::new(&tpl, true);
        w.add(&one("u", 0));
        w.add(&one("t", 1));
        assert_eq!(w.tpl().count(), 3);
        let revoked: BTreeSet<TopicPartition> =
            [TopicPartition::new("t", 1), TopicPartition::new("v", 0)].into();
        let removed = w.remove(&revoked);
        assert_eq!(removed, [TopicPartition::new("t", 1)].into());
        assert_eq!(w.tpl().count(), 2);
        assert!(!w.is_empty());
    }
}
