//! Topics to measure on, medians, the printed table, the JSON file and the
//! SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use indicatif::ProgressBar;
use serde::Serialize;
use xkafka::raw::rdkafka::producer::DefaultProducerContext;
use xkafka::raw::rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use xkafka::raw::rdkafka::ClientConfig;

use crate::ours::payload;
use crate::peers::{PeerDetails, PeerKind};
use crate::{unique, Sizes, Target};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The prefilled topics of a target.
pub(crate) struct Topics {
    /// 100-byte messages, 6 partitions.
    pub(crate) small: String,
    /// 1 KiB messages, 6 partitions.
    pub(crate) large: String,
    /// 100-byte messages with 1,000 distinct keys, 6 partitions.
    pub(crate) keyed: String,
    /// Where the publish comparisons write.
    pub(crate) sink: String,
}

/// Creates topic `name` on `target` with `partitions` partitions.
pub(crate) async fn create(target: &Target, name: &str, partitions: i32) -> BoxResult<()> {
    match target.mock() {
        // The mock cluster has no admin API.
        Some(mock) => mock.create_topic(name, partitions)?,
        None => {
            let topics = [(name, partitions)];
            xkafka::admin::ensure_topics(
                &target.brokers,
                &topics,
                &xkafka::Config::new(),
                Duration::from_secs(30),
            )
            .await?
        }
    }
    Ok(())
}

/// How a prefilled topic's messages are spread over its partitions.
#[derive(Clone, Copy)]
pub(crate) enum Spread {
    /// Round robin: every partition gets the same number, so the batch
    /// consumer's batches are all full (a trailing partial batch would wait
    /// for its window, which would then weigh on a sub-second run).
    Even,
    /// By key (1,000 keys): the per-key concurrency runs need real keys.
    ByKey,
    /// Round robin over this many partitions (the sweep's topics).
    EvenOver(i32),
}

