//! Subject name strategies: under which registry subject a schema is
//! registered (Confluent's `TopicNameStrategy`, `RecordNameStrategy` and
//! `TopicRecordNameStrategy`).

/// How a producer names the subject of its schema.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SubjectNameStrategy {
    /// `<topic>-value` / `<topic>-key`: one schema lineage per topic (the
    /// default of every Confluent serializer).
    #[default]
    Topic,
    /// `<record full name>`: one lineage per record type, across topics.
    Record,
    /// `<topic>-<record full name>`: one lineage per type and topic.
    TopicRecord,
}

impl SubjectNameStrategy {
    /// The subject for a record of type `record` (its full name, e.g.
    /// `shop.Order`) written to `topic`, as its key or its value.
    pub fn subject(self, topic: &str, record: &str, is_key: bool) -> String {
        match self {
            SubjectNameStrategy::Topic => {
                format!("{topic}-{}", if is_key { "key" } else { "value" })
            }
            SubjectNameStrategy::Record => record.to_owned(),
            SubjectNameStrategy::TopicRecord => format!("{topic}-{record}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SubjectNameStrategy::*;

    #[test]
    fn subjects_follow_the_confluent_names() {
        assert_eq!(Topic.subject("orders", "shop.Order", false), "orders-value");
        assert_eq!(Topic.subject("orders", "shop.Order", true), "orders-key");
        assert_eq!(Record.subject("orders", "shop.Order", false), "shop.Order");
        assert_eq!(
            TopicRecord.subject("orders", "shop.Order", false),
            "orders-shop.Order"
        );
    }
}
