//! Raw librdkafka properties, passed through untouched (Go xkafka's
//! `ConfigMap`), with secrets kept out of `Debug` output and error messages.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use crate::error::Error;
use crate::secret::{is_secret, shown_value};

/// librdkafka properties: any key of librdkafka's `CONFIGURATION.md`.
///
/// `Debug` shows secret values (`sasl.password`, `ssl.key.password`, PEM
/// keys, OAuth secrets…) as `<redacted>`.
///
/// ```
/// use xkafka::Config;
///
/// let mut config = Config::new();
/// config.set("sasl.username", "app").set("sasl.password", "hunter2");
/// let shown = format!("{config:?}");
/// assert!(shown.contains("app") && !shown.contains("hunter2"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: BTreeMap<String, String>,
}

impl Config {
    /// No properties.
    pub fn new() -> Self {
        Config::default()
    }

    /// Sets a property, replacing an earlier value.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.entries.insert(key.into(), value.into());
        self
    }

    /// A property's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Removes a property, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(key)
    }

    /// The properties, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Builds rdkafka's configuration and lets librdkafka validate every
    /// property, so that a typo fails at build time rather than never.
    pub(crate) fn to_client_config(&self) -> Result<ClientConfig, Error> {
        let mut config = ClientConfig::new();
        for (k, v) in &self.entries {
            // librdkafka takes C strings: rdkafka would fail later with an
            // error that names no property.
            if k.contains('\0') || v.contains('\0') {
                return Err(Error::InvalidConfig {
                    key: k.replace('\0', "\\0"),
                    value: shown_value(k, v),
                    reason: "a property name or value cannot contain a NUL byte".into(),
                });
            }
            config.set(k, v);
        }
        config
            .create_native_config()
            .map_err(|err| config_error(err, self))?;
        Ok(config)
    }

    /// Sets `bootstrap.servers` from the builder's broker list (when given)
    /// and checks that some broker is configured.
    pub(crate) fn resolve_brokers(&mut self, brokers: &[String]) -> Result<(), Error> {
        if !brokers.is_empty() {
            self.set("bootstrap.servers", brokers.join(","));
        }
        if self.get("bootstrap.servers").is_none_or(str::is_empty) {
            return Err(Error::MissingBrokers);
        }
        Ok(())
    }

    /// Whether the effective value of a boolean property is true.
    pub(crate) fn is_true(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| matches!(v, "true" | "1" | "yes"))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut config = Config::new();
        config.extend(iter);
        config
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for Config {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.set(k, v);
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, shown_value(k, v))))
            .finish()
    }
}

impl Config {
    /// Whether the librdkafka property `key` holds a secret (passwords,
    /// private keys, OAuth client secrets, …): xkafka never prints its value
    /// in `Debug` output, errors or logs.
    ///
    /// ```
    /// assert!(xkafka::Config::is_secret("sasl.password"));
    /// assert!(!xkafka::Config::is_secret("bootstrap.servers"));
    /// ```
    pub fn is_secret(key: &str) -> bool {
        is_secret(key)
    }
}

fn config_error(err: KafkaError, config: &Config) -> Error {
    match err {
        KafkaError::ClientConfig(_, reason, key, value) => {
            // librdkafka echoes the value; take ours so redaction applies.
            let value = config
                .get(&key)
                .map_or_else(|| format!("{value:?}"), |v| shown_value(&key, v));
            // librdkafka's reason may quote the value: scrub it for secrets.
            let reason = match config.get(&key) {
                Some(secret) if is_secret(&key) && !secret.is_empty() => {
                    reason.replace(secret, "<redacted>")
                }
                _ => reason,
            };
            Error::InvalidConfig { key, value, reason }
        }
        other => Error::kafka(crate::error::Operation::Create, other),
    }
}

/// librdkafka's `heartbeat.interval.ms` when none is given.
pub(crate) const LIBRDKAFKA_HEARTBEAT_INTERVAL_MS: u64 = 3_000;
/// librdkafka's `session.timeout.ms` when none is given.
pub(crate) const LIBRDKAFKA_SESSION_TIMEOUT_MS: u64 = 45_000;
/// librdkafka's `transaction.timeout.ms` when none is given.
pub(crate) const LIBRDKAFKA_TRANSACTION_TIMEOUT_MS: u64 = 60_000;

