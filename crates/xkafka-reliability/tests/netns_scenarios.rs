//! Seeded fault schedules on the private cluster in its own namespaces,
//! each run's history checked: at-least-once with an idempotent producer
//! (`xkafka_reliability::scenario`), then exactly-once with a
//! `read_committed` reader during the faults and a zombie member
//! (`xkafka_reliability::eos_scenario`). One cluster for both: its start is
//! most of the cost. A fixed seed here; `XKAFKA_FAULT_SEED=<n>` replays
//! another (the campaign, `xkafka-chaos faults --seeds N`, prints each seed
//! it runs).

use std::path::Path;
use std::time::Duration;

use xkafka::BoxError;
use xkafka_reliability::netcluster::NetCluster;
use xkafka_reliability::netns::Net;
use xkafka_reliability::seed::{self, Kind, Schedule};
use xkafka_reliability::{campaign, eos_scenario, scenario};

#[test]
fn seeded_faults_at_least_once_then_exactly_once() -> Result<(), BoxError> {
    let seed = seed::seed("seeded_faults_at_least_once_then_exactly_once", 3)?;
    // Leader and coordinator cut silently (half-open), with resets, from
    // their peers, isolated, one-way, paused: the seed picks three.
    let alo = Schedule::draw(seed, 3, &Kind::ALL, Duration::from_secs(8));
    // The transaction coordinator (or the output's leader) isolated and
    // paused: the seed picks two, then the zombie.
    let eos = campaign::eos_schedule(seed);
    eprintln!("at-least-once schedule: {:?}", alo.steps);
    eprintln!("exactly-once schedule: {:?}", eos.steps);
    let net = Net::create()?;
    net.enter_clients()?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let cluster = NetCluster::start(&net, &mut rng)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let alo = runtime.block_on(scenario::at_least_once(&net, &cluster, alo))?;
    eprintln!("{}", alo.line());
    let exe = Path::new(env!("CARGO_BIN_EXE_xkafka-chaos"));
    let eos = runtime.block_on(eos_scenario::exactly_once(&net, &cluster, &eos, exe))?;
    eprintln!("{}", eos.line());
    assert!(
        alo.verdict.kept(),
        "at-least-once, seed {seed}: {:?}",
        alo.verdict.violations
    );
    assert!(alo.verdict.acked > 0, "nothing was acknowledged");
    assert!(
        eos.verdict.kept(),
        "exactly-once, seed {seed}: {:?}",
        eos.verdict.violations
    );
    assert!(eos.verdict.acked > 0, "nothing was acknowledged");
    Ok(())
}
