//! librdkafka's log lines, forwarded to `tracing`, with quoted secrets
//! scrubbed ([`crate::secret`]).

use rdkafka::config::RDKafkaLogLevel;

use crate::secret::scrub;

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
}
