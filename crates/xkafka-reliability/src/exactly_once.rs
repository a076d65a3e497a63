//! Exactly-once consume-transform-produce, proven by SIGKILL: a worker turns
//! each input message into one output message; it is killed at random
//! moments and restarted, or — in the storm — members of its group are
//! killed, leave and join; at the end a `read_committed` reader of the
//! output counts every input id: lost, duplicated.
//!
//! - [`crash`]: one worker ([`Mode::EosTransform`] or its at-least-once twin
//!   [`Mode::AloTransform`]) SIGKILLed `kills` times while messages flow,
//!   each restart with the same `transactional.id`, then drained.
//! - [`storm`]: transactional members (one stable `transactional.id` per
//!   member slot) killed, leaving and joining while the transform runs.
//!
//! The verdict is the output topic, not the workers' ledgers: there the
//! ledgers count handler *runs* (an input handled again after an aborted
//! transaction shows there, and must not show in the output). The output is
//! also read with `read_uncommitted`, which sees the aborted transactions'
//! records too: it shows what the `read_committed` reader was spared.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::message::Message as _;
use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use xkafka::BoxError;

use crate::cluster::{self, Feeder, Input};
use crate::ledger::{self, Tally};
use crate::process::{Worker, WorkerSpec};
use crate::worker::Mode;

/// One transform crash scenario.
#[derive(Clone, Debug)]
pub struct CrashPlan {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// [`Mode::EosTransform`] or [`Mode::AloTransform`].
    pub mode: Mode,
    /// SIGKILLs (each followed by a restart with the same
    /// `transactional.id`).
    pub kills: u32,
    /// Seeds the kill moments.
    pub seed: u64,
    /// Input messages published before the first worker starts.
    pub prefill: u64,
    /// Input messages per second published while the worker is being
    /// killed.
    pub rate: u64,
    /// Partitions of the input and of the output topic.
    pub partitions: i32,
    /// Simulated work per message, ms (before the output is published).
    pub work_ms: u64,
    /// The worker's in-flight bound (keep it above one poll round, 512
    /// messages: see `max_in_flight_per_partition`'s docs).
    pub max_in_flight: usize,
    /// [`Mode::EosTransform`]: a transaction ends once this many messages
    /// were dispatched in it, or 100 ms after its first (`None`: the
    /// library's default bound, 10,000). With a backlog the interval alone
    /// does not make transactions short: one ends at a barrier once every
    /// message dispatched in it finished, and a poll round dispatches up to
    /// 512 at once.
    pub transaction_max_messages: Option<usize>,
    /// The worker's `session.timeout.ms`: how long a restarted worker waits
    /// for the group to drop its killed predecessor.
    pub session_timeout_ms: u32,
    /// A kill lands this long (uniformly drawn) after the incarnation
    /// recorded its first handler run.
    pub kill_after: (Duration, Duration),
    /// The `xkafka-chaos` binary.
    pub exe: PathBuf,
    /// Base directory for ledgers and worker logs.
    pub dir: PathBuf,
}

impl CrashPlan {
    /// The suite's defaults: 20,000 inputs before the first worker and
    /// 100/s more during the kills, 6 partitions, 10 kills 50–1,500 ms
    /// after each incarnation's first handler run, in-flight bound 1,000,
    /// transactions of at most 100 messages (a transaction every ~0.2 s:
    /// most incarnations commit several before their kill, which lands
    /// anywhere in a transaction's life), `session.timeout.ms` 2,000.
    pub fn new(brokers: impl Into<String>, mode: Mode, exe: PathBuf, dir: PathBuf) -> Self {
        CrashPlan {
            brokers: brokers.into(),
            mode,
            kills: 10,
            seed: 1,
            prefill: 20_000,
            rate: 100,
            partitions: 6,
            work_ms: 1,
            max_in_flight: 1_000,
            transaction_max_messages: (mode == Mode::EosTransform).then_some(100),
            session_timeout_ms: 2_000,
            kill_after: (Duration::from_millis(50), Duration::from_millis(1_500)),
            exe,
            dir,
        }
    }
}

