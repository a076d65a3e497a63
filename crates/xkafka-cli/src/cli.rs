//! The command line's grammar (clap derive).

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Shown at the end of `--help`: what scripts can rely on.
const EXIT_CODES: &str = "\
Exit codes:
  0    success (a dry run included)
  1    runtime failure or refusal: unreachable broker, missing topic, partition or group,
       a record not acknowledged, a failed commit, a change the broker refused (topic
       exists, invalid config), a group that still has members (reset-offsets
       --execute, groups delete), ...
  2    usage or bad input: unknown option, malformed -X/--header/--config, invalid
       property, invalid regular expression or --from, topics delete without --yes
       when standard input is not a terminal
  130  interrupted by Ctrl-C (dlq replay, produce): what was acknowledged is committed
       or counted, re-run to resume

Errors are one line on stderr, starting with `xkafka: `.";

/// The xkafka command line: topics, consumer groups and their offsets, dead-letter
/// topics, tail and produce.
#[derive(Debug, Parser)]
#[command(name = "xkafka", version, about, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub(crate) global: Global,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes (before or after the command's name).
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Bootstrap brokers, comma separated (host:port,...).
    #[arg(
        short,
        long,
        env = "XKAFKA_BROKERS",
        global = true,
        value_name = "HOST:PORT,..."
    )]
    pub(crate) brokers: Option<String>,
    /// A librdkafka property (any key of librdkafka's CONFIGURATION.md), repeatable:
    /// -X security.protocol=ssl -X ssl.ca.location=ca.pem
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = key_value, global = true)]
    pub(crate) properties: Vec<(String, String)>,
    /// How long to wait for the brokers (metadata, offsets, commits): 10s, 500ms, 2m,
    /// or bare seconds.
    #[arg(long, default_value = "10s", value_parser = duration, global = true)]
    pub(crate) timeout: Duration,
    /// Output format: text for people, json (one document, or one object per record
    /// for tail) for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    pub(crate) format: Format,
    /// Never draw progress bars (they are only drawn when stderr is a terminal).
    #[arg(long, global = true)]
    pub(crate) no_progress: bool,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Dead-letter topics: inspect and replay.
    #[command(subcommand)]
    Dlq(Dlq),
    /// Committed offset, end offset and lag per partition of a consumer group.
    Lag(LagArgs),
    /// Prints the records of a topic as they arrive (Ctrl-C stops).
    Tail(TailArgs),
    /// Publishes one record per line of standard input.
    Produce(ProduceArgs),
    /// Topics: list, describe, create, delete, alter-config, add-partitions.
    #[command(subcommand)]
    Topics(Topics),
    /// Consumer groups: list, describe, reset-offsets, delete.
    #[command(subcommand)]
    Groups(Groups),
    /// Prints the effective client settings (brokers, -X properties and what the
    /// commands force), secrets redacted. Connects to nothing.
    Config,
    /// Prints a shell completion script: xkafka completions bash > /etc/bash_completion.d/xkafka
    Completions(CompletionsArgs),
    /// Prints the man page (roff): xkafka man > xkafka.1 && man ./xkafka.1
    Man,
    /// Prints an AsyncAPI 3.0 document of topics, each with the latest value schema of
    /// its subject (TOPIC-value) in a Schema Registry.
    Asyncapi(AsyncapiArgs),
}

/// `xkafka topics ...`
#[derive(Debug, Subcommand)]
pub(crate) enum Topics {
    /// Name, partitions and replication factor of each topic (internal topics, whose
    /// names start with "__", only with --all).
    List(TopicsListArgs),
    /// Per partition: leader, replicas, in-sync replicas, start and end offsets; and
    /// the topic's configs that differ from the broker's defaults.
    Describe(TopicArg),
    /// Creates a topic.
    Create(TopicCreateArgs),
    /// Deletes a topic and its records (asks first unless --yes).
    Delete(TopicDeleteArgs),
    /// Sets or removes topic configs (the others are kept).
    AlterConfig(TopicAlterArgs),
    /// Raises a topic's partition count (Kafka cannot lower it).
    AddPartitions(TopicAddPartitionsArgs),
}

