//! Per-key order across the retry tiers (off by default:
//! [`RetryTopics::keep_key_order`](super::RetryTopics::keep_key_order)).
//!
//! While a key has a message somewhere in the tiers, later messages of that
//! key follow it there instead of overtaking it. What this needs:
//!
//! - **One owner per source partition.** The main topic's partition `p` and
//!   every tier's partition `p` (a copy keeps its partition number) are
//!   consumed by one member, so that one process sees every move of the
//!   partition's keys: the consumer subscribes to the main topic and the
//!   tiers together, with a co-partitioning assignor (`range`).
//! - **The chain of a source partition**: for each key, the original
//!   offsets of its messages still in the tiers (with how many copies of
//!   each). A copy is added before it is published (so nothing can
//!   overtake it while the publish is in flight) and removed once the copy
//!   consumed from its tier settled (handled, moved on, dead-lettered).
//! - **Rebuilt after every assignment** of the partition, from the tiers
//!   themselves: each tier partition is read from the group's committed
//!   offset to its end. What another member (or this one before a restart)
//!   left in the tiers is known before the first message of the partition
//!   is handled.
//!
//! A message of key `k` with original offset `o` is handled only if no copy
//! of `k` with an original offset below `o` is in the chain; otherwise it
//! follows to the next tier (the last tier republishes to itself), without
//! being handled. A main-topic message whose own copy is in the chain was
//! moved before a restart and is skipped.
//!
//! All state is behind one async lock per source partition; handlers run
//! without it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::headers;
use crate::config::Config;
use crate::consumer::{Binding, Listener, Rebalance};
use crate::{Error, Message};

/// Where a consumed message stands in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Place {
    pub(super) key: Bytes,
    /// Its partition in the source topic (= in every tier).
    pub(super) partition: i32,
    /// Its offset in the source topic: the order of the key's messages.
    pub(super) original_offset: i64,
    /// 0 on the main topic, `n` in tier `n`.
    pub(super) tier: usize,
}

impl Place {
    /// `None` for a message without key (it has no order to keep) or
    /// without a position.
    pub(super) fn of(message: &Message) -> Option<Place> {
        let key = message.key()?.clone();
        let h = message.headers();
        let parsed = |name: &str| h.get_str(name).and_then(|v| v.parse::<i64>().ok());
        // Copies written before the tier header carry it in the attempt.
        let tier = h
            .get_str(headers::TIER)
            .or_else(|| h.get_str(headers::ATTEMPT))
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let (partition, original_offset) = if tier == 0 {
            (message.partition()?, message.offset()?)
        } else {
            (
                i32::try_from(parsed(headers::ORIGINAL_PARTITION)?).ok()?,
                parsed(headers::ORIGINAL_OFFSET)?,
            )
        };
        Some(Place {
            key,
            partition,
            original_offset,
            tier,
        })
    }
}

/// What to do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing earlier of its key is in the tiers.
    Handle,
    /// An earlier message of its key is in the tiers: follow it.
    Follow,
    /// A main-topic message already in the tiers (moved before a restart).
    AlreadyMoved,
}

/// The transaction a step of the chain belongs to (exactly-once consumers):
/// a copy published, or a consumed copy settled, in a transaction that
/// aborts did not happen — the copy never becomes visible, the settled one
/// is read again. `None`: final at once (no transaction).
pub(super) type Generation = Option<u64>;

/// How the transactions of a generation ended, as far as the chain cares.
pub(super) trait Generations: Send + Sync {
    /// The transaction what is published (and settled) now belongs to.
    fn current(&self) -> Generation;
    /// Whether transaction `g` aborted.
    fn is_aborted(&self, g: u64) -> bool;
    /// Whether transaction `g` ended without aborting (committed).
    fn is_committed(&self, g: u64) -> bool;
}

/// No transactions: every step is final when made.
pub(super) struct Immediate;

impl Generations for Immediate {
    fn current(&self) -> Generation {
        None
    }
    fn is_aborted(&self, _: u64) -> bool {
        false
    }
    fn is_committed(&self, _: u64) -> bool {
        true
    }
}

