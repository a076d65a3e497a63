//! A network of our own to cut: Linux network namespaces, made and removed
//! by the harness, with nothing in the machine's own namespace touched.
//!
//! One [`Net`] is five namespaces: a hub holding a bridge, three broker
//! namespaces (`b1`..`b3`) and one for the clients (`cl`), each joined to
//! the bridge by a veth pair whose hub end is created inside the hub. The
//! addresses are from 198.18.0.0/24 (RFC 2544's range for benchmarking
//! network devices: neither a private nor a public range), and they exist
//! only inside these namespaces, which have no route anywhere else: the
//! traffic never leaves the bridge.
//!
//! Names start with [`PREFIX`] and carry the pid of the process that made
//! them: [`sweep`] removes those whose process is gone (an interrupted run),
//! at every [`Net::create`]; [`Net`]'s `Drop` removes its own, also when a
//! test fails.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use xkafka::BoxError;

/// Every namespace the harness makes starts with this.
pub const PREFIX: &str = "xkfn-";

/// The subnet's first three octets: broker `n` is `.1{n}`, the clients `.100`.
const SUBNET: &str = "198.18.0";

/// A broker's or the clients' place in a [`Net`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// Broker 1, 2 or 3.
    Broker(u8),
    /// The namespace the clients under test run in.
    Clients,
}

impl Node {
    /// The three brokers.
    pub const BROKERS: [Node; 3] = [Node::Broker(1), Node::Broker(2), Node::Broker(3)];

    fn role(self) -> String {
        match self {
            Node::Broker(n) => format!("b{n}"),
            Node::Clients => "cl".to_owned(),
        }
    }

    /// Its IPv4 address on the bridge.
    pub fn addr(self) -> String {
        match self {
            Node::Broker(n) => format!("{SUBNET}.1{n}"),
            Node::Clients => format!("{SUBNET}.100"),
        }
    }
}

/// The namespaces of one harness; dropping it removes them (and so ends
/// any process still in them).
#[derive(Debug)]
pub struct Net {
    base: String,
    made: Vec<String>,
}

/// Runs `ip ARGS` to its end; an error with its stderr when it fails.
pub fn ip(args: &[&str]) -> Result<String, BoxError> {
    run("ip", args, None)
}

/// Runs `program ARGS` (with `stdin` fed, if any) to its end.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, BoxError> {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run {program}: {e} (the network fault harness needs iproute2 and \
                 nftables, and root: apt-get install iproute2 nftables)"
            )
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The harness's namespaces that exist now.
pub fn list() -> Result<Vec<String>, BoxError> {
    Ok(ip(&["netns", "list"])?
        .lines()
        // "name (id: 3)" or "name"
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

/// The pid in a namespace name `xkfn-<pid>-<n>-<role>`.
fn owner(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Removes one namespace: its processes first (SIGCONT, so that a paused
/// one can die, then SIGKILL), then the namespace.
fn remove(name: &str) -> Result<(), BoxError> {
    let pids = ip(&["netns", "pids", name]).unwrap_or_default();
    // This process is listed too when its main thread entered the
    // namespace (the campaign's does): it must not kill itself.
    let me = std::process::id() as i32;
    for pid in pids
        .lines()
        .filter_map(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p != me)
    {
        crate::faults::signal(pid as u32, crate::faults::Sig::Cont);
        crate::faults::signal(pid as u32, crate::faults::Sig::Kill);
    }
    ip(&["netns", "del", name]).map(|_| ())
}

/// Removes every namespace of the harness, and every data folder of its
/// clusters, whose maker is no longer running (left by an interrupted
/// run); with `all`, every one of them. Returns the names removed.
pub fn sweep(all: bool) -> Result<Vec<String>, BoxError> {
    let mut removed = Vec::new();
    for name in list()? {
        let alive = owner(&name).is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if all || !alive {
            remove(&name)?;
            removed.push(name);
        }
    }
    // The private clusters' data folders (`<temp>/xkfn-<pid>-<n>`), left
    // when their maker was killed before its Drop ran.
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner(&name) else { continue };
            if all || !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
                removed.push(name);
            }
        }
    }
    Ok(removed)
}

impl Net {
    /// Makes the five namespaces and the bridge between them, after a
    /// [`sweep`] of leftovers.
    pub fn create() -> Result<Net, BoxError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let swept = sweep(false)?;
        if !swept.is_empty() {
            eprintln!("netns: removed leftovers of an interrupted run: {swept:?}");
        }
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            base,
            made: Vec::new(),
        };
        // On an error the namespaces made so far go with `net`'s Drop.
        net.build()?;
        Ok(net)
    }

    fn build(&mut self) -> Result<(), BoxError> {
        let hub = self.hub();
        self.add(&hub)?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for node in Node::BROKERS.into_iter().chain([Node::Clients]) {
            let ns = self.ns(node);
            self.add(&ns)?;
            let hub_end = format!("v{}", node.role());
            ip(&[
                "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &hub_end, "master", "br0", "up"])?;
            let cidr = format!("{}/24", node.addr());
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn add(&mut self, ns: &str) -> Result<(), BoxError> {
        ip(&["netns", "add", ns])?;
        self.made.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.base)
    }

    /// The namespace's name of `node`.
    pub fn ns(&self, node: Node) -> String {
        format!("{}-{}", self.base, node.role())
    }

    /// What names this net's namespaces start with (also its data folder's
    /// name).
    pub fn name(&self) -> &str {
        &self.base
    }

    /// Moves the calling thread into the clients' namespace: every socket
    /// it opens from now on, and every thread and process it starts (a
    /// tokio runtime built after this call, librdkafka's threads, worker
    /// processes), is on the bridge. Call it before building the runtime.
    pub fn enter_clients(&self) -> Result<(), BoxError> {
        self.enter(Node::Clients)
    }

    /// Moves the calling thread into `node`'s namespace (see
    /// [`Net::enter_clients`]).
    pub fn enter(&self, node: Node) -> Result<(), BoxError> {
        enter(&self.ns(node))
    }
}

/// Moves the calling thread into the network namespace named `ns` (one of
/// [`Net::ns`]'s names); for a thread of its own, which cannot borrow the
/// [`Net`].
pub fn enter(ns: &str) -> Result<(), BoxError> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| format!("setns {path}: {e}"))?;
    Ok(())
}

impl Drop for Net {
    fn drop(&mut self) {
        // Brokers and clients first (they hold the namespaces), the hub last.
        for ns in self.made.iter().rev() {
            if let Err(e) = remove(ns) {
                eprintln!("netns: could not remove {ns}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_read_from_the_name() {
        assert_eq!(owner("xkfn-4242-0-b1"), Some(4242));
        assert_eq!(owner("xkfn-x-0-b1"), None);
        assert_eq!(owner("other-4242-0-b1"), None);
    }
}
