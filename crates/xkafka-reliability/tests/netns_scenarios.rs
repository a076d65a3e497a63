//! Seeded fault schedules on the private cluster in its own namespaces,
//! each run's history checked (see `xkafka_reliability::scenario`). A fixed
//! seed here; `XKAFKA_FAULT_SEED=<n>` replays another (the campaign,
//! `xkafka-chaos faults --seeds N`, prints each seed it runs).

use std::time::Duration;

use xkafka::BoxError;
use xkafka_reliability::netcluster::NetCluster;
use xkafka_reliability::netns::Net;
use xkafka_reliability::scenario;
use xkafka_reliability::seed::{self, Kind, Schedule};

#[test]
fn at_least_once_and_idempotent_producer_under_seeded_faults() -> Result<(), BoxError> {
    let seed = seed::seed("at_least_once_and_idempotent_producer_under_seeded_faults", 3)?;
    // Leader and coordinator cut silently (half-open), with resets, from
    // their peers, isolated, one-way, paused: the seed picks three.
    let schedule = Schedule::draw(seed, 3, &Kind::ALL, Duration::from_secs(8));
    eprintln!("schedule: {:?}", schedule.steps);
    let net = Net::create()?;
    net.enter_clients()?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let cluster = NetCluster::start(&net, &mut rng)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(scenario::at_least_once(&net, &cluster, schedule))?;
    eprintln!("{}", outcome.line());
    assert!(
        outcome.verdict.kept(),
        "seed {seed}: {:?}",
        outcome.verdict.violations
    );
    assert!(outcome.verdict.acked > 0, "nothing was acknowledged");
    Ok(())
}