/// One copy of a message in the tiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Copy {
    /// The transaction its publish went into.
    added: Generation,
    /// The transaction in which the copy, consumed from its tier, settled.
    settled: Generation,
    /// Settled outside any transaction.
    gone: bool,
}

impl Copy {
    fn aborted(g: Generation, gens: &dyn Generations) -> bool {
        g.is_some_and(|g| gens.is_aborted(g))
    }

    /// In the tiers (for order): published in a transaction that did not
    /// abort, and not settled in one that did not abort.
    fn live(&self, gens: &dyn Generations) -> bool {
        !self.gone
            && !Self::aborted(self.added, gens)
            && self.settled.is_none_or(|g| gens.is_aborted(g))
    }

    /// Never matters again: its publish aborted, or it settled for good.
    fn spent(&self, gens: &dyn Generations) -> bool {
        self.gone
            || Self::aborted(self.added, gens)
            || self.settled.is_some_and(|g| gens.is_committed(g))
    }
}

/// The copies of one source partition's messages in the tiers, by key.
#[derive(Debug, Default)]
pub(super) struct Chain {
    keys: HashMap<Bytes, BTreeMap<i64, Vec<Copy>>>,
}

impl Chain {
    /// Forgets what is spent of `key`'s copies.
    fn prune(&mut self, key: &Bytes, gens: &dyn Generations) {
        let Some(offsets) = self.keys.get_mut(key) else {
            return;
        };
        for copies in offsets.values_mut() {
            copies.retain(|c| !c.spent(gens));
        }
        self.tidy(key);
    }

    pub(super) fn step(&mut self, place: &Place, gens: &dyn Generations) -> Step {
        self.prune(&place.key, gens);
        let Some(offsets) = self.keys.get(&place.key) else {
            return Step::Handle;
        };
        let live = |copies: &Vec<Copy>| copies.iter().any(|c| c.live(gens));
        if offsets
            .range(..place.original_offset)
            .any(|(_, copies)| live(copies))
        {
            Step::Follow
        } else if place.tier == 0 && offsets.get(&place.original_offset).is_some_and(live) {
            Step::AlreadyMoved
        } else {
            Step::Handle
        }
    }

    /// A copy of `key`'s message at `original_offset`, published in
    /// transaction `added`.
    pub(super) fn add(&mut self, key: &Bytes, original_offset: i64, added: Generation) {
        self.keys
            .entry(key.clone())
            .or_default()
            .entry(original_offset)
            .or_default()
            .push(Copy {
                added,
                settled: None,
                gone: false,
            });
    }

    /// One copy of `key`'s message at `original_offset` settled (in
    /// transaction `settled`).
    pub(super) fn remove(
        &mut self,
        key: &Bytes,
        original_offset: i64,
        settled: Generation,
        gens: &dyn Generations,
    ) {
        if let Some(copy) = self
            .keys
            .get_mut(key)
            .and_then(|o| o.get_mut(&original_offset))
            .and_then(|copies| copies.iter_mut().find(|c| c.live(gens)))
        {
            match settled {
                Some(g) => copy.settled = Some(g),
                None => copy.gone = true,
            }
        }
        self.prune(key, gens);
    }

    /// Takes out the copy just added in transaction `added` whose publish
    /// failed.
    pub(super) fn unadd(&mut self, key: &Bytes, original_offset: i64, added: Generation) {
        if let Some(copies) = self
            .keys
            .get_mut(key)
            .and_then(|o| o.get_mut(&original_offset))
        {
            if let Some(i) = copies
                .iter()
                .rposition(|c| c.added == added && c.settled.is_none() && !c.gone)
            {
                copies.remove(i);
            }
        }
        self.tidy(key);
    }

    fn tidy(&mut self, key: &Bytes) {
        if let Some(offsets) = self.keys.get_mut(key) {
            offsets.retain(|_, copies| !copies.is_empty());
            if offsets.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Keys with something in the tiers.
    pub(super) fn keys_waiting(&self) -> usize {
        self.keys.len()
    }
}

/// A source partition's chain, built on first use after each assignment.
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) chain: tokio::sync::Mutex<Option<Chain>>,
}

