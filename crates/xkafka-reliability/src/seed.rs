//! Fault schedules drawn from a seed: printed first, replayed exactly with
//! `XKAFKA_FAULT_SEED=<seed>`.
//!
//! A [`Schedule`] is a list of [`Step`]s — which kind of fault, against
//! which target, when, for how long — drawn before the run starts, so the
//! same seed gives the same schedule whatever the run's timing does. The
//! targets are roles (the partition's leader, the coordinator), resolved to
//! a broker when the step is due.

use std::time::Duration;

/// The environment variable that replays a seed.
pub const ENV: &str = "XKAFKA_FAULT_SEED";

/// `XKAFKA_FAULT_SEED` if set, else `default`; printed (with how to replay
/// it) before anything else the scenario does. An unparsable value is an
/// error naming it, never a silent default.
pub fn seed(scenario: &str, default: u64) -> Result<u64, String> {
    let seed = match std::env::var(ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|e| format!("{ENV}={v:?} is not a seed (an unsigned integer): {e}"))?,
        Err(_) => default,
    };
    eprintln!("{scenario}: seed {seed} (replay: {ENV}={seed})");
    Ok(seed)
}

/// Whom a step's fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The leader of the scenario's partition 0.
    Leader,
    /// The group's coordinator, or the transaction coordinator under
    /// exactly-once.
    Coordinator,
    /// A broker leading neither (or any, when all lead something).
    Other,
}

/// What a step does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Cut from the clients, silently (half-open connections).
    FromClients,
    /// Cut from the clients with resets.
    FromClientsReset,
    /// Cut from the other brokers.
    FromPeers,
    /// Cut from everyone.
    Isolate,
    /// Its replies to the clients dropped.
    DropReplies,
    /// Its process paused (SIGSTOP … SIGCONT).
    Pause,
}

impl Kind {
    /// Every kind, in the order a seed draws from.
    pub const ALL: [Kind; 6] = [
        Kind::FromClients,
        Kind::FromClientsReset,
        Kind::FromPeers,
        Kind::Isolate,
        Kind::DropReplies,
        Kind::Pause,
    ];
}

/// One fault of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// How long after the previous step healed (or the start) it begins.
    pub after: Duration,
    /// What it does.
    pub kind: Kind,
    /// To whom.
    pub target: Target,
    /// How long it lasts.
    pub lasts: Duration,
}

/// The faults of one run, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The seed it was drawn from.
    pub seed: u64,
    /// Its steps.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// `steps` faults drawn from `seed`, from `kinds`, each lasting 3 to
    /// `max_lasts`, 1 to 4 s apart.
    pub fn draw(seed: u64, steps: usize, kinds: &[Kind], max_lasts: Duration) -> Schedule {
        let mut rng = fastrand::Rng::with_seed(seed);
        let kinds = if kinds.is_empty() {
            &Kind::ALL[..]
        } else {
            kinds
        };
        let max_ms = (max_lasts.as_millis() as u64).max(3_000);
        let steps = (0..steps)
            .map(|_| Step {
                after: Duration::from_millis(rng.u64(1_000..=4_000)),
                kind: kinds[rng.usize(..kinds.len())],
                target: [Target::Leader, Target::Coordinator, Target::Other][rng.usize(..3)],
                lasts: Duration::from_millis(rng.u64(3_000..=max_ms)),
            })
            .collect();
        Schedule { seed, steps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_the_same_schedule_and_another_seed_another() {
        let a = Schedule::draw(42, 5, &[], Duration::from_secs(8));
        assert_eq!(a, Schedule::draw(42, 5, &[], Duration::from_secs(8)));
        assert_ne!(
            a.steps,
            Schedule::draw(43, 5, &[], Duration::from_secs(8)).steps
        );
        for s in &a.steps {
            assert!(s.lasts >= Duration::from_secs(3) && s.lasts <= Duration::from_secs(8));
        }
    }

    #[test]
    fn only_the_kinds_asked_for_are_drawn() {
        let s = Schedule::draw(7, 20, &[Kind::Pause], Duration::from_secs(4));
        assert!(s.steps.iter().all(|s| s.kind == Kind::Pause));
    }
}