/// Publishes `messages` values of `size` bytes to `topic` (keys `key-0` to
/// `key-999`), spread as `spread` says.
pub(crate) fn fill(
    brokers: &str,
    topic: &str,
    messages: u64,
    size: usize,
    spread: Spread,
) -> BoxResult<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .create()?;
    let value = payload(size);
    for i in 0..messages {
        let key = format!("key-{}", i % 1000);
        let mut record = BaseRecord::<String, Vec<u8>>::to(topic)
            .key(&key)
            .payload(&value);
        let round_robin = match spread {
            Spread::Even => Some(PARTITIONS),
            Spread::EvenOver(partitions) => Some(partitions),
            Spread::ByKey => None,
        };
        if let Some(partitions) = round_robin {
            record = record.partition((i % partitions as u64) as i32);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    if producer.in_flight_count() > 0 {
        return Err(format!("could not fill {topic}").into());
    }
    Ok(())
}

/// Partitions of every prefilled topic.
pub(crate) const PARTITIONS: i32 = 6;

/// Creates and fills the topics every round reads again from the start.
pub(crate) async fn prepare(
    target: &Target,
    sizes: &Sizes,
    bar: &ProgressBar,
) -> BoxResult<Topics> {
    let topics = Topics {
        small: unique("bench-100b"),
        large: unique("bench-1k"),
        keyed: unique("bench-keyed"),
        sink: unique("bench-sink"),
    };
    for name in [&topics.small, &topics.large, &topics.keyed, &topics.sink] {
        create(target, name, PARTITIONS).await?;
    }
    bar.set_message("filling topics");
    fill(
        &target.brokers,
        &topics.small,
        sizes.consume,
        100,
        Spread::Even,
    )?;
    fill(
        &target.brokers,
        &topics.large,
        sizes.consume_1k,
        1024,
        Spread::Even,
    )?;
    fill(
        &target.brokers,
        &topics.keyed,
        sizes.concurrent.max(sizes.sequential_slow),
        100,
        Spread::ByKey,
    )?;
    Ok(topics)
}

/// A new topic (latency runs must not see each other's messages).
pub(crate) async fn fresh_topic(target: &Target) -> BoxResult<String> {
    let name = unique("bench-latency");
    create(target, &name, 1).await?;
    Ok(name)
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// One comparison on one broker.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Comparison {
    pub(crate) name: String,
    pub(crate) unit: String,
    pub(crate) ours: f64,
    pub(crate) baseline: f64,
    /// Higher is better: ours/baseline for throughput, baseline/ours for
    /// latency.
    pub(crate) ratio: f64,
    pub(crate) ours_runs: Vec<f64>,
    pub(crate) baseline_runs: Vec<f64>,
    /// CPU seconds (user + system) of the whole process during each round
    /// of each side, in 10 ms ticks: with the mock cluster in process, the
    /// broker's share is in both. Empty where not measured.
    pub(crate) ours_cpu_secs: Vec<f64>,
    pub(crate) baseline_cpu_secs: Vec<f64>,
    /// The baseline's CPU time over ours, summed over the rounds (higher
    /// is better for ours); for the throughput comparisons.
    pub(crate) cpu_ratio: Option<f64>,
    pub(crate) note: String,
}

/// Ours against a peer (Go xkafka, the pure-Rust confluent-kafka client) in
/// one comparison's rounds. Serialized with the peer's key in the field
/// names (`go`, `go_runs`, … for Go xkafka; `rust`, `rust_runs`, … for the
/// Rust client): see [`PeerComparison::serialize`].
#[derive(Clone, Debug)]
pub(crate) struct PeerComparison {
    /// `<comparison>_vs_<key>` (`_vs_go`, `_vs_rust`).
    pub(crate) name: String,
    /// Serialized as the program's name (`go-xkafka`, `confluent-kafka-rust`).
    pub(crate) peer: PeerKind,
    pub(crate) unit: String,
    pub(crate) ours: f64,
    /// The peer's median (`<key>`).
    pub(crate) theirs: f64,
    /// ours/peer (higher is better for ours).
    pub(crate) ratio: f64,
    pub(crate) ours_runs: Vec<f64>,
    pub(crate) theirs_runs: Vec<f64>,
    /// CPU seconds (user + system) per run, medians: our whole process
    /// around each of our runs (client start to close; on the Kafka target
    /// only, as the mock cluster runs in our process) and the peer's
    /// process, start to exit.
    pub(crate) ours_cpu_secs: Option<f64>,
    pub(crate) theirs_cpu_secs: f64,
    /// The peer process's CPU within its timed span (first to last
    /// message), median.
    pub(crate) theirs_cpu_window_secs: f64,
    /// Each run as the program printed it (`<key>_details`).
    pub(crate) details: PeerDetails,
    /// `consume_conc16_1ms` only (Go): each side's sequential rate with the
    /// same 1 ms handler (medians), as a 1 ms sleep lasts longer in tokio
    /// than in Go; `ratio_per_sequential` = (ours/ours_seq) / (go/go_seq).
    pub(crate) ours_sequential_1ms: Option<f64>,
    pub(crate) theirs_sequential_1ms: Option<f64>,
    pub(crate) ratio_per_sequential: Option<f64>,
    pub(crate) note: String,
}

impl Serialize for PeerComparison {
    /// The fields in their order, the peer's under its key: for Go xkafka
    /// exactly the names the results always had (`go`, `go_runs`,
    /// `go_cpu_secs`, `go_cpu_window_secs`, `go_details`,
    /// `go_sequential_1ms`).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let key = self.peer.key();
        let mut map = serializer.serialize_map(Some(16))?;
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("peer", self.peer.id())?;
        map.serialize_entry("unit", &self.unit)?;
        map.serialize_entry("ours", &self.ours)?;
        map.serialize_entry(key, &self.theirs)?;
        map.serialize_entry("ratio", &self.ratio)?;
        map.serialize_entry("ours_runs", &self.ours_runs)?;
        map.serialize_entry(&format!("{key}_runs"), &self.theirs_runs)?;
        map.serialize_entry("ours_cpu_secs", &self.ours_cpu_secs)?;
        map.serialize_entry(&format!("{key}_cpu_secs"), &self.theirs_cpu_secs)?;
        map.serialize_entry(
            &format!("{key}_cpu_window_secs"),
            &self.theirs_cpu_window_secs,
        )?;
        map.serialize_entry(&format!("{key}_details"), &self.details)?;
        map.serialize_entry("ours_sequential_1ms", &self.ours_sequential_1ms)?;
        map.serialize_entry(
            &format!("{key}_sequential_1ms"),
            &self.theirs_sequential_1ms,
        )?;
        map.serialize_entry("ratio_per_sequential", &self.ratio_per_sequential)?;
        map.serialize_entry("note", &self.note)?;
        map.end()
    }
}

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
    pub(crate) go_peer: Option<crate::peers::GoVersions>,
    /// The Rust peer's versions, once it ran; left out if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rust_peer: Option<crate::peers::RustVersions>,
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
        if !self.comparisons.is_empty() {
            println!(
                "\n{:<20} {:>7} {:>16} {:>16} {:>7} {:>6}  note",
                "comparison", "broker", "ours", "baseline", "ratio", "cpu"
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
            println!(
                "{:<26} {:>7} {:>16} {:>16} {:>7} {:>8} {:>8}  note",
                "comparison",
                "broker",
                "ours",
                kind.key(),
                "ratio",
                "cpu ours",
                cpu_theirs
            );
            for (broker, comparisons) in &self.peers {
                for c in comparisons.iter().filter(|c| c.peer == kind) {
                    let ours_cpu = c.ours_cpu_secs.map_or("-".into(), |v| format!("{v:.2}"));
                    println!(
                        "{:<26} {:>7} {:>11.1} {:<5}{:>11.1} {:<5}{:>7.3} {:>8} {:>8.2}  {}",
                        c.name,
                        broker,
                        c.ours,
                        c.unit,
                        c.theirs,
                        c.unit,
                        c.ratio,
                        ours_cpu,
                        c.theirs_cpu_secs,
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

/// Writes `ratios.svg` (bars per comparison and broker, the 1.0 line),
/// `scaling.svg` (msg/s against concurrency with a 1 ms handler) and, when
/// measured, `eos.svg` (consume-transform-produce throughput per variant).
pub(crate) fn charts(results: &Results, dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("ratios.svg"), ratios_svg(results))?;
    std::fs::write(dir.join("scaling.svg"), scaling_svg(results))?;
    if !results.eos.is_empty() {
        std::fs::write(dir.join("eos.svg"), eos_svg(results))?;
    }
    // The sweep's charts, from the primary broker's sweep.
    let sweep = results
        .sweep
        .get("kafka")
        .or_else(|| results.sweep.values().next());
    if let Some(sweep) = sweep {
        for (file, svg) in sweep_svgs(sweep) {
            std::fs::write(dir.join(file), svg)?;
        }
    }
    Ok(())
}

/// Draws the sweep's charts into `dir` from a `results.json` (its Kafka
/// sweep, or the first one).
pub(crate) fn sweep_charts_from(json: &Path, dir: &Path) -> BoxResult<()> {
    #[derive(serde::Deserialize)]
    struct Saved {
        sweep: BTreeMap<String, crate::sweep::Figures>,
    }
    let saved: Saved = serde_json::from_str(&std::fs::read_to_string(json)?)?;
    let sweep = saved
        .sweep
        .get("kafka")
        .or_else(|| saved.sweep.values().next())
        .ok_or_else(|| format!("{} holds no sweep", json.display()))?;
    std::fs::create_dir_all(dir)?;
    for (file, svg) in sweep_svgs(sweep) {
        std::fs::write(dir.join(file), svg)?;
        println!("{}", dir.join(file).display());
    }
    Ok(())
}

/// The sides of the sweep, in order, with their colours.
const SWEEP_SIDES: [(&str, &str, &str); 3] = [
    ("ours", "xkafka (ours)", "#3b7dd8"),
    ("raw", "raw rdkafka loop", "#8a8a8a"),
    ("go", "Go xkafka", "#d8843b"),
];

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

/// `(file, svg)` for the sweep: throughput against partitions, value size
/// and concurrency (one line per side), and CPU per million messages.
fn sweep_svgs(f: &crate::sweep::Figures) -> Vec<(&'static str, String)> {
    let series = |points: &[crate::sweep::Point], value: &dyn Fn(&crate::sweep::Figure) -> f64| {
        SWEEP_SIDES
            .iter()
            .filter(|(key, _, _)| points.iter().any(|p| p.sides.contains_key(*key)))
            .map(|(key, label, color)| {
                let values = points
                    .iter()
                    .map(|p| p.sides.get(*key).map_or(f64::NAN, value))
                    .collect();
                (label.to_string(), *color, false, values)
            })
            .collect::<Vec<_>>()
    };
    let xs =
        |points: &[crate::sweep::Point]| points.iter().map(|p| p.x.clone()).collect::<Vec<_>>();
    let rate = |s: &crate::sweep::Figure| s.msgs_per_sec;
    let mut out = Vec::new();
    let mut one = |file, title: String, points: &[crate::sweep::Point], log: bool| {
        let svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="640" height="340" font-family="sans-serif" font-size="12">{}</svg>"#,
            line_panel(
                &title,
                "msg/s",
                &xs(points),
                &series(points, &rate),
                log,
                640.0,
                340.0
            )
        );
        out.push((file, svg));
    };
    one(
        "sweep_partitions.svg",
        format!(
            "Streaming consumer vs partitions, {} × 100 B, no-op handler (msg/s)",
            f.partitions.first().map_or(0, |p| p.messages)
        ),
        &f.partitions,
        false,
    );
    one(
        "sweep_size.svg",
        "Streaming consumer vs value size, 6 partitions, no-op handler (msg/s)".into(),
        &f.sizes,
        true,
    );
    // Concurrency: msg/s (log scale) and each side over its own N = 1.
    let mut relative = series(&f.concurrency, &|s| s.over_n1.unwrap_or(f64::NAN));
    relative.push((
        "ideal (N ×)".into(),
        "#444444",
        true,
        f.concurrency.iter().map(|p| p.concurrency as f64).collect(),
    ));
    let svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="340" font-family="sans-serif" font-size="12">{}<g transform="translate(500,0)">{}</g></svg>"#,
        line_panel(
            "1 ms handler vs concurrency N (msg/s)",
            "msg/s",
            &xs(&f.concurrency),
            &series(&f.concurrency, &rate),
            true,
            500.0,
            340.0
        ),
        line_panel(
            "the same over each side's own N=1 rate",
            "× N=1",
            &xs(&f.concurrency),
            &relative,
            false,
            500.0,
            340.0
        )
    );
    out.push(("sweep_concurrency.svg", svg));
    out.push(("sweep_cpu.svg", sweep_cpu_svg(f)));
    out
}

/// A line chart in a `w` × `h` box: categorical x labels, one line per
/// series `(label, colour, dashed, values)`; y from 0 (or log scale).
fn line_panel(
    title: &str,
    unit: &str,
    xs: &[String],
    series: &[(String, &str, bool, Vec<f64>)],
    log: bool,
    w: f64,
    h: f64,
) -> String {
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 70.0);
    let values = series
        .iter()
        .flat_map(|s| s.3.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0);
    let max = values.clone().fold(1.0f64, f64::max);
    let min = values.fold(max, f64::min);
    // Log scale: whole decades around the values; linear: 0 to max + 10 %.
    let (lo, hi) = if log {
        (
            10f64.powf(min.log10().floor()),
            10f64.powf(max.log10().ceil()),
        )
    } else {
        (0.0, max * 1.1)
    };
    let ph = h - top - bottom;
    let y_of = |v: f64| {
        let t = if log {
            (v.log10() - lo.log10()) / (hi.log10() - lo.log10())
        } else {
            (v - lo) / (hi - lo)
        };
        top + ph * (1.0 - t)
    };
    let step = (w - left - right) / xs.len().max(1) as f64;
    let x_of = |i: usize| left + step * (i as f64 + 0.5);
    let mut svg = format!(r#"<text x="10" y="20" font-size="14">{title}</text>"#);
    // Grid: decades (log) or five steps (linear).
    let ticks: Vec<f64> = if log {
        let mut t = Vec::new();
        let mut v = lo;
        while v <= hi * 1.0001 {
            t.push(v);
            v *= 10.0;
        }
        t
    } else {
        (0..=5).map(|i| hi * i as f64 / 5.0).collect()
    };
    for t in ticks {
        let y = y_of(t);
        let label = if t >= 1e6 {
            format!("{:.1}M", t / 1e6)
        } else if t >= 1e3 {
            format!("{:.0}k", t / 1e3)
        } else {
            format!("{t:.0}")
        };
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10">{label}</text>"##,
            w - right,
            left - 4.0,
            y + 3.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="10" y="{:.1}" font-size="10">{unit}</text>"#,
        top - 6.0
    );
    for (i, x) in xs.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x}</text>"#,
            x_of(i),
            h - bottom + 18.0
        );
    }
    for (si, (label, color, dashed, values)) in series.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite() && **v > 0.0)
            .map(|(i, v)| format!("{:.1},{:.1}", x_of(i), y_of(*v)))
            .collect();
        let dash = if *dashed {
            r#" stroke-dasharray="5 4""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            points.join(" ")
        );
        for (i, v) in values.iter().enumerate() {
            if !(v.is_finite() && *v > 0.0) || *dashed {
                continue;
            }
            // Above the point when it is the highest (solid) one here,
            // below otherwise, so close lines stay readable.
            let highest = series
                .iter()
                .filter(|s| !s.2)
                .filter_map(|s| s.3.get(i).copied())
                .filter(|o| o.is_finite())
                .all(|o| o <= *v);
            let text = if *v >= 1e4 {
                format!("{:.0}k", v / 1e3)
            } else if *v >= 1e3 {
                format!("{:.1}k", v / 1e3)
            } else if *v >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            };
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="10" fill="{color}">{text}</text>"#,
                x_of(i),
                y_of(*v),
                x_of(i) + 5.0,
                y_of(*v) + if highest { -5.0 } else { 13.0 }
            );
        }
        // Legend, under the x labels.
        let lx = 10.0 + (w - 20.0) / series.len().max(1) as f64 * si as f64;
        let ly = h - 18.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="11">{label}</text>"#,
            lx + 18.0,
            lx + 22.0,
            ly + 4.0
        );
    }
    svg
}

