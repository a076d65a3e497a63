//! The fault campaign: many seeded schedules, one after the other, on one
//! private cluster in its own namespaces (`xkafka-chaos faults --seeds N`).
//! Each run gets a fresh topic and group; the cluster's start is paid once.

use std::time::Duration;

use xkafka::BoxError;

use crate::netcluster::NetCluster;
use crate::netns::Net;
use crate::seed::{Kind, Schedule};
use crate::{eos_scenario, scenario};

/// The exactly-once schedule of a seed: the transaction coordinator or the
/// output's leader isolated, cut from the clients or paused, two faults
/// (then the zombie member, which every exactly-once run has).
pub fn eos_schedule(seed: u64) -> Schedule {
    Schedule::draw(
        seed ^ 0x5eed,
        2,
        &[Kind::Isolate, Kind::Pause, Kind::FromClients],
        Duration::from_secs(8),
    )
}

/// Runs seeds `first..first + seeds`, `steps` faults each, at-least-once
/// and — with `eos`, the worker binary — exactly-once too; prints a line
/// per run and the failures at the end. True when every run kept every
/// rule. Call it from a thread with no tokio runtime yet: it moves the
/// thread into the clients' namespace, then builds its own.
pub fn run(
    first: u64,
    seeds: u64,
    steps: usize,
    eos: Option<&std::path::Path>,
) -> Result<bool, BoxError> {
    let net = Net::create()?;
    net.enter_clients()?;
    let mut rng = fastrand::Rng::with_seed(first);
    let cluster = NetCluster::start(&net, &mut rng)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut failed = Vec::new();
    for seed in first..first + seeds {
        eprintln!("campaign: seed {seed} (replay one: XKAFKA_FAULT_SEED={seed})");
        let schedule = Schedule::draw(seed, steps, &Kind::ALL, Duration::from_secs(8));
        match runtime.block_on(scenario::at_least_once(&net, &cluster, schedule)) {
            Ok(outcome) => {
                println!("{}", outcome.line());
                if !outcome.verdict.kept() {
                    println!("  broken: {:?}", outcome.verdict.violations);
                    failed.push((seed, format!("{:?}", outcome.verdict.violations)));
                }
            }
            Err(e) => {
                println!("seed {seed}: error: {e}");
                failed.push((seed, e.to_string()));
            }
        }
        let Some(exe) = eos else { continue };
        let schedule = eos_schedule(seed);
        match runtime.block_on(eos_scenario::exactly_once(&net, &cluster, &schedule, exe)) {
            Ok(outcome) => {
                println!("seed {seed}, {}", outcome.line());
                if !outcome.verdict.kept() {
                    println!("  broken: {:?}", outcome.verdict.violations);
                    failed.push((seed, format!("eos: {:?}", outcome.verdict.violations)));
                }
            }
            Err(e) => {
                println!("eos seed {seed}: error: {e}");
                failed.push((seed, format!("eos: {e}")));
            }
        }
    }
    println!(
        "campaign: {seeds} seeds from {first} ({}), {} runs failed",
        if eos.is_some() {
            "at-least-once and exactly-once"
        } else {
            "at-least-once"
        },
        failed.len()
    );
    for (seed, why) in &failed {
        println!("  seed {seed}: {why}");
    }
    Ok(failed.is_empty())
}
