//! librdkafka's log lines, forwarded to `tracing`.

use rdkafka::config::RDKafkaLogLevel;

pub(crate) fn forward_log(client: &str, level: RDKafkaLogLevel, fac: &str, line: &str) {
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