/// CPU seconds (user + system) per million messages: the 6-partition
/// 100-byte consume point and `publish_async`, one bar per side.
fn sweep_cpu_svg(f: &crate::sweep::Figures) -> String {
    let groups: Vec<(String, &crate::sweep::Point)> = f
        .partitions
        .iter()
        .filter(|p| p.partitions == crate::report::PARTITIONS)
        .map(|p| ("consume, 6 partitions, 100 B".to_owned(), p))
        .chain(
            f.publish_async
                .iter()
                .map(|p| ("publish_async, 100 B".to_owned(), p)),
        )
        .collect();
    let (w, h, left, bottom) = (640.0, 320.0, 60.0, 60.0);
    let max = groups
        .iter()
        .flat_map(|(_, p)| p.sides.values().filter_map(|s| s.cpu_per_million_secs))
        .filter(|v| v.is_finite())
        .fold(0.1f64, f64::max)
        * 1.15;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><text x="10" y="20" font-size="14">CPU seconds (user + system) per million messages, lower is better</text><text x="10" y="36" font-size="11">whole client: start, join, run, close; Go: its process, start to exit</text>"#
    );
    let ph = h - bottom - 50.0;
    let group_w = (w - left - 20.0) / groups.len().max(1) as f64;
    for (gi, (label, p)) in groups.iter().enumerate() {
        let gx = left + group_w * gi as f64;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.0}" text-anchor="middle">{label}</text>"#,
            gx + group_w / 2.0,
            h - bottom + 18.0
        );
        let bw = (group_w - 40.0) / SWEEP_SIDES.len() as f64;
        for (si, (key, _, color)) in SWEEP_SIDES.iter().enumerate() {
            let Some(v) = p.sides.get(*key).and_then(|s| s.cpu_per_million_secs) else {
                continue;
            };
            let bar_h = v / max * ph;
            let x = gx + 20.0 + bw * si as f64;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bar_h:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{v:.2}</text>"#,
                h - bottom - bar_h,
                bw - 6.0,
                x + (bw - 6.0) / 2.0,
                h - bottom - bar_h - 4.0
            );
        }
    }
    for (si, (_, label, color)) in SWEEP_SIDES.iter().enumerate() {
        let lx = 10.0 + 200.0 * si as f64;
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="11">{label}</text>"#,
            h - 22.0,
            lx + 16.0,
            h - 12.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn ratios_svg(results: &Results) -> String {
    let rows: Vec<(String, &str, f64, Option<PeerKind>)> = results
        .comparisons
        .iter()
        .flat_map(|(b, cs)| {
            cs.iter()
                // ours/ours (exactly-once against at-least-once): in eos.svg.
                .filter(|c| !c.name.starts_with("eos_vs_alo"))
                .map(move |c| (c.name.clone(), b.as_str(), c.ratio, None))
        })
        // Ours against the peers (`<name>_vs_go`, then `<name>_vs_rust`),
        // after them.
        .chain(PeerKind::ALL.into_iter().flat_map(|kind| {
            results.peers.iter().flat_map(move |(b, cs)| {
                cs.iter()
                    .filter(move |c| c.peer == kind)
                    .map(move |c| (c.name.clone(), b.as_str(), c.ratio, Some(kind)))
            })
        }))
        .collect();
    let with_rust = rows.iter().any(|r| r.3 == Some(PeerKind::Rust));
    let (w, row_h, left) = (740.0, 22.0, 255.0);
    let h = 40.0 + row_h * rows.len() as f64 + 30.0;
    let max = rows
        .iter()
        .map(|r| r.2)
        .filter(|r| r.is_finite())
        .fold(1.2f64, f64::max);
    let scale = (w - left - 60.0) / max;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let title = if with_rust {
        "xkafka / raw rdkafka, / Go xkafka (orange, _vs_go), / confluent-kafka Rust (green, _vs_rust); higher is better"
    } else {
        "xkafka / raw rdkafka, and xkafka / Go xkafka (orange, _vs_go); higher is better"
    };
    let _ = write!(svg, r#"<text x="10" y="20" font-size="14">{title}</text>"#);
    for (i, (name, broker, ratio, kind)) in rows.iter().enumerate() {
        let y = 40.0 + row_h * i as f64;
        let color = match (*broker == "kafka", kind) {
            (true, None) => "#3b7dd8",
            (false, None) => "#9bb8e0",
            (true, Some(PeerKind::Go)) => "#d8843b",
            (false, Some(PeerKind::Go)) => "#ecbd92",
            (true, Some(PeerKind::Rust)) => "#4a9a5b",
            (false, Some(PeerKind::Rust)) => "#a9d4b2",
        };
        let width = if ratio.is_finite() {
            ratio * scale
        } else {
            0.0
        };
        let _ = write!(
            svg,
            r#"<text x="10" y="{:.0}">{name} ({broker})</text><rect x="{left}" y="{:.0}" width="{width:.1}" height="{:.0}" fill="{color}"/><text x="{:.1}" y="{:.0}">{ratio:.2}</text>"#,
            y + 14.0,
            y + 3.0,
            row_h - 6.0,
            left + width + 4.0,
            y + 14.0
        );
    }
    let x1 = left + scale;
    let _ = write!(
        svg,
        r#"<line x1="{x1:.1}" y1="32" x2="{x1:.1}" y2="{:.0}" stroke="black" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.0}">1.0</text></svg>"#,
        h - 20.0,
        x1 - 8.0,
        h - 6.0
    );
    svg
}

fn scaling_svg(results: &Results) -> String {
    let (w, h, left, bottom) = (640.0, 320.0, 70.0, 40.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><text x="10" y="20" font-size="14">Concurrency scaling, 1 ms handler, per key (msg/s)</text>"#
    );
    let series: Vec<(&String, Vec<(String, f64)>)> = results
        .scaling
        .iter()
        .map(|(b, pts)| (b, pts.iter().map(|(k, v)| (k.clone(), *v)).collect()))
        .collect();
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max);
    let labels = ["1", "4", "16", "64", "16 unordered"];
    let group_w = (w - left - 20.0) / labels.len() as f64;
    for (li, label) in labels.iter().enumerate() {
        let gx = left + group_w * li as f64;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.0}">N={label}</text>"#,
            gx + 4.0,
            h - 20.0
        );
        for (si, (broker, points)) in series.iter().enumerate() {
            let Some(v) = points.iter().find(|p| p.0 == *label).map(|p| p.1) else {
                continue;
            };
            let bar_h = (v / max) * (h - bottom - 50.0);
            let bw = (group_w - 12.0) / series.len().max(1) as f64;
            let x = gx + 4.0 + bw * si as f64;
            let color = if broker.as_str() == "kafka" {
                "#3b7dd8"
            } else {
                "#9bb8e0"
            };
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bar_h:.1}" fill="{color}"/><text x="{x:.1}" y="{:.1}" font-size="10">{v:.0}</text>"#,
                h - bottom - bar_h,
                bw - 2.0,
                h - bottom - bar_h - 3.0
            );
        }
    }
    let _ = write!(svg, "</svg>");
    svg
}

