//! `xkafka-chaos`: kills xkafka consumers and counts what they handled.
//!
//! ```text
//! xkafka-chaos crash --mode sequential --kills 10 --seed 1   # one crash scenario
//! xkafka-chaos crash --all                                   # every scenario
//! xkafka-chaos transform --mode eos-transform --kills 10     # exactly-once under SIGKILL
//! xkafka-chaos transform-storm --events 16                   # storm of transactional members
//! xkafka-chaos storm --seconds 60                            # rebalance storm
//! xkafka-chaos soak --seconds 600                            # memory soak
//! xkafka-chaos faults --seeds 20 --eos                       # network faults (root, nftables)
//! xkafka-chaos worker --topic t --group g --mode per-key --out x.ledger
//! ```
//!
//! Against `--brokers` (default `$XKAFKA_BROKERS` or 127.0.0.1:9092); start
//! one with `scripts/broker.sh install && scripts/broker.sh start`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use xkafka::BoxError;
use xkafka_reliability::crash::{self, CrashPlan};
use xkafka_reliability::exactly_once;
use xkafka_reliability::soak::{self, SoakPlan};
use xkafka_reliability::storm::{self, StormPlan};
use xkafka_reliability::worker::{self, Mode, WorkerArgs};

#[derive(Parser)]
#[command(version, about = "Kills xkafka consumers and counts what they handled")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// `bootstrap.servers`.
    #[arg(long, env = "XKAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Where ledgers and worker logs go.
    #[arg(long, default_value = "target/xkafka-chaos")]
    dir: PathBuf,
    /// Write the report(s) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed for kill moments and victims.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker (what the harnesses start and kill).
    Worker(WorkerArgs),
    /// Crash scenarios: SIGKILL a worker at random moments, restart, count.
    Crash {
        #[command(flatten)]
        common: Common,
        /// The scenario.
        #[arg(long, value_enum, required_unless_present = "all")]
        mode: Option<Mode>,
        /// Every scenario, one after the other.
        #[arg(long)]
        all: bool,
        /// SIGKILLs per scenario.
        #[arg(long, default_value_t = 10)]
        kills: u32,
        /// Messages per second published during the kills.
        #[arg(long, default_value_t = 300)]
        rate: u64,
    },
    /// Exactly-once transform (or its at-least-once twin): SIGKILL the
    /// worker at random moments, restart it with the same transactional
    /// id, drain, count the output with a read_committed reader.
    Transform {
        #[command(flatten)]
        common: Common,
        /// `eos-transform` or `alo-transform`.
        #[arg(long, value_enum, default_value = "eos-transform")]
        mode: Mode,
        /// SIGKILLs.
        #[arg(long, default_value_t = 10)]
        kills: u32,
        /// Input messages published before the first worker.
        #[arg(long, default_value_t = 20_000)]
        prefill: u64,
        /// Input messages per second published during the kills.
        #[arg(long, default_value_t = 100)]
        rate: u64,
    },
    /// Storm of transactional members (one transactional id per slot):
    /// killed, leaving, joining while the transform runs; output counted.
    TransformStorm {
        #[command(flatten)]
        common: Common,
        /// Kills, leaves and joins, 1–3 s apart.
        #[arg(long, default_value_t = 16)]
        events: usize,
        /// Member slots (the most members at once).
        #[arg(long, default_value_t = 4)]
        slots: usize,
        /// Input messages per second during the storm.
        #[arg(long, default_value_t = 250)]
        rate: u64,
    },
    /// Committed and end offsets of a group, per partition.
    Lag {
        /// `bootstrap.servers`.
        #[arg(long, env = "XKAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// The group (default: the topic's name, as the harnesses use).
        #[arg(long)]
        group: Option<String>,
        /// Partitions of the topic.
        #[arg(long, default_value_t = 12)]
        partitions: i32,
    },
    /// Rebalance storm: 3 workers, 12 partitions, one disrupted every 2–5 s.
    Storm {
        #[command(flatten)]
        common: Common,
        /// How long the storm lasts.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Worker processes.
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Messages per second published during the storm.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// The workers' `max.poll.interval.ms` (the rebalance timeout);
        /// librdkafka's default (300000) when not given.
        #[arg(long)]
        max_poll_interval_ms: Option<u32>,
        /// The workers' `group.protocol`: `classic` or `consumer` (KIP-848).
        #[arg(long, default_value = "classic")]
        group_protocol: String,
    },
    /// Network fault campaign: seeded schedules of cuts, one-way loss and
    /// pauses on a private 3-broker cluster in network namespaces of its
    /// own (root and nftables needed), each run's history checked.
    Faults {
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        first: u64,
        /// How many seeds.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// Faults per schedule.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Also run each seed's exactly-once schedule (the transaction
        /// coordinator cut and paused, then a zombie member).
        #[arg(long)]
        eos: bool,
    },
    /// Memory soak: flood a slow worker, sample its RSS every second.
    Soak {
        #[command(flatten)]
        common: Common,
        /// How long to flood.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Messages per second published.
        #[arg(long, default_value_t = 2_000)]
        rate: u64,
        /// The worker's `fetch.max.bytes` and prefetch bound, bytes.
        #[arg(long, default_value_t = 4 << 20)]
        fetch_max_bytes: u64,
        /// The worker's `session.timeout.ms`.
        #[arg(long, default_value_t = 10_000)]
        session_timeout_ms: u32,
    },
}

