//! The figures a comparison yields — ours against the baselines, ours
//! against a peer — and what each peer's run prints: plain data the
//! measuring modules fill and the report prints.

use serde::{Deserialize, Serialize};

use crate::usage::Usage;

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
    /// The limit: librdkafka's fastest loop for the same work (median),
    /// where the comparison has one; its runs and CPU seconds per round.
    pub(crate) limit: Option<f64>,
    pub(crate) limit_runs: Vec<f64>,
    pub(crate) limit_cpu_secs: Vec<f64>,
    /// Ours over the limit, the median of the rounds' ratios.
    pub(crate) ratio_vs_limit: Option<f64>,
    /// CPU per message, ours over the limit's, over all rounds (lower is
    /// better for ours; the target is at most 1.2).
    pub(crate) cpu_vs_limit: Option<f64>,
    /// The limit's loop without copying key and value: the ceiling
    /// (`consume_seq`, `consume_seq_1k`).
    pub(crate) ceiling: Option<f64>,
    pub(crate) ceiling_runs: Vec<f64>,
    /// Peak resident memory of each in-process side during its runs.
    pub(crate) peak_rss_kib: Rss,
    pub(crate) note: String,
}

/// Peak resident memory, KiB, median of the runs: the bench process's
/// high-water mark during each run of a side (reset before it; with the mock
/// cluster in process, its broker's memory is in every side's).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Rss {
    pub(crate) ours: f64,
    pub(crate) baseline: f64,
    pub(crate) limit: Option<f64>,
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
    /// ours/peer (higher is better for ours): the median of the rounds'
    /// ratios, each round's runs paired.
    pub(crate) ratio: f64,
    /// The ratio of the two medians, for comparison.
    pub(crate) ratio_of_medians: f64,
    pub(crate) ours_runs: Vec<f64>,
    pub(crate) theirs_runs: Vec<f64>,
    /// CPU seconds (user + system) per run, medians: our whole process
    /// around each of our runs (client start to close; on the Kafka target
    /// only, as the mock cluster runs in our process) and the peer's
    /// process, start to exit.
    pub(crate) ours_cpu_secs: Option<f64>,
    pub(crate) theirs_cpu_secs: f64,
    /// Peak RSS (KiB), medians over the peer's rounds: our process during
    /// our runs (the mock cluster's memory included where it runs in
    /// process), the peer's process (`ru_maxrss`).
    pub(crate) ours_peak_rss_kib: f64,
    pub(crate) theirs_peak_rss_kib: f64,
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
        let mut map = serializer.serialize_map(Some(19))?;
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("peer", self.peer.id())?;
        map.serialize_entry("unit", &self.unit)?;
        map.serialize_entry("ours", &self.ours)?;
        map.serialize_entry(key, &self.theirs)?;
        map.serialize_entry("ratio", &self.ratio)?;
        map.serialize_entry("ratio_of_medians", &self.ratio_of_medians)?;
        map.serialize_entry("ours_runs", &self.ours_runs)?;
        map.serialize_entry(&format!("{key}_runs"), &self.theirs_runs)?;
        map.serialize_entry("ours_cpu_secs", &self.ours_cpu_secs)?;
        map.serialize_entry(&format!("{key}_cpu_secs"), &self.theirs_cpu_secs)?;
        map.serialize_entry(
            &format!("{key}_cpu_window_secs"),
            &self.theirs_cpu_window_secs,
        )?;
        map.serialize_entry("ours_peak_rss_kib", &self.ours_peak_rss_kib)?;
        map.serialize_entry(&format!("{key}_peak_rss_kib"), &self.theirs_peak_rss_kib)?;
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

/// Which peer a comparison is against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PeerKind {
    Go,
    Rust,
}

impl PeerKind {
    /// Every peer, in the order of the report.
    pub(crate) const ALL: [PeerKind; 2] = [PeerKind::Go, PeerKind::Rust];

    /// The program's name (`peer` in the results).
    pub(crate) fn id(self) -> &'static str {
        match self {
            PeerKind::Go => "go-xkafka",
            PeerKind::Rust => "confluent-kafka-rust",
        }
    }

    /// The short name: the comparisons' `_vs_<key>` suffix, the results'
    /// field names (`<key>_runs`, …) and the `RATIO` lines' `<key>=`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            PeerKind::Go => "go",
            PeerKind::Rust => "rust",
        }
    }
}

/// The figures every peer's run prints (its JSON line's first fields).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct RunFigures {
    pub(crate) msgs_per_sec: f64,
    pub(crate) elapsed_secs: f64,
    pub(crate) cpu_user_secs: f64,
    pub(crate) cpu_sys_secs: f64,
    pub(crate) cpu_window_secs: f64,
    /// The process's CPU time and peak RSS from `wait4` (not printed by the
    /// program: measured by the bench, as for ours).
    #[serde(skip_deserializing)]
    pub(crate) usage: Usage,
}

/// What every peer's run reports.
pub(crate) trait PeerRun: Sized {
    fn figures(&self) -> &RunFigures;
    fn figures_mut(&mut self) -> &mut RunFigures;
    /// The runs as kept in the results.
    fn details(runs: Vec<Self>) -> PeerDetails;

