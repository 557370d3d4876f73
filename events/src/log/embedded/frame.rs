//! Record framing of the embedded log's segment files.
//!
//! On-disk format of one record (all integers little-endian):
//!
//! ```text
//! u32 body_len | u32 crc32(body) | body
//! body = u8 version (1) | u64 offset | i64 timestamp_ms | u32 key_len | key | value
//! ```
//!
//! A segment file is a plain sequence of frames, the first holding the offset
//! in the file's name. A frame is valid only if it is complete, its CRC
//! matches and its offset is the one expected next; scanning stops at the
//! first invalid frame, and everything from there on is a torn tail.
//!
//! Public so that tools can read segment files (and the fuzz targets can feed
//! the decoder arbitrary bytes); the log itself is the only writer.

use crate::log::MAX_RECORD_SIZE;

/// Bytes before the body: length and CRC.
pub const HEADER_LEN: usize = 8;
/// Fixed part of the body: version, offset, timestamp, key length.
const BODY_FIXED_LEN: usize = 1 + 8 + 8 + 4;
const VERSION: u8 = 1;

/// A decoded frame borrowing from the buffer it was read from.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Size of the frame that [`encode`] writes for this key and value.
pub fn encoded_len(key: &[u8], value: &[u8]) -> usize {
    HEADER_LEN + BODY_FIXED_LEN + key.len() + value.len()
}

/// Appends the frame of one record to `out`.
pub fn encode(out: &mut Vec<u8>, offset: u64, timestamp_ms: i64, key: &[u8], value: &[u8]) {
    let body_len = BODY_FIXED_LEN + key.len() + value.len();
    let start = out.len();
    out.reserve(HEADER_LEN + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(VERSION);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why a frame could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends inside the frame.
    Incomplete,
    /// Length, version, CRC or key length do not add up.
    Invalid,
}

/// Decodes the frame at the start of `buf`; returns it and its encoded length.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Incomplete);
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().map_err(|_| FrameError::Invalid)?) as usize;
    if !(BODY_FIXED_LEN..=BODY_FIXED_LEN + MAX_RECORD_SIZE * 2).contains(&body_len) {
        return Err(FrameError::Invalid);
    }
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        return Err(FrameError::Incomplete);
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().map_err(|_| FrameError::Invalid)?);
    let body = &buf[HEADER_LEN..total];
    if crc32fast::hash(body) != crc || body[0] != VERSION {
        return Err(FrameError::Invalid);
    }
    let offset = u64::from_le_bytes(body[1..9].try_into().map_err(|_| FrameError::Invalid)?);
    let timestamp_ms = i64::from_le_bytes(body[9..17].try_into().map_err(|_| FrameError::Invalid)?);
    let key_len = u32::from_le_bytes(body[17..21].try_into().map_err(|_| FrameError::Invalid)?) as usize;
    if key_len > body_len - BODY_FIXED_LEN {
        return Err(FrameError::Invalid);
    }
    let key = &body[BODY_FIXED_LEN..BODY_FIXED_LEN + key_len];
    let value = &body[BODY_FIXED_LEN + key_len..];
    Ok((Frame { offset, timestamp_ms, key, value }, total))
}

/// The valid frames at the start of a segment whose first offset is `base`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Byte position of each valid frame, in order (frame `i` holds offset `base + i`).
    pub positions: Vec<u64>,
    /// Length of the valid prefix; bytes from here on are a torn tail or zeros.
    pub valid_len: usize,
}

/// Indexes the frames of a segment's bytes, stopping at the first frame that
/// is incomplete, invalid or not the next offset.
pub fn scan(data: &[u8], base: u64) -> Scan {
    let mut scan = Scan::default();
    while scan.valid_len < data.len() {
        match decode(&data[scan.valid_len..]) {
            Ok((frame, len)) if Some(frame.offset) == base.checked_add(scan.positions.len() as u64) => {
                scan.positions.push(scan.valid_len as u64);
                scan.valid_len += len;
            }
            Ok(_) | Err(FrameError::Invalid) | Err(FrameError::Incomplete) => break,
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, 1_700_000_000_000, b"key", b"value");
        assert_eq!(buf.len(), encoded_len(b"key", b"value"));
        let (frame, len) = decode(&buf).expect("valid frame");
        assert_eq!(len, buf.len());
        assert_eq!(frame, Frame { offset: 42, timestamp_ms: 1_700_000_000_000, key: b"key", value: b"value" });
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_bit_flip_is_invalid() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 1, b"k", b"some value bytes");
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "truncated at {cut} must not decode");
        }
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut flipped = buf.clone();
                flipped[byte] ^= 1 << bit;
                if let Ok((frame, _)) = decode(&flipped) {
                    panic!("flip of bit {bit} in byte {byte} decoded as {frame:?}");
                }
            }
        }
    }
}
