//! `xkafka groups list|describe|delete` (reset-offsets: `reset.rs`).
//!
//! rdkafka 0.39 lists and describes groups with the classic ListGroups and
//! DescribeGroups requests (`fetch_group_list`). A KIP-848 (`consumer`
//! protocol) group is listed, but the broker does not describe it with the
//! classic request: it answers that it is not a classic group, so its
//! members are not known here (librdkafka's DescribeConsumerGroups is not
//! wrapped by rdkafka 0.39, and this crate uses no `unsafe`).

use rdkafka::consumer::Consumer as _;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::groups::GroupInfo;
use serde_json::{json, Value};

use crate::cli::{Format, GroupArg, Groups};
use crate::client::{admin, bounded, runtime, say, Conn, Failure};
use crate::render::table;

/// Runs one `groups` command.
pub(crate) async fn groups(
    conn: &Conn,
    global: &crate::cli::Global,
    command: &Groups,
) -> Result<(), Failure> {
    match command {
        Groups::List => list(conn, global.format),
        Groups::Describe(args) => describe(conn, global.format, args),
        Groups::ResetOffsets(args) => crate::reset::reset(conn, global.format, args).await,
        Groups::Delete(args) => delete(conn, global.format, args).await,
    }
}

/// What the CLI knows of a group.
pub(crate) struct Group {
    /// The group id.
    pub(crate) name: String,
    /// Stable, Empty, PreparingRebalance, … (`unknown` for a KIP-848 group).
    pub(crate) state: String,
    /// `classic`, or `consumer` (KIP-848).
    pub(crate) protocol: &'static str,
    /// The partition assignor (classic groups).
    pub(crate) assignor: String,
    /// Its members (unknown, so empty, for a KIP-848 group).
    pub(crate) members: Vec<Member>,
}

/// A member of a classic group.
pub(crate) struct Member {
    /// The member id the coordinator gave it.
    pub(crate) id: String,
    /// Its `client.id`.
    pub(crate) client_id: String,
    /// The host it connected from.
    pub(crate) host: String,
    /// Its partitions, by topic.
    pub(crate) assignment: Vec<(String, Vec<i32>)>,
}

impl Group {
    fn of(info: &GroupInfo) -> Group {
        // Described as Dead with no protocol type although listed: the
        // broker's answer for a group that is not classic.
        let kip848 = info.state() == "Dead" && info.protocol_type().is_empty();
        Group {
            name: info.name().to_owned(),
            state: if kip848 {
                "unknown".to_owned()
            } else {
                info.state().to_owned()
            },
            protocol: if kip848 { "consumer" } else { "classic" },
            assignor: info.protocol().to_owned(),
            members: info
                .members()
                .iter()
                .map(|m| Member {
                    id: m.id().to_owned(),
                    client_id: m.client_id().to_owned(),
                    host: m.client_host().to_owned(),
                    assignment: m.assignment().map(assignment).unwrap_or_default(),
                })
                .collect(),
        }
    }

    fn json(&self) -> Value {
        let members: Vec<Value> = self
            .members
            .iter()
            .map(|m| {
                let assignment: Vec<Value> = m
                    .assignment
                    .iter()
                    .map(|(t, ps)| json!({"topic": t, "partitions": ps}))
                    .collect();
                json!({
                    "member_id": m.id,
                    "client_id": m.client_id,
                    "host": m.host,
                    "assignment": assignment,
                })
            })
            .collect();
        json!({
            "group": self.name,
            "state": self.state,
            "protocol": self.protocol,
            "assignor": self.assignor,
            "members": members,
        })
    }
}

/// Decodes a classic consumer protocol assignment (version, then an array
/// of topic and partitions); empty when it is not one.
fn assignment(bytes: &[u8]) -> Vec<(String, Vec<i32>)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Some(head)
    }
    fn i16_(b: &mut &[u8]) -> Option<i16> {
        take(b, 2).map(|x| i16::from_be_bytes([x[0], x[1]]))
    }
    fn i32_(b: &mut &[u8]) -> Option<i32> {
        take(b, 4).map(|x| i32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    }
    fn decode(mut b: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
        let b = &mut b;
        i16_(b)?;
        let topics = i32_(b)?;
        let mut out = Vec::new();
        for _ in 0..topics.max(0) {
            let len = usize::try_from(i16_(b)?).ok()?;
            let topic = String::from_utf8_lossy(take(b, len)?).into_owned();
            let count = i32_(b)?;
            let mut ps = Vec::new();
            for _ in 0..count.max(0) {
                ps.push(i32_(b)?);
            }
            ps.sort_unstable();
            out.push((topic, ps));
        }
        out.sort();
        Some(out)
    }
    decode(bytes).unwrap_or_default()
}