/// `xkafka topics list`
#[derive(Debug, Args)]
pub(crate) struct TopicsListArgs {
    /// Also list internal topics (__consumer_offsets, __transaction_state, ...).
    #[arg(long)]
    pub(crate) all: bool,
}

/// A topic name.
#[derive(Debug, Args)]
pub(crate) struct TopicArg {
    /// The topic.
    pub(crate) topic: String,
}

/// `xkafka topics create`
#[derive(Debug, Args)]
pub(crate) struct TopicCreateArgs {
    /// The topic.
    pub(crate) topic: String,
    /// Partition count [default: the broker's num.partitions].
    #[arg(long, short = 'p', value_name = "N",
          value_parser = clap::value_parser!(i32).range(1..))]
    pub(crate) partitions: Option<i32>,
    /// Replication factor [default: the broker's default.replication.factor].
    #[arg(long, short = 'r', value_name = "R",
          value_parser = clap::value_parser!(i32).range(1..))]
    pub(crate) replication_factor: Option<i32>,
    /// A topic config, repeatable: --config retention.ms=86400000
    #[arg(long = "config", short = 'c', value_name = "K=V", value_parser = key_value)]
    pub(crate) configs: Vec<(String, String)>,
}

/// `xkafka topics delete`
#[derive(Debug, Args)]
pub(crate) struct TopicDeleteArgs {
    /// The topic.
    pub(crate) topic: String,
    /// Do not ask (required when standard input is not a terminal).
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}

/// `xkafka topics alter-config`
#[derive(Debug, Args)]
pub(crate) struct TopicAlterArgs {
    /// The topic.
    pub(crate) topic: String,
    /// A config to set, repeatable: --set retention.ms=3600000
    #[arg(long = "set", value_name = "K=V", value_parser = key_value)]
    pub(crate) set: Vec<(String, String)>,
    /// A config to remove (back to the broker's default), repeatable.
    #[arg(long = "delete", value_name = "K")]
    pub(crate) delete: Vec<String>,
}

/// `xkafka topics add-partitions`
#[derive(Debug, Args)]
pub(crate) struct TopicAddPartitionsArgs {
    /// The topic.
    pub(crate) topic: String,
    /// The new total partition count (more than the current one).
    #[arg(long, short = 'p', value_name = "N",
          value_parser = clap::value_parser!(i32).range(1..))]
    pub(crate) partitions: i32,
}

/// `xkafka groups ...`
#[derive(Debug, Subcommand)]
pub(crate) enum Groups {
    /// Each consumer group with its state, protocol (classic, or consumer for
    /// KIP-848) and member count.
    List,
    /// A group's members (client id, host, assignment) and, per partition, its
    /// committed offset, the end offset and the lag.
    Describe(GroupArg),
    /// Moves a group's committed offsets. Prints the plan; changes nothing without
    /// --execute, and refuses to while the group has members (stop its consumers).
    ResetOffsets(ResetArgs),
    /// Deletes a group that has no members (its committed offsets with it).
    Delete(GroupArg),
}

/// A group id.
#[derive(Debug, Args)]
pub(crate) struct GroupArg {
    /// The consumer group.
    pub(crate) group: String,
}

/// `xkafka groups reset-offsets`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).multiple(false)))]
pub(crate) struct ResetArgs {
    /// The consumer group.
    pub(crate) group: String,
    /// The topic whose offsets move.
    #[arg(long, value_name = "TOPIC")]
    pub(crate) topic: String,
    /// Only this partition [default: every partition of the topic].
    #[arg(long, value_name = "P")]
    pub(crate) partition: Option<i32>,
    /// To the oldest retained record.
    #[arg(long, group = "target")]
    pub(crate) to_earliest: bool,
    /// To the end (skip everything not yet consumed).
    #[arg(long, group = "target")]
    pub(crate) to_latest: bool,
    /// To the first record at or after this time: RFC 3339 in UTC
    /// (2024-05-01T12:00:00Z) or @MILLISECONDS since the epoch.
    #[arg(long, group = "target", value_name = "TIME", value_parser = timestamp)]
    pub(crate) to_timestamp: Option<i64>,
    /// To this offset (kept within the retained records).
    #[arg(long, group = "target", value_name = "N",
          value_parser = clap::value_parser!(i64).range(0..))]
    pub(crate) to_offset: Option<i64>,
    /// By N records from the committed offset (negative: back), kept within the
    /// retained records.
    #[arg(long, group = "target", value_name = "N", allow_hyphen_values = true)]
    pub(crate) shift_by: Option<i64>,
    /// Apply the plan (without it, only print it).
    #[arg(long)]
    pub(crate) execute: bool,
}

