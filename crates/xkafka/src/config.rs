//! Raw librdkafka properties, passed through untouched (Go xkafka's
//! `ConfigMap`), with secrets kept out of `Debug` output and error messages.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

use crate::error::Error;

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

/// Whether a property holds a secret that must never be printed.
pub(crate) fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("sasl.jaas.config")
        || key.contains("sasl.oauthbearer.config")
        || key.ends_with(".key.pem")
        || key == "ssl.key.pem"
        || key.contains("token")
}

pub(crate) fn shown_value(key: &str, value: &str) -> String {
    if is_secret(key) {
        "<redacted>".to_owned()
    } else {
        format!("{value:?}")
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
