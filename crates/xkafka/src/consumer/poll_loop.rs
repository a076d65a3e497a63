//! The poll loop: one dedicated thread per consumer that keeps polling
//! librdkafka whatever the handlers do, dispatches messages to lanes
//! (`dispatch.rs`), settles their completions into stored and committed
//! offsets (`pipeline.rs`), and shuts down within its deadline.
//!
//! Each round serves the consumer queue's events with `poll`, then takes
//! the records from the fetch queue (`fetch_queue.rs`) a batch at a time;
//! a transactional consumer takes its records through `poll` as well.
//!
//! librdkafka's callbacks (rebalance, commit results) run on the thread that
//! polls, so they can wait for in-flight work and commit synchronously
//! without blocking an async runtime's worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::commit::commit_sync;
use super::context::XConsumerContext;
use super::fetch_queue::{FetchQueue, Taken};
use super::offsets::TopicPartition;
use super::pipeline::Pipeline;
use super::shared::Shared;
#[cfg(feature = "metrics")]
use crate::convert::cached_high_watermark;
use crate::convert::{owned_message, Fetched};
use crate::error::{Error, Operation};

/// How long one poll waits when nothing is in flight: bounds how late a
/// shutdown request is noticed while the topics are idle.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long one poll waits while handlers run: completions are settled
/// between polls, so this bounds how late an offset is stored (and, in
/// manual mode, how long a lane waits for its commit).
const BUSY_POLL: Duration = Duration::from_millis(1);
/// Most messages taken from librdkafka between two settlements.
pub(super) const POLL_BATCH: usize = 512;
/// Messages copied from librdkafka before they are dispatched: a few, so
/// that a message handled at once frees its buffers before many more are
/// allocated. The allocator's per-thread cache then hands the same few
/// buffers round (as in a raw loop that copies and drops each record); a
/// whole round of 1 KiB payloads copied first overflowed it and cost
/// ~80 ns more per message (BENCHMARKS.md, "What was found and fixed").
pub(super) const DISPATCH_EVERY: usize = 4;
/// How long a transactional dispatch waits at a time for a handler to
/// finish when the open transaction's window is full.
const WINDOW_TICK: Duration = Duration::from_millis(5);
/// How often committed offsets and lag go to the metrics.
#[cfg(feature = "metrics")]
const POSITIONS_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct PollLoop {
    pub(crate) consumer: BaseConsumer<XConsumerContext>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) topics: Vec<String>,
    /// Some messages may be held back until due (`not_before`).
    pub(crate) delays: bool,
    /// Transactions end on time (`CommitMode::Transactional`).
    pub(crate) transactional: bool,
}

/// How the loop ended.
pub(crate) struct LoopEnd {
    pub(crate) closed_cleanly: bool,
}

impl PollLoop {
    /// Runs until a shutdown is requested; `pipeline` becomes reachable
    /// from the rebalance callbacks for that time. A panic of the loop is
    /// recorded (for `run` to return) and the consumer is still shut down
    /// the bounded way: unwinding would drop the client with no bound on
    /// its close, and leave the lanes running for nobody.
    pub(crate) fn run(self, pipeline: Pipeline) -> LoopEnd {
        // Transactional: initialise (fencing an older instance with the same
        // transactional.id) and open the first transaction before anything
        // is fetched.
        match pipeline.start() {
            Ok(()) => {
                *self.consumer.context().pipeline() = Some(pipeline);
                self.shared.guard("the poll thread", || self.poll());
            }
            Err(err) => {
                *self.consumer.context().pipeline() = Some(pipeline);
                self.shared.stop_with(err);
            }
        }
        self.finish()
    }

    fn poll(&self) {
        self.shared.polling.store(true, Ordering::Release);
        self.poll_messages();
        self.shared.polling.store(false, Ordering::Release);
        if let Some((error, reason)) = self.shared.take_pending_error() {
            self.shared.report(Error::client(error, &reason));
        }
    }

