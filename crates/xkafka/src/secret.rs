//! Which librdkafka properties hold secrets, and how their values are kept
//! out of everything xkafka prints: `Debug` output, errors and log lines.
//! Below `config`, `error` and `log`, which all need it.

use std::borrow::Cow;

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
