//! How records, bytes and times are shown: text for people, JSON for
//! scripts; progress bars on a terminal.

use std::io::IsTerminal;
use std::time::{Duration, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use xkafka::Message;

/// Bytes as text: the text itself when they are UTF-8 (`false`), else
/// escaped like a Rust byte string, `\xff` for a byte that is not
/// printable ASCII (`true`).
pub(crate) fn bytes(b: &[u8]) -> (String, bool) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_owned(), false),
        Err(_) => (b.escape_ascii().to_string(), true),
    }
}

/// Bytes on one line of text: UTF-8 text with its control characters
/// escaped (`\n`, `\u{1b}`), anything else as `b"..."`.
pub(crate) fn one_line(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => text_line(s),
        Err(_) => format!("b\"{}\"", b.escape_ascii()),
    }
}

/// Text on one line: control characters escaped.
pub(crate) fn text_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// At most `max` characters of `s`, with `…` when cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC, to the millisecond).
pub(crate) fn time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => format!("{ms} ms"),
    }
}

/// A nullable byte field as JSON: `(value, escaped)`.
fn json_bytes(b: Option<&[u8]>) -> (Value, bool) {
    match b {
        None => (Value::Null, false),
        Some(b) => {
            let (text, escaped) = bytes(b);
            (Value::String(text), escaped)
        }
    }
}

/// A record as one JSON object: topic, partition, offset, timestamp (ms)
/// and time (RFC 3339), key, value and headers; each byte field is text
/// when UTF-8 and escaped otherwise, with a `*_escaped` / `escaped` flag.
pub(crate) fn record_json(m: &Message) -> Value {
    let (key, key_escaped) = json_bytes(m.key().map(|b| b.as_ref()));
    let (value, value_escaped) = json_bytes(m.value().map(|b| b.as_ref()));
    let headers: Vec<Value> = m
        .headers()
        .iter()
        .map(|h| {
            let (value, escaped) = json_bytes(h.value().map(|b| b.as_ref()));
            json!({"name": h.name(), "value": value, "escaped": escaped})
        })
        .collect();
    let ts = m.timestamp().map(|t| t.millis());
    json!({
        "topic": m.topic(),
        "partition": m.partition(),
        "offset": m.offset(),
        "timestamp": ts,
        "time": ts.map(time),
        "key": key,
        "key_escaped": key_escaped,
        "value": value,
        "value_escaped": value_escaped,
        "headers": headers,
    })
}

/// A record on one line: `[partition]@offset time key=… headers={…} value=…`
/// (`null` for a null key or value).
pub(crate) fn record_text(m: &Message) -> String {
    let field = |b: Option<&[u8]>| b.map_or_else(|| "null".to_owned(), one_line);
    let mut line = format!(
        "[{}]@{}",
        m.partition().unwrap_or(-1),
        m.offset().unwrap_or(-1)
    );
    if let Some(ts) = m.timestamp() {
        line.push(' ');
        line.push_str(&time(ts.millis()));
    }
    line.push_str(" key=");
    line.push_str(&field(m.key().map(|b| b.as_ref())));
    if !m.headers().is_empty() {
        let shown: Vec<String> = m
            .headers()
            .iter()
            .map(|h| {
                format!(
                    "{}={}",
                    text_line(h.name()),
                    field(h.value().map(|b| b.as_ref()))
                )
            })
            .collect();
        line.push_str(" headers={");
        line.push_str(&shown.join(", "));
        line.push('}');
    }
    line.push_str(" value=");
    line.push_str(&field(m.value().map(|b| b.as_ref())));
    line
}

/// Rows under a header, each column as wide as its widest cell, two spaces
/// apart (the column order is the header's, stable for scripts that cut).
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out
    };
    let mut lines = vec![line(header.to_vec())];
    for row in rows {
        lines.push(line(row.iter().map(String::as_str).collect()));
    }
    lines.join("\n")
}

/// A progress bar on stderr for `total` records, drawn only when stderr is
/// a terminal and progress was not turned off.
pub(crate) fn progress(total: u64, enabled: bool, what: &str) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner counting records of unknown total (same conditions).
pub(crate) fn spinner(enabled: bool, what: &str) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {human_pos} ({per_sec})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_text_or_escaped() {
        assert_eq!(bytes(b"caf\xc3\xa9"), ("café".to_owned(), false));
        assert_eq!(bytes(b"\xff\x00a\\"), (r"\xff\x00a\\".to_owned(), true));
        assert_eq!(one_line(b"a\nb"), r"a\nb");
        assert_eq!(one_line(b"\xfe"), r#"b"\xfe""#);
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1");
    }

    #[test]
    fn times_and_cuts() {
        assert_eq!(time(1_714_564_800_123), "2024-05-01T12:00:00.123Z");
        assert_eq!(cut("héllo", 2), "hé…");
        assert_eq!(cut("hé", 2), "hé");
    }

    #[test]
    fn records() {
        let m = Message::builder("t")
            .partition(1)
            .offset(7)
            .key("k")
            .value(&b"v\xff"[..])
            .header("h", "x")
            .null_header("n")
            .timestamp_millis(1_714_564_800_000)
            .build();
        assert_eq!(
            record_text(&m),
            r#"[1]@7 2024-05-01T12:00:00.000Z key=k headers={h=x, n=null} value=b"v\xff""#
        );
        let j = record_json(&m);
        assert_eq!(j["value"], r"v\xff");
        assert_eq!(j["value_escaped"], true);
        assert_eq!(j["headers"][1]["value"], Value::Null);
    }
}
