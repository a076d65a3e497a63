//! What the failover tests share: a `Concurrency(8)` per-key consumer that
//! records every message it handled, and the verdict of a run — the
//! acknowledged ids against what the consumer handled and against the log
//! read back (lost, duplicated, out of order per key).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use xkafka::{Ack, BoxError, Consumer, Decision, Error, Message, Order, ShutdownHandle, Summary};

use crate::cluster::{self, Acked, Logged};

/// One message the consumer handled.
#[derive(Debug, Clone)]
pub struct Handled {
    /// When the handler ran.
    pub at: Instant,
    /// Its partition.
    pub partition: i32,
    /// Its key.
    pub key: String,
    /// Its id.
    pub id: u64,
}

/// A consumer running on a task of its own.
pub struct Consuming {
    /// Everything handled, in handling order.
    pub handled: Arc<Mutex<Vec<Handled>>>,
    /// Everything the error handler received.
    pub errors: Arc<Mutex<Vec<String>>>,
    stop: ShutdownHandle,
    task: tokio::task::JoinHandle<Result<Summary, Error>>,
}

impl Consuming {
    /// Starts group `group` on `topic`: `Concurrency(8)`, `Order::PerKey`,
    /// with `extra` properties. Client errors are let through (librdkafka
    /// recovers); a handler failure (none expected) stops the consumer.
    pub fn start(
        brokers: &str,
        topic: &str,
        group: &str,
        extra: &[(&str, &str)],
    ) -> Result<Self, BoxError> {
        let handled: Arc<Mutex<Vec<Handled>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (sink, log) = (handled.clone(), errors.clone());
        let consumer = Consumer::builder(group)
            .brokers([brokers])
            .topics([topic])
            .config("auto.offset.reset", "earliest")
            .configs(extra.iter().copied())
            .concurrency(8)
            .order(Order::PerKey)
            .shutdown_timeout(Duration::from_secs(10))
            .error_handler(move |err: &Error| {
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(err.to_string());
                if err.message_location().is_some() {
                    Decision::Stop
                } else {
                    Decision::Continue
                }
            })
            .handler(move |m: Message| {
                let sink = sink.clone();
                async move {
                    let id = m.value_str().and_then(|v| v.parse().ok());
                    let Some(id) = id else {
                        return Err(BoxError::from("not an id"));
                    };
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Handled {
                            at: Instant::now(),
                            partition: m.partition().unwrap_or(-1),
                            key: m.key_str().unwrap_or_default().to_owned(),
                            id,
                        });
                    Ok(Ack::Success)
                }
            })
            .build()?;
        let stop = consumer.shutdown_handle();
        let task = tokio::spawn(consumer.run(std::future::pending::<()>()));
        Ok(Consuming {
            handled,
            errors,
            stop,
            task,
        })
    }

    /// How many messages were handled so far.
    pub fn count(&self) -> usize {
        self.handled.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The first message handled that matches `pred`, if any.
    pub fn first(&self, pred: impl Fn(&Handled) -> bool) -> Option<Handled> {
        self.handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|h| pred(h))
            .cloned()
    }

    /// Waits (polling) until `done(self)` holds; an error after `timeout` or
    /// when the consumer stopped by itself.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Self) -> bool,
    ) -> Result<Duration, BoxError> {
        let started = Instant::now();
        while !done(self) {
            if self.task.is_finished() {
                return Err(format!("the consumer stopped by itself waiting for {what}").into());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "no {what} within {timeout:?} ({} handled; errors {:?})",
                    self.count(),
                    self.errors.lock().unwrap_or_else(|p| p.into_inner()).last()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(started.elapsed())
    }

    /// Waits until every acknowledged id was handled, then shuts down.
    pub async fn finish(self, acked: &Acked, timeout: Duration) -> Result<Finished, BoxError> {
        let caught_up = self
            .wait("catch-up with every acknowledged id", timeout, |c| {
                let handled = c.handled.lock().unwrap_or_else(|p| p.into_inner());
                let seen: HashSet<u64> = handled.iter().map(|h| h.id).collect();
                acked.ids.iter().all(|id| seen.contains(id))
            })
            .await;
        self.stop.shutdown();
        let summary = self.task.await??;
        caught_up?;
        let handled = self
            .handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(Finished {
            handled,
            errors,
            summary,
        })
    }
}

/// What a consumer did, once it stopped.
#[derive(Debug)]
pub struct Finished {
    /// Everything handled, in handling order.
    pub handled: Vec<Handled>,
    /// Everything the error handler received.
    pub errors: Vec<String>,
    /// Its run's summary.
    pub summary: Summary,
}

/// A run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Ids handed to `publish_async`.
    pub published: u64,
    /// Ids the broker acknowledged.
    pub acked: usize,
    /// Ids whose delivery was reported failed.
    pub failed: u64,
    /// Acknowledged ids the consumer never handled.
    pub lost: usize,
    /// Acknowledged ids absent from the log.
    pub lost_in_log: usize,
    /// Records of the log beyond one per id.
    pub log_duplicates: usize,
    /// Handler runs beyond one per id (redeliveries).
    pub handled_duplicates: usize,
    /// Keys whose ids are not increasing in log order.
    pub log_order_violations: usize,
    /// Keys whose ids were first handled out of increasing order.
    pub handling_order_violations: usize,
    /// Ids reported failed that are in the log all the same.
    pub failed_but_written: usize,
    /// Messages the error handler received.
    pub consumer_errors: usize,
    /// Example lost ids.
    pub lost_examples: Vec<u64>,
}

