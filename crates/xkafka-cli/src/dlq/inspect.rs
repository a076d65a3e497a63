//! `xkafka dlq inspect`: counts the dead letters of a topic.

use crate::cli::{Format, Global, InspectArgs};
use crate::client::{partitions, say, watermarks, Conn, Failure, RangeReader};
use crate::render;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::UNIX_EPOCH;
use xkafka::dlq::DeadLetterInfo;
use xkafka::Message;

/// Where a dead letter's time came from.
#[derive(Clone, Copy, Debug)]
struct Moment {
    millis: i64,
    partition: i32,
    offset: i64,
    /// From `x-dlq-first-failure` (else the record's timestamp).
    first_failure: bool,
}

impl Moment {
    fn json(&self) -> Value {
        json!({
            "timestamp": self.millis,
            "time": render::time(self.millis),
            "partition": self.partition,
            "offset": self.offset,
            "source": if self.first_failure { xkafka::dlq::headers::FIRST_FAILURE } else { "timestamp" },
        })
    }
}

/// The counts of `dlq inspect`.
#[derive(Debug, Default)]
struct Stats {
    records: u64,
    dead_letters: u64,
    by_error: HashMap<Option<String>, u64>,
    by_original: BTreeMap<(String, Option<i32>), u64>,
    oldest: Option<Moment>,
    newest: Option<Moment>,
}

impl Stats {
    /// Counts `m`; its parsed headers when it is a dead letter.
    fn add(&mut self, m: &Message) -> Option<DeadLetterInfo> {
        self.records += 1;
        let info = DeadLetterInfo::from_message(m)?;
        self.dead_letters += 1;
        *self.by_error.entry(info.error.clone()).or_default() += 1;
        *self
            .by_original
            .entry((info.original_topic.clone(), info.original_partition))
            .or_default() += 1;
        let first_failure = info
            .first_failure
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok());
        let when = first_failure
            .map(|ms| (ms, true))
            .or_else(|| m.timestamp().map(|t| (t.millis(), false)));
        if let Some((millis, first_failure)) = when {
            let moment = Moment {
                millis,
                partition: m.partition().unwrap_or(-1),
                offset: m.offset().unwrap_or(-1),
                first_failure,
            };
            if self.oldest.is_none_or(|o| millis < o.millis) {
                self.oldest = Some(moment);
            }
            if self.newest.is_none_or(|n| millis > n.millis) {
                self.newest = Some(moment);
            }
        }
        Some(info)
    }

    /// Errors, most frequent first (then by text).
    fn errors(&self) -> Vec<(&Option<String>, u64)> {
        let mut errors: Vec<_> = self.by_error.iter().map(|(e, n)| (e, *n)).collect();
        errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        errors
    }
}

fn info_json(info: &DeadLetterInfo) -> Value {
    let first = info
        .first_failure
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok());
    json!({
        "original_topic": info.original_topic,
        "original_partition": info.original_partition,
        "original_offset": info.original_offset,
        "original_timestamp": info.original_timestamp,
        "consumer_group": info.consumer_group,
        "error": info.error,
        "attempts": info.attempts,
        "first_failure": first,
        "first_failure_time": first.map(render::time),
    })
}

/// `xkafka dlq inspect TOPIC`.
pub(crate) async fn inspect(
    conn: &Conn,
    global: &Global,
    args: &InspectArgs,
) -> Result<(), Failure> {
    let topic = &args.topic;
    let consumer = conn.consumer(None)?;
    let parts = partitions(conn, &consumer, topic)?;
    let marks = watermarks(conn, &consumer, topic, &parts)?;
    let total: i64 = marks.values().map(|(low, high)| (high - low).max(0)).sum();
    let bar = render::progress(total.unsigned_abs(), !global.no_progress, "inspect");
    let mut reader = RangeReader::new(&consumer, topic, &marks, conn.timeout)?;
    let mut stats = Stats::default();
    let mut shown: Vec<(Message, DeadLetterInfo)> = Vec::new();
    while let Some(m) = reader.next().await? {
        bar.inc(1);
        if let Some(info) = stats.add(&m) {
            if shown.len() < args.show {
                shown.push((m, info));
            }
        }
    }
    bar.finish_and_clear();
    match global.format {
        Format::Json => {
            let by_error: Vec<Value> = stats
                .errors()
                .into_iter()
                .map(|(e, n)| json!({"error": e, "count": n}))
                .collect();
            let by_original: Vec<Value> = stats
                .by_original
                .iter()
                .map(|((t, p), n)| json!({"topic": t, "partition": p, "count": n}))
                .collect();
            let shown: Vec<Value> = shown
                .iter()
                .map(|(m, info)| {
                    let mut record = render::record_json(m);
                    record["dead_letter"] = info_json(info);
                    record
                })
                .collect();
            let doc = json!({
                "topic": topic,
                "partitions": parts.len(),
                "records": stats.records,
                "dead_letters": stats.dead_letters,
                "not_dead_letters": stats.records - stats.dead_letters,
                "by_error": by_error,
                "by_original": by_original,
                "oldest": stats.oldest.map(|m| m.json()),
                "newest": stats.newest.map(|m| m.json()),
                "shown": shown,
            });
            say(&doc.to_string())
        }
        Format::Text => {
            let mut out = vec![format!(
                "{topic}: {} dead letters in {} partitions",
                stats.dead_letters,
                parts.len()
            )];
            let others = stats.records - stats.dead_letters;
            if others > 0 {
                out.push(format!(
                    "  and {others} records that are not dead letters (no {} header)",
                    xkafka::dlq::headers::ORIGINAL_TOPIC
                ));
            }
            for (label, moment) in [("oldest", stats.oldest), ("newest", stats.newest)] {
                if let Some(m) = moment {
                    let source = if m.first_failure {
                        "first failure"
                    } else {
                        "record timestamp"
                    };
                    out.push(format!(
                        "{label}: {} ({source}, [{}]@{})",
                        render::time(m.millis),
                        m.partition,
                        m.offset
                    ));
                }
            }
            if stats.dead_letters > 0 {
                let errors = stats.errors();
                out.push(String::new());
                out.push(format!("by error ({} distinct):", errors.len()));
                out.push(format!("{:>10}  ERROR", "COUNT"));
                for (error, n) in errors.iter().take(args.top) {
                    let text = error.as_deref().map_or_else(
                        || format!("(no {} header)", xkafka::dlq::headers::ERROR),
                        |e| render::cut(&render::text_line(e), 120),
                    );
                    out.push(format!("{n:>10}  {text}"));
                }
                if errors.len() > args.top {
                    out.push(format!(
                        "{:>10}  ({} more errors: --top N, or --format json)",
                        "…",
                        errors.len() - args.top
                    ));
                }
                out.push(String::new());
                out.push("by original topic / partition:".to_owned());
                out.push(format!("{:>10}  TOPIC[PARTITION]", "COUNT"));
                for ((t, p), n) in &stats.by_original {
                    let p = p.map_or_else(|| "?".to_owned(), |p| p.to_string());
                    out.push(format!("{n:>10}  {}[{p}]", render::text_line(t)));
                }
            }
            if !shown.is_empty() {
                out.push(String::new());
                out.push(format!("first {} dead letters:", shown.len()));
                for (m, _) in &shown {
                    out.push(render::record_text(m));
                }
            }
            say(&out.join("\n"))
        }
    }
}
