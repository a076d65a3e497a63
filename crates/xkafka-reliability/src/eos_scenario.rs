//! Exactly-once consume-transform-produce on the private cluster while a
//! seeded [`Schedule`] cuts, half-opens and pauses the transaction
//! coordinator (or the output's leader), then a zombie: the worker paused
//! past `session.timeout.ms` while a second member takes its partitions,
//! then resumed — its late transaction must be fenced, not committed.
//!
//! An independent `read_committed` reader follows the output *during* the
//! faults; its records are the verdict: each acknowledged input's output
//! exactly once, per key in input order ([`Promise::ExactlyOnce`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::message::Message as _;
use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use xkafka::BoxError;

use crate::cluster::{self, Feeder, Input};
use crate::faults::{Fault, Faults};
use crate::history::{self, History, Promise, Record, Verdict};
use crate::netcluster::NetCluster;
use crate::netns::Net;
use crate::process::WorkerSpec;
use crate::scenario::settle;
use crate::seed::{Schedule, Target};
use crate::worker::Mode;

/// Input messages per second: below what one transactional member of a
/// debug build handles on two loaded cores (~60/s measured), so that the
/// member left after the zombie catches up (at 100/s it took 111 s).
const RATE: u64 = 50;
/// Partitions of the input and of the output.
const PARTITIONS: i32 = 3;
/// The members' `session.timeout.ms`.
const SESSION_TIMEOUT_MS: u32 = 6_000;

/// What one run did and how it was judged.
#[derive(Debug)]
pub struct Outcome {
    /// The schedule's seed (drawn from the run's seed).
    pub seed: u64,
    /// The faults as applied.
    pub applied: Vec<String>,
    /// The checked history (outputs as the live reader saw them).
    pub verdict: Verdict,
    /// Transactions the workers' logs say were aborted.
    pub aborted: usize,
    /// Seconds from the last heal until the reader had every output.
    pub recovery_s: f64,
}

impl Outcome {
    /// One line for a report.
    pub fn line(&self) -> String {
        format!(
            "eos schedule {}: {} acked, {} outputs read (read_committed, during the faults), \
             duplicated {}, {} rules broken, {} aborted transactions, recovered {:.1} s \
             after the last heal; faults: {}",
            self.seed,
            self.verdict.acked,
            self.verdict.handled,
            self.verdict.duplicated,
            self.verdict.broken,
            self.aborted,
            self.recovery_s,
            self.applied.join("; ")
        )
    }
}

/// Follows `topic` with `read_committed` from the start until `on` is
/// cleared. Blocking: a thread of its own.
fn follow(
    brokers: &str,
    topic: &str,
    on: &AtomicBool,
    sink: &Mutex<Vec<Record>>,
) -> Result<(), BoxError> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", cluster::unique("eos-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    client.assign(&tpl)?;
    while on.load(Ordering::Relaxed) {
        let Some(message) = client.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = match message {
            Ok(m) => m,
            // A cut broker: librdkafka retries; the reader goes on.
            Err(e) => {
                eprintln!("eos reader: {e}");
                continue;
            }
        };
        let id = std::str::from_utf8(message.payload().unwrap_or_default())
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{topic}@{}: not an id", message.offset()))?;
        sink.lock().unwrap_or_else(|p| p.into_inner()).push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            id,
        });
    }
    Ok(())
}

/// Lines in the workers' logs that say a transaction was aborted.
fn aborted(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| text.lines().filter(|l| l.contains("abort")).count())
        .sum()
}