/// Compares what was acknowledged with what was handled and what the log
/// holds.
pub fn verdict(acked: &Acked, failed_ids: &[u64], finished: &Finished, log: &[Logged]) -> Verdict {
    let handled: HashSet<u64> = finished.handled.iter().map(|h| h.id).collect();
    let mut lost: Vec<u64> = acked
        .ids
        .iter()
        .filter(|id| !handled.contains(id))
        .copied()
        .collect();
    lost.sort_unstable();
    let in_log: HashSet<u64> = log.iter().map(|l| l.id).collect();
    let lost_in_log = acked.ids.iter().filter(|id| !in_log.contains(id)).count();
    // Per key, ids in log order (one key, one partition) and in first-handling
    // order must both increase: the feeder publishes them in that order.
    let increasing_violations = |seq: &mut dyn Iterator<Item = (&str, u64)>| {
        let mut last: HashMap<&str, u64> = HashMap::new();
        let mut bad: HashSet<&str> = HashSet::new();
        for (key, id) in seq {
            if let Some(prev) = last.insert(key, id) {
                if id <= prev {
                    bad.insert(key);
                }
            }
        }
        bad.len()
    };
    let log_order_violations =
        increasing_violations(&mut log.iter().map(|l| (l.key.as_str(), l.id)));
    let mut first_seen = HashSet::new();
    let handling_order_violations = increasing_violations(
        &mut finished
            .handled
            .iter()
            .filter(|h| first_seen.insert(h.id))
            .map(|h| (h.key.as_str(), h.id)),
    );
    Verdict {
        published: acked.published,
        acked: acked.ids.len(),
        failed: acked.failed,
        lost: lost.len(),
        lost_in_log,
        log_duplicates: log.len() - in_log.len(),
        handled_duplicates: finished.handled.len() - handled.len(),
        log_order_violations,
        handling_order_violations,
        failed_but_written: failed_ids.iter().filter(|id| in_log.contains(id)).count(),
        consumer_errors: finished.errors.len(),
        lost_examples: lost.into_iter().take(10).collect(),
    }
}

/// [`cluster::read_all`] on a blocking thread.
pub async fn read_log(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Logged>, BoxError> {
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || cluster::read_all(&b, &t, partitions)).await?
}