/// The output topic read back and counted against the acknowledged inputs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Verdict {
    /// Acknowledged input messages.
    pub inputs: u64,
    /// Input messages whose publish failed (not expected).
    pub publish_failed: u64,
    /// The output as a `read_committed` reader sees it: `lost` and
    /// `duplicated` are the exactly-once figures.
    pub output: Tally,
    /// The output with `read_uncommitted`: aborted transactions' records
    /// included.
    pub output_uncommitted: Tally,
    /// The workers' ledgers: handler runs per input (an input handled again
    /// after an abort or a kill counts in `duplicated`).
    pub handler_runs: Tally,
}

impl Verdict {
    async fn count(
        brokers: &str,
        output: &str,
        partitions: i32,
        dir: &Path,
        acked: &cluster::Acked,
    ) -> Result<Self, BoxError> {
        let committed = read_output_async(brokers, output, partitions, "read_committed").await?;
        let everything = read_output_async(brokers, output, partitions, "read_uncommitted").await?;
        Ok(Verdict {
            inputs: acked.ids.len() as u64,
            publish_failed: acked.failed,
            output: Tally::new(&acked.ids, &committed),
            output_uncommitted: Tally::new(&acked.ids, &everything),
            handler_runs: Tally::new(&acked.ids, &ledger::read(&ledger::files(dir)?)?),
        })
    }

    fn line(&self) -> String {
        format!(
            "inputs={} read_committed: output={} lost={} duplicated={} | read_uncommitted: \
             output={} duplicated={} | handler runs {} (inputs run again {})",
            self.inputs,
            self.output.handled,
            self.output.lost,
            self.output.duplicated,
            self.output_uncommitted.handled,
            self.output_uncommitted.duplicated,
            self.handler_runs.handled,
            self.handler_runs.duplicated,
        )
    }
}

/// What a transform crash scenario measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CrashReport {
    /// The scenario.
    pub mode: Mode,
    /// The seed of the kill moments.
    pub seed: u64,
    /// SIGKILLs delivered.
    pub kills: u32,
    /// The kill delays drawn from the seed, ms after the incarnation's first
    /// handler run.
    pub kill_delays_ms: Vec<u64>,
    /// Per killed incarnation: ms from its start to its kill.
    /// [`Mode::AloTransform`] commits automatically every
    /// [`ALO_TRANSFORM_COMMIT_INTERVAL`](crate::worker::ALO_TRANSFORM_COMMIT_INTERVAL)
    /// from its start, so an incarnation
    /// killed sooner committed nothing.
    pub lifetimes_ms: Vec<u64>,
    /// Per killed incarnation: what it handled, and how much of that a
    /// later one handled again.
    pub incarnations: Vec<Incarnation>,
    /// Whether the group's committed offsets reached the input's end
    /// offsets before the drain's time limit.
    pub drained: bool,
    /// Seconds the last worker took to drain.
    pub drain_seconds: f64,
    /// The output against the input.
    pub verdict: Verdict,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl CrashReport {
    /// One summary line.
    pub fn line(&self) -> String {
        format!(
            "transform crash {} seed={} kills={} {} | killed incarnations kept {} of {} handled \
             drain={:.1}s {:.0}s",
            self.mode.name(),
            self.seed,
            self.kills,
            self.verdict.line(),
            self.kept_by_killed(),
            self.incarnations.iter().map(|i| i.handled).sum::<u64>(),
            self.drain_seconds,
            self.seconds,
        )
    }

    /// What the killed incarnations handled that no later one handled
    /// again: in [`Mode::EosTransform`], what their committed transactions
    /// held.
    pub fn kept_by_killed(&self) -> u64 {
        self.incarnations.iter().map(Incarnation::kept).sum()
    }
}

/// One killed worker incarnation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Incarnation {
    /// Its kill delay, ms after its first handler run.
    pub delay_ms: u64,
    /// Ms from its start to its kill.
    pub lifetime_ms: u64,
    /// Inputs it handled (output published and acknowledged).
    pub handled: u64,
    /// Of those, handled again by a later incarnation: in
    /// [`Mode::EosTransform`] those of the transaction the kill left open
    /// (aborted); in [`Mode::AloTransform`] those not committed.
    pub handled_again: u64,
}