/// `xkafka completions`
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    pub(crate) shell: clap_complete::Shell,
}

/// `xkafka asyncapi`
#[derive(Debug, Args)]
pub(crate) struct AsyncapiArgs {
    /// The Schema Registry's API root (Apicurio: http://host:port/apis/ccompat/v7).
    #[arg(long, env = "XKAFKA_SCHEMA_REGISTRY", value_name = "URL")]
    pub(crate) registry: String,
    /// The document's title (the service's name).
    #[arg(long, default_value = "xkafka service")]
    pub(crate) title: String,
    /// The service's version, for the document's info.
    #[arg(long, default_value = "1.0.0")]
    pub(crate) app_version: String,
    /// A topic the service consumes, with its consumer group (repeatable).
    #[arg(long, value_name = "TOPIC=GROUP", value_parser = key_value)]
    pub(crate) receive: Vec<(String, String)>,
    /// A topic the service publishes to (repeatable).
    #[arg(long, value_name = "TOPIC")]
    pub(crate) send: Vec<String>,
}

/// `xkafka dlq ...`
#[derive(Debug, Subcommand)]
pub(crate) enum Dlq {
    /// Reads a dead-letter topic from its beginning to its current end and counts its
    /// dead letters by error and by original topic / partition, with the oldest and
    /// newest failure (x-dlq-first-failure, else the record's timestamp).
    Inspect(InspectArgs),
    /// Republishes dead letters to their original topic (x-dlq-original-topic) or to
    /// --to: original key, value and headers without the x-dlq-* ones, through an
    /// idempotent producer (acks=all). Progress is committed in a consumer group of
    /// its own only once the copies were acknowledged: an interrupted replay resumes
    /// where it stopped (a kill -9 may replay again the copies of the one batch in
    /// flight).
    Replay(ReplayArgs),
}

/// `xkafka dlq inspect`
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The dead-letter topic.
    pub(crate) topic: String,
    /// Also print the first N dead letters, with their headers.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) show: usize,
    /// How many distinct errors the text output lists (json lists them all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub(crate) top: usize,
}

/// `xkafka dlq replay`
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The dead-letter topic to replay.
    #[arg(long, value_name = "TOPIC")]
    pub(crate) from: String,
    /// Republish everything to this topic instead of each record's original topic.
    #[arg(long, value_name = "TOPIC")]
    pub(crate) to: Option<String>,
    /// Only replay dead letters whose x-dlq-error matches this regular expression.
    /// The others are left for another replay: the group's position does not move
    /// past them, and a mark in its commit metadata keeps later replays (of this
    /// filter, another one, or none) from replaying what this one did.
    #[arg(long, value_name = "REGEX")]
    pub(crate) where_error: Option<String>,
    /// Read and count what would be replayed; publish and commit nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// The consumer group holding the replay's progress [default:
    /// xkafka-dlq-replay-FROM]. The replay is the group's only member while it
    /// runs: a second replay of the group waits for it briefly, then refuses.
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,
    /// Stop after N dead letters (replayed, skipped or failed): a replay in steps.
    #[arg(long, value_name = "N")]
    pub(crate) max: Option<u64>,
    /// At most N records per second (spare the consumers of the original topics).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate: Option<u32>,
    /// Records published before waiting for their acknowledgements and committing.
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch: u32,
}