/// One sample of a group's committed offsets.
#[derive(Debug, Clone)]
pub struct OffsetSample {
    /// When the answer arrived.
    pub at: Instant,
    /// Per partition, the committed offset (-1: none).
    pub offsets: Vec<i64>,
    /// The node the sampler's client last took for the group's coordinator
    /// when the answer arrived, as far as its librdkafka `cgrp` debug lines
    /// had said: the broker that answered the OffsetFetch, except right at a
    /// coordinator change, where the lines can lag the answer by a sample.
    /// -1 while none was known yet.
    pub coordinator: i32,
}

/// The sampler's client context: follows which node librdkafka takes for the
/// group's coordinator (its `cgrp` debug lines say so: "changing coordinator
/// 1 -> 3", "coordinator is 127.0.0.1:13092 id 3") and passes every line to
/// `tracing` (target `sampler`) for a run's trace.
struct SamplerContext {
    coordinator: std::sync::atomic::AtomicI32,
}

impl xkafka::raw::rdkafka::ClientContext for SamplerContext {
    fn log(&self, _level: xkafka::raw::rdkafka::config::RDKafkaLogLevel, fac: &str, line: &str) {
        if fac == "CGRPCOORD" {
            let id = if let Some((_, to)) = line.split_once(" -> ") {
                to.trim().parse().ok()
            } else if let Some((_, id)) = line.rsplit_once(" id ") {
                id.trim().parse().ok()
            } else {
                None
            };
            // "-> -1" is librdkafka forgetting a dead coordinator: an answer
            // can only have come from the last one it had.
            if let Some(id) = id.filter(|id: &i32| *id >= 0) {
                self.coordinator
                    .store(id, std::sync::atomic::Ordering::Relaxed);
            }
        }
        tracing::debug!(target: "sampler", fac, "{line}");
    }
}

impl xkafka::raw::rdkafka::consumer::ConsumerContext for SamplerContext {}

/// Samples `group`'s committed offsets of `topic` every `every`, from one
/// client that never joins the group (it only asks the coordinator, as
/// `committed()` does), until `on` is cleared. Blocking: run it on a thread
/// of its own. Returns the samples and how many requests failed.
pub fn sample_committed(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    every: Duration,
    on: &std::sync::atomic::AtomicBool,
    count: &std::sync::atomic::AtomicUsize,
) -> Result<(Vec<OffsetSample>, usize), BoxError> {
    use std::sync::atomic::Ordering;
    use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
    use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let context = SamplerContext {
        coordinator: std::sync::atomic::AtomicI32::new(-1),
    };
    let client: BaseConsumer<SamplerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // For the coordinator lines SamplerContext reads.
        .set("debug", "cgrp")
        // rdkafka sets librdkafka's level from the `log` crate's, which no
        // one raised here: without this the debug lines never come.
        .set_log_level(xkafka::raw::rdkafka::config::RDKafkaLogLevel::Debug)
        .create_with_context(context)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let mut samples = Vec::new();
    let mut failures = 0usize;
    while on.load(Ordering::Relaxed) {
        // librdkafka's log lines reach the context only through the
        // client's queue: serve them, so that the coordinator is current.
        let _ = client.poll(Duration::ZERO);
        let answer = client.committed_offsets(tpl.clone(), Duration::from_secs(5));
        let _ = client.poll(Duration::ZERO);
        match answer {
            Ok(c) => {
                let offsets: Vec<i64> = (0..partitions)
                    .map(|p| match c.find_partition(topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => -1,
                    })
                    .collect();
                let coordinator = client.context().coordinator.load(Ordering::Relaxed);
                tracing::info!(target: "sampler", coordinator, ?offsets, "sample");
                samples.push(OffsetSample {
                    at: Instant::now(),
                    offsets,
                    coordinator,
                });
            }
            Err(e) => {
                tracing::info!(target: "sampler", error = %e, "sample failed");
                failures += 1;
            }
        }
        count.store(samples.len(), Ordering::Relaxed);
        std::thread::sleep(every);
    }
    Ok((samples, failures))
}

