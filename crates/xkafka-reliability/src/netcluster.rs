//! A private 3-broker KRaft cluster (replication factor 3,
//! `min.insync.replicas` 2), each broker in its own namespace of a [`Net`],
//! from the jars `scripts/broker.sh install` put in place. Private because
//! the faults cut and pause its brokers: the suite's shared cluster is
//! never touched.
//!
//! Dropping it kills its brokers (resumed first, should one be paused) and
//! removes their data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::ClientConfig;
use xkafka::BoxError;

use crate::faults::{signal, Sig};
use crate::netns::{Net, Node};

/// Where `scripts/broker.sh install` puts the jars (its default prefix).
const DEFAULT_PREFIX: &str = "/opt/xkafka-broker";

/// A broker's client port (on its own address).
const PORT: u16 = 9092;
/// A broker's controller port.
const CONTROLLER_PORT: u16 = 9093;

/// The partitions of `__consumer_offsets` and `__transaction_state` here:
/// what [`coordinator_partition`] hashes onto.
pub const INTERNAL_PARTITIONS: i32 = 4;

/// The private cluster.
pub struct NetCluster {
    brokers: Vec<(u8, Child)>,
    dir: PathBuf,
    /// `bootstrap.servers`, reachable from the clients' namespace.
    pub bootstrap: String,
}

/// The Kafka installation: the newest `kafka-*` folder with an `.installed`
/// stamp under `XKAFKA_BROKER_PREFIX` (default /opt/xkafka-broker).
fn install_dir() -> Result<PathBuf, BoxError> {
    let prefix = std::env::var("XKAFKA_BROKER_PREFIX").unwrap_or_else(|_| DEFAULT_PREFIX.into());
    let mut found: Vec<PathBuf> = std::fs::read_dir(&prefix)
        .map_err(|e| format!("{prefix}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(".installed").exists())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        format!("no Apache Kafka installed in {prefix}: run scripts/broker.sh install").into()
    })
}

/// A random Kafka cluster id: 16 bytes, URL-safe base64 without padding.
fn cluster_id(rng: &mut fastrand::Rng) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: Vec<u8> = (0..16).map(|_| rng.u8(..)).collect();
    let mut bits = 0u32;
    let mut held = 0;
    let mut out = String::new();
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        held += 8;
        while held >= 6 {
            held -= 6;
            out.push(ALPHABET[((bits >> held) & 63) as usize] as char);
        }
    }
    if held > 0 {
        out.push(ALPHABET[((bits << (6 - held)) & 63) as usize] as char);
    }
    out
}

