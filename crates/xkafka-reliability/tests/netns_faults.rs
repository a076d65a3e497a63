//! The network fault harness itself: every fault bites (what it cuts is
//! unreachable, what it spares is not), every heal undoes it, the guards
//! undo what is left in force, and nothing — namespace, rule, process — is
//! left behind. Plain TCP listeners stand in for the brokers here (the
//! cuts act on addresses, not on Kafka), and a `sleep` for a paused
//! process: seconds, where a Kafka cluster's start takes a minute or more.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xkafka::BoxError;
use xkafka_reliability::faults::{Cut, Fault, Faults};
use xkafka_reliability::netns::{self, Net, Node};

/// A listener on broker `b`'s address, port 9092, inside its namespace,
/// accepting (and dropping) connections until `stop` is set.
fn listen(
    net: &Net,
    b: u8,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, BoxError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns = net.ns(Node::Broker(b));
    let addr = format!("{}:9092", Node::Broker(b).addr());
    let handle = std::thread::spawn(move || {
        // The thread enters the namespace before binding: the socket lives there.
        let bound = netns::enter(&ns).and_then(|()| {
            let l = TcpListener::bind(&addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        });
        let listener = match bound {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            if listener.accept().is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    ready_rx.recv()??;
    Ok(handle)
}

/// A TCP connection from the calling thread's namespace (the clients') to
/// broker `b`'s port, within 1.5 s.
fn reaches_from_clients(b: u8) -> bool {
    let addr: SocketAddr = format!("{}:9092", Node::Broker(b).addr()).parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).is_ok()
}

/// A TCP connection from broker `from`'s namespace to broker `to`.
fn reaches_between(net: &Net, from: u8, to: u8) -> bool {
    let script = format!("exec 3<>/dev/tcp/{}/9092", Node::Broker(to).addr());
    netns::ip(&[
        "netns",
        "exec",
        &net.ns(Node::Broker(from)),
        "timeout",
        "1.5",
        "bash",
        "-c",
        &script,
    ])
    .is_ok()
}

/// The process's state letter (`T`: stopped; `?`: gone).
fn state(pid: u32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim().chars().next())
        })
        .unwrap_or('?')
}

/// Waits up to 3 s for `pid`'s state to satisfy `want` (signals arrive
/// asynchronously); false if it never did.
fn reaches_state(pid: u32, want: impl Fn(char) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !want(state(pid)) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The process's command name.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn every_fault_bites_and_heals() -> Result<(), BoxError> {
    let name;
    let mut sleeper_child;
    {
        let net = Net::create()?;
        name = net.name().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let mut listeners = Vec::new();
        for b in 1..=3 {
            listeners.push(listen(&net, b, stop.clone())?);
        }
        net.enter_clients()?;
        let mut faults = Faults::new(&net)?;
        for b in 1..=3 {
            assert!(
                reaches_from_clients(b),
                "broker {b} unreachable before any fault"
            );
        }
        assert!(reaches_between(&net, 2, 1));

        for cut in [Cut::Silent, Cut::Reset] {
            let f = faults.apply(Fault::FromClients(1, cut))?;
            let at = Instant::now();
            assert!(
                !reaches_from_clients(1),
                "{cut:?}: broker 1 still reachable from clients"
            );
            if cut == Cut::Reset {
                assert!(
                    at.elapsed() < Duration::from_secs(1),
                    "a reset is refused at once"
                );
            } else {
                assert!(
                    at.elapsed() >= Duration::from_secs(1),
                    "a silent cut answers nothing"
                );
            }
            assert!(
                reaches_between(&net, 2, 1),
                "{cut:?}: the peers lost broker 1 too"
            );
            faults.heal(f)?;
            assert!(
                reaches_from_clients(1),
                "{cut:?}: healing did not restore broker 1"
            );
        }

        let f = faults.apply(Fault::FromPeers(2, Cut::Silent))?;
        assert!(!reaches_between(&net, 1, 2));
        assert!(!reaches_between(&net, 2, 3));
        assert!(
            reaches_between(&net, 1, 3),
            "brokers 1 and 3 were cut from each other"
        );
        assert!(reaches_from_clients(2), "broker 2 lost its clients");
        faults.heal(f)?;
        assert!(reaches_between(&net, 1, 2));

        let f = faults.apply(Fault::Isolate(3, Cut::Silent))?;
        assert!(!reaches_from_clients(3));
        assert!(!reaches_between(&net, 1, 3));
        faults.heal(f)?;
        assert!(reaches_from_clients(3) && reaches_between(&net, 1, 3));

        // Replies only: the handshake's SYN arrives, its SYN-ACK is dropped.
        let f = faults.apply(Fault::DropReplies(1))?;
        assert!(!reaches_from_clients(1));
        assert!(reaches_between(&net, 2, 1), "one-way loss cut the peers");
        faults.heal(f)?;
        assert!(reaches_from_clients(1));

        // A process in broker 2's namespace, paused and resumed.
        let sleeper = Command::new("ip")
            .args(["netns", "exec", &net.ns(Node::Broker(2)), "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()?;
        let sleeper_pid = sleeper.id();
        // `ip netns exec` replaces itself with sleep: pause that, not ip.
        let deadline = Instant::now() + Duration::from_secs(5);
        while comm(sleeper_pid) != "sleep" {
            assert!(
                Instant::now() < deadline,
                "ip netns exec did not become sleep"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let f = faults.apply(Fault::Pause {
            name: "sleeper".into(),
            pid: sleeper_pid,
        })?;
        assert!(
            reaches_state(sleeper_pid, |s| s == 'T'),
            "SIGSTOP did not stop it"
        );
        faults.heal(f)?;
        assert!(
            reaches_state(sleeper_pid, |s| s != 'T'),
            "SIGCONT did not resume it"
        );

        // Left in force on purpose: the guard must undo them.
        faults.apply(Fault::Isolate(1, Cut::Reset))?;
        faults.apply(Fault::Pause {
            name: "sleeper".into(),
            pid: sleeper_pid,
        })?;
        assert!(reaches_state(sleeper_pid, |s| s == 'T'));
        drop(faults);
        assert!(reaches_from_clients(1), "the guard left broker 1 isolated");
        assert!(
            reaches_state(sleeper_pid, |s| s != 'T'),
            "the guard left the sleeper paused"
        );
        let tables = netns::ip(&[
            "netns",
            "exec",
            &net.ns(Node::Broker(1)),
            "nft",
            "list",
            "tables",
        ])?;
        assert!(tables.trim().is_empty(), "rules left: {tables}");

        stop.store(true, Ordering::Relaxed);
        for l in listeners {
            l.join().map_err(|_| "a listener panicked")?;
        }
        // The sleeper is still running: the net's Drop must end it.
        sleeper_child = sleeper;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleeper_child.try_wait()?.is_none() {
        assert!(
            Instant::now() < deadline,
            "the sleeper outlived its namespace"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<String> = netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&name))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    Ok(())
}