/// One offset commit of a group, as its coordinator wrote it to
/// `__consumer_offsets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitRecord {
    /// Its place in `__consumer_offsets` (one group lives in one of its
    /// partitions, so this orders the group's commits).
    pub log_offset: i64,
    /// When the coordinator wrote it (the record's timestamp, ms since the
    /// epoch).
    pub written_ms: i64,
    /// The partition of the group's topic.
    pub partition: i32,
    /// The committed offset.
    pub offset: i64,
}

/// Every offset commit `group` made for `topic`, in the order its
/// coordinators wrote them: read back from `__consumer_offsets` (key
/// version 0/1: group, topic, partition; value: version, offset), the one
/// record of what the group's committed offset was, whoever answers an
/// OffsetFetch. Blocking: call it from `spawn_blocking`.
pub fn commit_history(
    brokers: &str,
    group: &str,
    topic: &str,
) -> Result<Vec<CommitRecord>, BoxError> {
    use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
    use xkafka::raw::rdkafka::message::Timestamp;
    use xkafka::raw::rdkafka::Message as _;
    const OFFSETS_TOPIC: &str = "__consumer_offsets";
    let client: BaseConsumer = xkafka::raw::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", cluster::unique("commit-history"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = client.fetch_metadata(Some(OFFSETS_TOPIC), Duration::from_secs(15))?;
    let count = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0) as i32;
    if count == 0 {
        return Err(format!("{OFFSETS_TOPIC} has no partitions").into());
    }
    let mut tpl = xkafka::raw::rdkafka::TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..count {
        let (low, high) = client.fetch_watermarks(OFFSETS_TOPIC, p, Duration::from_secs(15))?;
        tpl.add_partition_offset(OFFSETS_TOPIC, p, xkafka::raw::rdkafka::Offset::Offset(low))?;
        ends.push((low, high));
    }
    client.assign(&tpl)?;
    let mut next: Vec<i64> = ends.iter().map(|(low, _)| *low).collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().zip(&ends).any(|(n, (_, end))| n < end) {
        if Instant::now() > deadline {
            return Err(
                format!("{OFFSETS_TOPIC}: read up to {next:?} of {ends:?} within 60 s").into(),
            );
        }
        let Some(msg) = client.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg?;
        next[msg.partition() as usize] = msg.offset() + 1;
        let (Some(mut key), Some(mut value)) = (msg.key(), msg.payload()) else {
            continue; // a tombstone, or not an offset commit
        };
        let version = take_i16(&mut key);
        if !matches!(version, Some(0 | 1))
            || take_str(&mut key) != Some(group)
            || take_str(&mut key) != Some(topic)
        {
            continue;
        }
        let (Some(partition), Some(_), Some(offset)) = (
            take_i32(&mut key),
            take_i16(&mut value),
            take_i64(&mut value),
        ) else {
            return Err(format!(
                "{OFFSETS_TOPIC}@{}: a truncated offset commit",
                msg.offset()
            )
            .into());
        };
        let written_ms = match msg.timestamp() {
            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => t,
            Timestamp::NotAvailable => -1,
        };
        out.push(CommitRecord {
            log_offset: msg.offset(),
            written_ms,
            partition,
            offset,
        });
    }
    out.sort_by_key(|c| c.log_offset);
    Ok(out)
}

fn take<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = buf.split_first_chunk::<N>()?;
    *buf = rest;
    Some(*head)
}

fn take_i16(buf: &mut &[u8]) -> Option<i16> {
    take::<2>(buf).map(i16::from_be_bytes)
}

fn take_i32(buf: &mut &[u8]) -> Option<i32> {
    take::<4>(buf).map(i32::from_be_bytes)
}

fn take_i64(buf: &mut &[u8]) -> Option<i64> {
    take::<8>(buf).map(i64::from_be_bytes)
}

fn take_str<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    let len = usize::try_from(take_i16(buf)?).ok()?;
    if buf.len() < len {
        return None;
    }
    let (s, rest) = buf.split_at(len);
    *buf = rest;
    std::str::from_utf8(s).ok()
}

