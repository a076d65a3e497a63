//! The results of a run: kept, printed as the table and the `RATIO` lines,
//! written as JSON (the charts are drawn by `charts`).

use serde::Serialize;
use std::collections::BTreeMap;

use crate::figures::{Comparison, GoVersions, PeerComparison, PeerKind, RustVersions};
use crate::vocab::Sizes;

#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub(crate) quick: bool,
    pub(crate) sizes: Sizes,
    pub(crate) machine: String,
    pub(crate) brokers: BTreeMap<String, String>,
    pub(crate) comparisons: BTreeMap<String, Vec<Comparison>>,
    /// Concurrency scaling with a 1 ms handler: msg/s per setting.
    pub(crate) scaling: BTreeMap<String, BTreeMap<String, f64>>,
    /// Consume-transform-produce, per broker and variant (`ours_txn_10ms`,
    /// `raw_alo`, …).
    pub(crate) eos: BTreeMap<String, BTreeMap<String, crate::eos::Figures>>,
    /// How the consume-transform-produce runs were set up, when they ran.
    pub(crate) eos_plan: Option<crate::eos::Plan>,
    /// How cost grows, per broker (`--only sweep`; see `sweep`).
    pub(crate) sweep: BTreeMap<String, crate::sweep::Figures>,
    /// Ours against the peers (Go xkafka, the pure-Rust confluent-kafka
    /// client), per broker (see `peers`).
    pub(crate) peers: BTreeMap<String, Vec<PeerComparison>>,
    /// The Go peer's versions, once it ran; `None` if it was skipped.
    pub(crate) go_peer: Option<GoVersions>,
    /// The Rust peer's versions, once it ran; left out if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rust_peer: Option<RustVersions>,
    pub(crate) elapsed_secs: f64,
}

impl Results {
    pub(crate) fn new(sizes: &Sizes, quick: bool) -> Self {
        Results {
            quick,
            sizes: *sizes,
            machine: machine(),
            brokers: BTreeMap::new(),
            comparisons: BTreeMap::new(),
            scaling: BTreeMap::new(),
            eos: BTreeMap::new(),
            eos_plan: None,
            sweep: BTreeMap::new(),
            peers: BTreeMap::new(),
            go_peer: None,
            rust_peer: None,
            elapsed_secs: 0.0,
        }
    }

    pub(crate) fn add(&mut self, broker: &str, comparison: Comparison) {
        self.comparisons
            .entry(broker.to_owned())
            .or_default()
            .push(comparison);
    }

