//! Crash scenarios against the suite's broker: a worker process SIGKILLed 10
//! times at seeded random moments while messages flow, restarted each time.
//! At-least-once modes must lose nothing and duplicate within the bound;
//! at-most-once must handle nothing twice.
//!
//! Run one with the broker up (`scripts/broker.sh start`):
//! `cargo test -p xkafka-reliability --test crash per_key -- --nocapture`.
//! The same scenarios, with other seeds or more kills:
//! `cargo run -p xkafka-reliability -- crash --all --seed 42 --kills 20`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use xkafka_reliability::crash::{self, CrashPlan, CrashReport};
use xkafka_reliability::worker::Mode;

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

async fn scenario(mode: Mode) -> CrashReport {
    let mut plan = CrashPlan::new(
        brokers(),
        mode,
        PathBuf::from(env!("CARGO_BIN_EXE_xkafka-chaos")),
        target_dir(),
    );
    // A different, fixed seed per scenario: reproducible, not all alike.
    plan.seed = 1000 + mode as u64;
    let report = crash::run(&plan).await.expect("the crash harness ran");
    std::fs::write(
        target_dir().join(format!("crash-{}.json", mode.name())),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("{}", report.line());
    assert_eq!(report.kills, 10, "every kill landed");
    assert_eq!(report.publish_failed, 0, "the input was published");
    assert!(report.tally.expected > 0);
    let kills = u64::from(report.kills);
    if mode.at_least_once() {
        assert_eq!(
            report.tally.lost, 0,
            "lost messages (first: {:?})",
            report.tally.lost_sample
        );
        for (k, inc) in report.incarnations.iter().enumerate() {
            println!(
                "  kill {k}: {} ms after its first record, handled {}, again later {} (bound {})",
                inc.delay_ms, inc.handled, inc.handled_again, inc.bound
            );
        }
        assert!(
            report.tally.duplicated <= report.duplicate_bound,
            "{} duplicates, bound {}",
            report.tally.duplicated,
            report.duplicate_bound
        );
        // The check must be able to fail: a worker that never committed
        // would duplicate everything its killed incarnations handled.
        assert!(
            report.duplicate_bound < report.handled_by_killed,
            "bound {} is no tighter than no commits at all ({})",
            report.duplicate_bound,
            report.handled_by_killed
        );
    } else {
        assert_eq!(
            report.tally.max_handled, 1,
            "at-most-once handled something twice"
        );
        let bound = report.loss_bound_per_kill * kills;
        assert!(
            report.tally.lost <= bound,
            "{} lost, more than the {bound} handlers running at the kills",
            report.tally.lost
        );
    }
    assert!(plan.kept(&report));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential() {
    scenario(Mode::Sequential).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_per_partition() {
    scenario(Mode::Concurrent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key() {
    scenario(Mode::PerKey).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch() {
    scenario(Mode::Batch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_commit() {
    scenario(Mode::Manual).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once() {
    scenario(Mode::AtMostOnce).await;
}
