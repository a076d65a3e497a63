//! The crash harness: a worker killed with SIGKILL at random moments while
//! messages flow, restarted each time, then the ledger checked against
//! everything the broker acknowledged.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use xkafka::BoxError;

use crate::cluster::{self, Feeder, Input};
use crate::ledger::{self, Tally};
use crate::process::WorkerSpec;
use crate::worker::{Mode, AUTO_COMMIT_INTERVAL};

/// One crash scenario.
#[derive(Clone, Debug)]
pub struct CrashPlan {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// How the worker consumes.
    pub mode: Mode,
    /// SIGKILLs (each followed by a restart).
    pub kills: u32,
    /// Seeds the kill moments: the same seed gives the same delays.
    pub seed: u64,
    /// Messages published before the first worker starts.
    pub prefill: u64,
    /// Messages per second published while the worker is being killed.
    pub rate: u64,
    /// Partitions of the input topic.
    pub partitions: i32,
    /// Simulated work per message (per batch in batch mode), ms.
    pub work_ms: u64,
    /// The worker's in-flight bound.
    pub max_in_flight: usize,
    /// The worker's `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// A kill lands this long (uniformly drawn) after the restarted worker
    /// recorded its first message.
    pub kill_after: (Duration, Duration),
    /// The `xkafka-chaos` binary.
    pub exe: PathBuf,
    /// Base directory for ledgers and worker logs.
    pub dir: PathBuf,
}

impl CrashPlan {
    /// The suite's defaults for `mode`.
    pub fn new(brokers: impl Into<String>, mode: Mode, exe: PathBuf, dir: PathBuf) -> Self {
        CrashPlan {
            brokers: brokers.into(),
            mode,
            kills: 10,
            seed: 1,
            prefill: 2_000,
            rate: 300,
            partitions: 6,
            work_ms: if mode == Mode::Batch { 20 } else { 1 },
            // Under per-key order every in-flight message may be finished but
            // not storable at a kill (see `unstorable_bound`), so the bound
            // grows with this figure: at 1,000 it covered everything a short
            // incarnation handled and the duplicate check could not fail.
            max_in_flight: if mode == Mode::PerKey { 200 } else { 1_000 },
            session_timeout_ms: 3_000,
            kill_after: (Duration::from_millis(50), Duration::from_millis(1_500)),
            exe,
            dir,
        }
    }

    /// Handled messages whose offsets a kill can find not yet storable:
    /// under per-key order a message may finish while an earlier one of its
    /// partition still runs or waits, and such messages are bounded by the
    /// in-flight bound. Under per-partition order (and in batches) a finished
    /// message is stored at once.
    pub fn unstorable_bound(&self) -> u64 {
        match self.mode {
            Mode::PerKey => self.max_in_flight as u64,
            _ => 0,
        }
    }

    /// Handlers running at once (messages in them).
    pub fn running_bound(&self) -> u64 {
        (self.mode.concurrency() * self.mode.batch_size()) as u64
    }

    /// The most messages the kill of an incarnation that handled `handled`
    /// messages in the `window_ms` between its first record and the kill may
    /// send round again: those whose handler finished but whose offset was
    /// not stored ([`running_bound`](Self::running_bound) +
    /// [`unstorable_bound`](Self::unstorable_bound)), plus — with automatic
    /// commits — those stored since the last commit: the incarnation's own
    /// rate times [`COMMIT_WINDOW`] (one commit interval plus the commit's
    /// round trip, with margin). Never more than it handled.
    pub fn duplicate_bound(&self, handled: u64, window_ms: u64) -> u64 {
        let auto_commit = matches!(
            self.mode,
            Mode::Sequential | Mode::Concurrent | Mode::PerKey | Mode::Batch
        );
        let since_commit = if auto_commit {
            (handled * COMMIT_WINDOW.as_millis() as u64).div_ceil(window_ms.max(1))
        } else {
            0
        };
        handled.min(self.running_bound() + self.unstorable_bound() + since_commit)
    }
}

/// How long handled and stored messages can wait for the automatic commit
/// that covers them: one interval (200 ms) plus 100 ms for the commit's round
/// trip, times 1.5 for the rate's unevenness over an incarnation's life.
pub const COMMIT_WINDOW: Duration =
    Duration::from_millis((AUTO_COMMIT_INTERVAL.as_millis() as u64 + 100) * 3 / 2);