    fn poll_messages(&self) {
        // Records are taken a batch at a time (`fetch_queue.rs`); the queue
        // is set before anything is assigned. Not in transactional mode: its
        // aborts rewind partitions in the middle of a round, and a batch
        // already taken would have to be sifted.
        let fetch = if self.transactional {
            None
        } else {
            FetchQueue::new(&self.consumer).map(Arc::new)
        };
        self.consumer.context().set_fetch_queue(fetch.clone());
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(e) = self.consumer.subscribe(&topics) {
            // Without a subscription there is nothing to run: stop whatever
            // the error handler says.
            self.shared.report(Error::kafka(Operation::Subscribe, e));
            self.shared.shutdown.shutdown();
        }
        let mut batch = Taken::with_capacity(POLL_BATCH);
        // Interned topic names: one `Arc<str>` per topic, not per message.
        let mut topic_names: Vec<Arc<str>> = Vec::new();
        // Reused: growing a fresh vector of ~200-byte messages every round
        // showed up in the poll thread's profile.
        let mut messages = Vec::with_capacity(DISPATCH_EVERY);
        let mut busy = false;
        let mut rewinds = self.shared.rewinds.load(Ordering::Acquire);
        let mut ages = super::status::Ages::default();
        let mut published_at = Instant::now() - super::status::PUBLISH_EVERY;
        #[cfg(feature = "metrics")]
        let mut positions_at = Instant::now();
        #[cfg(feature = "metrics")]
        let mut group_committed = GroupCommitted::default();
        while !self.shared.shutdown.is_shutting_down() {
            self.shared.board.progress();
            // Transactional: partitions waiting for their committed offsets
            // are asked about again, between rounds (`start_offsets.rs`).
            self.consumer.context().serve_withheld(&self.consumer);
            #[cfg(feature = "metrics")]
            if positions_at.elapsed() >= POSITIONS_EVERY {
                positions_at = Instant::now();
                self.record_positions(&mut group_committed);
            }
            // Take what librdkafka has ready (up to a bound), then settle
            // once: stores and commits are batched, not per message.
            let mut timeout = if busy { BUSY_POLL } else { IDLE_POLL };
            if self.delays || self.transactional {
                // Resume what is due and wake up for the next one; end a
                // transaction on time even when nothing arrives.
                let next = match self.consumer.context().pipeline().as_mut() {
                    Some(p) => {
                        let resume = p.resume_due(&self.consumer, &self.shared);
                        let txn = p.transaction_due_in();
                        resume.into_iter().chain(txn).min()
                    }
                    None => None,
                };
                if let Some(next) = next {
                    timeout = timeout.min(next);
                }
            }
            // Up to a round of messages, dispatched a few at a time; then
            // one settlement for the round. With a fetch queue, `poll` only
            // serves the consumer queue's events (and the records of a
            // partition not routed): the wait is on the fetch queue, which
            // an event interrupts.
            let mut taken = 0;
            let mut drained = false;
            let mut poll_wait = if fetch.is_some() {
                Duration::ZERO
            } else {
                timeout
            };
            while !drained && taken < POLL_BATCH {
                while messages.len() < DISPATCH_EVERY {
                    let polled = self.consumer.poll(poll_wait);
                    // A rebalance callback inside that poll may have assigned
                    // partitions or rewound them: what was fetched for them
                    // before is stale (librdkafka drops its own copies).
                    let now = self.shared.rewinds.load(Ordering::Acquire);
                    if now != rewinds {
                        rewinds = now;
                        self.drop_stale(&mut messages);
                    }
                    poll_wait = Duration::ZERO;
                    match polled {
                        None => {
                            drained = true;
                            break;
                        }
                        Some(Err(KafkaError::PartitionEOF(_))) => {}
                        // rdkafka (0.39) makes every poll error out of an error
                        // event that it has first handed to
                        // `ClientContext::error`, which kept it (with
                        // librdkafka's reason) for here: reported once, located.
                        Some(Err(e)) => {
                            self.report_poll_error(e);
                            drained = true;
                            break;
                        }
                        Some(Ok(m)) => {
                            let record = Fetched::of(&m);
                            let name = record.topic_bytes().unwrap_or_default();
                            let topic = intern_topic(&mut topic_names, &self.shared, name);
                            messages.push(owned_message(record, topic, &self.shared.group));
                        }
                    }
                }
                if messages.is_empty() {
                    continue;
                }
                taken += messages.len();
                if !self.dispatch_round(&mut messages, &mut rewinds) {
                    return;
                }
            }
            if let Some(fetch) = &fetch {
                let wait = if taken == 0 && !fetch.events_waiting() {
                    timeout
                } else {
                    Duration::ZERO
                };
                fetch.take(wait, &mut batch);
                while !batch.is_empty() {
                    while messages.len() < DISPATCH_EVERY {
                        let Some(read) =
                            batch.next_with(|record| self.record_of(record, &mut topic_names))
                        else {
                            break;
                        };
                        messages.extend(read);
                    }
                    if messages.is_empty() {
                        continue;
                    }
                    if !self.dispatch_round(&mut messages, &mut rewinds) {
                        return;
                    }
                }
            }
            let mut guard = self.consumer.context().pipeline();
            let Some(pipeline) = guard.as_mut() else {
                break;
            };
            if pipeline.is_transactional() {
                pipeline.settle(&self.consumer, &self.shared);
            } else {
                pipeline.in_runtime(|pipeline| pipeline.settle(&self.consumer, &self.shared));
            }
            if published_at.elapsed() >= super::status::PUBLISH_EVERY {
                published_at = Instant::now();
                pipeline.publish_status(&self.consumer, &self.shared, &mut ages);
                pipeline.report_stalls(&self.shared);
            }
            if pipeline.transaction_due() {
                pipeline.end_transaction(&self.consumer, &self.shared);
                // An abort rewinds partitions; nothing is buffered here now.
                rewinds = self.shared.rewinds.load(Ordering::Acquire);
                pipeline.take_rewound();
            }
            busy = pipeline.unsettled() > 0;
        }
    }