/// Every group, or only `group` (`None`: the group does not exist).
pub(crate) fn fetch(conn: &Conn, group: Option<&str>) -> Result<Vec<Group>, Failure> {
    let consumer = conn.consumer(None)?;
    let list = consumer
        .fetch_group_list(group, conn.timeout)
        .map_err(|e| conn.unreachable(format!("listing consumer groups: {e}")))?;
    let mut groups: Vec<Group> = list
        .groups()
        .iter()
        .filter(|g| group.is_none_or(|name| g.name() == name))
        .map(Group::of)
        .collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(groups)
}

/// The group, or a failure saying it does not exist.
pub(crate) fn one(conn: &Conn, group: &str) -> Result<Group, Failure> {
    if group.trim().is_empty() {
        return Err(Failure::Usage("the group id is empty".into()));
    }
    fetch(conn, Some(group))?
        .into_iter()
        .next()
        .ok_or_else(|| runtime(format!("group {group} does not exist")))
}

/// `groups list`.
fn list(conn: &Conn, format: Format) -> Result<(), Failure> {
    let groups = fetch(conn, None)?;
    match format {
        Format::Json => {
            let all: Vec<Value> = groups
                .iter()
                .map(|g| {
                    json!({
                        "group": g.name,
                        "state": g.state,
                        "protocol": g.protocol,
                        "assignor": g.assignor,
                        "members": g.members.len(),
                    })
                })
                .collect();
            say(&json!({ "groups": all }).to_string())
        }
        Format::Text => {
            let cells: Vec<Vec<String>> = groups
                .iter()
                .map(|g| {
                    let members = if g.protocol == "consumer" {
                        "?".to_owned()
                    } else {
                        g.members.len().to_string()
                    };
                    vec![
                        g.name.clone(),
                        g.state.clone(),
                        g.protocol.to_owned(),
                        members,
                    ]
                })
                .collect();
            say(&table(&["GROUP", "STATE", "PROTOCOL", "MEMBERS"], &cells))
        }
    }
}

/// `groups describe`.
fn describe(conn: &Conn, format: Format, args: &GroupArg) -> Result<(), Failure> {
    let group = one(conn, &args.group)?;
    let rows = crate::lag::offsets(conn, &group.name, None)?;
    match format {
        Format::Json => {
            let mut out = group.json();
            let partitions: Vec<Value> = rows.iter().map(crate::lag::Row::json).collect();
            out["offsets"] = Value::Array(partitions);
            out["total_lag"] = json!(rows.iter().map(|r| r.lag).sum::<i64>());
            say(&out.to_string())
        }
        Format::Text => {
            let mut out = format!(
                "group {}: {}, protocol {}{}, {} members\n",
                group.name,
                group.state,
                group.protocol,
                if group.assignor.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", group.assignor)
                },
                if group.protocol == "consumer" {
                    "unknown number of".to_owned()
                } else {
                    group.members.len().to_string()
                }
            );
            if !group.members.is_empty() {
                let cells: Vec<Vec<String>> = group
                    .members
                    .iter()
                    .map(|m| {
                        let assigned: Vec<String> = m
                            .assignment
                            .iter()
                            .map(|(t, ps)| {
                                let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
                                format!("{t}[{}]", ps.join(","))
                            })
                            .collect();
                        vec![
                            m.client_id.clone(),
                            m.host.clone(),
                            assigned.join(" "),
                            m.id.clone(),
                        ]
                    })
                    .collect();
                out.push_str(&table(
                    &["CLIENT-ID", "HOST", "ASSIGNMENT", "MEMBER-ID"],
                    &cells,
                ));
                out.push('\n');
            }
            if rows.is_empty() {
                out.push_str("no committed offsets");
            } else {
                out.push_str(&crate::lag::text(&rows));
            }
            say(&out)
        }
    }
}

/// `groups delete`: the broker refuses while the group has members.
async fn delete(conn: &Conn, format: Format, args: &GroupArg) -> Result<(), Failure> {
    let group = &args.group;
    if group.trim().is_empty() {
        return Err(Failure::Usage("the group id is empty".into()));
    }
    let (admin, options) = admin(conn)?;
    let results = bounded(
        conn,
        &format!("deleting group {group}"),
        admin.delete_groups(&[group.as_str()], &options),
    )
    .await?;
    for result in results {
        if let Err((_, code)) = result {
            return Err(runtime(match code {
                RDKafkaErrorCode::NonEmptyGroup => {
                    format!("group {group} has members: stop its consumers first")
                }
                RDKafkaErrorCode::GroupIdNotFound => format!("group {group} does not exist"),
                other => format!("cannot delete group {group}: {other}"),
            }));
        }
    }
    match format {
        Format::Json => say(&json!({ "deleted": group }).to_string()),
        Format::Text => say(&format!("deleted group {group}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_decode() {
        let mut b = vec![0, 1, 0, 0, 0, 1, 0, 1, b't'];
        b.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 1]);
        b.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(assignment(&b), vec![("t".to_owned(), vec![1, 3])]);
        assert!(assignment(&[0, 1, 0]).is_empty());
    }
}