fn properties(id: u8, dir: &Path) -> String {
    let me = Node::Broker(id).addr();
    let voters: Vec<String> = Node::BROKERS
        .into_iter()
        .map(|n| match n {
            Node::Broker(i) => format!("{i}@{}:{CONTROLLER_PORT}", n.addr()),
            Node::Clients => unreachable!("BROKERS holds brokers only"),
        })
        .collect();
    format!(
        "process.roles=broker,controller
node.id={id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{me}:{PORT},CONTROLLER://{me}:{CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://{me}:{PORT},CONTROLLER://{me}:{CONTROLLER_PORT}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={log}
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
auto.create.topics.enable=false
offsets.topic.num.partitions={INTERNAL_PARTITIONS}
transaction.state.log.num.partitions={INTERNAL_PARTITIONS}
# A cut follower leaves the ISR after this long (Kafka's default: 30 s), so that
# acks=all writes go on with the other two within a fault's duration. The
# brokers' own session to the controller keeps Kafka's default (9 s): on two
# loaded cores a shorter one fences healthy brokers.
replica.lag.time.max.ms=10000
",
        voters = voters.join(","),
        log = dir.join("log").display(),
    )
}

const LOG4J: &str = "appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
logger.server.name=kafka.server.KafkaRaftServer
logger.server.level=INFO
";

impl NetCluster {
    /// Formats and starts the three brokers in `net`'s namespaces (data in
    /// `<temp>/<net name>`), and returns once a metadata request from the
    /// calling thread's namespace (call [`Net::enter_clients`] first) lists
    /// all three.
    pub fn start(net: &Net, rng: &mut fastrand::Rng) -> Result<NetCluster, BoxError> {
        let install = install_dir()?;
        let classpath = format!("{}/libs/*", install.display());
        let dir = std::env::temp_dir().join(net.name());
        std::fs::create_dir_all(&dir)?;
        let cid = cluster_id(rng);
        let mut cluster = NetCluster {
            brokers: Vec::new(),
            dir: dir.clone(),
            bootstrap: Node::BROKERS
                .into_iter()
                .map(|n| format!("{}:{PORT}", n.addr()))
                .collect::<Vec<_>>()
                .join(","),
        };
        // Formatting is a JVM each: the three at once.
        let mut formats = Vec::new();
        for id in 1..=3u8 {
            let node = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&node)?;
            std::fs::write(node.join("server.properties"), properties(id, &node))?;
            std::fs::write(node.join("log4j2.properties"), LOG4J)?;
            let child = Command::new("java")
                .arg("-cp")
                .arg(&classpath)
                .arg(format!(
                    "-Dlog4j2.configurationFile={}",
                    node.join("log4j2.properties").display()
                ))
                .args(["kafka.tools.StorageTool", "format", "-t", &cid, "-c"])
                .arg(node.join("server.properties"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run java (17 or newer): {e}"))?;
            formats.push((id, child));
        }
        for (id, child) in formats {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                return Err(format!(
                    "formatting broker {id} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
        }
        for id in 1..=3u8 {
            let node = dir.join(format!("node-{id}"));
            let log = std::fs::File::create(node.join("broker.log"))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &net.ns(Node::Broker(id)), "java"])
                .args([
                    "-Xms128m",
                    "-Xmx512m",
                    "-XX:+UseG1GC",
                    "-XX:MaxGCPauseMillis=20",
                ])
                .arg("-Djava.awt.headless=true")
                .arg(format!(
                    "-Dlog4j2.configurationFile={}",
                    node.join("log4j2.properties").display()
                ))
                .arg("-cp")
                .arg(&classpath)
                .arg("kafka.Kafka")
                .arg(node.join("server.properties"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            cluster.brokers.push((id, child));
        }
        // Two loaded cores have taken two minutes to start three JVMs.
        cluster.await_brokers(3, Duration::from_secs(240))?;
        Ok(cluster)
    }

    /// Broker `id`'s pid (`ip netns exec` replaces itself with the JVM).
    pub fn pid(&self, id: u8) -> Option<u32> {
        self.brokers
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, c)| c.id())
    }

    /// Waits until a metadata request lists `count` brokers. Blocking.
    pub fn await_brokers(&mut self, count: usize, timeout: Duration) -> Result<(), BoxError> {
        let started = Instant::now();
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?;
        loop {
            for (id, child) in &mut self.brokers {
                if let Some(status) = child.try_wait()? {
                    let log =
                        std::fs::read_to_string(self.dir.join(format!("node-{id}/broker.log")))
                            .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    return Err(format!(
                        "broker {id} exited ({status}) during start; its log's end:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                    .into());
                }
            }
            if let Ok(md) = client.fetch_metadata(None, Duration::from_secs(2)) {
                if md.brokers().len() >= count {
                    eprintln!(
                        "netcluster: {count} brokers at {} in {:.1} s",
                        self.bootstrap,
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "the private cluster did not list {count} brokers within {timeout:?} (logs in {})",
                    self.dir.display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The broker leading `topic[partition]` now, `None` while none does.
    /// Blocking.
    pub fn leader(&self, topic: &str, partition: i32) -> Result<Option<u8>, BoxError> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?;
        let md = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let leader = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
            .map(|p| p.leader());
        Ok(leader
            .and_then(|l| u8::try_from(l).ok())
            .filter(|l| (1..=3).contains(l)))
    }

    /// The broker coordinating group `group` (`__consumer_offsets`) or
    /// transactional id `id` (`__transaction_state`): the leader of the
    /// internal partition the name hashes to, as Kafka computes it.
    /// Blocking.
    pub fn coordinator(&self, internal_topic: &str, name: &str) -> Result<Option<u8>, BoxError> {
        self.leader(internal_topic, coordinator_partition(name))
    }

    /// Where broker logs and data are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Kafka's `Utils.abs(name.hashCode()) % partitions`: Java's `String.hashCode`
/// over UTF-16 code units.
pub fn coordinator_partition(name: &str) -> i32 {
    let hash = name
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % INTERNAL_PARTITIONS
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.brokers {
            signal(child.id(), Sig::Cont);
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("XKAFKA_KEEP_NETCLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_22_characters() {
        let mut rng = fastrand::Rng::with_seed(7);
        let id = cluster_id(&mut rng);
        assert_eq!(id.len(), 22, "{id}");
        assert_ne!(id, cluster_id(&mut rng));
    }

    #[test]
    fn coordinator_partition_hashes_as_java_does() {
        // "a".hashCode() = 97; "ab" = 97*31+98 = 3105; 3105 % 4 = 1.
        assert_eq!(coordinator_partition("a"), 1);
        assert_eq!(coordinator_partition("ab"), 1);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Utils.abs gives 0.
        assert_eq!(coordinator_partition("polygenelubricants"), 0);
    }
}
