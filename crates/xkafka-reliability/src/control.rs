//! The 3-broker Apache Kafka cluster the failover tests break: its address,
//! and its brokers killed, stopped and started through `scripts/broker.sh`
//! (`cluster kill|stop|start N`, `ctl leader|coordinator`), found from this
//! crate's folder.
//!
//! The cluster is shared by every test of the suite: each broker taken down
//! is recorded in a [`Downed`] guard whose `Drop` starts it again, so that a
//! failing test does not leave the next one a broken cluster, and the tests
//! of one binary take [`exclusive`] first.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use xkafka::BoxError;

/// The cluster's default address (`scripts/broker.sh cluster env`).
pub const DEFAULT_BROKERS: &str = "127.0.0.1:11092,127.0.0.1:12092,127.0.0.1:13092";

/// `XKAFKA_CLUSTER_BROKERS`, or the default; an error naming the command to
/// run when one of its brokers does not accept connections (the tests fail,
/// never skip, without the cluster).
pub fn brokers() -> Result<String, BoxError> {
    let brokers =
        std::env::var("XKAFKA_CLUSTER_BROKERS").unwrap_or_else(|_| DEFAULT_BROKERS.to_owned());
    for addr in brokers.split(',') {
        let parsed: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|e| format!("XKAFKA_CLUSTER_BROKERS holds {addr:?}, not host:port: {e}"))?;
        if TcpStream::connect_timeout(&parsed, Duration::from_secs(2)).is_err() {
            return Err(format!(
                "no broker at {addr} (cluster {brokers}): start the 3-broker cluster with \
                 scripts/broker.sh cluster start"
            )
            .into());
        }
    }
    Ok(brokers)
}

/// Serialises the tests of one binary that take brokers down: two at once
/// would take down more than either expects.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    CLUSTER.lock().await
}

/// What every scenario on the cluster starts with: the cluster to itself
/// (held until dropped), its address, and a fresh topic of `partitions`
/// partitions replicated as the cluster says (3).
pub struct Stage {
    _exclusive: tokio::sync::MutexGuard<'static, ()>,
    /// `bootstrap.servers` of the cluster.
    pub brokers: String,
    /// The scenario's topic (also its group's name).
    pub topic: String,
}

/// A [`Stage`] for a scenario whose topic starts with `prefix`.
pub async fn stage(prefix: &str, partitions: i32) -> Result<Stage, BoxError> {
    let exclusive = exclusive().await;
    let brokers = brokers()?;
    let topic = crate::cluster::unique(prefix);
    crate::cluster::create_replicated_topic(&brokers, &topic, partitions).await?;
    Ok(Stage {
        _exclusive: exclusive,
        brokers,
        topic,
    })
}

/// `scripts/broker.sh` of this repository.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/broker.sh")
}

/// Runs `broker.sh ARGS` to its end (blocking); its stdout, or an error with
/// its stderr's tail.
pub fn broker_sh(args: &[&str]) -> Result<String, BoxError> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        Err(format!(
            "broker.sh {} failed ({}): {}",
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
        .into())
    }
}

/// [`broker_sh`] on a blocking thread.
pub async fn broker_sh_async(args: &[&str]) -> Result<String, BoxError> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        broker_sh(&args)
    })
    .await?
}

/// The node id (1..3) leading `topic[partition]`, `None` while none does.
pub async fn leader(brokers: &str, topic: &str, partition: i32) -> Result<Option<u8>, BoxError> {
    let out = broker_sh_async(&["ctl", "leader", brokers, topic, &partition.to_string()]).await?;
    let id: i32 = out
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|e| format!("ctl leader answered {out:?}: {e}"))?;
    Ok(u8::try_from(id).ok())
}

/// The node id of `group`'s coordinator. Asked up to three times: on a
/// loaded machine, just after a broker came back, the admin tool's first
/// request can time out waiting for a connection.
pub async fn coordinator(brokers: &str, group: &str) -> Result<u8, BoxError> {
    let mut attempt = 1;
    let out = loop {
        match broker_sh_async(&["ctl", "coordinator", brokers, group]).await {
            Ok(out) => break out,
            Err(e) if attempt < 3 => {
                eprintln!("asking for {group}'s coordinator again: {e}");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    Ok(out
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|e| format!("ctl coordinator answered {out:?}: {e}"))?)
}

/// Brokers this test took down; dropping it starts them again (blocking, for
/// as long as `broker.sh cluster start` takes), so that a test that fails
/// halfway leaves the cluster whole.
#[derive(Debug, Default)]
pub struct Downed {
    nodes: Vec<u8>,
}

impl Downed {
    /// Nothing down yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// SIGKILLs broker `node`: no controlled shutdown, leadership moves only
    /// when the controller notices the missed heartbeats.
    pub async fn kill(&mut self, node: u8) -> Result<(), BoxError> {
        self.nodes.push(node);
        broker_sh_async(&["cluster", "kill", &node.to_string()]).await?;
        Ok(())
    }

    /// Stops broker `node` with SIGTERM (controlled shutdown: leadership moves
    /// first) and waits until it exited.
    pub async fn stop(&mut self, node: u8) -> Result<(), BoxError> {
        self.nodes.push(node);
        broker_sh_async(&["cluster", "stop", &node.to_string()]).await?;
        Ok(())
    }

    /// Starts every broker taken down, all at once (a node is back only when
    /// it sees all three, so one at a time would wait for the others), and
    /// returns once each is back in the cluster.
    pub async fn restore(&mut self) -> Result<Duration, BoxError> {
        let started = Instant::now();
        let nodes = std::mem::take(&mut self.nodes);
        let starts: Vec<_> = nodes
            .iter()
            .map(|n| {
                let n = n.to_string();
                tokio::spawn(async move { start_node(&n).await })
            })
            .collect();
        let mut first_error = None;
        for start in starts {
            if let Err(e) = start.await.map_err(BoxError::from).and_then(|r| r) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(started.elapsed()),
        }
    }
}

/// How many times `broker.sh cluster start N` is run for one node: it waits
/// 90 s for the node to answer, which a loaded machine can exceed (a node
/// took 100 s to start with a load average of 30 on two cores); run again, it
/// does not start a second process but waits again (or starts the node if it
/// exited).
const START_ATTEMPTS: usize = 3;

fn start_node_blocking(node: &str) -> Result<String, BoxError> {
    let mut attempt = 1;
    loop {
        match broker_sh(&["cluster", "start", node]) {
            Err(e) if attempt < START_ATTEMPTS => {
                eprintln!("node {node} not back yet, waiting again: {e}");
                attempt += 1;
            }
            done => return done,
        }
    }
}

async fn start_node(node: &str) -> Result<String, BoxError> {
    let node = node.to_owned();
    tokio::task::spawn_blocking(move || start_node_blocking(&node)).await?
}

impl Drop for Downed {
    fn drop(&mut self) {
        if self.nodes.is_empty() {
            return;
        }
        let nodes = std::mem::take(&mut self.nodes);
        eprintln!("restarting brokers {nodes:?} left down");
        let threads: Vec<_> = nodes
            .into_iter()
            .map(|n| std::thread::spawn(move || start_node_blocking(&n.to_string())))
            .collect();
        for t in threads {
            match t.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("{e}"),
                Err(_) => eprintln!("a broker restart panicked"),
            }
        }
    }
}

/// Where a run writes its figures: `<workspace>/target/reliability/NAME.json`.
pub fn write_figures(name: &str, figures: &serde_json::Value) -> Result<PathBuf, BoxError> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/reliability");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(figures)?)?;
    Ok(path)
}
