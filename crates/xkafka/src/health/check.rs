//! The thresholds and the judgement: a [`ConsumerStatus`] in, a [`Health`]
//! out, each problem with a reason a person can act on.

use std::fmt;
use std::time::Duration;

use crate::consumer::{ConsumerStatus, GroupState, PauseReason};
use crate::Error;

/// The longest threshold accepted: past a day, a "threshold" is a typo.
const MAX_THRESHOLD: Duration = Duration::from_secs(24 * 3600);

/// Thresholds past which a consumer is unhealthy; build one with
/// [`HealthCheck::builder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    poll_stalled: Duration,
    handler_stuck: Duration,
    not_stable: Duration,
    commit_stuck: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            poll_stalled: Duration::from_secs(60),
            handler_stuck: Duration::from_secs(300),
            not_stable: Duration::from_secs(120),
            commit_stuck: Duration::from_secs(600),
        }
    }
}

/// Builds a [`HealthCheck`]; every threshold must be more than zero and at
/// most a day.
#[derive(Clone, Debug, Default)]
#[must_use = "call .build()"]
pub struct HealthCheckBuilder {
    check: HealthCheck,
}

impl HealthCheckBuilder {
    /// Unhealthy when the poll thread has made no progress (polled, or
    /// settled finished messages) for this long (default 60 s). Keep it
    /// above the longest thing the poll thread waits for on purpose: a
    /// revocation's grace, a transaction's commit.
    pub fn poll_stalled_after(mut self, threshold: Duration) -> Self {
        self.check.poll_stalled = threshold;
        self
    }

    /// Unhealthy when a partition's oldest unfinished message has held its
    /// offset this long (default 5 min): a stuck handler.
    pub fn handler_stuck_after(mut self, threshold: Duration) -> Self {
        self.check.handler_stuck = threshold;
        self
    }

    /// Unhealthy when the consumer has been joining or rebalancing this
    /// long (default 2 min): a rebalance loop, or a group it cannot join.
    pub fn not_stable_after(mut self, threshold: Duration) -> Self {
        self.check.not_stable = threshold;
        self
    }

    /// Unhealthy when a partition's committed offset has not moved for
    /// this long (default 10 min) while the consumer has work on it that
    /// does not get done: a message in flight (failing or hung), messages
    /// finished whose commit does not go through, or records it has not
    /// read and is not reading (its fetching stuck). A partition with
    /// nothing left to read is not stuck, however long ago it committed —
    /// on a transactional input the committed offset stays one below the
    /// high watermark for good (the last offset is the transaction's
    /// marker) — and neither is one waiting on purpose: held back until
    /// its next message is due ([`PauseReason::NotDue`]), or draining
    /// while it is revoked. Keep it above `auto.commit.interval.ms` and
    /// the transaction interval (commits come no more often). With
    /// `read_committed`, a transaction left open on the input for longer
    /// than this counts as records not read (librdkafka does not say where
    /// the last stable offset is).
    pub fn commit_stuck_after(mut self, threshold: Duration) -> Self {
        self.check.commit_stuck = threshold;
        self
    }

    /// Checks the thresholds.
    pub fn build(self) -> Result<HealthCheck, Error> {
        let c = self.check;
        for (name, value) in [
            ("poll_stalled_after", c.poll_stalled),
            ("handler_stuck_after", c.handler_stuck),
            ("not_stable_after", c.not_stable),
            ("commit_stuck_after", c.commit_stuck),
        ] {
            if value.is_zero() || value > MAX_THRESHOLD {
                return Err(Error::InvalidThreshold {
                    name,
                    value,
                    reason: "a health threshold must be more than zero and at most a day",
                });
            }
        }
        Ok(c)
    }
}

