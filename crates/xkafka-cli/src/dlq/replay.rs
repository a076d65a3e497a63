//! `xkafka dlq replay`: republishes dead letters.

use super::holder::*;
use super::marks::*;
use super::DLQ_PREFIX;
use crate::cli::{Format, Global, ReplayArgs};
use crate::client::{
    partitions, runtime, say, watch_ctrl_c, watermarks, Conn, Failure, RangeReader,
};
use crate::render;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use regex::Regex;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xkafka::dlq::DeadLetterInfo;
use xkafka::{Headers, Message};

/// What a replay did (or, dry, would do).
#[derive(Debug, Default)]
struct Summary {
    /// Records read.
    seen: u64,
    /// Republished and acknowledged (dry run: would be republished).
    replayed: u64,
    /// Per target topic.
    by_target: BTreeMap<String, u64>,
    /// Not matching `--where-error`: left for another replay.
    skipped_filter: u64,
    /// Replayed by an earlier `--where-error` replay (its mark in the
    /// group's commit metadata covers them).
    already_replayed: u64,
    /// Without `x-dlq-original-topic`.
    not_dead_letters: u64,
    /// Not republished (not acknowledged, or no such target topic).
    failed: u64,
    first_error: Option<String>,
}

impl Summary {
    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }
}

/// One record of a batch, in the order read.
struct Entry {
    partition: i32,
    offset: i64,
    state: State,
}

enum State {
    /// Nothing to wait for: not a dead letter, replayed earlier, or (dry
    /// run) would be replayed.
    Done,
    /// A dead letter this replay's `--where-error` leaves for another one.
    Left,
    /// Published; its acknowledgement arrives on the batch's channel.
    Waiting { target: String },
    /// Acknowledged.
    Acked,
    /// Not republished.
    Failed,
}

/// One partition of the dead-letter topic during a replay.
struct Part {
    /// Marks of earlier filtered replays, as committed when this one began
    /// (a regex that no longer compiles covers nothing).
    marks: Vec<(Mark, Option<Regex>)>,
    /// Past the records done in a row from the committed offset: what the
    /// group's offset may move to.
    position: i64,
    /// A record not done (left to another filter, or not republished)
    /// stopped `position` for the rest of this run.
    held: bool,
    /// `--where-error`: past the records in a row this filter is done with.
    upto: i64,
    /// A record this filter did not republish stopped `upto`.
    upto_held: bool,
}

impl Part {
    fn covers(&self, offset: i64, error: Option<&str>) -> bool {
        let Some(error) = error else {
            return false;
        };
        self.marks.iter().any(|(mark, re)| {
            offset < mark.upto && re.as_ref().is_some_and(|re| re.is_match(error))
        })
    }

    fn settle(&mut self, offset: i64, state: &State) {
        match state {
            State::Done | State::Acked => {
                if !self.held {
                    self.position = offset + 1;
                }
                if !self.upto_held {
                    self.upto = offset + 1;
                }
            }
            State::Left => {
                self.held = true;
                if !self.upto_held {
                    self.upto = offset + 1;
                }
            }
            State::Waiting { .. } | State::Failed => {
                self.held = true;
                self.upto_held = true;
            }
        }
    }

    /// The commit metadata for this partition after this run so far.
    fn metadata(&self, filter: Option<&str>) -> String {
        let earlier: Vec<Mark> = self.marks.iter().map(|(m, _)| m.clone()).collect();
        let own = filter.map(|re| Mark {
            re: re.to_owned(),
            upto: self.upto,
        });
        marks_metadata(&next_marks(&earlier, own.as_ref(), self.position))
    }
}