/// A partition's committed offset going back: in the coordinators' log (a
/// commit written below an earlier one) or between two samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedBack {
    /// The partition of the group's topic.
    pub partition: i32,
    /// The highest offset before (written so far / the previous sample).
    pub from: i64,
    /// The lower one.
    pub to: i64,
    /// When, in ms after the kill (negative: before it).
    pub after_kill_ms: i64,
    /// In the log: ms until a commit at or past `from` was written again
    /// (`None`: never).
    pub repaired_after_ms: Option<i64>,
    /// In the samples: the node that answered the lower one.
    pub answered_by: Option<i32>,
}

/// What a coordinator failover did to a group's committed offsets.
#[derive(Debug, Default)]
pub struct CommitAnalysis {
    /// Commits written below an earlier commit of their partition.
    pub written_back: Vec<MovedBack>,
    /// Commits written after the kill below the last commit written before
    /// it: (partition, that last commit, the commit, ms after the kill).
    pub below_floor: Vec<(i32, i64, i64, i64)>,
    /// Partitions whose last commit is not their highest: (partition, last,
    /// highest).
    pub last_not_highest: Vec<(i32, i64, i64)>,
    /// Moves back between two consecutive samples.
    pub seen_back: Vec<MovedBack>,
    /// Of those, the ones no written move back explains: the sampler was
    /// answered from a state that never held that value after a higher one.
    pub seen_not_written: Vec<MovedBack>,
}

