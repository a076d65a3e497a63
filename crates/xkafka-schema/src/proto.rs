//! Protocol Buffers (prost): the `Proto<T>` extractor and the producer's
//! encoder. After the 5-byte header, the wire format names the message
//! within the schema's file by its *message indexes* (zigzag varints: a
//! count, then the index path; the first message, `[0]`, is a single 0).

use std::marker::PhantomData;

use xkafka_core::extract::FromMessage;
use xkafka_core::{BoxError, Message};

use crate::client::{RegistryClient, SchemaKind};
use crate::error::SchemaError;
use crate::resolve::{rejection, writer_of};
use crate::subject::SubjectNameStrategy;
use crate::wire;

const FORMAT: &str = "Protobuf";

/// The value, decoded as the prost message `T`, written with a Protobuf
/// schema the registry knows. Needs
/// [`SchemaRegistryLayer`](crate::SchemaRegistryLayer) among the consumer's
/// layers. The message indexes are read (and must be well formed) but not
/// matched against `T`: prost types carry no descriptor.
#[derive(Clone, Debug, PartialEq)]
pub struct Proto<T>(pub T);

/// The message indexes at the start of `payload` and what follows them.
pub fn split_indexes(payload: &[u8]) -> Result<(Vec<i32>, &[u8]), SchemaError> {
    let mut rest = payload;
    let truncated = |len| SchemaError::Truncated {
        len,
        needed: len + 1,
    };
    let next = |rest: &mut &[u8]| -> Result<i32, SchemaError> {
        let raw = prost::encoding::decode_varint(rest).map_err(|_| truncated(payload.len()))?;
        let raw = u32::try_from(raw).map_err(|_| truncated(payload.len()))?;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    };
    let count = next(&mut rest)?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    if !(1..=100).contains(&count) {
        return Err(SchemaError::Payload {
            id: 0,
            source: format!("{count} message indexes").into(),
        });
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        indexes.push(next(&mut rest)?);
    }
    Ok((indexes, rest))
}

/// The message indexes in the wire format (`[0]` as a single 0 byte).
pub fn encode_indexes(indexes: &[i32]) -> Vec<u8> {
    let mut out = Vec::new();
    let zigzag = |v: i32| u64::from(((v << 1) ^ (v >> 31)) as u32);
    if indexes == [0] {
        out.push(0);
        return out;
    }
    prost::encoding::encode_varint(zigzag(indexes.len() as i32), &mut out);
    for &i in indexes {
        prost::encoding::encode_varint(zigzag(i), &mut out);
    }
    out
}

impl<T> FromMessage for Proto<T>
where
    T: prost::Message + Default,
{
    type Rejection = BoxError;

    fn from_message(message: &mut Message) -> Result<Self, BoxError> {
        let (writer, payload) = writer_of(message, FORMAT, SchemaKind::Protobuf)?;
        let id = writer.schema.id();
        let (_, body) = split_indexes(payload).map_err(|e| rejection(message, FORMAT, e))?;
        T::decode(body).map(Proto).map_err(|e| {
            rejection(
                message,
                FORMAT,
                SchemaError::Payload {
                    id,
                    source: Box::new(e),
                },
            )
        })
    }
}

/// Encodes prost messages for the producer in the wire format, registering
/// the `.proto` file's text under the strategy's subject on first use.
pub struct ProtoEncoder<T> {
    client: RegistryClient,
    strategy: SubjectNameStrategy,
    is_key: bool,
    schema: String,
    full_name: String,
    indexes: Vec<i32>,
    _type: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for ProtoEncoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtoEncoder")
            .field("client", &self.client)
            .field("message", &self.full_name)
            .field("indexes", &self.indexes)
            .finish_non_exhaustive()
    }
}

impl<T: prost::Message> ProtoEncoder<T> {
    /// An encoder of `T`, the message `full_name` (e.g. `shop.OrderEvent`,
    /// for the record subject strategies) of the `.proto` file `schema`, at
    /// index path `[0]` (the file's first message; see
    /// [`message_indexes`](Self::message_indexes)).
    pub fn new(
        client: RegistryClient,
        schema: impl Into<String>,
        full_name: impl Into<String>,
    ) -> Self {
        ProtoEncoder {
            client,
            strategy: SubjectNameStrategy::default(),
            is_key: false,
            schema: schema.into(),
            full_name: full_name.into(),
            indexes: vec![0],
            _type: PhantomData,
        }
    }

    /// Where `T` is in the file: `[1]` for its second top-level message,
    /// `[0, 2]` for the third message nested in the first.
    pub fn message_indexes(mut self, indexes: Vec<i32>) -> Self {
        self.indexes = indexes;
        self
    }

    /// The subject name strategy (default [`SubjectNameStrategy::Topic`]).
    pub fn strategy(mut self, strategy: SubjectNameStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Encodes keys rather than values.
    pub fn for_keys(mut self) -> Self {
        self.is_key = true;
        self
    }

    /// `value` in the wire format, for a record of `topic`.
    pub async fn encode(&self, topic: &str, value: &T) -> Result<Vec<u8>, SchemaError> {
        if self.indexes.is_empty() || self.indexes.iter().any(|&i| i < 0) {
            return Err(SchemaError::Config(format!(
                "message indexes {:?}: at least one, none negative",
                self.indexes
            )));
        }
        let subject = self.strategy.subject(topic, &self.full_name, self.is_key);
        let id = self
            .client
            .register(&subject, SchemaKind::Protobuf, &self.schema)
            .await?;
        let mut payload = encode_indexes(&self.indexes);
        value
            .encode(&mut payload)
            .map_err(|e| SchemaError::Encode(Box::new(e)))?;
        Ok(wire::frame(id, &payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_indexes_round_trip_in_confluent_form() {
        assert_eq!(encode_indexes(&[0]), [0]);
        assert_eq!(encode_indexes(&[1]), [2, 2]);
        assert_eq!(encode_indexes(&[0, 2]), [4, 0, 4]);
        for path in [vec![0], vec![1], vec![0, 2], vec![3, 1, 70]] {
            let mut bytes = encode_indexes(&path);
            bytes.extend_from_slice(b"rest");
            assert_eq!(split_indexes(&bytes).unwrap(), (path, &b"rest"[..]));
        }
        assert!(split_indexes(&[]).is_err());
        assert!(
            split_indexes(&[4, 0]).is_err(),
            "two indexes announced, one there"
        );
    }
}
