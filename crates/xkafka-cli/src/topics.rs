//! `xkafka topics list|describe|create|delete|alter-config|add-partitions`.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;

use rdkafka::admin::{
    AlterConfig, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::consumer::Consumer as _;
use rdkafka::error::RDKafkaErrorCode;
use serde_json::{json, Value};

use crate::cli::{
    Format, Global, TopicAddPartitionsArgs, TopicAlterArgs, TopicArg, TopicCreateArgs,
    TopicDeleteArgs, Topics, TopicsListArgs,
};
use crate::client::{admin, bounded, partitions, runtime, say, watermarks, Conn, Failure};
use crate::render::table;

/// Runs one `topics` command.
pub(crate) async fn topics(conn: &Conn, global: &Global, command: &Topics) -> Result<(), Failure> {
    match command {
        Topics::List(args) => list(conn, global.format, args),
        Topics::Describe(args) => describe(conn, global.format, args).await,
        Topics::Create(args) => create(conn, global.format, args).await,
        Topics::Delete(args) => delete(conn, global.format, args).await,
        Topics::AlterConfig(args) => alter_config(conn, global.format, args).await,
        Topics::AddPartitions(args) => add_partitions(conn, global.format, args).await,
    }
}

/// Whether a topic is Kafka's own (`__consumer_offsets`, …).
fn internal(name: &str) -> bool {
    name.starts_with("__")
}

/// `topics list`.
fn list(conn: &Conn, format: Format, args: &TopicsListArgs) -> Result<(), Failure> {
    let consumer = conn.consumer(None)?;
    let metadata = consumer
        .fetch_metadata(None, conn.timeout)
        .map_err(|e| conn.unreachable(e))?;
    let mut rows: Vec<(String, usize, usize, bool)> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && (args.all || !internal(t.name())))
        .map(|t| {
            let replication = t.partitions().first().map_or(0, |p| p.replicas().len());
            (
                t.name().to_owned(),
                t.partitions().len(),
                replication,
                internal(t.name()),
            )
        })
        .collect();
    rows.sort();
    match format {
        Format::Json => {
            let topics: Vec<Value> = rows
                .iter()
                .map(|(name, partitions, replication, internal)| {
                    json!({
                        "name": name,
                        "partitions": partitions,
                        "replication_factor": replication,
                        "internal": internal,
                    })
                })
                .collect();
            say(&json!({ "topics": topics }).to_string())
        }
        Format::Text => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|(n, p, r, _)| vec![n.clone(), p.to_string(), r.to_string()])
                .collect();
            say(&table(&["TOPIC", "PARTITIONS", "REPLICATION"], &cells))
        }
    }
}

/// The topic's configs set on the topic itself (what differs from the
/// broker's defaults), sensitive values redacted.
async fn topic_configs(conn: &Conn, topic: &str) -> Result<BTreeMap<String, String>, Failure> {
    let (admin, options) = admin(conn)?;
    let results = bounded(
        conn,
        &format!("describing the configs of topic {topic}"),
        admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options),
    )
    .await?;
    let mut out = BTreeMap::new();
    for result in results {
        let resource = result.map_err(|code| refused("describing the configs of", topic, code))?;
        for entry in resource.entries {
            if entry.source == ConfigSource::DynamicTopic {
                let value = if entry.is_sensitive {
                    "<redacted>".to_owned()
                } else {
                    entry.value.unwrap_or_default()
                };
                out.insert(entry.name, value);
            }
        }
    }
    Ok(out)
}

/// The broker's refusal, naming the topic.
fn refused(what: &str, topic: &str, code: RDKafkaErrorCode) -> Failure {
    match code {
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
            crate::client::missing_topic(topic)
        }
        other => runtime(format!("{what} topic {topic}: {other}")),
    }
}