    /// Dispatches the messages at hand; `false` when the pipeline is gone.
    fn dispatch_round(&self, messages: &mut Vec<crate::Message>, rewinds: &mut u64) -> bool {
        let mut guard = self.consumer.context().pipeline();
        let Some(pipeline) = guard.as_mut() else {
            return false;
        };
        if pipeline.is_transactional() {
            self.dispatch_transactional(pipeline, messages, rewinds);
        } else {
            pipeline.in_runtime(|pipeline| {
                for message in messages.drain(..) {
                    pipeline.dispatch(&self.consumer, &self.shared, message);
                }
            });
        }
        true
    }

    /// A record from the fetch queue as a message; an error librdkafka
    /// handed over in its place is reported (the end of a partition is not
    /// an error).
    fn record_of(
        &self,
        record: Fetched<'_>,
        topic_names: &mut Vec<Arc<str>>,
    ) -> Option<crate::Message> {
        let topic = record
            .topic_bytes()
            .map(|name| intern_topic(topic_names, &self.shared, name));
        match record.error() {
            None => Some(owned_message(record, topic?, &self.shared.group)),
            Some(RDKafkaErrorCode::PartitionEOF) => None,
            Some(code) => {
                let reason = crate::secret::scrub(&record.error_text()).into_owned();
                let error = match topic {
                    Some(topic) if is_undeliverable(code) && record.offset() >= 0 => {
                        Error::Consume {
                            partition: Some(TopicPartition::new(topic, record.partition())),
                            offset: record.offset(),
                            reason: reason.into(),
                            code,
                        }
                    }
                    _ => Error::client(KafkaError::MessageConsumption(code), &reason),
                };
                self.shared.report(error);
                None
            }
        }
    }

    /// Dispatches a poll round in transactional mode: a transaction that
    /// reaches its message bound ends before the next message, and one that
    /// aborts makes the rest of the round's messages of its partitions
    /// stale (they are read again from the transaction's start).
    fn dispatch_transactional(
        &self,
        pipeline: &mut Pipeline,
        messages: &mut Vec<crate::Message>,
        rewinds: &mut u64,
    ) {
        let mut stale: Vec<TopicPartition> = Vec::new();
        let is_stale = |m: &crate::Message, stale: &[TopicPartition]| {
            stale
                .iter()
                .any(|tp| m.partition() == Some(tp.partition) && *m.topic_arc() == tp.topic)
        };
        for message in messages.drain(..) {
            if pipeline.transaction_full() {
                pipeline.settle(&self.consumer, &self.shared);
                pipeline.end_transaction(&self.consumer, &self.shared);
                stale.extend(pipeline.take_rewound());
                *rewinds = self.shared.rewinds.load(Ordering::Acquire);
            }
            // The open transaction holds what can be handled within about
            // half its interval: wait for handlers (the transaction may come
            // due meanwhile and end) before adding more.
            while pipeline.transaction_window_full() && !self.shared.shutdown.is_shutting_down() {
                pipeline.await_completion(&self.consumer, &self.shared, WINDOW_TICK);
                if pipeline.transaction_due() {
                    pipeline.end_transaction(&self.consumer, &self.shared);
                    stale.extend(pipeline.take_rewound());
                    *rewinds = self.shared.rewinds.load(Ordering::Acquire);
                }
            }
            if !stale.is_empty() && is_stale(&message, &stale) {
                continue;
            }
            pipeline.dispatch(&self.consumer, &self.shared, message);
        }
    }

