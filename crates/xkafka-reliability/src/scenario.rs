//! A seeded at-least-once scenario on the private cluster: an idempotent
//! producer (5 requests in flight) and a per-key consumer group run while a
//! [`Schedule`] of faults hits the partition leader, the group coordinator
//! or another broker; afterwards the [`History`] — acknowledged publishes
//! with offsets, the log read back, handling order, every commit the
//! coordinators wrote — is checked.

use std::time::{Duration, Instant};

use xkafka::BoxError;

use crate::cluster::{self, Feeder, Input};
use crate::failover::{self, Consuming};
use crate::faults::{Cut, Fault, Faults};
use crate::history::{self, Acked, Commit, History, Promise, Record, Verdict};
use crate::netcluster::NetCluster;
use crate::netns::Net;
use crate::seed::{Kind, Schedule, Target};

/// Input messages per second.
pub const RATE: u64 = 200;
/// The topic's partitions.
const PARTITIONS: i32 = 3;
/// The consumer's `session.timeout.ms`.
const SESSION_TIMEOUT_MS: u64 = 6_000;

/// What one seeded run did and how it was judged.
#[derive(Debug)]
pub struct Outcome {
    /// The schedule run.
    pub schedule: Schedule,
    /// The faults, as applied (their targets resolved).
    pub applied: Vec<String>,
    /// The checked history's figures and violations.
    pub verdict: Verdict,
    /// The duplicate bound it was checked against.
    pub bound: u64,
    /// Seconds from the last heal until the consumer had handled every
    /// acknowledged publish.
    pub recovery_s: f64,
}

impl Outcome {
    /// One line for a report.
    pub fn line(&self) -> String {
        format!(
            "seed {}: {} acked, {} handled, duplicated {} (bound {}), {} rules broken, \
             recovered {:.1} s after the last heal; faults: {}",
            self.schedule.seed,
            self.verdict.acked,
            self.verdict.handled,
            self.verdict.duplicated,
            self.bound,
            self.verdict.broken,
            self.recovery_s,
            self.applied.join("; ")
        )
    }
}

/// The broker a step's target is now.
fn resolve(cluster: &NetCluster, topic: &str, group: &str, target: Target) -> Result<u8, BoxError> {
    let leader = tokio::task::block_in_place(|| cluster.leader(topic, 0))?;
    let coordinator =
        tokio::task::block_in_place(|| cluster.coordinator("__consumer_offsets", group))?;
    Ok(match target {
        Target::Leader => leader.unwrap_or(1),
        Target::Coordinator => coordinator.unwrap_or(1),
        Target::Other => (1..=3u8)
            .find(|b| Some(*b) != leader && Some(*b) != coordinator)
            .unwrap_or(3),
    })
}

/// The fault a step of `kind` lays on `broker`.
pub(crate) fn fault(kind: Kind, broker: u8, cluster: &NetCluster) -> Result<Fault, BoxError> {
    Ok(match kind {
        Kind::FromClients => Fault::FromClients(broker, Cut::Silent),
        Kind::FromClientsReset => Fault::FromClients(broker, Cut::Reset),
        Kind::FromPeers => Fault::FromPeers(broker, Cut::Silent),
        Kind::Isolate => Fault::Isolate(broker, Cut::Silent),
        Kind::DropReplies => Fault::DropReplies(broker),
        Kind::Pause => Fault::Pause {
            name: format!("broker {broker}"),
            pid: cluster.pid(broker).ok_or("no such broker")?,
        },
    })
}