/// `topics describe`.
async fn describe(conn: &Conn, format: Format, args: &TopicArg) -> Result<(), Failure> {
    let topic = &args.topic;
    let consumer = conn.consumer(None)?;
    let ids = partitions(conn, &consumer, topic)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), conn.timeout)
        .map_err(|e| conn.unreachable(e))?;
    let marks = watermarks(conn, &consumer, topic, &ids)?;
    let configs = topic_configs(conn, topic).await?;
    let mut parts: Vec<Value> = Vec::new();
    if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
        let mut ps: Vec<_> = t.partitions().iter().collect();
        ps.sort_by_key(|p| p.id());
        for p in ps {
            let (start, end) = marks.get(&p.id()).copied().unwrap_or((-1, -1));
            parts.push(json!({
                "partition": p.id(),
                "leader": p.leader(),
                "replicas": p.replicas(),
                "isr": p.isr(),
                "start_offset": start,
                "end_offset": end,
            }));
        }
    }
    match format {
        Format::Json => say(&json!({
            "topic": topic,
            "partitions": parts,
            "configs": configs,
        })
        .to_string()),
        Format::Text => {
            let ids = |v: &Value| {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            };
            let cells: Vec<Vec<String>> = parts
                .iter()
                .map(|p| {
                    vec![
                        p["partition"].to_string(),
                        p["leader"].to_string(),
                        ids(&p["replicas"]),
                        ids(&p["isr"]),
                        p["start_offset"].to_string(),
                        p["end_offset"].to_string(),
                    ]
                })
                .collect();
            let mut out = format!("topic {topic}: {} partitions\n", parts.len());
            out.push_str(&table(
                &["PARTITION", "LEADER", "REPLICAS", "ISR", "START", "END"],
                &cells,
            ));
            if configs.is_empty() {
                out.push_str("\nconfigs: broker defaults");
            } else {
                out.push_str("\nconfigs (not the broker's defaults):");
                for (k, v) in &configs {
                    out.push_str(&format!("\n  {k}={v}"));
                }
            }
            say(&out)
        }
    }
}

/// `topics create`.
async fn create(conn: &Conn, format: Format, args: &TopicCreateArgs) -> Result<(), Failure> {
    let topic = &args.topic;
    if topic.trim().is_empty() {
        return Err(Failure::Usage("the topic name is empty".into()));
    }
    let (admin, options) = admin(conn)?;
    let mut new = NewTopic::new(
        topic,
        args.partitions.unwrap_or(-1),
        TopicReplication::Fixed(args.replication_factor.unwrap_or(-1)),
    );
    for (k, v) in &args.configs {
        new = new.set(k, v);
    }
    let results = bounded(
        conn,
        &format!("creating topic {topic}"),
        admin.create_topics([&new], &options),
    )
    .await?;
    for result in results {
        if let Err((_, code)) = result {
            return Err(match code {
                RDKafkaErrorCode::TopicAlreadyExists => {
                    runtime(format!("topic {topic} already exists"))
                }
                other => runtime(format!("cannot create topic {topic}: {other}")),
            });
        }
    }
    // What the broker made of the defaults.
    let consumer = conn.consumer(None)?;
    let count = partitions(conn, &consumer, topic)?.len();
    match format {
        Format::Json => say(&json!({"created": topic, "partitions": count}).to_string()),
        Format::Text => say(&format!("created topic {topic} ({count} partitions)")),
    }
}