    /// Drops the buffered messages of partitions assigned or rewound since
    /// they were fetched.
    fn drop_stale(&self, messages: &mut Vec<crate::Message>) {
        let stale = match self.consumer.context().pipeline().as_mut() {
            Some(pipeline) => pipeline.take_rewound(),
            None => return,
        };
        if stale.is_empty() || messages.is_empty() {
            return;
        }
        messages.retain(|m| {
            !stale
                .iter()
                .any(|tp| m.partition() == Some(tp.partition) && *m.topic_arc() == tp.topic)
        });
    }

    /// Reports an error event `poll` returned: a record librdkafka could not
    /// hand over names its partition and offset ([`Error::Consume`]); any
    /// other is a client error, as before.
    fn report_poll_error(&self, polled: KafkaError) {
        let Some((error, reason)) = self.shared.take_pending_error() else {
            // Not seen by `ClientContext::error` (not rdkafka 0.39's way).
            self.shared.report(Error::kafka(Operation::Client, polled));
            return;
        };
        let located = match polled {
            KafkaError::MessageConsumption(code) if is_undeliverable(code) => {
                offset_in(&reason).map(|offset| (code, offset))
            }
            _ => None,
        };
        let Some((code, offset)) = located else {
            self.shared.report(Error::client(error, &reason));
            return;
        };
        let positions = self
            .consumer
            .position()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        rdkafka::Offset::Offset(o) => {
                            Some((e.topic().to_owned(), e.partition(), o))
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let partition = at_offset(&positions, offset)
            .map(|(topic, partition)| TopicPartition::new(self.shared.topic(topic), partition));
        self.shared.report(Error::Consume {
            partition,
            offset,
            reason: reason.into(),
            code,
        });
    }

    /// Committed offsets and lag of the assigned partitions, for metrics.
    /// A partition this member has not committed yet (idle since it was
    /// assigned, or its handler is slow) has the group's committed offset,
    /// asked from the coordinator once per assignment.
    #[cfg(feature = "metrics")]
    fn record_positions(&self, group_committed: &mut GroupCommitted) {
        let Some(metrics) = &self.shared.metrics else {
            return;
        };
        let (mut positions, unknown) = {
            let ledger = self.shared.ledger();
            group_committed.retain_assigned(&ledger.assigned);
            let mut positions: Vec<(TopicPartition, i64)> = Vec::new();
            let mut unknown: Vec<TopicPartition> = Vec::new();
            for tp in &ledger.assigned {
                match ledger
                    .committed
                    .get(tp)
                    .or_else(|| group_committed.known.get(tp))
                {
                    Some(c) => positions.push((tp.clone(), *c)),
                    None if !group_committed.asked.contains(tp) => unknown.push(tp.clone()),
                    None => {}
                }
            }
            (positions, unknown)
        };
        if !unknown.is_empty() {
            positions.extend(group_committed.ask(&self.consumer, unknown));
        }
        for (tp, committed) in positions {
            let high = cached_high_watermark(&self.consumer, &tp.topic, tp.partition);
            metrics.record_position(&tp.topic, tp.partition, committed, high);
        }
    }

    /// Drains in-flight work, commits what was processed, leaves the group
    /// and closes, within the shutdown deadline.
    fn finish(self) -> LoopEnd {
        self.shared.set_state(super::status::GroupState::Stopping);
        // librdkafka cannot leave the group while it waits for the assign
        // call of withheld partitions.
        self.consumer.context().release_withheld(&self.consumer);
        // Before the client closes (librdkafka wants the application's
        // queues gone first): records still on the fetch queue were never
        // handled, so none of their offsets is stored; they are dropped.
        self.consumer.context().set_fetch_queue(None);
        let since = self.shared.shutdown.since().unwrap_or_else(Instant::now);
        let deadline = since + self.shutdown_timeout;
        let pipeline = self.consumer.context().pipeline().take();
        let mut ending = None;
        if let Some(mut pipeline) = pipeline {
            let abandoned = pipeline.stop(
                &self.consumer,
                &self.shared,
                since + handler_grace(self.shutdown_timeout),
            );
            self.shared.ledger().abandoned += abandoned;
            ending = pipeline.take_ending();
        }
        let pending = self.shared.ledger().uncommitted(None);
        // The last commit and rdkafka's Drop (which leaves the group and
        // waits until the consumer is closed) both wait without a bound —
        // forever while the brokers are unreachable. Run them on a thread of
        // their own and wait only until the deadline.
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let consumer = self.consumer;
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("xkafka-close".into())
            .spawn(move || {
                // Before leaving the group: after that, its generation no
                // longer accepts the transaction's offsets.
                if let Some(ending) = ending {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match ending.finish(&consumer, left) {
                        Ok(Some(offsets)) => {
                            let mut ledger = shared.ledger();
                            ledger.transactions_committed += 1;
                            for (tp, offset) in &offsets {
                                ledger.mark_committed(tp, *offset);
                            }
                        }
                        Ok(None) => {}
                        Err(err) => {
                            shared.ledger().transactions_aborted += 1;
                            shared.report(err);
                        }
                    }
                }
                commit_sync(&consumer, &shared, pending);
                drop(consumer);
                let _ = closed_tx.send(());
            });
        let closed_cleanly = spawned.is_ok()
            && closed_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_ok();
        if !closed_cleanly {
            tracing::warn!(group = %self.shared.group, "consumer did not close before the shutdown deadline");
        }
        LoopEnd { closed_cleanly }
    }
}

/// The group's committed offsets of partitions this member has not
/// committed itself, for the lag metric.
#[cfg(feature = "metrics")]
#[derive(Default)]
struct GroupCommitted {
    known: std::collections::BTreeMap<TopicPartition, i64>,
    /// Asked once per assignment, answered or not: the question blocks the
    /// poll thread (up to `GROUP_COMMITTED_TIMEOUT`).
    asked: std::collections::BTreeSet<TopicPartition>,
}

/// How long the poll thread waits for the group's committed offsets of newly
/// assigned partitions (once per assignment, only with metrics).
#[cfg(feature = "metrics")]
const GROUP_COMMITTED_TIMEOUT: Duration = Duration::from_millis(500);

#[cfg(feature = "metrics")]
impl GroupCommitted {
    /// Forgets partitions no longer assigned: a new assignment asks again.
    fn retain_assigned(&mut self, assigned: &std::collections::BTreeSet<TopicPartition>) {
        self.known.retain(|tp, _| assigned.contains(tp));
        self.asked.retain(|tp| assigned.contains(tp));
    }

