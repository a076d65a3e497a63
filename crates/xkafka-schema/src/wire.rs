//! The Confluent wire format: magic byte 0, the schema id as 4 big-endian
//! bytes, then the payload.

use crate::error::SchemaError;

/// The first byte of every framed record.
pub const MAGIC: u8 = 0;
/// Magic byte and schema id.
pub const HEADER_LEN: usize = 5;

/// The schema id and the payload of a framed record.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), SchemaError> {
    match bytes.first() {
        None => {
            return Err(SchemaError::Truncated {
                len: 0,
                needed: HEADER_LEN,
            })
        }
        Some(&found) if found != MAGIC => return Err(SchemaError::WrongMagic { found }),
        Some(_) => {}
    }
    if bytes.len() < HEADER_LEN {
        return Err(SchemaError::Truncated {
            len: bytes.len(),
            needed: HEADER_LEN,
        });
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Frames `payload` with schema `id`.
pub fn frame(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_splits() {
        let framed = frame(0x0102_0304, b"xy");
        assert_eq!(framed, [0, 1, 2, 3, 4, b'x', b'y']);
        assert_eq!(split(&framed).unwrap(), (0x0102_0304, &b"xy"[..]));
    }

    #[test]
    fn refuses_bad_headers() {
        assert!(matches!(
            split(&[1, 0, 0, 0, 1]),
            Err(SchemaError::WrongMagic { found: 1 })
        ));
        assert!(matches!(
            split(&[0, 0, 1]),
            Err(SchemaError::Truncated { len: 3, needed: 5 })
        ));
        assert!(matches!(
            split(&[]),
            Err(SchemaError::Truncated { len: 0, .. })
        ));
    }
}
