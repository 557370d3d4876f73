//! What the crash-test child writes, so the parent can check every record it
//! reads without having seen it acknowledged.

/// Topic the child appends to.
pub const TOPIC: &str = "crash";
/// Concurrent appenders in the child.
pub const WRITERS: u64 = 8;

/// The value of record `seq` of `writer`: a header naming both, then a
/// deterministic filler whose length varies from 0 to ~20 KiB, so that records
/// straddle pages and a torn write can land anywhere.
pub fn record_value(writer: u64, seq: u64) -> Vec<u8> {
    let mut value = format!("{writer}:{seq}:").into_bytes();
    let len = ((writer * 7919 + seq * 104_729) % 20_000) as usize;
    value.extend((0..len).map(|i| (i as u64 ^ seq ^ (writer << 3)) as u8));
    value
}

/// Parses the header of a value written by [`record_value`] and checks that
/// the whole value is exactly what that writer wrote for that sequence number.
pub fn check_value(value: &[u8]) -> Option<(u64, u64)> {
    let mut colons = value.iter().enumerate().filter(|(_, b)| **b == b':').map(|(i, _)| i);
    let (first, second) = (colons.next()?, colons.next()?);
    let writer: u64 = std::str::from_utf8(&value[..first]).ok()?.parse().ok()?;
    let seq: u64 = std::str::from_utf8(&value[first + 1..second]).ok()?.parse().ok()?;
    (record_value(writer, seq) == value).then_some((writer, seq))
}