impl Incarnation {
    /// What it handled and no later incarnation handled again: in
    /// [`Mode::EosTransform`], its committed transactions.
    pub fn kept(&self) -> u64 {
        self.handled - self.handled_again
    }
}

/// Per killed incarnation (ledgers `worker-00` … in kill order; the final
/// one is `worker-final` and sorts last): how much of what it handled a
/// later incarnation handled again.
fn account(dir: &Path, delays: &[u64], lifetimes: &[u64]) -> Result<Vec<Incarnation>, BoxError> {
    let files = ledger::files(dir)?;
    let ledgers = files
        .iter()
        .map(|f| ledger::read(std::slice::from_ref(f)))
        .collect::<Result<Vec<_>, _>>()?;
    if ledgers.len() != delays.len() + 1 {
        return Err(format!(
            "{} ledgers for {} kills: {files:?}",
            ledgers.len(),
            delays.len()
        )
        .into());
    }
    let mut later: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let mut accounts = Vec::new();
    for (i, ids) in ledgers.iter().enumerate().rev() {
        if i < delays.len() {
            accounts.push(Incarnation {
                delay_ms: delays[i],
                lifetime_ms: lifetimes[i],
                handled: ids.len() as u64,
                handled_again: ids.iter().filter(|id| later.contains(id)).count() as u64,
            });
        }
        later.extend(ids.iter().copied());
    }
    accounts.reverse();
    Ok(accounts)
}

/// The input topic and its group share the run's name; the output topic is
/// `<name>-out`; the transactional id `<name>-<slot>`.
struct Stage {
    name: String,
    output: String,
    dir: PathBuf,
    spec: WorkerSpec,
    input: Input,
}

impl Stage {
    /// Topics, directory and input producer; the workers' settings are the
    /// caller's to fill in (`spec`).
    async fn new(
        brokers: &str,
        mode: Mode,
        prefix: &str,
        partitions: i32,
        base: &Path,
        exe: &Path,
    ) -> Result<Self, BoxError> {
        if !mode.is_transform() {
            return Err(format!("{mode} is not a transform mode").into());
        }
        let (name, dir) = cluster::prepare(brokers, prefix, partitions, base).await?;
        let output = format!("{name}-out");
        cluster::create_topic(brokers, &output, partitions).await?;
        let spec = WorkerSpec {
            exe: exe.to_owned(),
            brokers: brokers.to_owned(),
            topic: name.clone(),
            group: name.clone(),
            mode,
            work_ms: 1,
            session_timeout_ms: 2_000,
            max_in_flight: 1_000,
            max_in_flight_per_partition: None,
            dir: dir.clone(),
            configs: Vec::new(),
            output: Some(output.clone()),
            transaction_timeout_ms: None,
            transaction_max_messages: None,
        };
        let input = Input::new(brokers, &name)?;
        Ok(Stage {
            name,
            output,
            dir,
            spec,
            input,
        })
    }

    fn transactional_id(&self, slot: usize) -> Option<String> {
        (self.spec.mode == Mode::EosTransform).then(|| format!("{}-{slot}", self.name))
    }

    fn spawn(&self, name: &str, slot: usize, work_ms: u64) -> Result<Worker, BoxError> {
        self.spec
            .spawn_transactional(name, work_ms, self.transactional_id(slot).as_deref())
    }