/// Consume-transform-produce: per broker and variant, a bar for the input
/// consumed (light) over one for the output committed (dark), msg/s.
fn eos_svg(results: &Results) -> String {
    let mut rows: Vec<(&str, &str, &crate::eos::Figures)> = results
        .eos
        .iter()
        .flat_map(|(b, vs)| vs.iter().map(move |(n, f)| (b.as_str(), n.as_str(), f)))
        .collect();
    rows.sort_by_key(|(b, n, _)| (*b, crate::eos::order_key(n)));
    let (w, row_h, left) = (720.0, 34.0, 190.0);
    let h = 60.0 + row_h * rows.len() as f64 + 20.0;
    let max = rows
        .iter()
        .flat_map(|r| [r.2.consumed, r.2.committed])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max);
    let scale = (w - left - 90.0) / max;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><text x="10" y="20" font-size="14">Consume-transform-produce, {} × 100 B (msg/s, higher is better)</text><text x="10" y="38" font-size="11">light: input consumed · dark: output committed (offsets at the end, outputs acknowledged)</text>"#,
        results.sizes.eos
    );
    for (i, (broker, name, f)) in rows.iter().enumerate() {
        let y = 52.0 + row_h * i as f64;
        let width = |v: f64| if v.is_finite() { v * scale } else { 0.0 };
        let (c, k) = (width(f.consumed), width(f.committed));
        let dark = if name.starts_with("ours") {
            "#3b7dd8"
        } else {
            "#8a8a8a"
        };
        let light = if name.starts_with("ours") {
            "#bcd3f2"
        } else {
            "#d6d6d6"
        };
        let _ = write!(
            svg,
            r#"<text x="10" y="{:.0}">{name} ({broker})</text><rect x="{left}" y="{y:.0}" width="{c:.1}" height="13" fill="{light}"/><text x="{:.1}" y="{:.0}" font-size="10">{:.0}</text><rect x="{left}" y="{:.0}" width="{k:.1}" height="13" fill="{dark}"/><text x="{:.1}" y="{:.0}" font-size="10">{:.0}</text>"#,
            y + 20.0,
            left + c + 4.0,
            y + 11.0,
            f.consumed,
            y + 14.0,
            left + k + 4.0,
            y + 25.0,
            f.committed
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{GoRun, RustRun};

    fn comparison(peer: PeerKind, details: PeerDetails) -> PeerComparison {
        PeerComparison {
            name: format!("publish_async_vs_{}", peer.key()),
            peer,
            unit: "msg/s".into(),
            ours: 2.0,
            theirs: 1.0,
            ratio: 2.0,
            ours_runs: vec![2.0],
            theirs_runs: vec![1.0],
            ours_cpu_secs: Some(0.5),
            theirs_cpu_secs: 0.7,
            theirs_cpu_window_secs: 0.3,
            details,
            ours_sequential_1ms: None,
            theirs_sequential_1ms: None,
            ratio_per_sequential: None,
            note: String::new(),
        }
    }

    fn keys(value: &serde_json::Value) -> Vec<&str> {
        value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    /// One run's figures, as any peer prints them.
    fn figures() -> crate::peers::RunFigures {
        crate::peers::RunFigures {
            msgs_per_sec: 1.0,
            elapsed_secs: 1.0,
            cpu_user_secs: 0.5,
            cpu_sys_secs: 0.2,
            cpu_window_secs: 0.3,
        }
    }

    #[test]
    fn a_go_comparison_keeps_its_field_names() {
        let run = GoRun {
            figures: figures(),
            go_xkafka: "v0.11.1".into(),
            confluent_kafka_go: "v2.12.0".into(),
            librdkafka: "2.12.0".into(),
            go_version: "go1.26".into(),
        };
        let json =
            serde_json::to_value(comparison(PeerKind::Go, PeerDetails::Go(vec![run]))).unwrap();
        let mut names = keys(&json);
        names.sort_unstable();
        let mut expected = vec![
            "name",
            "peer",
            "unit",
            "ours",
            "go",
            "ratio",
            "ours_runs",
            "go_runs",
            "ours_cpu_secs",
            "go_cpu_secs",
            "go_cpu_window_secs",
            "go_details",
            "ours_sequential_1ms",
            "go_sequential_1ms",
            "ratio_per_sequential",
            "note",
        ];
        expected.sort_unstable();
        assert_eq!(names, expected);
        assert_eq!(json["peer"], "go-xkafka");
        assert_eq!(json["go_details"][0]["go_xkafka"], "v0.11.1");
    }

    #[test]
    fn a_rust_comparison_names_its_fields_rust() {
        let run = RustRun {
            figures: figures(),
            confluent_kafka: "1.0.0".into(),
            rustc: "rustc 1.95.0".into(),
        };
        let json =
            serde_json::to_value(comparison(PeerKind::Rust, PeerDetails::Rust(vec![run]))).unwrap();
        assert_eq!(json["peer"], "confluent-kafka-rust");
        assert_eq!(json["rust"], 1.0);
        assert_eq!(json["rust_runs"][0], 1.0);
        assert_eq!(json["rust_details"][0]["confluent_kafka"], "1.0.0");
        assert!(keys(&json).iter().all(|k| !k.starts_with("go")));
    }
}
