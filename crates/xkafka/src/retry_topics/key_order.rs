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
use crate::consumer::{Listener, Rebalance};
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
        let tier = h
            .get_str(headers::ATTEMPT)
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

/// The copies of one source partition's messages in the tiers, by key.
#[derive(Debug, Default)]
pub(super) struct Chain {
    keys: HashMap<Bytes, BTreeMap<i64, u32>>,
}

impl Chain {
    pub(super) fn step(&self, place: &Place) -> Step {
        let Some(offsets) = self.keys.get(&place.key) else {
            return Step::Handle;
        };
        if offsets.range(..place.original_offset).next().is_some() {
            Step::Follow
        } else if place.tier == 0 && offsets.contains_key(&place.original_offset) {
            Step::AlreadyMoved
        } else {
            Step::Handle
        }
    }

    pub(super) fn add(&mut self, key: &Bytes, original_offset: i64) {
        *self
            .keys
            .entry(key.clone())
            .or_default()
            .entry(original_offset)
            .or_default() += 1;
    }

    pub(super) fn remove(&mut self, key: &Bytes, original_offset: i64) {
        let Some(offsets) = self.keys.get_mut(key) else {
            return;
        };
        if let Some(n) = offsets.get_mut(&original_offset) {
            *n -= 1;
            if *n == 0 {
                offsets.remove(&original_offset);
            }
        }
        if offsets.is_empty() {
            self.keys.remove(key);
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
    pub(super) async fn add(&self, key: &Bytes, original_offset: i64) {
        if let Some(chain) = self.chain.lock().await.as_mut() {
            chain.add(key, original_offset);
        }
    }

    /// Takes a copy of `key`'s message at `original_offset` out (once built).
    pub(super) async fn remove(&self, key: &Bytes, original_offset: i64) {
        if let Some(chain) = self.chain.lock().await.as_mut() {
            chain.remove(key, original_offset);
        }
    }
}

/// Why key order cannot be kept for a message: it goes to the error
/// handler instead of being handled out of order.
#[derive(Debug, thiserror::Error)]
pub enum KeyOrderError {
    /// The consumer was not set up by
    /// [`RetryTopics::subscribe`](super::RetryTopics::subscribe), or does not
    /// hold the main topic's partition and every tier's partition of the
    /// same number.
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
    /// Reading what is in the tiers failed.
    #[error("could not read what partition {partition} has in the retry tiers: {reason}")]
    Rebuild {
        /// The partition number.
        partition: i32,
        /// Why.
        reason: String,
    },
    /// Key order was asked of a batch consumer.
    #[error("retry topics keep key order with the streaming consumer only")]
    Batch,
}

/// The key-order state of one `RetryTopics`: shared by its layers and the
/// rebalance listener of its consumer.
pub(super) struct KeyOrder {
    source: Arc<str>,
    tiers: Vec<Arc<str>>,
    read_timeout: Duration,
    /// The consumer's configuration, once it is built.
    config: Mutex<Option<Config>>,
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

impl KeyOrder {
    pub(super) fn new(source: Arc<str>, tiers: Vec<Arc<str>>, read_timeout: Duration) -> Self {
        KeyOrder {
            source,
            tiers,
            read_timeout,
            config: Mutex::new(None),
            slots: Mutex::new(HashMap::new()),
            assigned: Mutex::new(BTreeSet::new()),
            reader: Mutex::new(None),
        }
    }

    fn ours(&self, topic: &str) -> bool {
        *self.source == *topic || self.tiers.iter().any(|t| **t == *topic)
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
    /// off the runtime's workers).
    pub(super) fn read(&self, partition: i32) -> Result<Chain, KeyOrderError> {
        let failed = |reason: String| KeyOrderError::Rebuild { partition, reason };
        let config = lock(&self.config).clone().ok_or_else(|| {
            failed("the consumer was not built with RetryTopics::subscribe".into())
        })?;
        let earliest = !matches!(
            config.get("auto.offset.reset"),
            Some("latest" | "largest" | "end")
        );
        let mut reader = lock(&self.reader);
        if reader.is_none() {
            *reader = Some(reader_client(&config).map_err(|e| failed(e.to_string()))?);
        }
        let client = reader.as_ref().expect("just set");
        let result = read_tiers(client, &self.tiers, partition, earliest, self.read_timeout);
        let _ = client.unassign();
        if result.is_err() {
            // A broken client is not kept.
            *reader = None;
        }
        result.map_err(failed)
    }
}

impl Listener for KeyOrder {
    fn bind(&self, config: &Config) -> Result<(), Error> {
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

/// Reads tier partition `partition` of each tier from the group's committed
/// offset (or the reset position) to its end.
fn read_tiers(
    client: &BaseConsumer,
    tiers: &[Arc<str>],
    partition: i32,
    earliest: bool,
    timeout: Duration,
) -> Result<Chain, String> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut wanted = TopicPartitionList::new();
    for t in tiers {
        wanted.add_partition(t, partition);
    }
    let committed = client
        .committed_offsets(wanted, left())
        .map_err(|e| format!("committed offsets: {e}"))?;
    let mut chain = Chain::default();
    for t in tiers {
        let (low, high) = client
            .fetch_watermarks(t, partition, left())
            .map_err(|e| format!("watermarks of {t}[{partition}]: {e}"))?;
        let start = match committed.find_partition(t, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ if earliest => low,
            _ => high,
        };
        if start >= high {
            continue;
        }
        let mut one = TopicPartitionList::new();
        one.add_partition_offset(t, partition, Offset::Offset(start))
            .map_err(|e| e.to_string())?;
        client
            .assign(&one)
            .map_err(|e| format!("assign {t}[{partition}]: {e}"))?;
        loop {
            if left().is_zero() {
                return Err(format!(
                    "{t}[{partition}] not read to its end ({high}) within {timeout:?}"
                ));
            }
            match client.poll(left().min(Duration::from_millis(200))) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(format!("reading {t}[{partition}]: {e}")),
                Some(Ok(record)) => {
                    let offset = record.offset();
                    let message = crate::message_from_rdkafka(&record);
                    if let Some(place) = Place::of(&message) {
                        if place.partition == partition {
                            chain.add(&place.key, place.original_offset);
                        }
                    }
                    if offset + 1 >= high {
                        break;
                    }
                }
            }
        }
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(key: &str, offset: i64, tier: usize) -> Place {
        Place {
            key: Bytes::copy_from_slice(key.as_bytes()),
            partition: 0,
            original_offset: offset,
            tier,
        }
    }

    #[test]
    fn a_later_message_follows_an_earlier_one_of_its_key() {
        let mut chain = Chain::default();
        let a = place("k", 10, 0);
        assert_eq!(chain.step(&a), Step::Handle);
        chain.add(&a.key, 10);
        // Later main-topic messages of the key follow; other keys do not.
        assert_eq!(chain.step(&place("k", 11, 0)), Step::Follow);
        assert_eq!(chain.step(&place("other", 11, 0)), Step::Handle);
        // The copy itself is the head in its tier.
        assert_eq!(chain.step(&place("k", 10, 1)), Step::Handle);
        // Seen again on the main topic (before a restart it was moved).
        assert_eq!(chain.step(&place("k", 10, 0)), Step::AlreadyMoved);
        chain.add(&a.key, 11);
        assert_eq!(chain.step(&place("k", 11, 1)), Step::Follow);
        chain.remove(&a.key, 10);
        assert_eq!(chain.step(&place("k", 11, 1)), Step::Handle);
        assert_eq!(chain.keys_waiting(), 1);
        chain.remove(&a.key, 11);
        assert_eq!(chain.keys_waiting(), 0);
        assert_eq!(chain.step(&place("k", 12, 0)), Step::Handle);
    }

    #[test]
    fn copies_of_one_message_count_separately() {
        let mut chain = Chain::default();
        let k = Bytes::from_static(b"k");
        chain.add(&k, 5);
        chain.add(&k, 5);
        chain.remove(&k, 5);
        assert_eq!(chain.step(&place("k", 6, 0)), Step::Follow, "one copy left");
        chain.remove(&k, 5);
        assert_eq!(chain.step(&place("k", 6, 0)), Step::Handle);
        // Removing what is not there changes nothing.
        chain.remove(&k, 5);
        assert_eq!(chain.keys_waiting(), 0);
    }

    #[test]
    fn place_reads_the_origin_of_a_copy() {
        let main = Message::builder("orders")
            .key("k")
            .partition(2)
            .offset(7)
            .build();
        assert_eq!(Place::of(&main), Some(place_on(2, 7, 0)));
        let copy = Message::builder("orders.retry.2")
            .key("k")
            .partition(2)
            .offset(1)
            .header(headers::ATTEMPT, "2")
            .header(headers::ORIGINAL_PARTITION, "2")
            .header(headers::ORIGINAL_OFFSET, "7")
            .build();
        assert_eq!(Place::of(&copy), Some(place_on(2, 7, 2)));
        let keyless = Message::builder("orders").partition(0).offset(1).build();
        assert_eq!(Place::of(&keyless), None);
    }

    fn place_on(partition: i32, offset: i64, tier: usize) -> Place {
        Place {
            partition,
            ..place("k", offset, tier)
        }
    }

    #[test]
    fn bind_refuses_an_assignor_that_does_not_co_partition() {
        let order = KeyOrder::new("t".into(), vec!["t.retry.1".into()], Duration::from_secs(1));
        let mut config = Config::new();
        assert!(order.bind(&config).is_ok(), "librdkafka's default is range");
        config.set("partition.assignment.strategy", "cooperative-sticky");
        let err = order.bind(&config).unwrap_err().to_string();
        assert!(err.contains("partition.assignment.strategy"), "{err}");
        config.set("group.protocol", "consumer");
        let err = order.bind(&config).unwrap_err().to_string();
        assert!(err.contains("group.remote.assignor"), "{err}");
        config.set("group.remote.assignor", "range");
        assert!(order.bind(&config).is_ok());
    }

    #[test]
    fn a_partition_not_held_on_every_topic_has_no_slot() {
        let order = KeyOrder::new("t".into(), vec!["t.retry.1".into()], Duration::from_secs(1));
        let tp = |t: &str, p| crate::TopicPartition::new(t, p);
        order.on_rebalance(&Rebalance::Assigned(vec![
            tp("t", 0),
            tp("t.retry.1", 0),
            tp("t", 1),
        ]));
        assert!(order.slot(0).is_ok());
        let err = order.slot(1).unwrap_err().to_string();
        assert!(err.contains("t.retry.1[1]"), "{err}");
        let before = order.slot(0).unwrap();
        order.on_rebalance(&Rebalance::Assigned(vec![tp("t.retry.1", 1)]));
        assert!(Arc::ptr_eq(&before, &order.slot(0).unwrap()), "kept");
        order.on_rebalance(&Rebalance::Revoked {
            partitions: vec![tp("t", 0)],
            lost: false,
        });
        assert!(order.slot(0).is_err());
        order.on_rebalance(&Rebalance::Assigned(vec![tp("t", 0)]));
        assert!(
            !Arc::ptr_eq(&before, &order.slot(0).unwrap()),
            "rebuilt after a new assignment"
        );
    }
}
