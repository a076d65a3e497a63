//! Kafka record headers: ordered, duplicate names allowed, values may be null.

use std::fmt;

use bytes::Bytes;

/// One record header: a name and an optional (nullable) value.
///
/// Kafka header names are strings; a name received from the wire that is not
/// valid UTF-8 is decoded lossily (invalid bytes become U+FFFD) rather than
/// rejected, so a bad producer cannot make a message unreadable.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    name: String,
    value: Option<Bytes>,
}

impl Header {
    /// A header with a value.
    pub fn new(name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Header {
            name: name.into(),
            value: Some(value.into()),
        }
    }

    /// A header as it arrived from the wire: the name's bytes are decoded
    /// lossily (each invalid UTF-8 sequence becomes U+FFFD, so a bad
    /// producer cannot make a message unreadable, nor panic the consumer),
    /// the value is kept byte for byte and `None` stays null.
    ///
    /// ```
    /// use xkafka_core::Header;
    ///
    /// let h = Header::from_wire(b"trace\xff", Some(b"\x00\xfe"));
    /// assert_eq!(h.name(), "trace\u{fffd}");
    /// assert_eq!(h.value().map(|v| v.as_ref()), Some(&b"\x00\xfe"[..]));
    /// assert_eq!(Header::from_wire(b"tombstone", None).value(), None);
    /// ```
    pub fn from_wire(name: &[u8], value: Option<&[u8]>) -> Self {
        Header {
            name: String::from_utf8_lossy(name).into_owned(),
            value: value.map(Bytes::copy_from_slice),
        }
    }

    /// A header whose value is null (distinct from an empty value on the wire).
    pub fn null(name: impl Into<String>) -> Self {
        Header {
            name: name.into(),
            value: None,
        }
    }

    /// The header's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The header's value, `None` when it is null.
    pub fn value(&self) -> Option<&Bytes> {
        self.value.as_ref()
    }

    /// The value as UTF-8 text, `None` when null or not valid UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

impl fmt::Debug for Header {
    // Values are shown as lengths only: headers may carry tokens or personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{:?}: <{} bytes>", self.name, v.len()),
            None => write!(f, "{:?}: null", self.name),
        }
    }
}

/// The headers of a message, in wire order.
///
/// Kafka allows the same name several times; [`Headers::get`] returns the
/// *last* one (like the Java client's `lastHeader`, so appending a header
/// overrides an earlier one for readers) and [`Headers::get_all`] returns every
/// one in order.
///
/// ```
/// use xkafka_core::Headers;
///
/// let mut headers = Headers::new();
/// headers.insert("retry", "1");
/// headers.insert("retry", "2");
/// headers.insert_null("tombstone-reason");
/// assert_eq!(headers.get_str("retry"), Some("2"));
/// assert_eq!(headers.get_all("retry").count(), 2);
/// assert!(headers.contains("tombstone-reason"));
/// assert_eq!(headers.get("tombstone-reason"), None);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<Header>,
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers {
            entries: Vec::new(),
        }
    }

    /// No headers, with room for `capacity` of them.
    pub fn with_capacity(capacity: usize) -> Self {
        Headers {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Appends a header; an existing header of the same name is kept.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Bytes>) -> &mut Self {
        self.entries.push(Header::new(name, value));
        self
    }

    /// Appends a header with a null value.
    pub fn insert_null(&mut self, name: impl Into<String>) -> &mut Self {
        self.entries.push(Header::null(name));
        self
    }

    /// Appends a prepared header.
    pub fn push(&mut self, header: Header) -> &mut Self {
        self.entries.push(header);
        self
    }

    /// Removes every header with this name; returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|h| h.name != name);
        before - self.entries.len()
    }

    /// The value of the last header with this name; `None` when there is no
    /// such header or its value is null.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.last(name).and_then(Header::value)
    }

    /// [`Headers::get`] as UTF-8 text; `None` also when the value is not UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.last(name).and_then(Header::value_str)
    }

    /// The last header with this name, null or not.
    pub fn last(&self, name: &str) -> Option<&Header> {
        self.entries.iter().rev().find(|h| h.name == name)
    }

    /// Every header with this name, in wire order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Header> + 'a {
        self.entries.iter().filter(move |h| h.name == name)
    }

    /// Whether a header with this name exists (even with a null value).
    pub fn contains(&self, name: &str) -> bool {
        self.last(name).is_some()
    }

    /// All headers in wire order.
    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.entries.iter()
    }

    /// Number of headers, duplicates included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.entries).finish()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

impl IntoIterator for Headers {
    type Item = Header;
    type IntoIter = std::vec::IntoIter<Header>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl FromIterator<Header> for Headers {
    fn from_iter<I: IntoIterator<Item = Header>>(iter: I) -> Self {
        Headers {
            entries: iter.into_iter().collect(),
        }
    }
}

impl<N: Into<String>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        iter.into_iter().map(|(n, v)| Header::new(n, v)).collect()
    }
}

impl Extend<Header> for Headers {
    fn extend<I: IntoIterator<Item = Header>>(&mut self, iter: I) {
        self.entries.extend(iter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_duplicates() {
        let headers: Headers = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        let names: Vec<_> = headers.iter().map(Header::name).collect();
        assert_eq!(names, ["a", "b", "a"]);
        let all: Vec<_> = headers.get_all("a").filter_map(Header::value_str).collect();
        assert_eq!(all, ["1", "3"]);
        assert_eq!(headers.get_str("a"), Some("3"));
        assert_eq!(headers.get_str("missing"), None);
    }

    #[test]
    fn null_is_not_empty() {
        let mut headers = Headers::new();
        headers.insert("empty", Bytes::new()).insert_null("null");
        assert_eq!(headers.get("empty").map(|b| b.len()), Some(0));
        assert_eq!(headers.get("null"), None);
        assert!(headers.contains("null"));
        assert_ne!(headers.last("empty"), headers.last("null"));
    }

    #[test]
    fn remove_drops_every_duplicate() {
        let mut headers: Headers = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        assert_eq!(headers.remove("a"), 2);
        assert_eq!(headers.len(), 1);
        assert!(!headers.contains("a"));
    }

    #[test]
    fn debug_hides_values() {
        let headers: Headers = [("authorization", "Bearer secret-token")]
            .into_iter()
            .collect();
        let shown = format!("{headers:?}");
        assert!(shown.contains("authorization"));
        assert!(!shown.contains("secret-token"), "{shown}");
    }
}