/// Why a consumer is unhealthy; its `Display` says what to look at.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    /// The poll thread has made no progress for `for_secs`.
    PollStalled {
        /// Seconds since it last made progress.
        for_secs: u64,
    },
    /// A partition's oldest unfinished message has held it too long.
    HandlerStuck {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The message's offset.
        offset: i64,
        /// Seconds it has held the partition.
        for_secs: u64,
    },
    /// Not stable in the group for too long.
    NotStable {
        /// Joining or rebalancing.
        state: GroupState,
        /// Seconds in that state.
        for_secs: u64,
    },
    /// A partition's committed offset has not moved while the consumer
    /// has work on it that does not get done.
    CommitStuck {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The committed offset (none yet: `None`).
        committed: Option<i64>,
        /// The message holding it, when the consumer has it in flight.
        held_by: Option<i64>,
        /// Messages waiting behind it (lag), when known.
        waiting: Option<i64>,
        /// Finished up to here (the offset to commit), when that is past
        /// the committed offset: the commit does not go through.
        finished_to: Option<i64>,
        /// Records not read yet, when the consumer is not reading them:
        /// its fetching is stuck.
        unread: Option<i64>,
        /// Seconds the committed offset has not moved.
        for_secs: u64,
    },
    /// A fatal client error, or a panic, stopped (or is stopping) it.
    Fatal {
        /// The error.
        error: String,
    },
    /// `run` returned: nothing consumes any more.
    Stopped,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::PollStalled { for_secs } => write!(
                f,
                "the poll thread has made no progress for {for_secs} s: something blocks it \
                 (a blocking call in a handler that runs on it, a callback, the error handler)"
            ),
            Problem::HandlerStuck {
                topic,
                partition,
                offset,
                for_secs,
            } => write!(
                f,
                "{topic}[{partition}]: the message at offset {offset} has not finished for \
                 {for_secs} s: its handler is stuck or very slow"
            ),
            Problem::NotStable { state, for_secs } => write!(
                f,
                "the consumer has been {} for {for_secs} s: a rebalance loop, or a group it \
                 cannot join (check the brokers, session and poll timeouts)",
                match state {
                    GroupState::Joining => "joining its group",
                    _ => "rebalancing",
                }
            ),
            Problem::CommitStuck {
                topic,
                partition,
                committed,
                held_by,
                waiting,
                finished_to,
                unread,
                for_secs,
            } => {
                write!(f, "{topic}[{partition}]: the committed offset (")?;
                match committed {
                    Some(c) => write!(f, "{c}")?,
                    None => f.write_str("none yet")?,
                }
                write!(f, ") has not moved for {for_secs} s")?;
                if let Some(w) = waiting {
                    write!(f, " while {w} message(s) wait")?;
                }
                match (held_by, finished_to, unread) {
                    (Some(o), _, _) => {
                        write!(f, "; the message at offset {o} holds it (failing or hung)")
                    }
                    (None, Some(s), _) => write!(
                        f,
                        "; messages up to offset {s} finished but their commit does not go \
                         through"
                    ),
                    (None, None, Some(n)) => write!(
                        f,
                        "; {n} record(s) are not being read (the partition stays paused, or \
                         its fetching is stuck)"
                    ),
                    (None, None, None) => Ok(()),
                }
            }
            Problem::Fatal { error } => write!(f, "fatal error: {error}"),
            Problem::Stopped => f.write_str("the consumer stopped: nothing consumes any more"),
        }
    }
}