impl Slot {
    /// Adds a copy of `key`'s message at `original_offset` (once built).
    pub(super) async fn add(&self, key: &Bytes, original_offset: i64, added: Generation) {
        if let Some(chain) = self.chain.lock().await.as_mut() {
            chain.add(key, original_offset, added);
        }
    }

    /// Takes out the copy just added whose publish failed.
    pub(super) async fn unadd(&self, key: &Bytes, original_offset: i64, added: Generation) {
        if let Some(chain) = self.chain.lock().await.as_mut() {
            chain.unadd(key, original_offset, added);
        }
    }

    /// A copy of `key`'s message at `original_offset`, consumed from its
    /// tier, settled in transaction `settled`.
    pub(super) async fn settle(
        &self,
        key: &Bytes,
        original_offset: i64,
        settled: Generation,
        gens: &dyn Generations,
    ) {
        if let Some(chain) = self.chain.lock().await.as_mut() {
            chain.remove(key, original_offset, settled, gens);
        }
    }
}

/// Why key order cannot be kept for a message: it goes to the error
/// handler instead of being handled out of order.
#[derive(Debug, thiserror::Error)]
pub enum KeyOrderError {
    /// The consumer does not hold the main topic's partition and every
    /// tier's partition of the same number (the tiers have another
    /// partition count than the main topic, for one).
    #[error(
        "retry topics keep key order only when one consumer holds partition {partition} of \
         {source_topic} and of every tier (set it up with RetryTopics::subscribe; \
         missing: {missing:?})"
    )]
    NotCoPartitioned {
        /// The source topic.
        source_topic: String,
        /// The partition number.
        partition: i32,
        /// The topic-partitions of that number not assigned.
        missing: Vec<String>,
    },
    /// Reading what is in the tiers failed (the handler was dropped while
    /// it read: the consumer is shutting down).
    #[error("could not read what partition {partition} has in the retry tiers: {reason}")]
    Rebuild {
        /// The partition number.
        partition: i32,
        /// Why.
        reason: String,
    },
    /// Key order was asked of a batch consumer (refused when it is built;
    /// this only when the layer was wrapped so that the build could not
    /// see it).
    #[error("retry topics keep key order with the streaming consumer only")]
    Batch,
}

/// The key-order state of one `RetryTopics`: shared by its layers and the
/// rebalance listener of its consumer.
pub(super) struct KeyOrder {
    source: Arc<str>,
    tiers: Vec<Arc<str>>,
    /// Bound of one attempt to read the tiers on a rebuild.
    rebuild_timeout: Duration,
    /// The producer of the tier copies.
    producer: crate::Producer,
    /// The consumer's configuration, once it is built.
    config: Mutex<Option<Config>>,
    /// The consumer's transactions (exactly-once), once it is built.
    gens: Mutex<Arc<dyn Generations>>,
    /// Whether the copies are published in the consumer's transactions.
    copies_transactional: std::sync::atomic::AtomicBool,
    slots: Mutex<HashMap<i32, Arc<Slot>>>,
    assigned: Mutex<BTreeSet<(Arc<str>, i32)>>,
    /// The client reading the tiers on a rebuild; kept between rebuilds.
    reader: Mutex<Option<BaseConsumer>>,
}

impl std::fmt::Debug for KeyOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyOrder")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A consumer's transactions, as the chain sees them.
struct Transactional(crate::Producer);

impl Generations for Transactional {
    fn current(&self) -> Generation {
        // The transaction the running handler's message was dispatched in:
        // its offset commits there, and a publish it makes is admitted only
        // into that transaction (refused once it ended).
        crate::producer::fence::dispatched_in()
            .or_else(|| Some(self.0.transactions().ok()?.fence.generation()))
    }
    fn is_aborted(&self, g: u64) -> bool {
        self.0.transactions().is_ok_and(|t| t.fence.is_aborted(g))
    }
    fn is_committed(&self, g: u64) -> bool {
        self.0
            .transactions()
            .is_ok_and(|t| g < t.fence.generation() && !t.fence.is_aborted(g))
    }
}

