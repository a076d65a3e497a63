//! xkafka
