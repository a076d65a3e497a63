//! `xkafka`: the command line of the xkafka framework, for the operations
//! around a running service.
//!
//! ```text
//! xkafka dlq inspect TOPIC [--show N]           what is in a dead-letter topic
//! xkafka dlq replay --from TOPIC [--to TOPIC]   republish dead letters
//!        [--where-error REGEX] [--dry-run] [--group G] [--max N] [--rate N]
//! xkafka lag --group G [--topic T]              committed, end and lag per partition
//! xkafka tail TOPIC [--from beginning|end|OFFSET|-N|TIME] [--partition P] [--count N]
//! xkafka produce TOPIC [--key-separator SEP] [--header K=V]...   one record per line of stdin
//! xkafka topics list|describe|create|delete|alter-config|add-partitions
//! xkafka groups list|describe|reset-offsets|delete
//! xkafka config | completions SHELL | man
//! ```
//!
//! Every command takes `--brokers` (or `XKAFKA_BROKERS`), any librdkafka
//! property with repeated `-X key=value` (security settings, …), `--timeout`
//! (default 10 s: the longest wait for the brokers, so that an unreachable
//! cluster fails rather than hangs) and `--format text|json`.
//!
//! - **`dlq inspect`** reads the dead-letter topic from the beginning to the
//!   end offsets it had when the command started, parses each record's
//!   `x-dlq-*` headers with [`xkafka::dlq::DeadLetterInfo::from_message`]
//!   and counts dead letters by error and by original topic / partition,
//!   with the oldest and newest failure (`x-dlq-first-failure`, else the
//!   record's timestamp). `--show N` prints the first N with their headers.
//! - **`dlq replay`** republishes each dead letter to its original topic
//!   (its original partition when that topic still has it) or to `--to`, with
//!   its key, value and headers minus the `x-dlq-*` ones, through an
//!   idempotent producer with `acks=all`. It reads from the offsets
//!   committed in its own consumer group (`xkafka-dlq-replay-<from>`, or
//!   `--group`) up to the end offsets of the start, publishes a batch, waits
//!   for every acknowledgement, and only then commits past it: a replay that
//!   is interrupted (Ctrl-C, a failure, `--max`) resumes after what was
//!   acknowledged; only a `kill -9` between an acknowledgement and its
//!   commit replays that one batch again. A record that fails to publish
//!   stops the replay after its batch, without committing past it. Records
//!   skipped by `--where-error` and records that are not dead letters (no
//!   `x-dlq-original-topic`) are committed past too.
//! - **`lag`** prints, per partition, the group's committed offset, the end
//!   offset and their difference, and the total.
//! - **`tail`** prints records (partition, offset, time, key, headers,
//!   value; text when UTF-8, escaped as `\xff` otherwise) until `--count`,
//!   Ctrl-C or, with `--until-end`, the end offsets of the start.
//! - **`produce`** publishes each line of standard input (idempotent,
//!   `acks=all`) and prints how many were acknowledged.
//!
//! - **`topics`** and **`groups`** administer the cluster through rdkafka's
//!   admin client (see `topics.rs`, `groups.rs` and `reset.rs` for what
//!   rdkafka 0.39 lacks and how it is done instead). `groups reset-offsets`
//!   prints its plan and applies it only with `--execute`, never while the
//!   group has members.
//! - **`config`** prints the effective client settings, secrets redacted;
//!   **`completions`** and **`man`** are generated from the grammar.
//!
//! Exit codes: 0 success, 1 runtime failure or refusal (unreachable broker,
//! missing topic or group, unacknowledged record, a group with members…),
//! 2 usage or bad input (unknown option, malformed or unknown `-X`
//! property, bad regular expression), 130 interrupted by Ctrl-C. Errors are
//! one line on stderr.

mod cli;
mod client;
mod dlq;
mod groups;
mod lag;
mod manual;
mod produce;
mod render;
mod reset;
mod settings;
mod tail;
mod topics;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command, Dlq};
use crate::client::{Conn, Failure};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&Failure::Runtime(format!("cannot start: {e}"))),
    };
    let result = runtime.block_on(run(cli));
    // Clients still draining (a consumer leaving, a producer closing) must
    // not keep the process: everything that mattered was awaited.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) | Err(Failure::Closed) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure),
    }
}

/// Help and version as clap prints them; a usage error on one line, exit
/// code 2.
fn usage(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
    }
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let what = text
        .split("\n\nUsage:")
        .next()
        .unwrap_or(text)
        .split("\n\nFor more information")
        .next()
        .unwrap_or(text);
    let what = what.split_whitespace().collect::<Vec<_>>().join(" ");
    fail(&Failure::Usage(format!("{what} (see --help)")))
}

fn fail(failure: &Failure) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "xkafka: {failure}");
    ExitCode::from(u8::try_from(failure.exit_code()).unwrap_or(1))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // These need no cluster (nor brokers).
    match &cli.command {
        Command::Completions(args) => return manual::completions(args.shell),
        Command::Man => return manual::man(),
        _ => {}
    }
    let conn = Conn::new(&cli.global)?;
    let global = &cli.global;
    match cli.command {
        Command::Dlq(Dlq::Inspect(args)) => dlq::inspect(&conn, global, &args).await,
        Command::Dlq(Dlq::Replay(args)) => dlq::replay(&conn, global, &args).await,
        Command::Lag(args) => lag::lag(&conn, global, &args),
        Command::Tail(args) => tail::tail(&conn, global, &args).await,
        Command::Produce(args) => produce::produce(&conn, global, &args).await,
        Command::Topics(command) => topics::topics(&conn, global, &command).await,
        Command::Groups(command) => groups::groups(&conn, global, &command).await,
        Command::Config => settings::config(&conn, global.format),
        Command::Completions(_) | Command::Man => Ok(()),
    }
}