fn write_json(path: &Option<PathBuf>, value: &impl serde::Serialize) -> Result<(), BoxError> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(value)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn main_inner(cli: Cli) -> Result<bool, BoxError> {
    let exe = std::env::current_exe()?;
    match cli.command {
        Command::Worker(args) => {
            let summary = worker::run(args).await?;
            println!("{summary:?}");
            Ok(true)
        }
        Command::Lag {
            brokers,
            topic,
            group,
            partitions,
        } => {
            let group = group.unwrap_or_else(|| topic.clone());
            let positions = tokio::task::spawn_blocking(move || {
                xkafka_reliability::cluster::positions(&brokers, &group, &topic, partitions)
            })
            .await??;
            for (p, committed, end) in positions {
                println!(
                    "partition {p:>3} committed {committed:>8} end {end:>8} lag {:>6}",
                    end - committed
                );
            }
            Ok(true)
        }
        Command::Crash {
            common,
            mode,
            all,
            kills,
            rate,
        } => {
            let modes = if all {
                Mode::ALL.to_vec()
            } else {
                mode.into_iter().collect()
            };
            let mut reports = Vec::new();
            let mut ok = true;
            for mode in modes {
                let mut plan =
                    CrashPlan::new(&common.brokers, mode, exe.clone(), common.dir.clone());
                plan.kills = kills;
                plan.seed = common.seed;
                plan.rate = rate;
                let report = crash::run(&plan).await?;
                ok &= plan.kept(&report);
                reports.push(report);
            }
            println!();
            for report in &reports {
                println!("{}", report.line());
            }
            write_json(&common.json, &reports)?;
            Ok(ok)
        }
        Command::Transform {
            common,
            mode,
            kills,
            prefill,
            rate,
        } => {
            let mut plan = exactly_once::CrashPlan::new(&common.brokers, mode, exe, common.dir);
            plan.kills = kills;
            plan.seed = common.seed;
            plan.prefill = prefill;
            plan.rate = rate;
            let report = exactly_once::crash(&plan).await?;
            println!("{}", report.line());
            write_json(&common.json, &report)?;
            let output = &report.verdict.output;
            Ok(report.drained
                && output.lost == 0
                && (mode != Mode::EosTransform || output.duplicated == 0))
        }
        Command::TransformStorm {
            common,
            events,
            slots,
            rate,
        } => {
            let mut plan = exactly_once::StormPlan::new(&common.brokers, exe, common.dir);
            plan.events = events;
            plan.slots = slots;
            plan.initial = plan.initial.min(slots);
            plan.rate = rate;
            plan.seed = common.seed;
            let report = exactly_once::storm(&plan).await?;
            println!("{}", report.line());
            write_json(&common.json, &report)?;
            let output = &report.verdict.output;
            Ok(report.drained && output.lost == 0 && output.duplicated == 0)
        }
        Command::Storm {
            common,
            seconds,
            workers,
            rate,
            max_poll_interval_ms,
            group_protocol,
        } => {
            let mut plan = StormPlan::new(&common.brokers, exe, common.dir.clone());
            plan.duration = Duration::from_secs(seconds);
            plan.workers = workers;
            plan.rate = rate;
            plan.seed = common.seed;
            plan.max_poll_interval_ms = max_poll_interval_ms;
            plan.group_protocol = group_protocol;
            let report = storm::run(&plan).await?;
            println!("{}", report.line());
            write_json(&common.json, &report)?;
            Ok(report.tally.lost == 0)
        }
        Command::Faults { .. } => Err("the faults campaign runs before any runtime".into()),
        Command::Soak {
            common,
            seconds,
            rate,
            fetch_max_bytes,
            session_timeout_ms,
        } => {
            let mut plan = SoakPlan::new(&common.brokers, exe, common.dir.clone());
            plan.duration = Duration::from_secs(seconds);
            plan.warm_up = Duration::from_secs((seconds / 10).max(10));
            plan.rate = rate;
            plan.fetch_max_bytes = fetch_max_bytes;
            plan.session_timeout_ms = session_timeout_ms;
            let report = soak::run(&plan).await?;
            println!("{}", report.line());
            write_json(&common.json, &report)?;
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Before any runtime: the campaign moves this thread into its clients'
    // namespace, and the runtime's threads must start there.
    if let Command::Faults {
        first,
        seeds,
        steps,
        eos,
    } = cli.command
    {
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                eprintln!("xkafka-chaos faults: {e}");
                return ExitCode::FAILURE;
            }
        };
        let eos = eos.then_some(exe.as_path());
        return match xkafka_reliability::campaign::run(first, seeds, steps, eos) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("xkafka-chaos faults: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("xkafka-chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_inner(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("xkafka-chaos: a guarantee was broken (see the report)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xkafka-chaos: {e}");
            ExitCode::FAILURE
        }
    }
}
