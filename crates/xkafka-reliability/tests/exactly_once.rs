//! Exactly-once consume-transform-produce, proven by SIGKILL on the suite's
//! broker: a worker turns each input into one output message through a
//! transactional producer (`CommitMode::Transactional`, `Concurrency(8)`
//! per key) and is SIGKILLed 10 times; a storm of transactional members is
//! killed, leaves and joins. A `read_committed` reader of the output must
//! find every input id exactly once. The at-least-once twin (the same
//! transform with an idempotent producer and automatic commits) must show
//! duplicates: the count can fail.
//!
//! `cargo test -p xkafka-reliability --all-features --test exactly_once -- --nocapture`;
//! other seeds: `cargo run -p xkafka-reliability -- transform --mode eos-transform --seed 7`
//! and `-- transform-storm --seed 7`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use xkafka_reliability::exactly_once::{self, CrashPlan, CrashReport, Event, StormPlan, Verdict};
use xkafka_reliability::worker::{Mode, ALO_TRANSFORM_COMMIT_INTERVAL};

fn brokers() -> String {
    let addr = std::env::var("XKAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if TcpStream::connect_timeout(&addr.parse().expect("host:port"), Duration::from_secs(2))
        .is_err()
    {
        panic!("no Kafka broker at {addr}: run scripts/test.sh, or scripts/broker.sh start");
    }
    addr
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/reliability")
}

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xkafka-chaos"))
}

fn write(name: &str, report: &impl serde::Serialize) {
    std::fs::create_dir_all(target_dir()).unwrap();
    std::fs::write(
        target_dir().join(name),
        serde_json::to_vec_pretty(report).unwrap(),
    )
    .unwrap();
}

/// What every run must show: the input was published, and the output holds
/// no id that is not an input's.
fn sane(verdict: &Verdict) {
    assert_eq!(verdict.publish_failed, 0, "the input was published");
    assert_eq!(
        verdict.output.unacknowledged, 0,
        "output ids that are no acknowledged input's"
    );
}

fn print_incarnations(report: &CrashReport) {
    for (k, i) in report.incarnations.iter().enumerate() {
        println!(
            "  kill {k}: {} ms after its first handler run ({} ms after its start), handled {}, \
             handled again later {}",
            i.delay_ms, i.lifetime_ms, i.handled, i.handled_again
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_transform_survives_sigkill() {
    let mut plan = CrashPlan::new(brokers(), Mode::EosTransform, exe(), target_dir());
    plan.seed = 2001;
    let report = exactly_once::crash(&plan).await.expect("the harness ran");
    write("exactly-once-crash.json", &report);
    print_incarnations(&report);
    println!("{}", report.line());
    let v = &report.verdict;
    sane(v);
    assert_eq!(report.kills, 10, "every kill landed");
    assert!(v.inputs >= 20_000, "{} inputs", v.inputs);
    assert!(
        report.drained,
        "the group committed the input's end offsets"
    );
    assert_eq!(
        v.output.lost, 0,
        "inputs with no committed output (first: {:?})",
        v.output.lost_sample
    );
    assert_eq!(
        v.output.duplicated, 0,
        "inputs with more than one committed output"
    );
    // Not trivially true: the killed incarnations committed transactions
    // (kept what they handled) *and* the kills landed inside transactions,
    // so inputs were handled again and their first outputs are in the log,
    // aborted.
    assert!(
        report.kept_by_killed() > 0,
        "no killed incarnation committed anything: the kills all landed before the first commit"
    );
    assert!(
        v.handler_runs.duplicated > 0,
        "no input was handled twice: the kills proved nothing"
    );
    // What a kill sends round again is the transaction it left open, never
    // more: the offsets committed with each transaction cover exactly its
    // outputs.
    let per_transaction = plan.transaction_max_messages.expect("bounded transactions") as u64;
    for (k, i) in report.incarnations.iter().enumerate() {
        assert!(
            i.handled_again <= per_transaction,
            "kill {k}: {} inputs handled again, more than one transaction ({per_transaction})",
            i.handled_again
        );
    }
    assert!(
        v.output_uncommitted.duplicated > 0,
        "no aborted output in the log: the read_committed count proved nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_transform_duplicates_under_sigkill() {
    let mut plan = CrashPlan::new(brokers(), Mode::AloTransform, exe(), target_dir());
    plan.seed = 2002;
    plan.prefill = 5_000;
    // Kills land 50–1,000 ms after an incarnation's first handler run, and
    // its first automatic commit comes 5 s (librdkafka's default interval)
    // after its start: a killed incarnation commits nothing, so every output
    // it published — at least the one of its first handler run, published
    // and acknowledged before that run was recorded — is published again by
    // a later one. Duplicates are certain, not likely; the lifetimes are
    // asserted below so that the premise is checked too.
    plan.kill_after = (Duration::from_millis(50), Duration::from_millis(1_000));
    let report = exactly_once::crash(&plan).await.expect("the harness ran");
    write("at-least-once-crash.json", &report);
    print_incarnations(&report);
    println!("{}", report.line());
    let v = &report.verdict;
    sane(v);
    assert_eq!(report.kills, 10, "every kill landed");
    assert!(
        report.drained,
        "the group committed the input's end offsets"
    );
    let longest = report
        .lifetimes_ms
        .iter()
        .copied()
        .max()
        .unwrap_or_default();
    assert!(
        Duration::from_millis(longest) < ALO_TRANSFORM_COMMIT_INTERVAL,
        "an incarnation lived {longest} ms: it may have committed, duplicates are not certain"
    );
    assert_eq!(
        v.output.lost, 0,
        "at-least-once lost inputs (first: {:?})",
        v.output.lost_sample
    );
    assert!(
        v.output.duplicated > 0,
        "at-least-once under SIGKILL showed no duplicate output: the count cannot fail"
    );
    // More precisely: nothing the killed incarnations handled was
    // committed, so each of their handler runs left an output that a later
    // incarnation published again.
    let handled_by_killed: u64 = report.incarnations.iter().map(|i| i.handled).sum();
    assert_eq!(
        report.kept_by_killed(),
        0,
        "a killed incarnation committed something"
    );
    assert!(
        v.output.duplicated >= handled_by_killed,
        "{} duplicates, fewer than the {handled_by_killed} outputs of killed incarnations",
        v.output.duplicated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_through_a_storm_of_transactional_members() {
    let mut plan = StormPlan::new(brokers(), exe(), target_dir());
    plan.seed = 2003;
    let report = exactly_once::storm(&plan).await.expect("the storm ran");
    write("exactly-once-storm.json", &report);
    println!("{}", report.line());
    let v = &report.verdict;
    sane(v);
    assert!(
        report.drained,
        "the group committed the input's end offsets"
    );
    assert!(
        report.count(Event::Killed) + report.count(Event::KilledForGood) >= 5
            && report.count(Event::Left) + report.count(Event::Joined) >= 3,
        "a storm: {:#?}",
        report.events
    );
    assert_eq!(
        v.output.lost, 0,
        "inputs with no committed output (first: {:?})",
        v.output.lost_sample
    );
    assert_eq!(
        v.output.duplicated, 0,
        "inputs with more than one committed output"
    );
    assert!(
        v.output_uncommitted.duplicated > 0,
        "no aborted output in the log: the read_committed count proved nothing"
    );
}