/// Runs `schedule` against a fresh topic and group on `cluster`. Call it
/// from a multi-threaded runtime on the clients' side of `net`.
pub async fn at_least_once(
    net: &Net,
    cluster: &NetCluster,
    schedule: Schedule,
) -> Result<Outcome, BoxError> {
    let brokers = cluster.bootstrap.clone();
    let topic = cluster::unique(&format!("nf-alo-s{}", schedule.seed));
    cluster::create_topic(&brokers, &topic, PARTITIONS).await?;
    let input = Input::with_config(
        &brokers,
        &topic,
        &[
            ("max.in.flight.requests.per.connection", "5"),
            // Long enough to ride out every fault of a schedule: a
            // publish is either acknowledged or reported failed, never
            // dropped in silence.
            ("message.timeout.ms", "120000"),
        ],
    )?;
    let session = SESSION_TIMEOUT_MS.to_string();
    let consuming = Consuming::start(
        &brokers,
        &topic,
        &topic,
        &[
            ("session.timeout.ms", session.as_str()),
            ("heartbeat.interval.ms", "2000"),
        ],
    )?;
    let feeder = Feeder::start(&input, RATE);
    consuming
        .wait("the first message", Duration::from_secs(60), |c| {
            c.count() > 0
        })
        .await?;

    let mut faults = Faults::new(net)?;
    let mut applied = Vec::new();
    let mut faulted = Duration::ZERO;
    for step in &schedule.steps {
        // The schedule's own timing, drawn from the seed: not a wait for
        // an event.
        tokio::time::sleep(step.after).await;
        let broker = resolve(cluster, &topic, &topic, step.target)?;
        let f = fault(step.kind, broker, cluster)?;
        applied.push(format!("{f} for {:.1} s", step.lasts.as_secs_f64()));
        let id = faults.apply(f)?;
        tokio::time::sleep(step.lasts).await;
        faults.heal(id)?;
        faulted += step.lasts;
    }
    drop(faults);
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    feeder.stop().await?;
    settle(&input, Duration::from_secs(90)).await;
    let acked_ids = input.finish().await;
    let acks = input.acks();
    if acked_ids.failed > 0 {
        eprintln!(
            "{} publishes reported failed (not counted as acknowledged): {:?}",
            acked_ids.failed,
            input.failures().into_iter().take(3).collect::<Vec<_>>()
        );
    }
    let finished = consuming
        .finish(&acked_ids, Duration::from_secs(120))
        .await?;
    let recovery_s = healed.elapsed().as_secs_f64();
    let log = failover::read_log(&brokers, &topic, PARTITIONS).await?;
    let (b, g, t) = (brokers.clone(), topic.clone(), topic.clone());
    let commits =
        tokio::task::spawn_blocking(move || failover::commit_history(&b, &g, &t)).await??;

    let history = History {
        handled: finished
            .handled
            .iter()
            .map(|h| Record {
                partition: h.partition,
                offset: -1,
                key: h.key.clone(),
                id: h.id,
            })
            .collect(),
        commits: commits
            .iter()
            .map(|c| Commit {
                partition: c.partition,
                offset: c.offset,
            })
            .collect(),
        outputs: Vec::new(),
        ..input_history(&acks, &log)
    };
    let bound = duplicate_bound(&schedule, faulted);
    let verdict = history::check(&history, Promise::AtLeastOnce { bound });
    Ok(Outcome {
        schedule,
        applied,
        verdict,
        bound,
        recovery_s,
    })
}

/// The duplicates at-least-once allows here: what was handled but not yet
/// committed can be handled again after a rebalance or a lost commit —
/// per fault, the input of its duration plus one session timeout and one
/// commit interval (5 s) — the whole input rate, as if every partition
/// were replayed.
pub fn duplicate_bound(schedule: &Schedule, faulted: Duration) -> u64 {
    let per_fault_ms = SESSION_TIMEOUT_MS + 5_000;
    let window_ms = faulted.as_millis() as u64 + per_fault_ms * schedule.steps.len() as u64;
    window_ms * RATE / 1000
}

/// Waits until every publish so far was acknowledged or reported failed,
/// or `timeout`: closing the producer earlier would purge what a healed
/// fault still holds in flight, and count it failed for nothing.
pub async fn settle(input: &Input, timeout: Duration) {
    let started = Instant::now();
    while (input.acked() + input.failures().len()) < input.published() as usize
        && started.elapsed() < timeout
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The part of a [`History`] every scenario has: the acknowledged publishes
/// and the input log read back.
pub(crate) fn input_history(acks: &[cluster::Ack], log: &[cluster::Logged]) -> History {
    History {
        acked: acks
            .iter()
            .map(|a| Acked {
                id: a.id,
                partition: a.partition,
                offset: a.offset,
            })
            .collect(),
        log: log
            .iter()
            .map(|l| Record {
                partition: l.partition,
                offset: l.offset,
                key: l.key.clone(),
                id: l.id,
            })
            .collect(),
        ..History::default()
    }
}