impl KeyOrder {
    pub(super) fn new(
        source: Arc<str>,
        tiers: Vec<Arc<str>>,
        rebuild_timeout: Duration,
        producer: crate::Producer,
    ) -> Self {
        KeyOrder {
            source,
            tiers,
            rebuild_timeout,
            producer,
            config: Mutex::new(None),
            gens: Mutex::new(Arc::new(Immediate)),
            copies_transactional: std::sync::atomic::AtomicBool::new(false),
            slots: Mutex::new(HashMap::new()),
            assigned: Mutex::new(BTreeSet::new()),
            reader: Mutex::new(None),
        }
    }

    fn ours(&self, topic: &str) -> bool {
        *self.source == *topic || self.tiers.iter().any(|t| **t == *topic)
    }

    /// The consumer's transactions (or [`Immediate`]).
    pub(super) fn gens(&self) -> Arc<dyn Generations> {
        lock(&self.gens).clone()
    }

    /// The transaction a tier copy published now belongs to: `None` when
    /// it is durable once acknowledged (not published in a transaction).
    pub(super) fn publish_generation(&self, gens: &dyn Generations) -> Generation {
        if self
            .copies_transactional
            .load(std::sync::atomic::Ordering::Acquire)
        {
            gens.current()
        } else {
            None
        }
    }

    /// The slot of source partition `partition`, if this consumer holds
    /// that partition of the source and of every tier.
    pub(super) fn slot(&self, partition: i32) -> Result<Arc<Slot>, KeyOrderError> {
        let assigned = lock(&self.assigned);
        let missing: Vec<String> = std::iter::once(&self.source)
            .chain(&self.tiers)
            .filter(|t| !assigned.contains(&((*t).clone(), partition)))
            .map(|t| format!("{t}[{partition}]"))
            .collect();
        drop(assigned);
        if !missing.is_empty() {
            return Err(KeyOrderError::NotCoPartitioned {
                source_topic: self.source.to_string(),
                partition,
                missing,
            });
        }
        Ok(lock(&self.slots).entry(partition).or_default().clone())
    }