impl CrashPlan {
    /// At-most-once: the most messages one kill may lose. A handler claims
    /// its message (its offset is committed) right before it runs, so a kill
    /// loses at most the messages whose handlers were running.
    pub fn loss_bound_per_kill(&self) -> u64 {
        (self.mode.concurrency() * self.mode.batch_size()) as u64
    }

    /// Whether `report` keeps this mode's promise.
    pub fn kept(&self, report: &CrashReport) -> bool {
        let kills = u64::from(report.kills);
        if self.mode.at_least_once() {
            report.tally.lost == 0 && report.tally.duplicated <= report.duplicate_bound
        } else {
            report.tally.max_handled <= 1 && report.tally.lost <= self.loss_bound_per_kill() * kills
        }
    }
}

/// What a crash scenario measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CrashReport {
    /// The scenario.
    pub mode: Mode,
    /// The seed of the kill moments.
    pub seed: u64,
    /// SIGKILLs delivered.
    pub kills: u32,
    /// The kill delays drawn from the seed, ms after the first record.
    pub kill_delays_ms: Vec<u64>,
    /// The ledger against the acknowledged input.
    pub tally: Tally,
    /// Input messages whose publish failed (not expected).
    pub publish_failed: u64,
    /// Per killed incarnation: what it handled and how much of that a later
    /// one handled again, against its bound.
    pub incarnations: Vec<Incarnation>,
    /// The duplicate bound of the run: the sum of the incarnations' bounds.
    pub duplicate_bound: u64,
    /// What the killed incarnations handled in all: the duplicates a worker
    /// that never committed would cause. The bound must be well below it,
    /// or the duplicate check could not fail.
    pub handled_by_killed: u64,
    /// At-most-once: the loss bound per kill ([`CrashPlan::loss_bound_per_kill`]).
    pub loss_bound_per_kill: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl CrashReport {
    /// One line for logs and the README tables.
    pub fn line(&self) -> String {
        format!(
            "crash {:<12} seed={} kills={} messages={} handled={} lost={} (bound {}) \
             duplicated={} (bound {}) max_handled={} {:.0}s",
            self.mode.name(),
            self.seed,
            self.kills,
            self.tally.expected,
            self.tally.handled,
            self.tally.lost,
            if self.mode.at_least_once() {
                0
            } else {
                self.loss_bound_per_kill * u64::from(self.kills)
            },
            self.tally.duplicated,
            if self.mode.at_least_once() {
                self.duplicate_bound
            } else {
                0
            },
            self.tally.max_handled,
            self.seconds,
        )
    }
}

