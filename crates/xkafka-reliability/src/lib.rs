//! xkafka's reliability suite: harnesses that kill things and count.
//!
//! - [`worker`]: the process under test — an xkafka consumer that records each
//!   message it handled, durably, before acknowledging it.
//! - [`crash`]: SIGKILLs a worker at seeded random moments while messages
//!   flow, restarts it, and checks the ledger against what the broker
//!   acknowledged: nothing lost (at-least-once modes), duplicates bounded.
//! - [`exactly_once`]: exactly-once consume-transform-produce under SIGKILL
//!   and a storm of transactional members, counted in the output topic
//!   with a `read_committed` reader; and its at-least-once twin, whose
//!   duplicates show that the count can fail.
//! - [`storm`]: three workers of one group, one killed or restarted every few
//!   seconds.
//! - [`soak`]: a slow worker flooded with messages, its resident memory
//!   sampled.
//! - [`control`]: the 3-broker Apache Kafka cluster's brokers killed, stopped
//!   and started (through `scripts/broker.sh`), with a guard that brings them
//!   back.
//! - [`netns`], [`netcluster`], [`faults`]: a private 3-broker cluster in
//!   network namespaces of its own, cut, half-opened and paused.
//! - [`seed`], [`history`]: fault schedules drawn from a seed (replayed with
//!   `XKAFKA_FAULT_SEED`), and the checker of what every client was told.
//! - [`scenario`], [`eos_scenario`], [`campaign`]: at-least-once and
//!   exactly-once runs on that cluster under a seed's faults, one seed or
//!   many (`xkafka-chaos faults --seeds N`).
//! - [`failover`]: the failover tests' consumer and verdict (lost, duplicated,
//!   out of order per key, against the log read back).
//!
//! The `xkafka-chaos` binary runs each of them from the command line (see
//! `RELIABILITY.md` at the repository root); the tests in `tests/` run short
//! versions against the suite's broker.

pub mod campaign;
pub mod cluster;
pub mod control;
pub mod crash;
pub mod eos_scenario;
pub mod exactly_once;
pub mod failover;
pub mod faults;
pub mod history;
pub mod ledger;
pub mod netcluster;
pub mod netns;
pub mod process;
pub mod scenario;
pub mod seed;
pub mod soak;
pub mod storm;
pub mod worker;
