//! The replay's membership of its group.

use crate::client::{runtime, Conn, Failure};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

/// Notes rebalances of the replay's membership of its group.
pub(super) struct HoldContext {
    assigned: AtomicBool,
    /// Partitions were taken back after the first assignment: another
    /// member joined.
    disturbed: AtomicBool,
}

impl ClientContext for HoldContext {}

impl ConsumerContext for HoldContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.assigned.load(AtomicOrdering::SeqCst) && !matches!(rebalance, Rebalance::Assign(_))
        {
            self.disturbed.store(true, AtomicOrdering::SeqCst);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // The holder only holds: the records are read by assignment.
            let _ = consumer.pause(tpl);
            if tpl.count() > 0 {
                self.assigned.store(true, AtomicOrdering::SeqCst);
            }
        }
    }
}

/// The replay's membership of its group, held for the whole replay: a
/// second replay of the same group sees a member and refuses to start (two
/// would republish the same dead letters). Commits go through it, with its
/// generation, so a replay that is no longer the group's only member
/// cannot commit either.
pub(super) struct Holder {
    pub(super) consumer: BaseConsumer<HoldContext>,
}

/// How long a killed replay stays a member of its group: the holder's
/// `session.timeout.ms`.
pub(super) const HOLD_SESSION: Duration = Duration::from_secs(6);

/// The members of `group` (none when it is empty or unknown).
pub(super) fn members(
    conn: &Conn,
    consumer: &StreamConsumer,
    group: &str,
) -> Result<Vec<String>, Failure> {
    let list = consumer
        .fetch_group_list(Some(group), conn.timeout)
        .map_err(|e| runtime(format!("describing group {group}: {e}")))?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| format!("{} on {}", m.client_id(), m.client_host()))
        .collect())
}

impl Holder {
    /// Joins `group` on `topic` as its only member, or refuses.
    pub(super) async fn join(
        conn: &Conn,
        reader: &StreamConsumer,
        group: &str,
        topic: &str,
        partitions: usize,
    ) -> Result<Holder, Failure> {
        let busy = |who: Vec<String>| {
            runtime(format!(
                "another replay (or consumer) is a member of group {group}: {}. Two replays of \
                 one group would republish the same dead letters; wait until it finishes, or \
                 pass another --group (a killed replay stops being a member within {})",
                who.join(", "),
                humantime::format_duration(HOLD_SESSION)
            ))
        };
        // A killed replay's membership outlives it by a session timeout.
        let patience = Instant::now() + HOLD_SESSION + Duration::from_secs(3);
        loop {
            let who = members(conn, reader, group)?;
            if who.is_empty() {
                break;
            }
            if Instant::now() >= patience {
                return Err(busy(who));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let session = HOLD_SESSION.as_millis().to_string();
        let consumer: BaseConsumer<HoldContext> = conn
            .config(
                &[
                    ("client.id", "xkafka-dlq-replay"),
                    ("session.timeout.ms", session.as_str()),
                    ("heartbeat.interval.ms", "2000"),
                    ("partition.assignment.strategy", "range"),
                ],
                &[
                    ("group.id", group),
                    ("enable.auto.commit", "false"),
                    ("enable.auto.offset.store", "false"),
                ],
            )
            .create_with_context(HoldContext {
                assigned: AtomicBool::new(false),
                disturbed: AtomicBool::new(false),
            })
            .map_err(|e| runtime(format!("cannot create the Kafka client: {e}")))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| runtime(format!("joining group {group}: {e}")))?;
        let holder = Holder { consumer };
        let deadline = Instant::now() + conn.timeout.max(Duration::from_secs(30));
        while !holder
            .consumer
            .context()
            .assigned
            .load(AtomicOrdering::SeqCst)
        {
            if Instant::now() >= deadline {
                return Err(runtime(format!(
                    "joining group {group}: no partitions of {topic} assigned within {}",
                    humantime::format_duration(conn.timeout.max(Duration::from_secs(30)))
                )));
            }
            holder.poll();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Two replays that started together both joined: both refuse.
        let who = members(conn, reader, group)?;
        let owned = holder.consumer.assignment().map_or(0, |a| a.count());
        if who.len() != 1 || owned != partitions || holder.disturbed() {
            return Err(busy(who));
        }
        Ok(holder)
    }

    /// Serves the group's events (a rebalance when someone joins).
    pub(super) fn poll(&self) {
        // Paused: no records come; rebalances are handled inside.
        let _ = self.consumer.poll(Duration::ZERO);
    }

    pub(super) fn disturbed(&self) -> bool {
        self.consumer
            .context()
            .disturbed
            .load(AtomicOrdering::SeqCst)
    }
}