impl Config {
    /// An integer property in milliseconds: the value given, librdkafka's
    /// `default` when none is, and `None` when the value is not a number
    /// (librdkafka then refuses it with its own message, naming it).
    pub(crate) fn millis(&self, key: &str, default: u64) -> Option<(u64, bool)> {
        match self.get(key) {
            None => Some((default, false)),
            Some(v) => v.trim().parse().ok().map(|ms| (ms, true)),
        }
    }

    /// Whether the consumer joins its group with KIP-848's protocol
    /// (`group.protocol=consumer`), where the broker owns the session
    /// timeout and the heartbeat interval.
    pub(crate) fn is_kip848(&self) -> bool {
        self.get("group.protocol")
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("consumer"))
    }

    /// The broker's bound on one transaction of this producer: librdkafka's
    /// `transaction.timeout.ms` (given or its default), which librdkafka
    /// sends the transaction coordinator at `init_transactions`; `None`
    /// when the value is not a number (librdkafka refuses it).
    pub(crate) fn transaction_timeout(&self) -> Option<(Duration, String)> {
        let (ms, given) =
            self.millis("transaction.timeout.ms", LIBRDKAFKA_TRANSACTION_TIMEOUT_MS)?;
        let shown = if given {
            format!("`transaction.timeout.ms` ({ms} ms)")
        } else {
            format!("`transaction.timeout.ms` ({ms} ms, librdkafka's default)")
        };
        Some((Duration::from_millis(ms), shown))
    }

    /// Refuses a transactional producer whose bound on one transaction
    /// operation (`operation`, [`ProducerBuilder::transaction_timeout`])
    /// is not shorter than the broker's bound on the whole transaction.
    ///
    /// The transaction coordinator aborts a transaction open longer than
    /// `transaction.timeout.ms` and bumps the producer's epoch; a commit
    /// still running within its own, longer bound then meets the newer
    /// epoch, which librdkafka reports as fenced: a fatal error, the
    /// producer must be rebuilt. What only the broker knows, its
    /// `transaction.max.timeout.ms` (15 min by default), cannot be checked
    /// here: a larger `transaction.timeout.ms` fails the first
    /// `init_transactions` with `InvalidTransactionTimeout` ("Transaction
    /// timeout is larger than the maximum value allowed by the broker's
    /// max.transaction.timeout.ms"), fatal too.
    ///
    /// [`ProducerBuilder::transaction_timeout`]: crate::ProducerBuilder::transaction_timeout
    pub(crate) fn check_transaction_timeout(&self, operation: Duration) -> Result<(), Error> {
        let Some((broker, shown)) = self.transaction_timeout() else {
            return Ok(());
        };
        if operation < broker {
            return Ok(());
        }
        Err(Error::Transactional(format!(
            "transaction_timeout ({operation:?}) must be shorter than {shown}: the broker \
             aborts a transaction open longer than transaction.timeout.ms, so a commit still \
             within transaction_timeout would find its transaction aborted, which librdkafka \
             reports as fenced (fatal: the producer must be rebuilt). Lower \
             .transaction_timeout(...) or raise transaction.timeout.ms (at most the broker's \
             transaction.max.timeout.ms, 15 min by default)"
        )))
    }

    /// Refuses a heartbeat interval that is not at most a third of the
    /// session timeout (Kafka's guidance), librdkafka's defaults standing
    /// in for what is not given. librdkafka checks neither.
    ///
    /// Why: a member is dropped from its group when no heartbeat reaches
    /// the coordinator within the session timeout. With fewer than three
    /// heartbeats per session, one late or lost heartbeat (a broker pause,
    /// a retried request, a busy host) ends the session: the group
    /// rebalances, and a transactional consumer's offsets are refused
    /// ("Unknown member") at every commit — measured: with
    /// `session.timeout.ms=3000` and librdkafka's 3,000 ms heartbeat, a
    /// transactional consumer livelocked (37 aborts, 2 commits, 36
    /// assignments in 240 s).
    ///
    /// Under KIP-848 both belong to the broker (`group.consumer.*`) and
    /// librdkafka refuses the client properties itself, with its own
    /// explanation: nothing to check here.
    pub(crate) fn check_heartbeat(&self) -> Result<(), Error> {
        if self.is_kip848() {
            return Ok(());
        }
        let (Some((heartbeat, heartbeat_given)), Some((session, session_given))) = (
            self.millis("heartbeat.interval.ms", LIBRDKAFKA_HEARTBEAT_INTERVAL_MS),
            self.millis("session.timeout.ms", LIBRDKAFKA_SESSION_TIMEOUT_MS),
        ) else {
            return Ok(());
        };
        if heartbeat.saturating_mul(3) <= session {
            return Ok(());
        }
        let shown = |ms: u64, given: bool| {
            if given {
                format!("{ms} ms")
            } else {
                format!("{ms} ms, librdkafka's default")
            }
        };
        Err(Error::InvalidConfig {
            key: "heartbeat.interval.ms".into(),
            value: if heartbeat_given {
                format!("{heartbeat:?}")
            } else {
                format!("{heartbeat} (librdkafka's default, not set)")
            },
            reason: format!(
                "the heartbeat interval ({}) must be at most a third of `session.timeout.ms` ({}), \
                 as Kafka advises: with fewer than three heartbeats per session, one late \
                 heartbeat drops the member from its group, which rebalances again and again \
                 (a transactional consumer then has its offsets refused as \"Unknown member\" \
                 and livelocks). Set `heartbeat.interval.ms` to at most {} ms, or raise \
                 `session.timeout.ms`",
                shown(heartbeat, heartbeat_given),
                shown(session, session_given),
                session / 3,
            ),
        })
    }
}

