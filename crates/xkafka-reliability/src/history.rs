//! What every client was told during a faulted run, and the rules it must
//! keep, checked afterwards.
//!
//! A [`History`] holds the acknowledged publishes (with their offsets), the
//! input log read back, the messages handlers saw in the order they saw
//! them, committed offsets sampled while the run went on, and — under
//! exactly-once — the outputs an independent `read_committed` reader saw.
//! [`check`] lists every [`Violation`]; an empty list is a kept promise.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// A publish the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The message's id (its value).
    pub id: u64,
    /// Where it landed.
    pub partition: i32,
    /// Its offset, as the acknowledgement said.
    pub offset: i64,
}

/// One record, in the log or as handled or as an output: the input's id and
/// its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// Its key.
    pub key: String,
    /// The input id it carries.
    pub id: u64,
}

/// One sample of a group's committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The partition.
    pub partition: i32,
    /// The committed offset (the next to read).
    pub offset: i64,
}

/// The promise the run is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promise {
    /// Each acknowledged input's output exactly once, in per-key order.
    ExactlyOnce,
    /// Each acknowledged input handled at least once, with at most `bound`
    /// extra handlings in all.
    AtLeastOnce {
        /// Duplicated handlings the mode allows for the faults injected.
        bound: u64,
    },
}

/// Everything recorded during one run.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Acknowledged publishes.
    pub acked: Vec<Acked>,
    /// The input topic read back after the run, in partition and offset order.
    pub log: Vec<Record>,
    /// What handlers were given, in the order each was given it (one
    /// sequence for all: per-key order needs only the relative order of one
    /// key's messages, which one handler sees).
    pub handled: Vec<Record>,
    /// Committed offsets, in the order they were sampled.
    pub commits: Vec<Commit>,
    /// Exactly-once: the outputs read with `read_committed`, in partition
    /// and offset order (`id` = the input the output came from).
    pub outputs: Vec<Record>,
}

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged publish is not in the log, or not where its
    /// acknowledgement said.
    Lost {
        /// The id.
        id: u64,
        /// Where the acknowledgement said it was.
        partition: i32,
        /// Its acknowledged offset.
        offset: i64,
    },
    /// An id is in the log more than once (the idempotent producer
    /// promises once).
    LoggedTwice {
        /// The id.
        id: u64,
    },
    /// One key's ids out of publish order in the log.
    LogOrder {
        /// The key.
        key: String,
        /// The id before, larger.
        before: u64,
        /// The id after, smaller.
        after: u64,
    },
    /// A handler got one key's id after a later one, the first time it saw it
    /// (a replay of ids already handled is a duplicate, not a reorder).
    HandlingOrder {
        /// The key.
        key: String,
        /// The id already handled, larger.
        before: u64,
        /// The id handled after it for the first time.
        after: u64,
    },
    /// An acknowledged input was never handled (at-least-once) or has no
    /// output (exactly-once).
    NeverHandled {
        /// The id.
        id: u64,
    },
    /// More duplicated handlings than the promise allows.
    TooManyDuplicates {
        /// Extra handlings.
        duplicated: u64,
        /// The bound.
        bound: u64,
    },
    /// An input's output seen more than once by the `read_committed` reader.
    OutputTwice {
        /// The input id.
        id: u64,
        /// How many times.
        times: u64,
    },
    /// One key's outputs out of input order.
    OutputOrder {
        /// The key.
        key: String,
        /// The id before, larger.
        before: u64,
        /// The id after, smaller.
        after: u64,
    },
    /// A committed offset moved back.
    CommitBack {
        /// The partition.
        partition: i32,
        /// The offset committed before.
        from: i64,
        /// The smaller one after it.
        to: i64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Figures of a checked history, and what broke.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Acknowledged publishes.
    pub acked: u64,
    /// Handlings (or outputs, under exactly-once) in all.
    pub handled: u64,
    /// Handlings beyond the first of each id (outputs, under exactly-once).
    pub duplicated: u64,
    /// Committed offsets sampled.
    pub commits: u64,
    /// The broken rules (the first 200; `broken` counts them all).
    pub violations: Vec<Violation>,
    /// How many rules broke, in all.
    pub broken: u64,
}

impl Verdict {
    /// No rule broke.
    pub fn kept(&self) -> bool {
        self.broken == 0
    }

    fn add(&mut self, v: Violation) {
        self.broken += 1;
        if self.violations.len() < 200 {
            self.violations.push(v);
        }
    }
}