/// `xkafka dlq replay --from TOPIC`.
pub(crate) async fn replay(conn: &Conn, global: &Global, args: &ReplayArgs) -> Result<(), Failure> {
    let filter = match &args.where_error {
        Some(re) => Some(
            Regex::new(re).map_err(|e| Failure::Usage(format!("invalid --where-error: {e}")))?,
        ),
        None => None,
    };
    if args.to.as_deref() == Some(args.from.as_str()) {
        return Err(Failure::Usage(
            "--to is the dead-letter topic itself: replay into another topic".into(),
        ));
    }
    let from = &args.from;
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("xkafka-dlq-replay-{from}"));
    let consumer = conn.consumer(Some(&group))?;
    let parts = partitions(conn, &consumer, from)?;
    let mut targets: HashMap<String, Result<i32, String>> = HashMap::new();
    if let Some(to) = &args.to {
        let count = partitions(conn, &consumer, to)?.len();
        targets.insert(to.clone(), Ok(i32::try_from(count).unwrap_or(i32::MAX)));
    }
    // Joined before the committed offsets are read: they are then the last
    // replay's final ones.
    let holder = if args.dry_run {
        None
    } else {
        Some(Holder::join(conn, &consumer, &group, from, parts.len()).await?)
    };
    let marks = watermarks(conn, &consumer, from, &parts)?;
    let done = committed_marks(conn, &consumer, from, &parts)?;
    let mut progress: HashMap<i32, Part> = HashMap::new();
    let mut ranges: HashMap<i32, (i64, i64)> = HashMap::new();
    for (&p, &(low, high)) in &marks {
        let (start, earlier) = match done.get(&p) {
            Some((c, earlier)) => ((*c).clamp(low, high.max(low)), earlier.clone()),
            None => (low, Vec::new()),
        };
        ranges.insert(p, (start, high));
        let part = Part {
            marks: earlier
                .into_iter()
                .map(|m| {
                    let re = Regex::new(&m.re).ok();
                    (m, re)
                })
                .collect(),
            position: start,
            held: false,
            upto: start,
            upto_held: false,
        };
        if let Some(re) = &args.where_error {
            let projected = part.metadata(Some(re));
            if projected.len() > MAX_MARKS_BYTES {
                let pending: Vec<&str> = part.marks.iter().map(|(m, _)| m.re.as_str()).collect();
                return Err(Failure::Usage(format!(
                    "{from}[{p}] holds the marks of too many --where-error replays ({pending:?}) \
                     to add another: replay without --where-error (or with one of them) first"
                )));
            }
        }
        progress.insert(p, part);
    }
    let total: i64 = ranges.values().map(|(s, e)| (e - s).max(0)).sum();
    let total = match args.max {
        Some(max) => total.unsigned_abs().min(max),
        None => total.unsigned_abs(),
    };
    let interrupt = watch_ctrl_c();
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let producer = if args.dry_run {
        None
    } else {
        Some(conn.producer("xkafka-dlq-replay", last_error.clone())?)
    };
    let bar = render::progress(
        total,
        !global.no_progress,
        if args.dry_run { "dry run" } else { "replay" },
    );
    let mut reader = RangeReader::new(&consumer, from, &ranges, conn.timeout)?;
    let mut summary = Summary::default();
    let started = Instant::now();
    let mut read_error: Option<Failure> = None;
    let mut disturbed = false;
    // Rate-limited: commit about once a second.
    let batch_size = args.batch.min(args.rate.unwrap_or(u32::MAX)) as usize;
    let mut finished = false;
    while !finished {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Result<(), String>)>();
        let mut batch: Vec<Entry> = Vec::new();
        while batch.len() < batch_size {
            if interrupt.is_set() || args.max.is_some_and(|max| summary.seen >= max) {
                finished = true;
                break;
            }
            if let Some(holder) = &holder {
                holder.poll();
                if holder.disturbed() {
                    disturbed = true;
                    finished = true;
                    break;
                }
            }
            let m = match reader.next().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    finished = true;
                    break;
                }
                Err(e) => {
                    read_error = Some(e);
                    finished = true;
                    break;
                }
            };
            summary.seen += 1;
            if let Some(rate) = args.rate {
                let due = started + Duration::from_secs_f64(summary.seen as f64 / f64::from(rate));
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    () = interrupt.wait() => {}
                }
            }
            let (partition, offset) = (m.partition().unwrap_or(-1), m.offset().unwrap_or(-1));
            let verdict = classify(
                &m,
                args,
                filter.as_ref(),
                progress.get(&partition),
                &mut summary,
                &mut targets,
                conn,
                &consumer,
            );
            let state = match (verdict, &producer) {
                (Ok(Verdict::Replay(copy, target)), Some(producer)) => {
                    let idx = batch.len();
                    let tx = tx.clone();
                    let published = producer
                        .publish_async_with(copy, move |outcome| {
                            let _ = tx.send((idx, outcome.map(|_| ()).map_err(|e| e.to_string())));
                        })
                        .await;
                    match published {
                        Ok(()) => State::Waiting { target },
                        Err(e) => {
                            summary.fail(format!("publishing to {target}: {e}"));
                            State::Failed
                        }
                    }
                }
                (Ok(Verdict::Replay(_, target)), None) => {
                    summary.replayed += 1;
                    *summary.by_target.entry(target).or_default() += 1;
                    State::Done
                }
                (Ok(Verdict::Done), _) => State::Done,
                (Ok(Verdict::Left), _) => State::Left,
                (Err(error), _) => {
                    summary.fail(error);
                    State::Failed
                }
            };
            let failed = matches!(state, State::Failed);
            bar.inc(1);
            batch.push(Entry {
                partition,
                offset,
                state,
            });
            if failed {
                finished = true;
                break;
            }
        }
        drop(tx);
        // Every accepted record's callback runs exactly once (an error
        // past message.timeout.ms at the latest).
        let mut waiting = batch
            .iter()
            .filter(|e| matches!(e.state, State::Waiting { .. }))
            .count();
        // A bound all the same, so that nothing can hang the replay.
        let patience = conn.delivery_timeout() + Duration::from_secs(10);
        while waiting > 0 {
            let Ok(Some((idx, outcome))) = tokio::time::timeout(patience, rx.recv()).await else {
                break;
            };
            waiting -= 1;
            let entry = &mut batch[idx];
            let State::Waiting { target } = std::mem::replace(&mut entry.state, State::Failed)
            else {
                continue;
            };
            match outcome {
                Ok(()) => {
                    summary.replayed += 1;
                    *summary.by_target.entry(target).or_default() += 1;
                    entry.state = State::Acked;
                }
                Err(e) => {
                    summary.fail(format!("publishing to {target}: {e}"));
                    finished = true;
                }
            }
        }
        for entry in &mut batch {
            if let State::Waiting { target } = &entry.state {
                summary.fail(format!(
                    "no acknowledgement from {target} within {}",
                    humantime::format_duration(patience)
                ));
                entry.state = State::Failed;
                finished = true;
            }
        }
        // Commit, per partition, past the records done in a row (never past
        // one that was not republished, nor one this filter left for
        // another replay), with this filter's mark beside it.
        let mut touched: BTreeSet<i32> = BTreeSet::new();
        for entry in &batch {
            if let Some(part) = progress.get_mut(&entry.partition) {
                part.settle(entry.offset, &entry.state);
                touched.insert(entry.partition);
            }
        }
        if let Some(holder) = &holder {
            if !touched.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for p in &touched {
                    let part = &progress[p];
                    tpl.add_partition_offset(from, *p, Offset::Offset(part.position))
                        .map_err(|e| runtime(format!("{from}[{p}]: {e}")))?;
                    if let Some(mut elem) = tpl.find_partition(from, *p) {
                        elem.set_metadata(part.metadata(args.where_error.as_deref()));
                    }
                }
                if let Err(e) = holder.consumer.commit(&tpl, CommitMode::Sync) {
                    bar.finish_and_clear();
                    print_summary(global, args, &group, &summary, false)?;
                    return Err(runtime(format!(
                        "could not commit the replay's progress in group {group}: {e} (a re-run \
                         replays the last batch again{})",
                        if holder.disturbed() {
                            "; another member joined the group meanwhile"
                        } else {
                            ""
                        }
                    )));
                }
            }
        }
    }
    bar.finish_and_clear();
    if let Some(producer) = &producer {
        producer.close_within(conn.timeout).await;
    }
    if let Some(holder) = holder {
        // Leaves the group at once: the next replay need not wait.
        holder.consumer.unsubscribe();
        drop(holder);
    }
    let interrupted = interrupt.is_set();
    print_summary(global, args, &group, &summary, interrupted)?;
    if let Some(e) = read_error {
        return Err(e);
    }
    if summary.failed > 0 {
        let mut error = summary.first_error.clone().unwrap_or_default();
        if let Some(client) = last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            error = format!("{error} ({client})");
        }
        return Err(runtime(format!(
            "{} dead letters not replayed: {error}; progress is committed up to the first of \
             them, a re-run retries from there",
            summary.failed
        )));
    }
    if disturbed {
        return Err(runtime(format!(
            "another member joined group {group} during the replay: stopped after {} dead \
             letters, progress committed; re-run when the group is empty",
            summary.seen
        )));
    }
    if interrupted {
        return Err(Failure::Interrupted(format!(
            "interrupted after {} dead letters; progress is committed in group {group}, a \
             re-run resumes",
            summary.seen
        )));
    }
    Ok(())
}