    fn msgs_per_sec(&self) -> f64 {
        self.figures().msgs_per_sec
    }
    /// User + system CPU of the whole process, start to exit, from `wait4`.
    fn cpu_secs(&self) -> f64 {
        self.figures().usage.cpu_secs
    }
    /// Peak resident memory of the process, KiB, from `wait4`.
    fn peak_rss_kib(&self) -> u64 {
        self.figures().usage.peak_rss_kib
    }
    /// CPU within the timed span.
    fn cpu_window_secs(&self) -> f64 {
        self.figures().cpu_window_secs
    }
}

/// Each run of a peer, as the program printed it (its known fields).
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum PeerDetails {
    Go(Vec<GoRun>),
    Rust(Vec<RustRun>),
}

/// What one run of the Go program printed.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct GoRun {
    #[serde(flatten)]
    pub(crate) figures: RunFigures,
    pub(crate) go_xkafka: String,
    pub(crate) confluent_kafka_go: String,
    pub(crate) librdkafka: String,
    pub(crate) go_version: String,
}

/// The versions the peer reported, for the results.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct GoVersions {
    pub(crate) go_xkafka: String,
    pub(crate) confluent_kafka_go: String,
    pub(crate) librdkafka: String,
    pub(crate) go: String,
}

impl GoRun {
    pub(crate) fn versions(&self) -> GoVersions {
        GoVersions {
            go_xkafka: self.go_xkafka.clone(),
            confluent_kafka_go: self.confluent_kafka_go.clone(),
            librdkafka: self.librdkafka.clone(),
            go: self.go_version.clone(),
        }
    }
}

impl PeerRun for GoRun {
    fn figures(&self) -> &RunFigures {
        &self.figures
    }
    fn figures_mut(&mut self) -> &mut RunFigures {
        &mut self.figures
    }
    fn details(runs: Vec<Self>) -> PeerDetails {
        PeerDetails::Go(runs)
    }
}

/// What one run of the Rust peer printed.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct RustRun {
    #[serde(flatten)]
    pub(crate) figures: RunFigures,
    /// The crate's version.
    pub(crate) confluent_kafka: String,
    /// `rustc --version` of its build.
    pub(crate) rustc: String,
}

/// The Rust peer's versions, for the results.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct RustVersions {
    pub(crate) confluent_kafka: String,
    pub(crate) rustc: String,
}

impl RustRun {
    pub(crate) fn versions(&self) -> RustVersions {
        RustVersions {
            confluent_kafka: self.confluent_kafka.clone(),
            rustc: self.rustc.clone(),
        }
    }
}

impl PeerRun for RustRun {
    fn figures(&self) -> &RunFigures {
        &self.figures
    }
    fn figures_mut(&mut self) -> &mut RunFigures {
        &mut self.figures
    }
    fn details(runs: Vec<Self>) -> PeerDetails {
        PeerDetails::Rust(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(peer: PeerKind, details: PeerDetails) -> PeerComparison {
        PeerComparison {
            name: format!("publish_async_vs_{}", peer.key()),
            peer,
            unit: "msg/s".into(),
            ours: 2.0,
            theirs: 1.0,
            ratio: 2.0,
            ratio_of_medians: 2.0,
            ours_runs: vec![2.0],
            theirs_runs: vec![1.0],
            ours_cpu_secs: Some(0.5),
            theirs_cpu_secs: 0.7,
            ours_peak_rss_kib: 20_480.0,
            theirs_peak_rss_kib: 10_240.0,
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
    fn figures() -> super::RunFigures {
        super::RunFigures {
            msgs_per_sec: 1.0,
            elapsed_secs: 1.0,
            cpu_user_secs: 0.5,
            usage: Usage::default(),
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
            "ratio_of_medians",
            "ours_runs",
            "go_runs",
            "ours_cpu_secs",
            "go_cpu_secs",
            "go_cpu_window_secs",
            "ours_peak_rss_kib",
            "go_peak_rss_kib",
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

    /// Each program's JSON line, extra fields and all, reads into its run
    /// type, the shared figures included.
    #[test]
    fn the_programs_lines_read_with_their_figures() {
        let go: GoRun = serde_json::from_str(
            r#"{"scenario":"consume_seq","messages":600000,"msgs_per_sec":5.0e5,
            "elapsed_secs":1.1,"cpu_user_secs":1.0,"cpu_sys_secs":0.25,"cpu_window_secs":1.2,
            "go_xkafka":"v0.11.1","confluent_kafka_go":"v2.12.0","librdkafka":"2.12.0",
            "go_version":"go1.26.8"}"#,
        )
        .unwrap();
        assert_eq!(go.msgs_per_sec(), 5.0e5);
        assert_eq!(
            (go.figures.cpu_user_secs, go.figures.cpu_sys_secs),
            (1.0, 0.25)
        );
        // CPU and peak RSS are the bench's own measure, not the program's.
        assert_eq!(go.figures.usage, Usage::default());
        assert_eq!(go.librdkafka, "2.12.0");
        let rust: RustRun = serde_json::from_str(
            r#"{"msgs_per_sec":2.0e6,"timed_messages":540000,"elapsed_secs":0.27,
            "cpu_user_secs":0.2,"cpu_sys_secs":0.05,"cpu_window_secs":0.22,"wall_secs":2.0,
            "confluent_kafka":"1.0.0","rustc":"rustc 1.95.0"}"#,
        )
        .unwrap();
        assert_eq!((rust.msgs_per_sec(), rust.cpu_window_secs()), (2.0e6, 0.22));
        assert_eq!(rust.confluent_kafka, "1.0.0");
    }
}