/// Reads a failover run's commit history (as [`commit_history`] returns
/// it) and samples against each other. `killed_ms` is the kill's wall-clock
/// time (ms since the epoch), `killed_at` the same moment on the monotonic
/// clock the samples use.
pub fn analyse_commits(
    history: &[CommitRecord],
    samples: &[OffsetSample],
    partitions: i32,
    killed_ms: i64,
    killed_at: Instant,
) -> CommitAnalysis {
    let mut out = CommitAnalysis::default();
    for p in 0..partitions {
        let commits: Vec<&CommitRecord> = history.iter().filter(|c| c.partition == p).collect();
        let floor = commits
            .iter()
            .filter(|c| c.written_ms <= killed_ms)
            .map(|c| c.offset)
            .max();
        let mut highest = i64::MIN;
        for (i, c) in commits.iter().enumerate() {
            if let Some(floor) = floor {
                if c.written_ms > killed_ms && c.offset < floor {
                    out.below_floor
                        .push((p, floor, c.offset, c.written_ms - killed_ms));
                }
            }
            if c.offset < highest {
                let repaired = commits[i + 1..]
                    .iter()
                    .find(|later| later.offset >= highest)
                    .map(|later| later.written_ms - c.written_ms);
                out.written_back.push(MovedBack {
                    partition: p,
                    from: highest,
                    to: c.offset,
                    after_kill_ms: c.written_ms - killed_ms,
                    repaired_after_ms: repaired,
                    answered_by: None,
                });
            }
            highest = highest.max(c.offset);
        }
        if let Some(last) = commits.last() {
            if last.offset != highest {
                out.last_not_highest.push((p, last.offset, highest));
            }
        }
    }
    for pair in samples.windows(2) {
        for p in 0..partitions {
            let (before, after) = (pair[0].offsets[p as usize], pair[1].offsets[p as usize]);
            if after >= before {
                continue;
            }
            let after_kill_ms = match pair[1].at.checked_duration_since(killed_at) {
                Some(d) => d.as_millis() as i64,
                None => -(killed_at.duration_since(pair[1].at).as_millis() as i64),
            };
            let moved = MovedBack {
                partition: p,
                from: before,
                to: after,
                after_kill_ms,
                repaired_after_ms: None,
                answered_by: Some(pair[1].coordinator),
            };
            // Written: `after` was committed while something at or past
            // `before` had already been.
            let written = out
                .written_back
                .iter()
                .any(|w| w.partition == p && w.to == after && w.from >= before);
            if !written {
                out.seen_not_written.push(moved.clone());
            }
            out.seen_back.push(moved);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILL: i64 = 1_000_000;

    fn commit(log_offset: i64, written_ms: i64, partition: i32, offset: i64) -> CommitRecord {
        CommitRecord {
            log_offset,
            written_ms,
            partition,
            offset,
        }
    }

    fn sample(at: Instant, offsets: &[i64], coordinator: i32) -> OffsetSample {
        OffsetSample {
            at,
            offsets: offsets.to_vec(),
            coordinator,
        }
    }

    /// What a clean failover writes: increasing, repeated values allowed.
    fn clean() -> Vec<CommitRecord> {
        vec![
            commit(0, KILL - 2000, 0, 100),
            commit(1, KILL - 1000, 0, 200),
            commit(2, KILL + 9000, 0, 300),
            commit(3, KILL + 9100, 0, 300),
            commit(4, KILL + 10000, 0, 500),
        ]
    }

    #[test]
    fn a_clean_history_has_nothing_to_report() {
        let a = analyse_commits(&clean(), &[], 1, KILL, Instant::now());
        assert!(a.written_back.is_empty());
        assert!(a.below_floor.is_empty());
        assert!(a.last_not_highest.is_empty());
    }

    #[test]
    fn a_late_replay_is_a_move_back_with_its_repair_time() {
        // librdkafka's case: 500 written, then the replay of 300, then 600.
        let mut h = clean();
        h.push(commit(5, KILL + 10100, 0, 300));
        h.push(commit(6, KILL + 10800, 0, 600));
        let a = analyse_commits(&h, &[], 1, KILL, Instant::now());
        assert_eq!(a.written_back.len(), 1);
        let w = &a.written_back[0];
        assert_eq!((w.from, w.to, w.after_kill_ms), (500, 300, 10100));
        assert_eq!(w.repaired_after_ms, Some(700));
        assert!(a.below_floor.is_empty(), "300 is past the floor, 200");
        assert!(a.last_not_highest.is_empty());
    }

    #[test]
    fn a_commit_below_the_last_one_before_the_kill_is_reported() {
        let mut h = clean();
        h.push(commit(5, KILL + 10100, 0, 150));
        let a = analyse_commits(&h, &[], 1, KILL, Instant::now());
        assert_eq!(a.below_floor, vec![(0, 200, 150, 10100)]);
        assert_eq!(a.last_not_highest, vec![(0, 150, 500)]);
        assert_eq!(a.written_back[0].repaired_after_ms, None, "never repaired");
    }

    #[test]
    fn a_sample_going_back_must_be_a_written_move_back() {
        let t0 = Instant::now();
        let killed_at = t0 + Duration::from_secs(1);
        let mut h = clean();
        h.push(commit(5, KILL + 10100, 0, 300));
        h.push(commit(6, KILL + 10800, 0, 600));
        // Seen: 500, then the replayed 300: written so.
        let seen = [
            sample(t0 + Duration::from_secs(11), &[500], 2),
            sample(t0 + Duration::from_millis(11_200), &[300], 2),
            sample(t0 + Duration::from_secs(12), &[600], 2),
        ];
        let a = analyse_commits(&h, &seen, 1, KILL, killed_at);
        assert_eq!(a.seen_back.len(), 1);
        assert_eq!(a.seen_back[0].after_kill_ms, 10_200);
        assert_eq!(a.seen_back[0].answered_by, Some(2));
        assert!(a.seen_not_written.is_empty());
        // Seen: 600, then 200, which was never written after anything
        // higher: a stale read.
        let stale = [
            sample(t0 + Duration::from_secs(12), &[600], 3),
            sample(t0 + Duration::from_millis(12_200), &[200], 1),
        ];
        let a = analyse_commits(&h, &stale, 1, KILL, killed_at);
        assert_eq!(a.seen_not_written.len(), 1);
        assert_eq!(a.seen_not_written[0].answered_by, Some(1));
    }
}