/// `xkafka lag`
#[derive(Debug, Args)]
pub(crate) struct LagArgs {
    /// The consumer group.
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: String,
    /// Only this topic [default: every topic the group committed offsets for]. A
    /// partition without a committed offset counts its whole retained log as lag.
    #[arg(long, value_name = "TOPIC")]
    pub(crate) topic: Option<String>,
}

/// `xkafka tail`
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// The topic.
    pub(crate) topic: String,
    /// Where to start in each partition: beginning, end, an offset (42), an offset
    /// from the end (-10), or a time: RFC 3339 in UTC (2024-05-01T12:00:00Z) or
    /// milliseconds since the epoch (@1714564800000).
    #[arg(long, default_value = "end", value_parser = start, allow_hyphen_values = true)]
    pub(crate) from: Start,
    /// Only this partition.
    #[arg(long, value_name = "P")]
    pub(crate) partition: Option<i32>,
    /// Stop after N records.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// Stop at the end offsets the partitions had when tail started, instead of
    /// waiting for more.
    #[arg(long)]
    pub(crate) until_end: bool,
}

/// `xkafka produce`
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// The topic.
    pub(crate) topic: String,
    /// Split each line at the first SEP: key before, value after (a line without
    /// SEP has no key).
    #[arg(long, value_name = "SEP")]
    pub(crate) key_separator: Option<String>,
    /// A header for every record, repeatable: --header source=import --header v=2
    #[arg(long = "header", value_name = "K=V", value_parser = key_value)]
    pub(crate) headers: Vec<(String, String)>,
    /// Write to this partition [default: by key].
    #[arg(long, value_name = "P")]
    pub(crate) partition: Option<i32>,
}

/// Where `tail` starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// The oldest retained record.
    Beginning,
    /// Only new records.
    End,
    /// This offset in each partition.
    Offset(i64),
    /// This many records before the end of each partition.
    FromEnd(i64),
    /// The first record at or after this time (ms since the epoch).
    Time(i64),
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    let d = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 10s, 500ms)"))?,
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A time as milliseconds since the epoch: `@MILLISECONDS` or RFC 3339 in
/// UTC.
fn timestamp(text: &str) -> Result<i64, String> {
    match start(text) {
        Ok(Start::Time(ms)) => Ok(ms),
        _ => Err(format!(
            "expected @MILLISECONDS or an RFC 3339 time in UTC, got {text:?}"
        )),
    }
}

fn start(text: &str) -> Result<Start, String> {
    if text == "beginning" || text == "earliest" {
        return Ok(Start::Beginning);
    }
    if text == "end" || text == "latest" {
        return Ok(Start::End);
    }
    if let Some(ms) = text.strip_prefix('@') {
        return ms
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms >= 0)
            .map(Start::Time)
            .ok_or_else(|| format!("expected @MILLISECONDS, got {text:?}"));
    }
    if let Ok(n) = text.parse::<i64>() {
        return Ok(if n < 0 {
            Start::FromEnd(n.checked_neg().unwrap_or(i64::MAX))
        } else {
            Start::Offset(n)
        });
    }
    let time = humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!(
            "expected beginning, end, an offset, -N, @MILLISECONDS or an RFC 3339 time in UTC, \
             got {text:?}"
        )
    })?;
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?
        .as_millis();
    Ok(Start::Time(i64::try_from(ms).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn starts() {
        assert_eq!(start("beginning"), Ok(Start::Beginning));
        assert_eq!(start("end"), Ok(Start::End));
        assert_eq!(start("42"), Ok(Start::Offset(42)));
        assert_eq!(start("-10"), Ok(Start::FromEnd(10)));
        assert_eq!(start("@1714564800000"), Ok(Start::Time(1_714_564_800_000)));
        assert_eq!(
            start("2024-05-01T12:00:00Z"),
            Ok(Start::Time(1_714_564_800_000))
        );
        assert!(start("yesterday").is_err());
        assert!(start("@-1").is_err());
    }

    #[test]
    fn key_values_and_durations() {
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(key_value("a="), Ok(("a".into(), String::new())));
        assert!(key_value("nonsense").is_err());
        assert!(key_value("=x").is_err());
        assert_eq!(duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(duration("0").is_err());
        assert!(duration("soon").is_err());
    }
}
