//! librdkafka's log lines, forwarded to `tracing`, with quoted secrets
//! scrubbed.

use std::borrow::Cow;

use rdkafka::config::RDKafkaLogLevel;

use crate::config::is_secret;

/// Forwards one librdkafka log line. Runs on a client's polling thread:
/// a panic in the application's `tracing` subscriber is caught here, or it
/// would end that thread (and every delivery report or callback after it).
pub(crate) fn forward_log(client: &str, level: RDKafkaLogLevel, fac: &str, line: &str) {
    let forwarded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        emit(client, level, fac, line)
    }));
    if forwarded.is_err() {
        // Not through `tracing`: that is what panicked. Said once, not per line.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!(
                "xkafka: the tracing subscriber panicked on a librdkafka log line of {client}; \
                 such panics are caught and the line dropped"
            );
        });
    }
}

fn emit(client: &str, level: RDKafkaLogLevel, fac: &str, line: &str) {
    let line = scrub(line);
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", client, fac, "{line}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", client, fac, "{line}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", client, fac, "{line}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", client, fac, "{line}"),
    }
}

/// Removes what librdkafka quotes from a secret property's value.
///
/// librdkafka's messages (log lines, the reason of a client error, a client
/// creation error) sometimes quote part of a value, after naming the
/// property and a colon: `Unrecognized sasl.oauthbearer.config beginning
/// at: <the rest of the value>`. When a message names a secret property
/// ([`is_secret`]), everything after the next `:` becomes `<redacted>`.
pub(crate) fn scrub(text: &str) -> Cow<'_, str> {
    // Every secret property name contains one of these (see `is_secret`);
    // most lines contain none and are passed through without parsing.
    const MARKERS: [&str; 5] = ["password", "secret", ".config", "key.pem", "token"];
    let bytes = text.as_bytes();
    let mentions = |marker: &str| {
        bytes
            .windows(marker.len())
            .any(|w| w.eq_ignore_ascii_case(marker.as_bytes()))
    };
    if !MARKERS.into_iter().any(mentions) {
        return Cow::Borrowed(text);
    }
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (start, is_name_char(c)) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                start = None;
                let name = text[s..i].trim_end_matches('.');
                if name.contains('.') && is_secret(name) {
                    if let Some(colon) = text[i..].find(':') {
                        let kept = &text[..i + colon + 1];
                        return Cow::Owned(format!("{kept} <redacted>"));
                    }
                }
            }
            _ => {}
        }
    }
    Cow::Borrowed(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that panics, as a broken `tracing` subscriber would.
    struct Panicking;

    impl std::io::Write for Panicking {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            panic!("subscriber bug")
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_panicking_subscriber_cannot_end_the_polling_thread() {
        let subscriber = tracing_subscriber::fmt().with_writer(|| Panicking).finish();
        tracing::subscriber::with_default(subscriber, || {
            let unguarded = std::panic::catch_unwind(|| {
                emit("c", RDKafkaLogLevel::Error, "FAIL", "broker down")
            });
            assert!(unguarded.is_err(), "the subscriber does panic");
            // What the polling thread calls: returns normally.
            forward_log("c", RDKafkaLogLevel::Error, "FAIL", "broker down");
        });
    }

    #[test]
    fn quoted_secret_values_are_redacted() {
        for (line, expected) in [
            (
                "Failed to acquire SASL OAUTHBEARER token: Unrecognized sasl.oauthbearer.config \
                 beginning at: bogus s3cr3t",
                "Failed to acquire SASL OAUTHBEARER token: Unrecognized sasl.oauthbearer.config \
                 beginning at: <redacted>",
            ),
            (
                "Invalid sasl.oauthbearer.config: non-integral 'lifeSeconds': s3cr3t",
                "Invalid sasl.oauthbearer.config: <redacted>",
            ),
            ("ssl.key.password: s3cr3t", "ssl.key.password: <redacted>"),
        ] {
            assert_eq!(scrub(line), expected);
        }
    }

    #[test]
    fn other_lines_are_untouched() {
        for line in [
            "Broker: SASL Authentication failed: s3cr3t is not a property",
            "sasl.password = [redacted]",
            "OAUTHBEARER token: refreshed",
            "bootstrap.servers: 127.0.0.1:9092",
            "",
        ] {
            assert_eq!(scrub(line), line);
        }
    }
}