/// Asks on the terminal; refuses without one.
fn confirm(question: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(format!(
            "{question}: pass --yes (standard input is not a terminal to ask on)"
        )));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| runtime(format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// `topics delete`.
async fn delete(conn: &Conn, format: Format, args: &TopicDeleteArgs) -> Result<(), Failure> {
    let topic = &args.topic;
    {
        let consumer = conn.consumer(None)?;
        partitions(conn, &consumer, topic)?;
    }
    if !args.yes && !confirm(&format!("delete topic {topic} and all its records?"))? {
        return Err(runtime(format!("topic {topic} not deleted")));
    }
    let (admin, options) = admin(conn)?;
    let results = bounded(
        conn,
        &format!("deleting topic {topic}"),
        admin.delete_topics(&[topic.as_str()], &options),
    )
    .await?;
    for result in results {
        if let Err((_, code)) = result {
            return Err(refused("cannot delete", topic, code));
        }
    }
    match format {
        Format::Json => say(&json!({ "deleted": topic }).to_string()),
        Format::Text => say(&format!("deleted topic {topic}")),
    }
}

/// `topics alter-config`. rdkafka 0.39 has only the (non-incremental)
/// AlterConfigs request, which replaces every config set on the topic: the
/// current ones are read first and sent back with the changes.
async fn alter_config(conn: &Conn, format: Format, args: &TopicAlterArgs) -> Result<(), Failure> {
    let topic = &args.topic;
    if args.set.is_empty() && args.delete.is_empty() {
        return Err(Failure::Usage(
            "nothing to change: pass --set K=V or --delete K".into(),
        ));
    }
    {
        // rdkafka 0.39 drops the broker's per-topic error of
        // DescribeConfigs and AlterConfigs: check that the topic exists
        // first, and read the result back after.
        let consumer = conn.consumer(None)?;
        partitions(conn, &consumer, topic)?;
    }
    let mut configs = topic_configs(conn, topic).await?;
    if configs.values().any(|v| v == "<redacted>") {
        return Err(runtime(format!(
            "topic {topic} has sensitive configs that cannot be read back, and AlterConfigs \
             would drop them"
        )));
    }
    let before = configs.clone();
    for key in &args.delete {
        configs.remove(key);
    }
    for (k, v) in &args.set {
        configs.insert(k.clone(), v.clone());
    }
    let (admin, options) = admin(conn)?;
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in &configs {
        alter = alter.set(k, v);
    }
    let results = bounded(
        conn,
        &format!("altering the configs of topic {topic}"),
        admin.alter_configs([&alter], &options),
    )
    .await?;
    for result in results {
        if let Err((_, code)) = result {
            return Err(refused("cannot alter the configs of", topic, code));
        }
    }
    let now = topic_configs(conn, topic).await?;
    if now != configs {
        let not_applied: Vec<String> = args
            .set
            .iter()
            .filter(|(k, v)| now.get(k) != Some(v))
            .map(|(k, v)| format!("{k}={v}"))
            .chain(
                args.delete
                    .iter()
                    .filter(|k| now.contains_key(*k))
                    .map(|k| format!("--delete {k}")),
            )
            .collect();
        return Err(runtime(format!(
            "cannot alter the configs of topic {topic}: the broker refused {} (an unknown \
             config or an invalid value; nothing was changed)",
            not_applied.join(", ")
        )));
    }
    match format {
        Format::Json => {
            say(&json!({"topic": topic, "before": before, "after": configs}).to_string())
        }
        Format::Text => {
            let mut out = format!("topic {topic}:");
            for (k, v) in &args.set {
                out.push_str(&format!("\n  {k}={v}"));
            }
            for k in &args.delete {
                out.push_str(&format!("\n  {k} (default)"));
            }
            say(&out)
        }
    }
}

/// `topics add-partitions`.
async fn add_partitions(
    conn: &Conn,
    format: Format,
    args: &TopicAddPartitionsArgs,
) -> Result<(), Failure> {
    let topic = &args.topic;
    let before = {
        let consumer = conn.consumer(None)?;
        partitions(conn, &consumer, topic)?.len()
    };
    let wanted = usize::try_from(args.partitions).unwrap_or(0);
    if wanted <= before {
        return Err(Failure::Usage(format!(
            "topic {topic} has {before} partitions: --partitions must be more (Kafka cannot \
             remove partitions)"
        )));
    }
    let (admin, options) = admin(conn)?;
    let new = NewPartitions::new(topic, wanted);
    let results = bounded(
        conn,
        &format!("adding partitions to topic {topic}"),
        admin.create_partitions([&new], &options),
    )
    .await?;
    for result in results {
        if let Err((_, code)) = result {
            return Err(refused("cannot add partitions to", topic, code));
        }
    }
    match format {
        Format::Json => {
            say(&json!({"topic": topic, "before": before, "partitions": wanted}).to_string())
        }
        Format::Text => say(&format!("topic {topic}: {before} → {wanted} partitions")),
    }
}
