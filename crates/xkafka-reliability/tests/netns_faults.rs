//! The network fault harness itself, on its private cluster: every fault
//! bites (what it cuts is unreachable, what it spares is not), and every
//! heal undoes it; nothing is left behind.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use xkafka::BoxError;
use xkafka_reliability::faults::{Cut, Fault, Faults};
use xkafka_reliability::netcluster::NetCluster;
use xkafka_reliability::netns::{self, Net, Node};

/// A TCP connection from the calling thread's namespace (the clients') to
/// broker `b`'s client port, within 1.5 s.
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

/// The process's state letter (`T`: stopped).
fn state(pid: u32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim().chars().next())
        })
        .unwrap_or('?')
}

#[test]
fn every_fault_bites_and_heals() -> Result<(), BoxError> {
    let name;
    {
        let net = Net::create()?;
        name = net.name().to_owned();
        net.enter_clients()?;
        let mut rng = fastrand::Rng::with_seed(1);
        let cluster = NetCluster::start(&net, &mut rng)?;
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

        let pid = cluster.pid(2).ok_or("no broker 2")?;
        let f = faults.apply(Fault::Pause {
            name: "broker 2".into(),
            pid,
        })?;
        assert_eq!(state(pid), 'T');
        faults.heal(f)?;
        assert_ne!(state(pid), 'T');

        // Left in force on purpose: the guard must undo them.
        faults.apply(Fault::Isolate(1, Cut::Silent))?;
        faults.apply(Fault::Pause {
            name: "broker 3".into(),
            pid: cluster.pid(3).ok_or("no broker 3")?,
        })?;
        drop(faults);
        assert!(reaches_from_clients(1));
        assert_ne!(state(cluster.pid(3).unwrap_or_default()), 'T');
        drop(cluster);
    }
    let left: Vec<String> = netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&name))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    Ok(())
}
