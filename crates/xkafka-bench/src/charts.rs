//! The SVG charts of a run: the ratios, concurrency scaling,
//! consume-transform-produce and the sweep's panels.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::figures::PeerKind;
use crate::report::Results;
use crate::topics::PARTITIONS;
use crate::vocab::BoxResult;

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
        .filter(|p| p.partitions == PARTITIONS)
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
