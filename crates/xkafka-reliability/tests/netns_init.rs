//! A transactional producer whose transaction coordinator is cut off (8 s,
//! silently) while it initialises with a 5 s bound: librdkafka answers the
//! timed-out `init_transactions` with "retry call to resume", and the
//! producer must resume it, as it resumes a commit, instead of failing its
//! first transaction. Found by the faults
//! campaign, seed 202 (`xkafka-chaos faults --first 202 --seeds 1 --eos`):
//! the exactly-once member that joined after the coordinator's faults
//! exited with "initialising transactions failed: Timed out waiting for
//! operation to finish, retry call to resume".

use std::time::{Duration, Instant};

use xkafka::{BoxError, Producer};
use xkafka_reliability::cluster;
use xkafka_reliability::faults::{Cut, Fault, Faults};
use xkafka_reliability::netcluster::NetCluster;
use xkafka_reliability::netns::Net;

/// Each transaction operation's bound: the coordinator is cut for longer,
/// so a first `init_transactions` times out.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the coordinator stays cut off: more than one operation bound,
/// well within the four the producer now allows.
const CUT_FOR: Duration = Duration::from_secs(8);

#[test]
fn init_transactions_resumes_past_a_coordinator_cut_longer_than_its_bound() -> Result<(), BoxError>
{
    let net = Net::create()?;
    net.enter_clients()?;
    let mut rng = fastrand::Rng::with_seed(202);
    let cluster = NetCluster::start(&net, &mut rng)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let brokers = cluster.bootstrap.clone();
        // The first transactional producer makes Kafka create
        // __transaction_state: only then has a transactional id a
        // coordinator to find.
        let warm_up = Producer::builder("warm-up")
            .brokers([brokers.as_str()])
            .transactional_id(cluster::unique("nf-init-warm-up"))
            .error_handler(|e| eprintln!("warm-up producer: {e}"))
            .build()?;
        warm_up.begin_transaction().await?;
        warm_up.abort_transaction().await?;
        let id = cluster::unique("nf-init");
        let coordinator =
            tokio::task::block_in_place(|| cluster.coordinator("__transaction_state", &id))?
                .ok_or("no coordinator for the transactional id")?;
        let mut faults = Faults::new(&net)?;
        let cut = faults.apply(Fault::Isolate(coordinator, Cut::Silent))?;
        let producer = Producer::builder("nf-init")
            .brokers([brokers.as_str()])
            .transactional_id(id.as_str())
            .transaction_timeout(OPERATION_TIMEOUT)
            .error_handler(|e| eprintln!("producer: {e}"))
            .build()?;
        let started = Instant::now();
        // The cut lasts longer than one operation bound, then heals while
        // the init is under way: the fault's length is the experiment.
        let (begun, healed) = tokio::join!(producer.begin_transaction(), async {
            tokio::time::sleep(CUT_FOR).await;
            faults.heal(cut)
        });
        healed?;
        eprintln!(
            "begin_transaction with coordinator {coordinator} isolated for {CUT_FOR:?}: \
             {begun:?} after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        begun?;
        producer.commit_transaction().await?;
        Ok::<(), BoxError>(())
    })
}