/// Runs one crash scenario: prefill, then `kills` times start a worker, wait
/// for it to record something, let it run a random while and SIGKILL it —
/// with messages flowing all along; then a last worker drains the topic and
/// stops cleanly, and the ledger is counted.
pub async fn run(plan: &CrashPlan) -> Result<CrashReport, BoxError> {
    if plan.mode.is_transform() {
        return Err(format!(
            "{}: a transform mode, counted in its output topic: run it with exactly_once::crash",
            plan.mode
        )
        .into());
    }
    let started = Instant::now();
    let (name, dir) = cluster::prepare(
        &plan.brokers,
        &format!("crash-{}", plan.mode.name()),
        plan.partitions,
        &plan.dir,
    )
    .await?;
    let spec = WorkerSpec {
        exe: plan.exe.clone(),
        brokers: plan.brokers.clone(),
        topic: name.clone(),
        group: name.clone(),
        mode: plan.mode,
        work_ms: plan.work_ms,
        session_timeout_ms: plan.session_timeout_ms,
        max_in_flight: plan.max_in_flight,
        dir: dir.clone(),
        max_in_flight_per_partition: None,
        configs: Vec::new(),
        output: None,
        transaction_timeout_ms: None,
        transaction_max_messages: None,
    };
    let input = Input::new(&plan.brokers, &name)?;
    input.publish(plan.prefill).await?;
    let feeder = Feeder::start(&input, plan.rate);

    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let (lo, hi) = (
        plan.kill_after.0.as_millis() as u64,
        plan.kill_after.1.as_millis() as u64,
    );
    let mut delays = Vec::new();
    let tag = format!("[crash {}]", plan.mode.name());
    for kill in 0..plan.kills {
        let ledgers = ledger::files(&dir)?;
        let before = ledger::size(&ledgers);
        let mut worker = spec.spawn(&format!("worker-{kill:02}"), plan.work_ms)?;
        let mut all = ledgers;
        all.push(worker.ledger.clone());
        let deadline = Instant::now() + Duration::from_secs(90);
        while ledger::size(&all) <= before {
            if let Some(status) = worker.exited()? {
                return Err(format!("{tag} worker {kill} exited by itself: {status}").into());
            }
            if Instant::now() > deadline {
                return Err(format!("{tag} worker {kill} recorded nothing within 90 s").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delay = rng.u64(lo..=hi);
        delays.push(delay);
        // The random moment of death: this sleep is the experiment, not a
        // synchronisation.
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if let Some(status) = worker.exited()? {
            return Err(format!("{tag} worker {kill} exited by itself: {status}").into());
        }
        worker.kill().await?;
        eprintln!(
            "{tag} kill {}/{} {delay} ms after its first record; published {}, ledger {} B, {:.0}s",
            kill + 1,
            plan.kills,
            input.published(),
            ledger::size(&all),
            started.elapsed().as_secs_f64(),
        );
    }
    feeder.stop().await?;
    let acked = input.finish().await;
    eprintln!(
        "{tag} input closed: {} acknowledged, {:.0}s; draining",
        acked.ids.len(),
        started.elapsed().as_secs_f64()
    );

    // The last worker drains everything, with no simulated work.
    let last = spec.spawn("worker-final", 0)?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let recorded: std::collections::HashSet<u64> =
            ledger::read(&ledger::files(&dir)?)?.into_iter().collect();
        let missing = acked.ids.iter().filter(|id| !recorded.contains(id)).count();
        let lag = cluster::lag_async(&plan.brokers, &name, &name, plan.partitions).await?;
        // At-most-once loses messages by design: there, wait for the commits.
        if lag == 0 && (missing == 0 || !plan.mode.at_least_once()) {
            eprintln!("{tag} drained, {:.0}s", started.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() > deadline {
            eprintln!("{tag} final drain timed out: {missing} missing, lag {lag}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last.terminate(Duration::from_secs(30)).await?;
    let files = ledger::files(&dir)?;
    let recorded = ledger::read(&files)?;
    let incarnations = account(plan, &files, &delays)?;
    let report = CrashReport {
        mode: plan.mode,
        seed: plan.seed,
        kills: plan.kills,
        kill_delays_ms: delays,
        tally: Tally::new(&acked.ids, &recorded),
        publish_failed: acked.failed,
        duplicate_bound: incarnations.iter().map(|i| i.bound).sum(),
        handled_by_killed: incarnations.iter().map(|i| i.handled).sum(),
        incarnations,
        loss_bound_per_kill: plan.loss_bound_per_kill(),
        seconds: started.elapsed().as_secs_f64(),
    };
    eprintln!("{tag} {}", report.line());
    Ok(report)
}

/// One killed worker incarnation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Incarnation {
    /// Its kill delay, ms after its first record.
    pub delay_ms: u64,
    /// Messages it handled.
    pub handled: u64,
    /// Of those, handled again by a later incarnation.
    pub handled_again: u64,
    /// [`CrashPlan::duplicate_bound`] for it.
    pub bound: u64,
}

/// Per killed incarnation (ledgers `worker-00` … in kill order; the final,
/// clean one is `worker-final` and sorts last): how much of what it handled
/// a later incarnation handled again.
fn account(
    plan: &CrashPlan,
    files: &[std::path::PathBuf],
    delays: &[u64],
) -> Result<Vec<Incarnation>, BoxError> {
    let ledgers = files
        .iter()
        .map(|f| ledger::read(std::slice::from_ref(f)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut later: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let mut accounts = Vec::new();
    for (i, ids) in ledgers.iter().enumerate().rev() {
        if i < delays.len() {
            let handled = ids.len() as u64;
            accounts.push(Incarnation {
                delay_ms: delays[i],
                handled,
                handled_again: ids.iter().filter(|id| later.contains(id)).count() as u64,
                bound: plan.duplicate_bound(handled, delays[i]),
            });
        }
        later.extend(ids.iter().copied());
    }
    accounts.reverse();
    if accounts.len() != delays.len() {
        return Err(format!(
            "{} ledgers for {} kills: {files:?}",
            accounts.len(),
            delays.len()
        )
        .into());
    }
    Ok(accounts)
}