/// Checks a topic name against Kafka's rules (the broker would reject it
/// later, with a much less helpful error).
/// The bytes a topic name may contain (checked for every publish: a table
/// lookup per byte rather than a chain of comparisons).
static TOPIC_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-';
        b += 1;
    }
    table
};

pub(crate) fn validate_topic(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("a topic name cannot be empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not topic names")
    } else if name.len() > 249 {
        Some("a topic name is at most 249 characters")
    } else if !name.bytes().all(|b| TOPIC_BYTES[usize::from(b)]) {
        Some("only ASCII letters, digits, `.`, `_` and `-` are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidTopic {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let config: Config = [
            ("bootstrap.servers", "b:9092"),
            ("sasl.password", "pw-123"),
            ("ssl.key.password", "pw-456"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----abc"),
            ("sasl.oauthbearer.client.secret", "pw-789"),
        ]
        .into_iter()
        .collect();
        let shown = format!("{config:?}");
        for secret in ["pw-123", "pw-456", "BEGIN PRIVATE", "pw-789"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("b:9092"));
        assert_eq!(shown.matches("<redacted>").count(), 4);
    }

    #[test]
    fn unknown_property_is_a_clear_error() {
        let config: Config = [("no.such.property", "1")].into_iter().collect();
        let err = config.to_client_config().unwrap_err();
        match &err {
            Error::InvalidConfig { key, .. } => assert_eq!(key, "no.such.property"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("no.such.property"), "{err}");
    }

    #[test]
    fn invalid_value_is_a_clear_error() {
        let config: Config = [("acks", "sometimes")].into_iter().collect();
        let err = config.to_client_config().unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { key, .. } if key == "acks"),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_secret_value_is_not_echoed() {
        let err = config_error(
            KafkaError::ClientConfig(
                rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                "bad value pw-secret".into(),
                "sasl.password".into(),
                "pw-secret".into(),
            ),
            &[("sasl.password", "pw-secret")].into_iter().collect(),
        );
        assert!(!err.to_string().contains("pw-secret"), "{err}");
    }

    #[test]
    fn a_nul_byte_is_refused_naming_the_property() {
        let mut config = Config::new();
        config.set("client.id", "a\0b");
        match config.to_client_config() {
            Err(Error::InvalidConfig { key, reason, .. }) => {
                assert_eq!(key, "client.id");
                assert!(reason.contains("NUL"), "{reason}");
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic("orders.v1_x-y").is_ok());
        for bad in ["", ".", "..", "has space", "ü", &"x".repeat(250)] {
            assert!(validate_topic(bad).is_err(), "{bad:?} accepted");
        }
    }
}
