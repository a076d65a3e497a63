//! `xkafka config`: the effective client settings, secrets redacted.

use serde_json::json;

use crate::cli::Format;
use crate::client::{say, Conn, Failure};

/// Prints every setting the commands' clients start from: the CLI's
/// defaults, overridden by the `-X` properties, and the brokers. Secret
/// values (passwords, keys, tokens) are shown as `<redacted>`.
pub(crate) fn config(conn: &Conn, format: Format) -> Result<(), Failure> {
    let config = conn.config(&crate::client::CONSUMER_DEFAULTS, &[]);
    let settings: Vec<(String, String)> = config
        .config_map()
        .into_iter()
        .map(|(k, v)| {
            let shown = if xkafka::Config::is_secret(k) {
                "<redacted>".to_owned()
            } else {
                v.to_owned()
            };
            (k.to_owned(), shown)
        })
        .collect();
    match format {
        Format::Json => {
            let map: serde_json::Map<String, serde_json::Value> =
                settings.into_iter().map(|(k, v)| (k, json!(v))).collect();
            say(&json!({
                "settings": map,
                "timeout_ms": u64::try_from(conn.timeout.as_millis()).unwrap_or(u64::MAX),
            })
            .to_string())
        }
        Format::Text => {
            let lines: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
            say(&lines.join("\n"))
        }
    }
}