    /// The chain of `partition` as the tiers hold it now (blocking: run it
    /// off the runtime's workers). Each attempt is bounded by the rebuild
    /// timeout; a failed one is retried, going on from where it stopped,
    /// until the read completes or `cancelled` is set (the handler waiting
    /// for it was dropped): a message is never failed because the tiers
    /// were slow to read — its partition waits, as order requires.
    pub(super) fn read(
        &self,
        partition: i32,
        cancelled: &std::sync::atomic::AtomicBool,
    ) -> Result<Chain, KeyOrderError> {
        let failed = |reason: String| KeyOrderError::Rebuild { partition, reason };
        let config = lock(&self.config).clone().ok_or_else(|| {
            failed("the consumer was not built with RetryTopics::subscribe".into())
        })?;
        let earliest = !matches!(
            config.get("auto.offset.reset"),
            Some("latest" | "largest" | "end")
        );
        let mut progress = Progress::default();
        let mut attempt = 0u32;
        let mut reader = lock(&self.reader);
        loop {
            if cancelled.load(std::sync::atomic::Ordering::Acquire) {
                return Err(failed("cancelled".into()));
            }
            attempt += 1;
            if reader.is_none() {
                match reader_client(&config) {
                    Ok(c) => *reader = Some(c),
                    Err(e) => return Err(failed(e.to_string())),
                }
            }
            let client = reader.as_ref().expect("just set");
            let result = read_tiers(
                client,
                &self.tiers,
                partition,
                earliest,
                self.rebuild_timeout,
                &mut progress,
                cancelled,
            );
            let _ = client.unassign();
            match result {
                Ok(()) => return Ok(progress.chain),
                Err(Stopped::Deadline(reason)) => {
                    // Slow, not broken: the same client goes on at once.
                    tracing::warn!(
                        topic = %self.source,
                        partition,
                        attempt,
                        records_read = progress.records,
                        %reason,
                        "reading the retry tiers for key order: going on; the partition waits",
                    );
                }
                Err(Stopped::Failed(reason)) => {
                    // A broken client is not kept.
                    *reader = None;
                    if cancelled.load(std::sync::atomic::Ordering::Acquire) {
                        return Err(failed(reason));
                    }
                    tracing::warn!(
                        topic = %self.source,
                        partition,
                        attempt,
                        records_read = progress.records,
                        %reason,
                        "reading the retry tiers for key order: retrying; the partition waits",
                    );
                    // Backs off up to 1 s, watching for cancellation.
                    let until = Instant::now() + Duration::from_secs(1);
                    while Instant::now() < until
                        && !cancelled.load(std::sync::atomic::Ordering::Acquire)
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }
}

impl Listener for KeyOrder {
    fn bind(&self, build: &Binding<'_>) -> Result<(), Error> {
        if build.batches {
            return Err(Error::ReservedConfig {
                key: "RetryTopics::keep_key_order".into(),
                value: "a BatchConsumer".into(),
                reason: "retry topics keep key order with the streaming consumer only \
                         (Consumer::builder)",
            });
        }
        let missing: Vec<&str> = std::iter::once(&self.source)
            .chain(&self.tiers)
            .map(|t| &**t)
            .filter(|t| !build.topics.iter().any(|x| x == t))
            .collect();
        if !missing.is_empty() || !build.not_before {
            return Err(Error::ReservedConfig {
                key: "topics".into(),
                value: if missing.is_empty() {
                    "(no not_before)".into()
                } else {
                    format!("{:?} (missing: {missing:?})", build.topics)
                },
                reason: "retry topics keep key order only with one consumer for the main topic \
                         and every tier, waiting for each copy's due time: set the consumer up \
                         with RetryTopics::subscribe",
            });
        }
        let config = build.config;
        let kip848 = config
            .get("group.protocol")
            .is_some_and(|p| p.eq_ignore_ascii_case("consumer"));
        let (key, value) = if kip848 {
            let assignor = config.get("group.remote.assignor").unwrap_or("uniform");
            ("group.remote.assignor", assignor)
        } else {
            let strategy = config
                .get("partition.assignment.strategy")
                .unwrap_or("range,roundrobin");
            ("partition.assignment.strategy", strategy)
        };
        if !value.trim_start().starts_with("range") {
            return Err(Error::ReservedConfig {
                key: key.into(),
                value: value.into(),
                reason: "retry topics keep key order only when each member gets the same \
                         partitions of the main topic and of every tier: use `range`",
            });
        }
        let gens: Arc<dyn Generations> = match build.transactional {
            None => Arc::new(Immediate),
            Some(consumer_producer) => {
                let copies = self.producer.transactions().ok();
                let same = copies.is_some_and(|c| {
                    consumer_producer
                        .transactions()
                        .is_ok_and(|t| std::ptr::eq(c, t))
                });
                if copies.is_some() && !same {
                    return Err(Error::Transactional(
                        "retry topics keeping key order on an exactly-once consumer publish their \
                         copies with the consumer's transactional producer (or a producer without \
                         transactions); another transactional producer's transactions are not \
                         the consumer's"
                            .into(),
                    ));
                }
                self.copies_transactional
                    .store(same, std::sync::atomic::Ordering::Release);
                Arc::new(Transactional(consumer_producer.clone()))
            }
        };
        *lock(&self.gens) = gens;
        *lock(&self.config) = Some(config.clone());
        Ok(())
    }

    fn on_rebalance(&self, event: &Rebalance) {
        let (partitions, assigned) = match event {
            Rebalance::Assigned(p) => (p, true),
            Rebalance::Revoked { partitions, .. } => (partitions, false),
        };
        let mut set = lock(&self.assigned);
        let mut slots = lock(&self.slots);
        for tp in partitions.iter().filter(|tp| self.ours(&tp.topic)) {
            if assigned {
                set.insert((tp.topic.clone(), tp.partition));
            } else {
                set.remove(&(tp.topic.clone(), tp.partition));
            }
            // Someone else may have moved its keys meanwhile: rebuilt on
            // next use. Handlers still holding the old slot finish with it.
            slots.remove(&tp.partition);
        }
    }
}

fn reader_client(config: &Config) -> Result<BaseConsumer, Error> {
    let mut config = config.clone();
    config
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    // Never joins the group (it is never subscribed); a static member id
    // would clash with the consumer's own.
    config.remove("group.instance.id");
    config
        .to_client_config()?
        .create()
        .map_err(|e| Error::kafka(crate::Operation::Create, e))
}

/// Why an attempt to read the tiers stopped.
enum Stopped {
    /// Its deadline passed: the client is fine.
    Deadline(String),
    /// The client failed (or the read was cancelled).
    Failed(String),
}

/// How far a rebuild got: kept across its attempts.
#[derive(Debug, Default)]
struct Progress {
    /// Per tier, from where to where it is to be read (fixed by the first
    /// attempt that got them).
    ranges: Option<Vec<(i64, i64)>>,
    /// Tiers read to their end.
    tiers_done: usize,
    /// The next offset to read in the current tier.
    next: Option<i64>,
    chain: Chain,
    records: u64,
}

/// Reads tier partition `partition` of each tier from the group's committed
/// offset (or the reset position) to its end, going on from `progress`.
fn read_tiers(
    client: &BaseConsumer,
    tiers: &[Arc<str>],
    partition: i32,
    earliest: bool,
    timeout: Duration,
    progress: &mut Progress,
    cancelled: &std::sync::atomic::AtomicBool,
) -> Result<(), Stopped> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    if progress.ranges.is_none() {
        let mut wanted = TopicPartitionList::new();
        for t in tiers {
            wanted.add_partition(t, partition);
        }
        let committed = client
            .committed_offsets(wanted, left())
            .map_err(|e| Stopped::Failed(format!("committed offsets: {e}")))?;
        let mut ranges = Vec::with_capacity(tiers.len());
        for t in tiers {
            let (low, high) = client
                .fetch_watermarks(t, partition, left())
                .map_err(|e| Stopped::Failed(format!("watermarks of {t}[{partition}]: {e}")))?;
            let start = match committed.find_partition(t, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(low),
                _ if earliest => low,
                _ => high,
            };
            ranges.push((start, high));
        }
        progress.ranges = Some(ranges);
    }
    let ranges = progress.ranges.clone().unwrap_or_default();
    while progress.tiers_done < tiers.len() {
        let t = &tiers[progress.tiers_done];
        let (start, high) = ranges[progress.tiers_done];
        let from = progress.next.unwrap_or(start);
        if from >= high {
            progress.tiers_done += 1;
            progress.next = None;
            continue;
        }
        let mut one = TopicPartitionList::new();
        one.add_partition_offset(t, partition, Offset::Offset(from))
            .map_err(|e| Stopped::Failed(e.to_string()))?;
        client
            .assign(&one)
            .map_err(|e| Stopped::Failed(format!("assign {t}[{partition}]: {e}")))?;
        loop {
            if cancelled.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Stopped::Failed("cancelled".into()));
            }
            if left().is_zero() {
                return Err(Stopped::Deadline(format!(
                    "{t}[{partition}] not read to its end ({high}) within {timeout:?} \
                     (at {})",
                    progress.next.unwrap_or(start)
                )));
            }
            match client.poll(left().min(Duration::from_millis(200))) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => {
                    return Err(Stopped::Failed(format!("reading {t}[{partition}]: {e}")))
                }
                Some(Ok(record)) => {
                    let offset = record.offset();
                    let message = crate::convert::from_borrowed(&record);
                    if let Some(place) = Place::of(&message) {
                        if place.partition == partition {
                            progress.chain.add(&place.key, place.original_offset, None);
                        }
                    }
                    progress.records += 1;
                    progress.next = Some(offset + 1);
                    if offset + 1 >= high {
                        break;
                    }
                }
            }
        }
        progress.tiers_done += 1;
        progress.next = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