/// What to do with one record.
enum Verdict {
    /// Republish this copy to this target.
    Replay(Message, String),
    /// Nothing to republish: not a dead letter, or replayed earlier.
    Done,
    /// A dead letter `--where-error` leaves for another replay.
    Left,
}

/// What to do with one record (counted in `summary`); `Err` when it cannot
/// be replayed.
#[allow(clippy::too_many_arguments)]
fn classify(
    m: &Message,
    args: &ReplayArgs,
    filter: Option<&Regex>,
    part: Option<&Part>,
    summary: &mut Summary,
    targets: &mut HashMap<String, Result<i32, String>>,
    conn: &Conn,
    consumer: &StreamConsumer,
) -> Result<Verdict, String> {
    let Some(info) = DeadLetterInfo::from_message(m) else {
        summary.not_dead_letters += 1;
        return Ok(Verdict::Done);
    };
    if part.is_some_and(|p| p.covers(m.offset().unwrap_or(-1), info.error.as_deref())) {
        summary.already_replayed += 1;
        return Ok(Verdict::Done);
    }
    if let Some(filter) = filter {
        if !info.error.as_deref().is_some_and(|e| filter.is_match(e)) {
            summary.skipped_filter += 1;
            return Ok(Verdict::Left);
        }
    }
    let target = args
        .to
        .clone()
        .unwrap_or_else(|| info.original_topic.clone());
    let count = targets
        .entry(target.clone())
        .or_insert_with(|| {
            partitions(conn, consumer, &target)
                .map(|ps| i32::try_from(ps.len()).unwrap_or(i32::MAX))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| {
            format!(
                "cannot replay {}[{}]@{} to {target}: {e}",
                m.topic(),
                m.partition().unwrap_or(-1),
                m.offset().unwrap_or(-1)
            )
        })?;
    Ok(Verdict::Replay(
        copy(m, &info, &target, args.to.is_none(), count),
        target,
    ))
}

/// The record to republish: `m`'s key, value and headers without the
/// `x-dlq-*` ones, to `target`; to its original partition when replayed to
/// its original topic and that partition still exists (a producer of
/// another language may have partitioned by key differently), else by key.
fn copy(m: &Message, info: &DeadLetterInfo, target: &str, original: bool, count: i32) -> Message {
    let own: Headers = m
        .headers()
        .iter()
        .filter(|h| !h.name().starts_with(DLQ_PREFIX))
        .cloned()
        .collect();
    let mut builder = Message::builder(target.to_owned()).headers(own);
    if let Some(key) = m.key() {
        builder = builder.key(key.clone());
    }
    if let Some(value) = m.value() {
        builder = builder.value(value.clone());
    }
    if let Some(p) = info
        .original_partition
        .filter(|p| original && (0..count).contains(p))
    {
        builder = builder.partition(p);
    }
    builder.build()
}

fn print_summary(
    global: &Global,
    args: &ReplayArgs,
    group: &str,
    s: &Summary,
    interrupted: bool,
) -> Result<(), Failure> {
    match global.format {
        Format::Json => say(&json!({
            "from": args.from,
            "group": group,
            "dry_run": args.dry_run,
            "read": s.seen,
            "replayed": s.replayed,
            "by_target": s.by_target,
            "skipped_filter": s.skipped_filter,
            "already_replayed": s.already_replayed,
            "not_dead_letters": s.not_dead_letters,
            "failed": s.failed,
            "first_error": s.first_error,
            "interrupted": interrupted,
        })
        .to_string()),
        Format::Text => {
            let targets: Vec<String> = s
                .by_target
                .iter()
                .map(|(t, n)| format!("{t}: {n}"))
                .collect();
            let targets = if targets.is_empty() {
                String::new()
            } else {
                format!(" ({})", targets.join(", "))
            };
            let verb = if args.dry_run {
                "dry run: would replay"
            } else {
                "replayed"
            };
            let earlier = if s.already_replayed > 0 {
                format!(
                    ", already replayed {} (by an earlier --where-error)",
                    s.already_replayed
                )
            } else {
                String::new()
            };
            let mut line = format!(
                "{verb} {}{targets}, skipped by filter {}, not dead letters {}, failed {}{earlier} \
                 (from {}, group {group})",
                s.replayed, s.skipped_filter, s.not_dead_letters, s.failed, args.from
            );
            if interrupted {
                line.push_str(", interrupted");
            }
            say(&line)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_library_header_has_the_prefix() {
        use xkafka::dlq::headers::*;
        for h in [
            ORIGINAL_TOPIC,
            ORIGINAL_PARTITION,
            ORIGINAL_OFFSET,
            ORIGINAL_TIMESTAMP,
            CONSUMER_GROUP,
            ERROR,
            ATTEMPTS,
            FIRST_FAILURE,
        ] {
            assert!(h.starts_with(DLQ_PREFIX), "{h}");
        }
    }

    #[test]
    fn a_copy_loses_the_dlq_headers_only() {
        let original = Message::builder("orders")
            .partition(2)
            .offset(9)
            .key("k")
            .value("v")
            .header("trace", "t1")
            .null_header("nothing")
            .build();
        let error: xkafka::BoxError = "boom".into();
        let dead = xkafka::dlq::dead_letter(&original, "orders.dlq", &error, Default::default());
        let info = DeadLetterInfo::from_message(&dead).unwrap();
        let back = copy(&dead, &info, "orders", true, 3);
        assert_eq!(back.topic(), "orders");
        assert_eq!(back.partition(), Some(2));
        assert_eq!(back.key_str(), Some("k"));
        assert_eq!(back.value_str(), Some("v"));
        let names: Vec<&str> = back.headers().iter().map(|h| h.name()).collect();
        assert_eq!(names, ["trace", "nothing"]);
        assert_eq!(back.headers().get("nothing"), None);
        // Fewer partitions now, or another topic: by key.
        assert_eq!(copy(&dead, &info, "orders", true, 2).partition(), None);
        assert_eq!(copy(&dead, &info, "elsewhere", false, 8).partition(), None);
    }
}
