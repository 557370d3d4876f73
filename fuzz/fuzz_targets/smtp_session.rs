//! `smtp_session`: arbitrary bytes into the SMTP protocol core, read by read,
//! as the connection driver feeds it.
//!
//! Input: byte 0 picks the session's options ([`SessionOptions::from_byte`]:
//! listener kind, STARTTLS, client address, AUTH, TLS and store outcomes);
//! byte 1 picks how the rest is cut into reads ([`split_reads`]: low two bits
//! the mode, the others a seed); the rest is what the client sends.
//!
//! Checked: no panic and no hang; every reply well-formed
//! ([`mailflow_fuzz::check_reply`]); a closing reply always closes; nothing
//! buffered outside DATA/BDAT beyond the line limit; every stored message is
//! within the size limit, has CRLF line endings only and exactly our one
//! `Received:` field in front.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mailflow_fuzz::{Driver, SessionOptions, split_reads};

fuzz_target!(|data: &[u8]| {
    let [options, cuts, stream @ ..] = data else { return };
    let mut driver = Driver::new(SessionOptions::from_byte(*options));
    for read in split_reads(stream, cuts & 3, cuts >> 2) {
        driver.receive(read);
        if driver.closed {
            break;
        }
    }
});