    /// Asks the coordinator; returns the committed offsets it knows.
    fn ask(
        &mut self,
        consumer: &BaseConsumer<XConsumerContext>,
        partitions: Vec<TopicPartition>,
    ) -> Vec<(TopicPartition, i64)> {
        let mut tpl = rdkafka::TopicPartitionList::with_capacity(partitions.len());
        for tp in &partitions {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        self.asked.extend(partitions.iter().cloned());
        let Ok(answer) = consumer.committed_offsets(tpl, GROUP_COMMITTED_TIMEOUT) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for tp in partitions {
            if let Some(rdkafka::Offset::Offset(c)) = answer
                .find_partition(&tp.topic, tp.partition)
                .map(|e| e.offset())
            {
                self.known.insert(tp.clone(), c);
                found.push((tp, c));
            }
        }
        found
    }
}

/// The offset in librdkafka's reason for a consumer error ("Decompression
/// (codec 0x5) of message at 50 of 120 bytes failed: ...", "Message at offset
/// 7 ... failed CRC32 check", "MessageSet at offset 3 ..."); `None` for a
/// relative offset or none.
fn offset_in(reason: &str) -> Option<i64> {
    ["at offset ", "message at "].iter().find_map(|marker| {
        let lower = reason.to_ascii_lowercase();
        let start = lower.find(marker)? + marker.len();
        let digits: &str = &reason[start..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    })
}

/// Whether librdkafka's error is about a record it fetched and cannot hand
/// over (rather than about fetching, which it retries by itself).
fn is_undeliverable(code: rdkafka::error::RDKafkaErrorCode) -> bool {
    use rdkafka::error::RDKafkaErrorCode as Code;
    matches!(
        code,
        Code::NotImplemented | Code::BadMessage | Code::BadCompression | Code::MessageSizeTooLarge
    )
}

/// The one partition positioned at `offset` (the next record to hand over),
/// if exactly one is.
fn at_offset(positions: &[(String, i32, i64)], offset: i64) -> Option<(&str, i32)> {
    let mut found = positions.iter().filter(|(_, _, o)| *o == offset);
    let (topic, partition, _) = found.next()?;
    found
        .next()
        .is_none()
        .then_some((topic.as_str(), *partition))
}

/// The share of the shutdown timeout in-flight handlers may use; the rest
/// is kept for the final commit and leaving the group.
fn handler_grace(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout.saturating_sub((shutdown_timeout / 4).min(Duration::from_secs(2)))
}

/// The shared name of `topic`, from a lock-free local cache.
#[cfg(test)]
fn intern(names: &mut Vec<Arc<str>>, shared: &Shared, topic: &str) -> Arc<str> {
    crate::convert::intern(names, topic, |t| shared.topic(t))
}

/// The shared name of a fetched record's topic, from a lock-free local
/// cache, compared as bytes (Kafka's topic names are ASCII; another would
/// be decoded lossily).
fn intern_topic(names: &mut Vec<Arc<str>>, shared: &Shared, name: &[u8]) -> Arc<str> {
    crate::convert::intern_bytes(names, name, |t| shared.topic(t))
        .unwrap_or_else(|| shared.topic(&String::from_utf8_lossy(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_leaves_room_to_commit() {
        assert_eq!(
            handler_grace(Duration::from_secs(4)),
            Duration::from_secs(3)
        );
        assert_eq!(
            handler_grace(Duration::from_secs(20)),
            Duration::from_secs(18)
        );
        assert_eq!(handler_grace(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_offset_of_a_consumer_error_is_read_from_its_reason() {
        for (reason, offset) in [
            (
                "Decompression (codec 0x5) of message at 50 of 120 bytes failed: Local: Not implemented",
                Some(50),
            ),
            ("Message at offset 7 (20 bytes) failed CRC32 check (original 0x1 != calculated 0x2)", Some(7)),
            ("MessageSet at offset 3 (9 bytes) failed CRC32C check", Some(3)),
            ("Unsupported Message(Set) MagicByte 3 at offset 12", Some(12)),
            ("Message at relative offset 2 (9 bytes) failed CRC32 check", None),
            ("1/1 brokers are down", None),
        ] {
            assert_eq!(offset_in(reason), offset, "{reason}");
        }
    }

    #[test]
    fn a_consumer_error_is_located_only_when_one_partition_is_there() {
        let positions = vec![
            ("a".to_owned(), 0, 50),
            ("a".to_owned(), 1, 7),
            ("b".to_owned(), 0, 7),
        ];
        assert_eq!(at_offset(&positions, 50), Some(("a", 0)));
        assert_eq!(at_offset(&positions, 7), None, "ambiguous: not guessed");
        assert_eq!(at_offset(&positions, 9), None);
    }

    #[test]
    fn interning_reuses_names() {
        let shared = Shared::new(
            "g".into(),
            Arc::new(|_: &Error| crate::Decision::Stop),
            crate::ShutdownHandle::new(),
            Duration::from_secs(1),
        );
        let mut names = Vec::new();
        let a = intern(&mut names, &shared, "a");
        let b = intern(&mut names, &shared, "a");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(names.len(), 1);
        // The rebalance callback gets the same name as fetched messages.
        assert!(Arc::ptr_eq(&a, &shared.topic("a")));
        assert!(!Arc::ptr_eq(&a, &shared.topic("b")));
    }
}