/// Per key, a sequence of ids must rise: the violations of `records`' order,
/// skipping ids seen before when `replays_allowed` (a replay re-handles
/// what was handled; it does not reorder).
fn order(records: &[Record], replays_allowed: bool, mut broken: impl FnMut(String, u64, u64)) {
    let mut highest: HashMap<&str, u64> = HashMap::new();
    let mut seen: HashSet<u64> = HashSet::new();
    for r in records {
        let first = seen.insert(r.id);
        if replays_allowed && !first {
            continue;
        }
        match highest.get(r.key.as_str()) {
            Some(&h) if h > r.id => broken(r.key.clone(), h, r.id),
            _ => {
                highest.insert(&r.key, r.id);
            }
        }
    }
}

/// Checks `history` against every rule and `promise`.
pub fn check(history: &History, promise: Promise) -> Verdict {
    let mut verdict = Verdict {
        acked: history.acked.len() as u64,
        commits: history.commits.len() as u64,
        ..Verdict::default()
    };

    // The log: every acknowledged publish where it was acknowledged; no id
    // twice; per key in publish (id) order.
    let at: HashMap<(i32, i64), u64> = history
        .log
        .iter()
        .map(|r| ((r.partition, r.offset), r.id))
        .collect();
    for a in &history.acked {
        if at.get(&(a.partition, a.offset)) != Some(&a.id) {
            verdict.add(Violation::Lost {
                id: a.id,
                partition: a.partition,
                offset: a.offset,
            });
        }
    }
    let mut logged = HashSet::new();
    for r in &history.log {
        if !logged.insert(r.id) {
            verdict.add(Violation::LoggedTwice { id: r.id });
        }
    }
    let mut log_order = Vec::new();
    order(&history.log, false, |key, before, after| {
        log_order.push(Violation::LogOrder { key, before, after })
    });
    for v in log_order {
        verdict.add(v);
    }

    // Handling: per key in order (replays aside).
    let mut handling_order = Vec::new();
    order(&history.handled, true, |key, before, after| {
        handling_order.push(Violation::HandlingOrder { key, before, after })
    });
    for v in handling_order {
        verdict.add(v);
    }

    // Committed offsets never move back.
    let mut last: HashMap<i32, i64> = HashMap::new();
    for c in &history.commits {
        if let Some(&from) = last.get(&c.partition) {
            if c.offset < from {
                verdict.add(Violation::CommitBack {
                    partition: c.partition,
                    from,
                    to: c.offset,
                });
            }
        }
        last.insert(c.partition, c.offset);
    }

    // Every acknowledged input handled (or output), duplicates counted.
    let counted = match promise {
        Promise::ExactlyOnce => &history.outputs,
        Promise::AtLeastOnce { .. } => &history.handled,
    };
    let mut times: HashMap<u64, u64> = HashMap::new();
    for r in counted {
        *times.entry(r.id).or_default() += 1;
    }
    verdict.handled = counted.len() as u64;
    verdict.duplicated = times.values().map(|t| t - 1).sum();
    let mut missing: Vec<u64> = history
        .acked
        .iter()
        .map(|a| a.id)
        .filter(|id| !times.contains_key(id))
        .collect();
    missing.sort_unstable();
    for id in missing {
        verdict.add(Violation::NeverHandled { id });
    }
    match promise {
        Promise::ExactlyOnce => {
            let mut twice: Vec<(u64, u64)> = times
                .iter()
                .filter(|(_, t)| **t > 1)
                .map(|(i, t)| (*i, *t))
                .collect();
            twice.sort_unstable();
            for (id, times) in twice {
                verdict.add(Violation::OutputTwice { id, times });
            }
            let mut output_order = Vec::new();
            order(&history.outputs, false, |key, before, after| {
                output_order.push(Violation::OutputOrder { key, before, after })
            });
            for v in output_order {
                verdict.add(v);
            }
        }
        Promise::AtLeastOnce { bound } => {
            if verdict.duplicated > bound {
                verdict.add(Violation::TooManyDuplicates {
                    duplicated: verdict.duplicated,
                    bound,
                });
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: i32, offset: i64, key: &str, id: u64) -> Record {
        Record {
            partition,
            offset,
            key: key.into(),
            id,
        }
    }

    /// Four inputs, two keys on two partitions, handled once each in order,
    /// output once each, commits rising: every rule kept.
    fn good() -> History {
        let log = vec![
            rec(0, 0, "a", 0),
            rec(0, 1, "a", 2),
            rec(1, 0, "b", 1),
            rec(1, 1, "b", 3),
        ];
        History {
            acked: log
                .iter()
                .map(|r| Acked {
                    id: r.id,
                    partition: r.partition,
                    offset: r.offset,
                })
                .collect(),
            handled: vec![
                rec(0, 0, "a", 0),
                rec(1, 0, "b", 1),
                rec(0, 1, "a", 2),
                rec(1, 1, "b", 3),
            ],
            outputs: vec![
                rec(0, 0, "a", 0),
                rec(0, 2, "a", 2),
                rec(1, 0, "b", 1),
                rec(1, 1, "b", 3),
            ],
            commits: vec![
                Commit {
                    partition: 0,
                    offset: 1,
                },
                Commit {
                    partition: 1,
                    offset: 2,
                },
                Commit {
                    partition: 0,
                    offset: 2,
                },
            ],
            log,
        }
    }

    fn broken(h: &History, promise: Promise) -> Vec<Violation> {
        check(h, promise).violations
    }

    #[test]
    fn a_good_history_keeps_every_promise() {
        assert!(check(&good(), Promise::ExactlyOnce).kept());
        let v = check(&good(), Promise::AtLeastOnce { bound: 0 });
        assert!(v.kept(), "{:?}", v.violations);
        assert_eq!((v.acked, v.handled, v.duplicated), (4, 4, 0));
    }

    #[test]
    fn an_acked_publish_missing_from_the_log_is_lost() {
        let mut h = good();
        h.log.retain(|r| r.id != 2);
        assert!(broken(&h, Promise::ExactlyOnce).contains(&Violation::Lost {
            id: 2,
            partition: 0,
            offset: 1
        }));
        // Present, but not at the acknowledged offset: lost too.
        let mut h = good();
        h.acked[1].offset = 7;
        assert!(broken(&h, Promise::ExactlyOnce).contains(&Violation::Lost {
            id: 2,
            partition: 0,
            offset: 7
        }));
    }

    #[test]
    fn an_id_logged_twice_or_reordered_in_the_log_breaks() {
        let mut h = good();
        h.log.push(rec(0, 2, "a", 2));
        assert!(broken(&h, Promise::ExactlyOnce).contains(&Violation::LoggedTwice { id: 2 }));
        let mut h = good();
        h.log.swap(0, 1);
        assert!(
            broken(&h, Promise::ExactlyOnce).contains(&Violation::LogOrder {
                key: "a".into(),
                before: 2,
                after: 0
            })
        );
    }

    #[test]
    fn handling_out_of_key_order_breaks_but_a_replay_does_not() {
        let mut h = good();
        h.handled.swap(0, 2);
        assert!(broken(&h, Promise::AtLeastOnce { bound: 10 }).contains(
            &Violation::HandlingOrder {
                key: "a".into(),
                before: 2,
                after: 0
            }
        ));
        // A replay of 0 and 2 after 2: duplicates, not a reorder.
        let mut h = good();
        h.handled.push(rec(0, 0, "a", 0));
        h.handled.push(rec(0, 1, "a", 2));
        let v = check(&h, Promise::AtLeastOnce { bound: 2 });
        assert!(v.kept(), "{:?}", v.violations);
        assert_eq!(v.duplicated, 2);
    }

    #[test]
    fn duplicates_over_the_bound_break() {
        let mut h = good();
        h.handled.push(rec(1, 1, "b", 3));
        h.handled.push(rec(1, 1, "b", 3));
        assert!(broken(&h, Promise::AtLeastOnce { bound: 1 }).contains(
            &Violation::TooManyDuplicates {
                duplicated: 2,
                bound: 1
            }
        ));
        assert!(check(&h, Promise::AtLeastOnce { bound: 2 }).kept());
    }

    #[test]
    fn an_unhandled_input_breaks_both_promises() {
        let mut h = good();
        h.handled.retain(|r| r.id != 1);
        assert!(broken(&h, Promise::AtLeastOnce { bound: 9 })
            .contains(&Violation::NeverHandled { id: 1 }));
        let mut h = good();
        h.outputs.retain(|r| r.id != 1);
        assert!(broken(&h, Promise::ExactlyOnce).contains(&Violation::NeverHandled { id: 1 }));
    }

    #[test]
    fn an_output_twice_or_out_of_order_breaks_exactly_once() {
        let mut h = good();
        h.outputs.push(rec(1, 2, "b", 3));
        assert!(
            broken(&h, Promise::ExactlyOnce).contains(&Violation::OutputTwice { id: 3, times: 2 })
        );
        let mut h = good();
        h.outputs.swap(0, 1);
        assert!(
            broken(&h, Promise::ExactlyOnce).contains(&Violation::OutputOrder {
                key: "a".into(),
                before: 2,
                after: 0
            })
        );
    }

    #[test]
    fn a_commit_moving_back_breaks() {
        let mut h = good();
        h.commits.push(Commit {
            partition: 0,
            offset: 1,
        });
        assert!(
            broken(&h, Promise::ExactlyOnce).contains(&Violation::CommitBack {
                partition: 0,
                from: 2,
                to: 1
            })
        );
    }
}