    /// Waits until the group committed the input's end offsets, or `limit`.
    async fn drain(&self, partitions: i32, limit: Duration, tag: &str) -> Result<bool, BoxError> {
        let deadline = Instant::now() + limit;
        loop {
            let lag =
                cluster::lag_async(&self.spec.brokers, &self.name, &self.name, partitions).await?;
            if lag == 0 {
                return Ok(true);
            }
            if Instant::now() > deadline {
                eprintln!("{tag} drain gave up after {limit:?}: lag {lag}");
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Waits until `worker` recorded a handler run (its ledger grew past
/// `before` bytes, counted over `ledgers` and its own), or fails.
async fn first_record(
    worker: &mut Worker,
    mut ledgers: Vec<PathBuf>,
    before: u64,
    tag: &str,
) -> Result<(), BoxError> {
    ledgers.push(worker.ledger.clone());
    let deadline = Instant::now() + Duration::from_secs(90);
    while ledger::size(&ledgers) <= before {
        if let Some(status) = worker.exited()? {
            return Err(format!("{tag} {} exited by itself: {status}", worker.name).into());
        }
        if Instant::now() > deadline {
            return Err(format!("{tag} {} handled nothing within 90 s", worker.name).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Runs one transform crash scenario: prefill, then `kills` times start the
/// worker (same `transactional.id` each time), wait for its first handler
/// run, let it run a random while and SIGKILL it — with input flowing all
/// along; then a last worker drains the input (the group's committed
/// offsets reach the end offsets) and stops with SIGTERM, and the output is
/// read back and counted.
pub async fn crash(plan: &CrashPlan) -> Result<CrashReport, BoxError> {
    let started = Instant::now();
    let mut stage = Stage::new(
        &plan.brokers,
        plan.mode,
        plan.mode.name(),
        plan.partitions,
        &plan.dir,
        &plan.exe,
    )
    .await?;
    stage.spec.session_timeout_ms = plan.session_timeout_ms;
    stage.spec.work_ms = plan.work_ms;
    stage.spec.max_in_flight = plan.max_in_flight;
    stage.spec.transaction_max_messages = plan.transaction_max_messages;
    let tag = format!("[{}]", plan.mode.name());
    stage.input.publish(plan.prefill).await?;
    let feeder = Feeder::start(&stage.input, plan.rate);

    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let (lo, hi) = (
        plan.kill_after.0.as_millis() as u64,
        plan.kill_after.1.as_millis() as u64,
    );
    let (mut delays, mut lifetimes) = (Vec::new(), Vec::new());
    for kill in 0..plan.kills {
        let ledgers = ledger::files(&stage.dir)?;
        let before = ledger::size(&ledgers);
        let born = Instant::now();
        let mut worker = stage.spawn(&format!("worker-{kill:02}"), 0, plan.work_ms)?;
        first_record(&mut worker, ledgers, before, &tag).await?;
        let delay = rng.u64(lo..=hi);
        delays.push(delay);
        // The random moment of death: this sleep is the experiment, not a
        // synchronisation.
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if let Some(status) = worker.exited()? {
            return Err(format!("{tag} worker {kill} exited by itself: {status}").into());
        }
        worker.kill().await?;
        lifetimes.push(born.elapsed().as_millis() as u64);
        eprintln!(
            "{tag} kill {}/{} {delay} ms after its first handler run, {} ms after its start; \
             published {}, {:.0}s",
            kill + 1,
            plan.kills,
            lifetimes.last().copied().unwrap_or_default(),
            stage.input.published(),
            started.elapsed().as_secs_f64(),
        );
    }
    feeder.stop().await?;
    let acked = stage.input.finish().await;
    eprintln!(
        "{tag} input closed: {} acknowledged, {:.0}s; draining",
        acked.ids.len(),
        started.elapsed().as_secs_f64()
    );

    let drain_started = Instant::now();
    let last = stage.spawn("worker-final", 0, 0)?;
    let drained = stage
        .drain(plan.partitions, Duration::from_secs(180), &tag)
        .await?;
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    last.terminate(Duration::from_secs(30)).await?;
    eprintln!(
        "{tag} drained: {drained}, {drain_seconds:.1}s; reading the output back, {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let verdict = Verdict::count(
        &plan.brokers,
        &stage.output,
        plan.partitions,
        &stage.dir,
        &acked,
    )
    .await?;
    let report = CrashReport {
        mode: plan.mode,
        seed: plan.seed,
        kills: plan.kills,
        incarnations: account(&stage.dir, &delays, &lifetimes)?,
        kill_delays_ms: delays,
        lifetimes_ms: lifetimes,
        drained,
        drain_seconds,
        verdict,
        seconds: started.elapsed().as_secs_f64(),
    };
    eprintln!("{tag} {}", report.line());
    Ok(report)
}

/// A rebalance storm of transactional members.
#[derive(Clone, Debug)]
pub struct StormPlan {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Member slots, each with its own stable `transactional.id`: at most
    /// this many members at once.
    pub slots: usize,
    /// Members at the start.
    pub initial: usize,
    /// Partitions of the input and of the output topic.
    pub partitions: i32,
    /// Events (kills, leaves, joins): a number, not a duration, so that a
    /// seed gives the same storm however long each event takes.
    pub events: usize,
    /// Time between two events (uniformly drawn).
    pub every: (Duration, Duration),
    /// Input messages published before the storm.
    pub prefill: u64,
    /// Input messages per second during the storm.
    pub rate: u64,
    /// Seeds the events.
    pub seed: u64,
    /// Simulated work per message, ms.
    pub work_ms: u64,
    /// The members' in-flight bound (see [`CrashPlan::max_in_flight`]).
    pub max_in_flight: usize,
    /// Messages per transaction at most (see
    /// [`CrashPlan::transaction_max_messages`]).
    pub transaction_max_messages: Option<usize>,
    /// The members' `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// The members' `transaction.timeout.ms`: how soon the broker aborts
    /// the open transaction of a member killed for good (one whose slot
    /// no one restarts).
    pub transaction_timeout_ms: u32,
    /// The `xkafka-chaos` binary.
    pub exe: PathBuf,
    /// Base directory for ledgers and logs.
    pub dir: PathBuf,
}

impl StormPlan {
    /// The suite's storm: 4 slots, 2 members at the start, 12 partitions,
    /// 16 events 1–3 s apart, 3,000 inputs before and 250/s during the
    /// storm.
    pub fn new(brokers: impl Into<String>, exe: PathBuf, dir: PathBuf) -> Self {
        StormPlan {
            brokers: brokers.into(),
            slots: 4,
            initial: 2,
            partitions: 12,
            events: 16,
            every: (Duration::from_secs(1), Duration::from_secs(3)),
            prefill: 3_000,
            rate: 250,
            seed: 1,
            work_ms: 1,
            max_in_flight: 1_000,
            transaction_max_messages: Some(100),
            session_timeout_ms: 2_000,
            transaction_timeout_ms: 10_000,
            exe,
            dir,
        }
    }
}

/// One storm event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// A member SIGKILLed; its slot restarted at once (same
    /// `transactional.id`: the restart aborts what it left open).
    Killed,
    /// A member SIGKILLed and not restarted: the broker aborts its open
    /// transaction after `transaction.timeout.ms`; the slot may join later.
    KilledForGood,
    /// A member stopped with SIGTERM (it commits what finished and leaves).
    Left,
    /// A member started in an empty slot.
    Joined,
}

/// One event of a storm.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StormEvent {
    /// Seconds since the start of the run.
    pub at: f64,
    /// What happened.
    pub event: Event,
    /// To which member slot.
    pub slot: usize,
    /// Members after it.
    pub members: usize,
    /// Seconds the action took: for [`Event::Left`], from SIGTERM until the
    /// member exited.
    pub took: f64,
}

/// What a storm measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StormReport {
    /// Member slots.
    pub slots: usize,
    /// Partitions.
    pub partitions: i32,
    /// The events, in order.
    pub events: Vec<StormEvent>,
    /// Members started in all (initial ones, restarts and joins).
    pub members_started: u32,
    /// Partition assignments the members received (each rebalance gives
    /// every member that gets partitions one), counted in their logs.
    pub assignments: u32,
    /// Transactions the members aborted themselves (lost partitions,
    /// failures), counted in their logs; a killed member's open
    /// transaction is aborted by its successor or the broker, not counted
    /// here.
    pub aborts_logged: u32,
    /// Members stopped with SIGTERM whose consumer did not close within its
    /// shutdown timeout (their summary says `closed_cleanly: false`).
    pub unclean_stops: u32,
    /// Whether the group's committed offsets reached the input's end
    /// offsets before the drain's time limit.
    pub drained: bool,
    /// Seconds from the end of the storm until then.
    pub drain_seconds: f64,
    /// The output against the input.
    pub verdict: Verdict,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl StormReport {
    /// How many events of one kind.
    pub fn count(&self, kind: Event) -> usize {
        self.events.iter().filter(|e| e.event == kind).count()
    }

    /// The longest a member took to leave after SIGTERM, seconds.
    pub fn slowest_leave(&self) -> f64 {
        self.events
            .iter()
            .filter(|e| e.event == Event::Left)
            .map(|e| e.took)
            .fold(0.0, f64::max)
    }

    /// One summary line.
    pub fn line(&self) -> String {
        format!(
            "transactional storm slots={} partitions={} killed={} killed-for-good={} left={} \
             (slowest {:.1}s, unclean {}) joined={} members-started={} assignments={} \
             aborts-logged={} {} drain={:.1}s {:.0}s",
            self.slots,
            self.partitions,
            self.count(Event::Killed),
            self.count(Event::KilledForGood),
            self.count(Event::Left),
            self.slowest_leave(),
            self.unclean_stops,
            self.count(Event::Joined),
            self.members_started,
            self.assignments,
            self.aborts_logged,
            self.verdict.line(),
            self.drain_seconds,
            self.seconds,
        )
    }
}

/// Runs the storm: `initial` members transform the input while `events`
/// times, a few seconds apart (seeded), a member is killed and restarted (its slot's
/// `transactional.id` again), killed for good, leaves with SIGTERM, or a
/// member joins in an empty slot. Then the members drain the input, stop
/// with SIGTERM, and the output is read back and counted.
pub async fn storm(plan: &StormPlan) -> Result<StormReport, BoxError> {
    if plan.initial == 0 || plan.initial > plan.slots {
        return Err("a storm needs 1 ..= slots initial members".into());
    }
    let started = Instant::now();
    let mut stage = Stage::new(
        &plan.brokers,
        Mode::EosTransform,
        "eos-storm",
        plan.partitions,
        &plan.dir,
        &plan.exe,
    )
    .await?;
    stage.spec.session_timeout_ms = plan.session_timeout_ms;
    stage.spec.work_ms = plan.work_ms;
    stage.spec.max_in_flight = plan.max_in_flight;
    stage.spec.transaction_max_messages = plan.transaction_max_messages;
    stage.spec.transaction_timeout_ms = Some(plan.transaction_timeout_ms);
    let tag = "[eos-storm]";
    stage.input.publish(plan.prefill).await?;
    let feeder = Feeder::start(&stage.input, plan.rate);
    let mut started_members = 0u32;
    let mut spawn = |slot: usize| {
        started_members += 1;
        stage.spawn(&format!("s{slot}-{started_members:03}"), slot, plan.work_ms)
    };
    let mut members: Vec<Option<Worker>> = Vec::new();
    for slot in 0..plan.slots {
        members.push(if slot < plan.initial {
            Some(spawn(slot)?)
        } else {
            None
        });
    }
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let mut events = Vec::new();
    for _ in 0..plan.events {
        let wait = rng.u64(plan.every.0.as_millis() as u64..=plan.every.1.as_millis() as u64);
        // The storm's rhythm: the sleep is the experiment.
        tokio::time::sleep(Duration::from_millis(wait)).await;
        for member in members.iter_mut().flatten() {
            if let Some(status) = member.exited()? {
                return Err(format!("{tag} {} died by itself: {status}", member.name).into());
            }
        }
        let live: Vec<usize> = (0..plan.slots).filter(|&s| members[s].is_some()).collect();
        let empty: Vec<usize> = (0..plan.slots).filter(|&s| members[s].is_none()).collect();
        let roll = rng.f64();
        let event = if roll < 0.45 {
            Event::Killed
        } else if roll < 0.55 && live.len() > 1 {
            Event::KilledForGood
        } else if roll < 0.75 && live.len() > 1 {
            Event::Left
        } else if !empty.is_empty() {
            Event::Joined
        } else {
            Event::Killed
        };
        let slot = match event {
            Event::Joined => empty[rng.usize(..empty.len())],
            _ => live[rng.usize(..live.len())],
        };
        let at = started.elapsed().as_secs_f64();
        let action = Instant::now();
        match event {
            Event::Killed | Event::KilledForGood => {
                if let Some(victim) = members[slot].take() {
                    victim.kill().await?;
                }
                if event == Event::Killed {
                    members[slot] = Some(spawn(slot)?);
                }
            }
            Event::Left => {
                if let Some(member) = members[slot].take() {
                    member.terminate(Duration::from_secs(30)).await?;
                }
            }
            Event::Joined => members[slot] = Some(spawn(slot)?),
        }
        let took = action.elapsed().as_secs_f64();
        let now = members.iter().flatten().count();
        events.push(StormEvent {
            at,
            event,
            slot,
            members: now,
            took,
        });
        eprintln!(
            "{tag} {event:?} slot {slot} ({took:.1}s): {now} members; published {}, {:.0}s",
            stage.input.published(),
            started.elapsed().as_secs_f64()
        );
    }
    feeder.stop().await?;
    let acked = stage.input.finish().await;
    let storm_over = Instant::now();
    eprintln!(
        "{tag} storm over: {} acknowledged; draining",
        acked.ids.len()
    );
    let drained = stage
        .drain(plan.partitions, Duration::from_secs(120), tag)
        .await?;
    let drain_seconds = storm_over.elapsed().as_secs_f64();
    for member in members.into_iter().flatten() {
        member.terminate(Duration::from_secs(30)).await?;
    }
    let verdict = Verdict::count(
        &plan.brokers,
        &stage.output,
        plan.partitions,
        &stage.dir,
        &acked,
    )
    .await?;
    let assignments = count_in_logs(&stage.dir, &["partitions assigned"])?;
    let aborts_logged = count_in_logs(
        &stage.dir,
        &["transaction aborted", "the transaction was aborted"],
    )?;
    let unclean_stops = count_in_logs(&stage.dir, &["closed_cleanly: false"])?;
    let report = StormReport {
        slots: plan.slots,
        partitions: plan.partitions,
        events,
        members_started: started_members,
        assignments,
        aborts_logged,
        unclean_stops,
        drained,
        drain_seconds,
        verdict,
        seconds: started.elapsed().as_secs_f64(),
    };
    eprintln!("{tag} {}", report.line());
    Ok(report)
}

/// Lines containing one of `needles` in the run's worker logs.
fn count_in_logs(dir: &Path, needles: &[&str]) -> Result<u32, BoxError> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read(&path)?;
            n += String::from_utf8_lossy(&text)
                .lines()
                .filter(|l| needles.iter().any(|n| l.contains(n)))
                .count() as u32;
        }
    }
    Ok(n)
}

/// [`read_output`] on a blocking thread.
pub async fn read_output_async(
    brokers: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
) -> Result<Vec<u64>, BoxError> {
    let (b, t, i) = (brokers.to_owned(), topic.to_owned(), isolation.to_owned());
    tokio::task::spawn_blocking(move || read_output(&b, &t, partitions, &i)).await?
}

/// The ids in `topic`'s values, read from the start of each partition up to
/// its high watermark now, with `isolation.level` `isolation`
/// (`read_committed` skips aborted transactions' records). Done once each
/// partition's position reached the high watermark: transaction markers
/// and skipped records move it too. Fails when a partition does not get
/// there within 60 s (a transaction still open holds `read_committed`
/// readers back). Blocking: call it from `spawn_blocking`.
pub fn read_output(
    brokers: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
) -> Result<Vec<u64>, BoxError> {
    // The high watermarks, from a client that does not stop at the last
    // stable offset (a read_committed client's would).
    let ends: Vec<i64> = {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("isolation.level", "read_uncommitted")
            .create()?;
        (0..partitions)
            .map(|p| {
                Ok(client
                    .fetch_watermarks(topic, p, Duration::from_secs(15))?
                    .1)
            })
            .collect::<Result<_, BoxError>>()?
    };
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", cluster::unique("read-output"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", isolation)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    client.assign(&tpl)?;
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let position = client.position()?;
        let at = |p: i32| match position.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        if (0..partitions).all(|p| ends[p as usize] == 0 || at(p) >= ends[p as usize]) {
            return Ok(ids);
        }
        if Instant::now() > deadline {
            let at: Vec<i64> = (0..partitions).map(at).collect();
            return Err(format!(
                "{topic} ({isolation}): at {at:?} of {ends:?} after 60 s (a transaction left open?)"
            )
            .into());
        }
        let Some(message) = client.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let id = std::str::from_utf8(message.payload().unwrap_or_default())
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                format!(
                    "{topic}[{}]@{}: not an id",
                    message.partition(),
                    message.offset()
                )
            })?;
        ids.push(id);
    }
}
