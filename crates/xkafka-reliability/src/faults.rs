//! Faults on a [`Net`]: cuts between its nodes (nftables rules inside the
//! namespaces, never in the machine's own) and pauses of processes
//! (SIGSTOP / SIGCONT). Each is undone by [`Faults::heal`]; whatever is
//! still in force when [`Faults`] is dropped is undone then.
//!
//! Each cut is one nftables table of its own in the namespace it is laid
//! in, so healing it is deleting that table: no rule handles to track, and
//! two overlapping cuts heal independently.

use std::fmt;

use xkafka::BoxError;

use crate::netns::{self, Net, Node};

/// How a cut treats a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Dropped without a word: open connections stay open on both sides
    /// (half-open) until a timeout notices.
    Silent,
    /// Refused with a TCP reset: the other side learns at once.
    Reset,
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The broker cannot reach the other brokers, nor they it; it keeps
    /// its clients.
    FromPeers(u8, Cut),
    /// The clients cannot reach the broker, nor it them; it keeps its peers.
    FromClients(u8, Cut),
    /// The broker reaches no one.
    Isolate(u8, Cut),
    /// One-way loss: the broker's packets to the clients are dropped, the
    /// clients' requests still arrive (and are acted on).
    DropReplies(u8),
    /// A process (a broker's JVM, a worker) stopped with SIGSTOP.
    Pause {
        /// What the reports call it.
        name: String,
        /// Its pid.
        pid: u32,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::FromPeers(b, cut) => write!(f, "broker {b} cut from its peers ({cut:?})"),
            Fault::FromClients(b, cut) => write!(f, "broker {b} cut from the clients ({cut:?})"),
            Fault::Isolate(b, cut) => write!(f, "broker {b} isolated ({cut:?})"),
            Fault::DropReplies(b) => write!(f, "broker {b}'s replies to the clients dropped"),
            Fault::Pause { name, pid } => write!(f, "{name} (pid {pid}) paused"),
        }
    }
}

/// The signals the harness sends.
#[derive(Debug, Clone, Copy)]
pub enum Sig {
    /// SIGSTOP.
    Stop,
    /// SIGCONT.
    Cont,
    /// SIGKILL.
    Kill,
}

/// Sends `sig` to `pid`; false when there is no such process.
pub fn signal(pid: u32, sig: Sig) -> bool {
    use rustix::process::{kill_process, Pid, Signal};
    let signal = match sig {
        Sig::Stop => Signal::STOP,
        Sig::Cont => Signal::CONT,
        Sig::Kill => Signal::KILL,
    };
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    kill_process(pid, signal).is_ok()
}

/// A fault in force, to give back to [`Faults::heal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Applied(u32);

/// The faults in force on one [`Net`].
pub struct Faults<'n> {
    net: &'n Net,
    next: u32,
    active: Vec<(Applied, Fault)>,
}

impl<'n> Faults<'n> {
    /// None yet. Fails when `nft` is missing (what to install is in the
    /// error).
    pub fn new(net: &'n Net) -> Result<Self, BoxError> {
        netns::run("nft", &["--version"], None)?;
        Ok(Faults {
            net,
            next: 0,
            active: Vec::new(),
        })
    }

    /// Puts `fault` in force.
    pub fn apply(&mut self, fault: Fault) -> Result<Applied, BoxError> {
        let id = Applied(self.next);
        self.next += 1;
        let peers = |b: u8| -> Vec<String> {
            Node::BROKERS
                .into_iter()
                .filter(|n| *n != Node::Broker(b))
                .map(Node::addr)
                .collect()
        };
        let clients = || vec![Node::Clients.addr()];
        match &fault {
            Fault::FromPeers(b, cut) => self.cut(id, *b, &peers(*b), *cut, true)?,
            Fault::FromClients(b, cut) => self.cut(id, *b, &clients(), *cut, true)?,
            Fault::Isolate(b, cut) => {
                let mut all = peers(*b);
                all.extend(clients());
                self.cut(id, *b, &all, *cut, true)?
            }
            Fault::DropReplies(b) => self.cut(id, *b, &clients(), Cut::Silent, false)?,
            Fault::Pause { name, pid } => {
                if !signal(*pid, Sig::Stop) {
                    return Err(format!("cannot pause {name}: no process {pid}").into());
                }
            }
        }
        eprintln!("fault #{}: {fault}", id.0);
        self.active.push((id, fault));
        Ok(id)
    }

    /// Undoes one fault.
    pub fn heal(&mut self, id: Applied) -> Result<(), BoxError> {
        let Some(at) = self.active.iter().position(|(a, _)| *a == id) else {
            return Err(format!("fault #{} is not in force", id.0).into());
        };
        let (_, fault) = self.active.remove(at);
        match &fault {
            Fault::Pause { pid, .. } => {
                // A process that died meanwhile has nothing to resume.
                signal(*pid, Sig::Cont);
            }
            Fault::FromPeers(b, _)
            | Fault::FromClients(b, _)
            | Fault::Isolate(b, _)
            | Fault::DropReplies(b) => {
                let ns = self.net.ns(Node::Broker(*b));
                netns::ip(&[
                    "netns",
                    "exec",
                    &ns,
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    &table(id),
                ])?;
            }
        }
        eprintln!("healed #{}: {fault}", id.0);
        Ok(())
    }

    /// Undoes every fault in force, the latest first.
    pub fn heal_all(&mut self) -> Result<(), BoxError> {
        let mut first_error = None;
        while let Some((id, _)) = self.active.last().cloned() {
            if let Err(e) = self.heal(id) {
                // heal removed it from `active` before failing.
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The faults in force now.
    pub fn active(&self) -> impl Iterator<Item = &Fault> {
        self.active.iter().map(|(_, f)| f)
    }

    /// Lays the rules of one cut in broker `b`'s namespace: packets from
    /// `addrs` in, and (with `both`) to `addrs` out. One side suffices: a
    /// packet dropped at either end never makes the round trip.
    fn cut(
        &self,
        id: Applied,
        b: u8,
        addrs: &[String],
        cut: Cut,
        both: bool,
    ) -> Result<(), BoxError> {
        let set = addrs.join(", ");
        let verdict = match cut {
            Cut::Silent => "drop",
            Cut::Reset => "meta l4proto tcp reject with tcp reset",
        };
        let mut rules = String::new();
        // Replies-only loss drops what the broker sends, nothing it receives.
        if both {
            rules.push_str(&format!(
                "  chain in {{ type filter hook input priority 0; policy accept; \
                 ip saddr {{ {set} }} {verdict}; }}\n"
            ));
        }
        let out_verdict = if both { verdict } else { "drop" };
        // The resets the input chain sends pass this chain too: they must
        // leave, or the peer never learns of the cut.
        let pass_resets = if out_verdict == "drop" {
            String::new()
        } else {
            format!("ip daddr {{ {set} }} tcp flags & rst == rst accept; ")
        };
        rules.push_str(&format!(
            "  chain out {{ type filter hook output priority 0; policy accept; \
             {pass_resets}ip daddr {{ {set} }} {out_verdict}; }}\n"
        ));
        let script = format!("table inet {} {{\n{rules}}}\n", table(id));
        let ns = self.net.ns(Node::Broker(b));
        netns::run(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&script),
        )?;
        Ok(())
    }
}

/// The nftables table of cut `id`.
fn table(id: Applied) -> String {
    format!("xkf_fault_{}", id.0)
}

impl Drop for Faults<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.heal_all() {
            eprintln!("faults: could not heal everything: {e}");
        }
    }
}