/// Runs `schedule` (its targets: [`Target::Coordinator`] is the
/// transaction coordinator, [`Target::Leader`] the output's partition-0
/// leader), then the zombie, against fresh topics on `cluster`. `exe` is
/// the `xkafka-chaos` binary (the worker).
pub async fn exactly_once(
    net: &Net,
    cluster: &NetCluster,
    schedule: &Schedule,
    exe: &Path,
) -> Result<Outcome, BoxError> {
    let brokers = cluster.bootstrap.clone();
    let name = cluster::unique(&format!("nf-eos-s{}", schedule.seed));
    let output = format!("{name}-out");
    let dir = crate::process::run_dir(&std::env::temp_dir().join("xkafka-netns-eos"), &name)?;
    cluster::create_topic(&brokers, &name, PARTITIONS).await?;
    cluster::create_topic(&brokers, &output, PARTITIONS).await?;
    let spec = WorkerSpec {
        exe: exe.to_owned(),
        brokers: brokers.clone(),
        topic: name.clone(),
        group: name.clone(),
        mode: Mode::EosTransform,
        work_ms: 1,
        session_timeout_ms: SESSION_TIMEOUT_MS,
        max_in_flight: 1_000,
        max_in_flight_per_partition: None,
        dir: dir.clone(),
        configs: vec![("heartbeat.interval.ms".into(), "2000".into())],
        output: Some(output.clone()),
        // A fenced or cut member's open transaction is aborted by the
        // coordinator after this long at the latest.
        transaction_timeout_ms: Some(15_000),
        transaction_max_messages: Some(100),
    };
    let input = Input::with_config(&brokers, &name, &[("message.timeout.ms", "120000")])?;
    let on = Arc::new(AtomicBool::new(true));
    let outputs: Arc<Mutex<Vec<Record>>> = Arc::default();
    let reader = {
        let (b, t, on, sink) = (brokers.clone(), output.clone(), on.clone(), outputs.clone());
        std::thread::spawn(move || follow(&b, &t, &on, &sink))
    };
    let txid_a = format!("{name}-a");
    let mut worker = spec.spawn_transactional("worker-a", 1, Some(&txid_a))?;
    let feeder = Feeder::start(&input, RATE);
    let seen = |n: usize| outputs.lock().unwrap_or_else(|p| p.into_inner()).len() >= n;
    let started = Instant::now();
    while !seen(1) {
        if started.elapsed() > Duration::from_secs(90) {
            return Err("no output within 90 s of the worker's start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut faults = Faults::new(net)?;
    let mut applied = Vec::new();
    for step in &schedule.steps {
        // The seed's timing, not a wait for an event.
        tokio::time::sleep(step.after).await;
        let broker = match step.target {
            Target::Coordinator => {
                tokio::task::block_in_place(|| cluster.coordinator("__transaction_state", &txid_a))?
            }
            Target::Leader => tokio::task::block_in_place(|| cluster.leader(&output, 0))?,
            Target::Other => None,
        }
        .unwrap_or(1);
        let fault = crate::scenario::fault(step.kind, broker, cluster)?;
        applied.push(format!("{fault} for {:.1} s", step.lasts.as_secs_f64()));
        let id = faults.apply(fault)?;
        tokio::time::sleep(step.lasts).await;
        faults.heal(id)?;
    }

    // The zombie: worker A paused past its session timeout; B joins and
    // gets every partition; A resumes with a transaction it began under
    // the old generation.
    let pid = worker.pid().ok_or("worker a has exited")?;
    let pause = faults.apply(Fault::Pause {
        name: "worker a".into(),
        pid,
    })?;
    let txid_b = format!("{name}-b");
    let worker_b = spec.spawn_transactional("worker-b", 1, Some(&txid_b))?;
    let zombie_s = u64::from(SESSION_TIMEOUT_MS) * 2;
    tokio::time::sleep(Duration::from_millis(zombie_s)).await;
    faults.heal(pause)?;
    applied.push(format!(
        "worker a paused {:.0} s (session timeout {:.0} s) while worker b joined",
        zombie_s as f64 / 1000.0,
        f64::from(SESSION_TIMEOUT_MS) / 1000.0
    ));
    drop(faults);
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    feeder.stop().await?;
    settle(&input, Duration::from_secs(90)).await;
    let acked = input.finish().await;
    let acks = input.acks();
    let wanted: std::collections::HashSet<u64> = acked.ids.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have: std::collections::HashSet<u64> = outputs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| r.id)
            .collect();
        if wanted.is_subset(&have) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery_s = healed.elapsed().as_secs_f64();
    // Late duplicates would come after the catch-up: the reader goes on
    // for one more transaction timeout's worth while both workers run.
    tokio::time::sleep(Duration::from_secs(5)).await;
    worker_b.terminate(Duration::from_secs(30)).await?;
    // A fenced zombie may have stopped by itself: that is the fence
    // working, not a failure; one still running must stop cleanly.
    match worker.exited()? {
        Some(status) => applied.push(format!("worker a had exited by itself: {status}")),
        None => worker.terminate(Duration::from_secs(30)).await?,
    }
    on.store(false, Ordering::Relaxed);
    reader.join().map_err(|_| "the reader panicked")??;

    let log = crate::failover::read_log(&brokers, &name, PARTITIONS).await?;
    let history = History {
        outputs: outputs.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        ..crate::scenario::input_history(&acks, &log)
    };
    let verdict = history::check(&history, Promise::ExactlyOnce);
    let outcome = Outcome {
        seed: schedule.seed,
        applied,
        verdict,
        aborted: aborted(&dir),
        recovery_s,
    };
    if outcome.verdict.kept() && std::env::var_os("XKAFKA_KEEP_NETCLUSTER").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("eos: worker logs kept in {}", dir.display());
    }
    Ok(outcome)
}