/// A verdict on a [`ConsumerStatus`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Alive: no problem (what a liveness probe asks). Each problem is a
    /// state a restart can cure; a consumer with nothing to do, or waiting
    /// on purpose, is live however long it waits.
    pub live: bool,
    /// Ready: running and stable in its group, no fatal error (what a
    /// readiness probe asks). A member with an empty assignment (more
    /// members than partitions) is ready.
    pub ready: bool,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl HealthCheck {
    /// Thresholds, starting from the defaults.
    pub fn builder() -> HealthCheckBuilder {
        HealthCheckBuilder::default()
    }

    /// Judges `status`.
    pub fn check(&self, status: &ConsumerStatus) -> Health {
        let secs = |d: Duration| d.as_secs();
        let mut problems = Vec::new();
        if let Some(error) = &status.fatal_error {
            problems.push(Problem::Fatal {
                error: error.clone(),
            });
        }
        let running = matches!(
            status.state,
            GroupState::Joining | GroupState::Stable | GroupState::Rebalancing
        );
        if status.state == GroupState::Stopped {
            problems.push(Problem::Stopped);
        }
        if running {
            if let Some(ago) = status.last_poll_ago.filter(|a| *a >= self.poll_stalled) {
                problems.push(Problem::PollStalled {
                    for_secs: secs(ago),
                });
            }
            if status.state != GroupState::Stable && status.state_for >= self.not_stable {
                problems.push(Problem::NotStable {
                    state: status.state,
                    for_secs: secs(status.state_for),
                });
            }
            for p in &status.partitions {
                if let Some(u) = p
                    .oldest_unfinished
                    .filter(|u| p.in_flight > 0 && u.held_for >= self.handler_stuck)
                {
                    problems.push(Problem::HandlerStuck {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        offset: u.offset,
                        for_secs: secs(u.held_for),
                    });
                }
                if p.committed_unchanged_for < self.commit_stuck {
                    continue;
                }
                // Judged against what the consumer read and finished, not
                // the high watermark: a marker ends a transactional log,
                // and a partition held back on purpose has lag.
                let held_by = p
                    .oldest_unfinished
                    .filter(|_| p.in_flight > 0)
                    .map(|u| u.offset);
                let finished_to = p.stored.filter(|s| p.committed.is_none_or(|c| *s > c));
                let on_purpose =
                    matches!(p.paused, Some(PauseReason::NotDue | PauseReason::Closing));
                let unread = p.fetchable.filter(|f| *f > 0 && !on_purpose);
                if p.in_flight > 0 || finished_to.is_some() || unread.is_some() {
                    problems.push(Problem::CommitStuck {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        committed: p.committed,
                        held_by,
                        waiting: p.lag.filter(|l| *l > 0),
                        finished_to,
                        unread,
                        for_secs: secs(p.committed_unchanged_for),
                    });
                }
            }
        }
        Health {
            live: problems.is_empty(),
            ready: status.state == GroupState::Stable && status.fatal_error.is_none(),
            problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::{Counters, PartitionStatus, Unfinished};

    fn status(state: GroupState, state_for: Duration) -> ConsumerStatus {
        ConsumerStatus {
            group: "g".into(),
            member_id: None,
            state,
            state_for,
            protocol: "classic".into(),
            partitions: Vec::new(),
            last_poll_ago: Some(Duration::from_millis(5)),
            partitions_age: Duration::from_millis(50),
            counters: Counters::default(),
            fatal_error: None,
            taken_at: std::time::SystemTime::now(),
        }
    }

    fn partition(
        in_flight: usize,
        held: Option<(i64, u64)>,
        lag: i64,
        unchanged: u64,
    ) -> PartitionStatus {
        PartitionStatus {
            topic: "orders".into(),
            partition: 2,
            position: Some(100),
            stored: Some(40),
            committed: Some(40),
            high_watermark: Some(40 + lag),
            lag: Some(lag),
            fetchable: Some((40 + lag - 100).max(0)),
            in_flight,
            paused: None,
            oldest_unfinished: held.map(|(offset, secs)| Unfinished {
                offset,
                held_for: Duration::from_secs(secs),
            }),
            last_handled_ago: None,
            committed_unchanged_for: Duration::from_secs(unchanged),
        }
    }

    #[test]
    fn a_stable_consumer_with_nothing_held_is_live_and_ready() {
        let mut s = status(GroupState::Stable, Duration::from_secs(3600));
        s.partitions.push(partition(0, None, 0, 7200));
        let h = HealthCheck::default().check(&s);
        assert!(h.live && h.ready, "{h:?}");
    }

    #[test]
    fn each_threshold_names_what_crossed_it() {
        let check = HealthCheck::builder()
            .poll_stalled_after(Duration::from_secs(10))
            .handler_stuck_after(Duration::from_secs(30))
            .commit_stuck_after(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut s = status(GroupState::Stable, Duration::from_secs(5));
        s.last_poll_ago = Some(Duration::from_secs(11));
        s.partitions.push(partition(3, Some((40, 31)), 500, 61));
        let h = check.check(&s);
        assert!(!h.live && h.ready);
        let text: Vec<String> = h.problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].contains("no progress for 11 s"), "{text:?}");
        assert!(
            text[1].contains("orders[2]")
                && text[1].contains("offset 40 has not finished for 31 s"),
            "{text:?}"
        );
        assert!(
            text[2]
                .contains("committed offset (40) has not moved for 61 s while 500 message(s) wait")
                && text[2].contains("offset 40 holds it"),
            "{text:?}"
        );
        // Just under every threshold: nothing.
        s.last_poll_ago = Some(Duration::from_secs(9));
        s.partitions = vec![partition(3, Some((40, 29)), 500, 59)];
        assert!(check.check(&s).live);
    }

    /// A partition that has read everything, finished everything and
    /// committed it: `committed` one below the high watermark (the
    /// transaction marker ending the log), nothing in flight.
    fn read_to_the_end() -> PartitionStatus {
        PartitionStatus {
            position: Some(13),
            stored: Some(12),
            committed: Some(12),
            high_watermark: Some(13),
            lag: Some(1),
            fetchable: Some(0),
            ..partition(0, None, 1, 7200)
        }
    }

    fn commit_stuck(check: &HealthCheck, p: PartitionStatus) -> Vec<String> {
        let mut s = status(GroupState::Stable, Duration::from_secs(3600));
        s.partitions.push(p);
        let h = check.check(&s);
        assert_eq!(h.live, h.problems.is_empty());
        h.problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_partition_with_nothing_left_to_do_is_never_commit_stuck() {
        let check = HealthCheck::default();
        // A transactional input read to its end: lag 1 for good.
        assert_eq!(commit_stuck(&check, read_to_the_end()), [] as [String; 0]);
        // Held back until its next message is due: lag, position behind.
        let waiting = PartitionStatus {
            position: Some(12),
            high_watermark: Some(20),
            lag: Some(8),
            fetchable: Some(8),
            paused: Some(PauseReason::NotDue),
            ..read_to_the_end()
        };
        assert_eq!(commit_stuck(&check, waiting.clone()), [] as [String; 0]);
        // Draining while revoked: bounded by the revocation's grace.
        let closing = PartitionStatus {
            paused: Some(PauseReason::Closing),
            ..waiting.clone()
        };
        assert_eq!(commit_stuck(&check, closing), [] as [String; 0]);
        // Not paused on purpose, and not reading: its fetching is stuck.
        for paused in [None, Some(PauseReason::Backpressure)] {
            let text = commit_stuck(
                &check,
                PartitionStatus {
                    paused,
                    ..waiting.clone()
                },
            );
            assert_eq!(
                text,
                [
                    "orders[2]: the committed offset (12) has not moved for 7200 s while 8 \
                  message(s) wait; 8 record(s) are not being read (the partition stays paused, \
                  or its fetching is stuck)"
                ],
                "{paused:?}"
            );
        }
    }

    #[test]
    fn finished_messages_whose_commit_does_not_go_through_are_commit_stuck() {
        let check = HealthCheck::default();
        let failing = PartitionStatus {
            stored: Some(13),
            ..read_to_the_end()
        };
        assert_eq!(
            commit_stuck(&check, failing.clone()),
            [
                "orders[2]: the committed offset (12) has not moved for 7200 s while 1 message(s) \
              wait; messages up to offset 13 finished but their commit does not go through"
            ]
        );
        let never = PartitionStatus {
            committed: None,
            lag: None,
            ..failing.clone()
        };
        assert!(commit_stuck(&check, never)[0].contains("(none yet)"));
        let recent = PartitionStatus {
            committed_unchanged_for: Duration::from_secs(599),
            ..failing
        };
        assert_eq!(commit_stuck(&check, recent), [] as [String; 0]);
    }

    #[test]
    fn a_group_that_never_settles_is_unhealthy_and_not_ready() {
        let check = HealthCheck::builder()
            .not_stable_after(Duration::from_secs(60))
            .build()
            .unwrap();
        for state in [GroupState::Joining, GroupState::Rebalancing] {
            let h = check.check(&status(state, Duration::from_secs(61)));
            assert!(!h.live && !h.ready);
            assert_eq!(
                h.problems,
                [Problem::NotStable {
                    state,
                    for_secs: 61
                }]
            );
            assert!(check.check(&status(state, Duration::from_secs(59))).live);
        }
    }

    #[test]
    fn stopped_and_fatal_consumers_are_not_live() {
        let h = HealthCheck::default().check(&status(GroupState::Stopped, Duration::ZERO));
        assert_eq!(h.problems, [Problem::Stopped]);
        let stopping = HealthCheck::default().check(&status(GroupState::Stopping, Duration::ZERO));
        assert!(
            stopping.live && !stopping.ready,
            "stopping is bounded: {stopping:?}"
        );
        let mut s = status(GroupState::Stable, Duration::ZERO);
        s.fatal_error = Some("fenced".into());
        let h = HealthCheck::default().check(&s);
        assert!(!h.live && !h.ready);
        assert_eq!(h.problems[0].to_string(), "fatal error: fenced");
    }

    #[test]
    fn zero_and_absurd_thresholds_are_refused() {
        for builder in [
            HealthCheck::builder().poll_stalled_after(Duration::ZERO),
            HealthCheck::builder().handler_stuck_after(Duration::from_secs(100_000)),
            HealthCheck::builder().not_stable_after(Duration::ZERO),
            HealthCheck::builder().commit_stuck_after(Duration::MAX),
        ] {
            let err = builder.build().unwrap_err();
            assert!(matches!(err, Error::InvalidThreshold { .. }), "{err}");
        }
    }
}