    pub(crate) fn print(&self) {
        println!("\nmachine: {}", self.machine);
        for (broker, description) in &self.brokers {
            println!("{broker}: {description}");
        }
        let with_limit = self
            .comparisons
            .values()
            .flatten()
            .any(|c| c.limit.is_some());
        if with_limit {
            // Ours against the limit (librdkafka's fastest loop for the same
            // work) and the rdkafka crate's safe API loop, each paired per
            // round; CPU per message ours ÷ limit; peak RSS medians.
            println!(
                "\n{:<16} {:>6} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7} {:>8} {:>22}",
                "against limit",
                "broker",
                "ours",
                "limit",
                "no-copy",
                "safe API",
                "÷limit",
                "÷safe",
                "cpu÷lim",
                "rss MiB ours/lim/safe",
            );
            for (broker, comparisons) in &self.comparisons {
                for c in comparisons.iter().filter(|c| c.limit.is_some()) {
                    let opt = |v: Option<f64>, p: usize| {
                        v.map_or_else(|| "-".to_owned(), |v| format!("{v:.p$}"))
                    };
                    let mib = |kib: f64| kib / 1024.0;
                    println!(
                        "{:<16} {:>6} {:>11.0} {:>11} {:>11} {:>11.0} {:>7} {:>7.3} {:>8} {:>22}",
                        c.name,
                        broker,
                        c.ours,
                        opt(c.limit, 0),
                        opt(c.ceiling, 0),
                        c.baseline,
                        opt(c.ratio_vs_limit, 3),
                        c.ratio,
                        opt(c.cpu_vs_limit, 3),
                        format!(
                            "{:.0}/{}/{:.0}",
                            mib(c.peak_rss_kib.ours),
                            opt(c.peak_rss_kib.limit.map(mib), 0),
                            mib(c.peak_rss_kib.baseline)
                        ),
                    );
                }
            }
        }
        if !self.comparisons.is_empty() {
            println!(
                "\n{:<20} {:>7} {:>16} {:>16} {:>7} {:>6}  note",
                "comparison", "broker", "ours", "safe API", "ratio", "cpu"
            );
        }
        for (broker, comparisons) in &self.comparisons {
            for c in comparisons {
                let cpu = c
                    .cpu_ratio
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"));
                println!(
                    "{:<20} {:>7} {:>11.1} {:<5}{:>11.1} {:<5}{:>7.3} {:>6}  {}",
                    c.name, broker, c.ours, c.unit, c.baseline, c.unit, c.ratio, cpu, c.note
                );
            }
        }
        for (broker, points) in &self.scaling {
            let line: Vec<String> = points
                .iter()
                .map(|(k, v)| format!("N={k}: {v:.0}"))
                .collect();
            println!(
                "scaling ({broker}, 1 ms handler, msg/s): {}",
                line.join(", ")
            );
        }
        for (broker, variants) in &self.eos {
            println!(
                "consume-transform-produce ({broker}, {} × 100 B; msg/s, medians):",
                self.sizes.eos
            );
            println!(
                "  {:<16} {:>10} {:>10} {:>9}",
                "variant", "consumed", "committed", "tail ms"
            );
            let mut rows: Vec<_> = variants.iter().collect();
            rows.sort_by_key(|(name, _)| crate::eos::order_key(name));
            for (name, f) in rows {
                println!(
                    "  {name:<16} {:>10.0} {:>10.0} {:>9.0}",
                    f.consumed, f.committed, f.tail_ms
                );
            }
        }
        for (broker, figures) in &self.sweep {
            print_sweep(broker, figures);
        }
        for kind in PeerKind::ALL {
            if !self.peers.values().flatten().any(|c| c.peer == kind) {
                continue;
            }
            match kind {
                PeerKind::Go => {
                    if let Some(v) = &self.go_peer {
                        println!(
                            "\nGo xkafka {} (confluent-kafka-go {}, librdkafka {}, {}); CPU s per run, medians:",
                            v.go_xkafka, v.confluent_kafka_go, v.librdkafka, v.go
                        );
                    }
                }
                PeerKind::Rust => {
                    if let Some(v) = &self.rust_peer {
                        println!(
                            "\nconfluent-kafka {} (pure Rust, raw client loops; {}); CPU s per run, medians:",
                            v.confluent_kafka, v.rustc
                        );
                    }
                }
            }
            let cpu_theirs = format!("cpu {}", kind.key());
            let rss_theirs = format!("MiB {}", kind.key());
            println!(
                "{:<26} {:>7} {:>16} {:>16} {:>7} {:>8} {:>8} {:>8} {:>8}  note",
                "comparison",
                "broker",
                "ours",
                kind.key(),
                "ratio",
                "cpu ours",
                cpu_theirs,
                "MiB ours",
                rss_theirs
            );
            for (broker, comparisons) in &self.peers {
                for c in comparisons.iter().filter(|c| c.peer == kind) {
                    let ours_cpu = c.ours_cpu_secs.map_or("-".into(), |v| format!("{v:.2}"));
                    println!(
                        "{:<26} {:>7} {:>11.1} {:<5}{:>11.1} {:<5}{:>7.3} {:>8} {:>8.2} {:>8.0} {:>8.0}  {}",
                        c.name,
                        broker,
                        c.ours,
                        c.unit,
                        c.theirs,
                        c.unit,
                        c.ratio,
                        ours_cpu,
                        c.theirs_cpu_secs,
                        c.ours_peak_rss_kib / 1024.0,
                        c.theirs_peak_rss_kib / 1024.0,
                        c.note
                    );
                }
            }
        }
        println!();
        // The primary broker's lines are plain; others carry a suffix.
        let primary = if self.brokers.contains_key("kafka") {
            "kafka"
        } else {
            "mock"
        };
        for (broker, comparisons) in &self.comparisons {
            for c in comparisons {
                let name = if broker == primary {
                    c.name.clone()
                } else {
                    format!("{}.{broker}", c.name)
                };
                if let (Some(ratio), Some(limit)) = (c.ratio_vs_limit, c.limit) {
                    let cpu = c
                        .cpu_vs_limit
                        .map_or_else(String::new, |r| format!(" cpu_ours/limit={r:.3}"));
                    println!(
                        "RATIO {name}_vs_limit {ratio:.3} ours={:.1}{} limit={limit:.1}{}{cpu}",
                        c.ours, c.unit, c.unit
                    );
                }
                println!(
                    "RATIO {name} {:.3} ours={:.1}{} baseline={:.1}{}",
                    c.ratio, c.ours, c.unit, c.baseline, c.unit
                );
            }
        }
        for (broker, comparisons) in &self.peers {
            for c in comparisons {
                let name = if broker == primary {
                    c.name.clone()
                } else {
                    format!("{}.{broker}", c.name)
                };
                println!(
                    "RATIO {name} {:.3} ours={:.1}{} {}={:.1}{}",
                    c.ratio,
                    c.ours,
                    c.unit,
                    c.peer.key(),
                    c.theirs,
                    c.unit
                );
            }
        }
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpus} cores, {model}, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn print_sweep(broker: &str, f: &crate::sweep::Figures) {
    let cell = |p: &crate::sweep::Point, who: &str| -> String {
        p.sides.get(who).map_or("-".into(), |s| {
            let cpu = s
                .cpu_per_million_secs
                .map_or(String::new(), |c| format!(" ({c:.2} s/M)"));
            let rel = s.over_n1.map_or(String::new(), |r| format!(" x{r:.1}"));
            format!("{:.0}{rel}{cpu}", s.msgs_per_sec)
        })
    };
    println!(
        "\nsweep ({broker}, {} rounds, {:.0} s; msg/s medians, CPU s per million messages):",
        f.rounds, f.secs
    );
    for (title, points) in [
        ("partitions", &f.partitions),
        ("value size", &f.sizes),
        ("concurrency, 1 ms handler", &f.concurrency),
        ("publish_async", &f.publish_async),
    ] {
        println!("  {title}:");
        for p in points {
            println!(
                "    {:<14} {:>8} msgs  ours {:<26} raw {:<26} go {}",
                p.x,
                p.messages,
                cell(p, "ours"),
                cell(p, "raw"),
                cell(p, "go")
            );
        }
    }
}
