//! One transaction on an open session: MAIL, RCPT (pipelined when offered),
//! DATA, the content, and the replies turned into per-recipient outcomes.
//!
//! Before anything is sent the message is checked against what the peer
//! announced; a message it cannot take fails every recipient with our own
//! reply and leaves the session untouched:
//!
//! | check | our reply |
//! |---|---|
//! | `SMTPUTF8` needed, not offered | `553 5.6.7 Non-ASCII addresses not permitted for that recipient` |
//! | `8BITMIME` needed, not offered; `BINARYMIME` (needs BDAT, not sent by this client) | `554 5.6.3 Conversion required but not supported` |
//! | larger than the peer's `SIZE` | `552 5.3.4 Message too big for system` |
//! | reverse path with a control character, space or angle bracket | `501 5.1.7 Bad sender address syntax` |
//! | such a recipient (that recipient only) | `501 5.1.3 Bad destination mailbox address syntax` |
//!
//! After a transaction that did not reach the end of data (no recipient
//! accepted, DATA refused) the client sends RSET; if that fails the connection
//! is marked unusable but the outcomes already decided are returned.

use mailflow_events::received::{BodyType, DsnNotify, DsnReturn, SmtpReply};

use super::reply::{Capabilities, RawReply};
use super::{Connection, HopFailure, Outcome, Protocol, RecipientOutcome, Stage, Transaction};

/// Content is written in pieces of this size, each under the `data_block` limit.
const CHUNK: usize = 64 * 1024;

/// Our own replies, for what we decide without asking the peer.
mod ours {
    use mailflow_events::received::SmtpReply;

    pub fn smtputf8_not_offered() -> SmtpReply {
        SmtpReply::new(553, "5.6.7", "Non-ASCII addresses not permitted for that recipient")
    }
    pub fn conversion_required() -> SmtpReply {
        SmtpReply::new(554, "5.6.3", "Conversion required but not supported")
    }
    pub fn too_big() -> SmtpReply {
        SmtpReply::new(552, "5.3.4", "Message too big for system")
    }
    pub fn bad_sender() -> SmtpReply {
        SmtpReply::new(501, "5.1.7", "Bad sender address syntax")
    }
    pub fn bad_recipient() -> SmtpReply {
        SmtpReply::new(501, "5.1.3", "Bad destination mailbox address syntax")
    }
    pub fn dropped_before_reply() -> SmtpReply {
        SmtpReply::new(451, "4.4.2", "Connection dropped after the end of data; the message may have been delivered")
    }
}

pub(super) async fn send(
    conn: &mut Connection,
    tx: &Transaction<'_>,
    content: &[u8],
) -> Result<Vec<RecipientOutcome>, HopFailure> {
    let limits = conn.timeouts;
    let mut outcomes: Vec<Option<RecipientOutcome>> = vec![None; tx.recipients.len()];
    if let Some(reply) = precheck(tx, &conn.capabilities, content.len()) {
        return Ok(every(tx, Outcome::Failed, &reply));
    }
    let mut commands = Vec::new();
    for (index, recipient) in tx.recipients.iter().enumerate() {
        if plausible_path(&recipient.address) {
            commands.push((
                index,
                rcpt_command(&recipient.address, &recipient.notify, recipient.orcpt.as_deref(), &conn.capabilities),
            ));
        } else {
            outcomes[index] = Some(outcome(tx, index, Outcome::Failed, ours::bad_recipient()));
        }
    }
    if commands.is_empty() {
        return Ok(finish(outcomes));
    }
    let mail = mail_command(tx, &conn.capabilities, content.len());

    // MAIL and RCPT: with PIPELINING in one write, the replies read in order (RFC 2920 §3.1).
    let pipelining = conn.capabilities.pipelining;
    if pipelining {
        let mut batch = mail.clone();
        for (_, rcpt) in &commands {
            batch.push_str(rcpt);
        }
        write(conn, batch.as_bytes(), Stage::Mail).await?;
    } else {
        write(conn, mail.as_bytes(), Stage::Mail).await?;
    }
    let mail_reply = read(conn, limits.mail, Stage::Mail).await?;
    if !mail_reply.is_positive() {
        if mail_reply.is_permanent() {
            // The pipelined RCPTs get replies too (typically 503); read them to stay in step.
            if pipelining {
                for _ in &commands {
                    if conn.wire.read_reply(limits.rcpt).await.is_err() {
                        conn.usable = false;
                        break;
                    }
                }
            }
            for (index, _) in &commands {
                outcomes[*index] = Some(outcome(tx, *index, Outcome::Failed, mail_reply.to_reply()));
            }
            return Ok(finish(outcomes));
        }
        return Err(unexpected(Stage::Mail, &mail_reply));
    }
    let mut accepted = Vec::new();
    for (index, rcpt) in &commands {
        if !pipelining {
            write(conn, rcpt.as_bytes(), Stage::Rcpt).await?;
        }
        let reply = read(conn, limits.rcpt, Stage::Rcpt).await?;
        let decided = match reply.code {
            200..=299 => {
                accepted.push(*index);
                continue;
            }
            421 => return Err(HopFailure::from_reply(Stage::Rcpt, reply.to_reply())),
            400..=499 => Outcome::Deferred,
            500..=599 => Outcome::Failed,
            _ => return Err(unexpected(Stage::Rcpt, &reply)),
        };
        outcomes[*index] = Some(outcome(tx, *index, decided, reply.to_reply()));
    }
    if accepted.is_empty() {
        rset(conn).await;
        return Ok(finish(outcomes));
    }

    write(conn, b"DATA\r\n", Stage::Data).await?;
    let data_reply = read(conn, limits.data_init, Stage::Data).await?;
    if data_reply.code != 354 {
        let decided = match data_reply.code {
            421 => return Err(HopFailure::from_reply(Stage::Data, data_reply.to_reply())),
            400..=499 => Outcome::Deferred,
            500..=599 => Outcome::Failed,
            _ => return Err(unexpected(Stage::Data, &data_reply)),
        };
        for &index in &accepted {
            outcomes[index] = Some(outcome(tx, index, decided, data_reply.to_reply()));
        }
        rset(conn).await;
        return Ok(finish(outcomes));
    }
    let mut stuffer = DotStuffer::new(content);
    while let Some(chunk) = stuffer.next_chunk(CHUNK) {
        write(conn, &chunk, Stage::Data).await?;
    }

    match conn.protocol() {
        Protocol::Smtp => {
            let reply = read(conn, limits.data_end, Stage::EndOfData).await?;
            let decided = end_of_data_outcome(&reply)?;
            for &index in &accepted {
                outcomes[index] = Some(outcome(tx, index, decided, reply.to_reply()));
            }
        }
        Protocol::Lmtp => {
            // One reply per accepted recipient, in RCPT order (RFC 2033 §4.2).
            for (position, &index) in accepted.iter().enumerate() {
                let reply = match read(conn, limits.data_end, Stage::EndOfData).await {
                    Ok(reply) => reply,
                    Err(failure) if position == 0 => return Err(failure),
                    Err(_) => {
                        // Those that got a reply keep it; the fate of the rest is unknown.
                        conn.usable = false;
                        for &rest in &accepted[position..] {
                            outcomes[rest] = Some(outcome(tx, rest, Outcome::Deferred, ours::dropped_before_reply()));
                        }
                        break;
                    }
                };
                let decided = match reply.code {
                    200..=299 => Outcome::Delivered,
                    400..=499 => Outcome::Deferred,
                    500..=599 => Outcome::Failed,
                    _ => return Err(unexpected(Stage::EndOfData, &reply)),
                };
                if reply.code == 421 {
                    conn.usable = false;
                }
                outcomes[index] = Some(outcome(tx, index, decided, reply.to_reply()));
            }
        }
    }
    Ok(finish(outcomes))
}

fn end_of_data_outcome(reply: &RawReply) -> Result<Outcome, HopFailure> {
    match reply.code {
        200..=299 => Ok(Outcome::Delivered),
        421 => Err(HopFailure::from_reply(Stage::EndOfData, reply.to_reply())),
        400..=499 => Ok(Outcome::Deferred),
        500..=599 => Ok(Outcome::Failed),
        _ => Err(unexpected(Stage::EndOfData, reply)),
    }
}

/// The peer's own reply where a different one was due: `4xx` (incl. `421`)
/// as the hop failure it is, anything else as a protocol error.
fn unexpected(stage: Stage, reply: &RawReply) -> HopFailure {
    let smtp = reply.to_reply();
    if reply.is_transient() {
        return HopFailure::from_reply(stage, smtp);
    }
    HopFailure {
        stage,
        error: format!("4.5.0 Invalid reply from remote server [unexpected {smtp}]"),
        reply: Some(smtp),
        permanent: false,
    }
}

async fn write(conn: &mut Connection, bytes: &[u8], stage: Stage) -> Result<(), HopFailure> {
    let limit = conn.timeouts.data_block;
    conn.wire.write(bytes, limit).await.map_err(|e| HopFailure::wire(stage, e))
}

async fn read(conn: &mut Connection, limit: std::time::Duration, stage: Stage) -> Result<RawReply, HopFailure> {
    conn.wire.read_reply(limit).await.map_err(|e| HopFailure::wire(stage, e))
}

/// Back to the initial state; on any failure the connection is not reused.
async fn rset(conn: &mut Connection) {
    let limits = conn.timeouts;
    let ok = conn.wire.write(b"RSET\r\n", limits.data_block).await.is_ok()
        && conn.wire.read_reply(limits.mail).await.is_ok_and(|reply| reply.is_positive());
    if !ok {
        conn.usable = false;
    }
}

/// Our refusal of the whole message, if the peer cannot take it.
fn precheck(tx: &Transaction<'_>, caps: &Capabilities, size: usize) -> Option<SmtpReply> {
    if tx.smtputf8 && !caps.smtputf8 {
        return Some(ours::smtputf8_not_offered());
    }
    match tx.body {
        BodyType::SevenBit => {}
        BodyType::EightBitMime if caps.eight_bit_mime => {}
        BodyType::EightBitMime | BodyType::BinaryMime => return Some(ours::conversion_required()),
    }
    if caps.size_limit().is_some_and(|limit| size as u64 > limit) {
        return Some(ours::too_big());
    }
    if !tx.mail_from.is_empty() && !plausible_path(tx.mail_from) {
        return Some(ours::bad_sender());
    }
    None
}

/// An address that cannot break the command line it goes into: no control
/// characters, spaces or angle brackets. (Its syntax was checked when the
/// message was received; this only keeps a bad record from injecting commands.)
fn plausible_path(address: &str) -> bool {
    !address.is_empty() && !address.chars().any(|c| c.is_control() || c == ' ' || c == '<' || c == '>')
}

/// `MAIL FROM:<...>` with the parameters the peer announced.
fn mail_command(tx: &Transaction<'_>, caps: &Capabilities, size: usize) -> String {
    let mut command = format!("MAIL FROM:<{}>", tx.mail_from);
    if caps.size.is_some() {
        command.push_str(&format!(" SIZE={size}"));
    }
    if tx.body == BodyType::EightBitMime {
        command.push_str(" BODY=8BITMIME");
    }
    if tx.smtputf8 {
        command.push_str(" SMTPUTF8");
    }
    if caps.dsn {
        match tx.dsn_return {
            Some(DsnReturn::Full) => command.push_str(" RET=FULL"),
            Some(DsnReturn::Headers) => command.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = tx.dsn_envid {
            command.push_str(" ENVID=");
            command.push_str(&xtext(envid));
        }
    }
    command.push_str("\r\n");
    command
}

/// `RCPT TO:<...>`, with `NOTIFY` and `ORCPT` when the peer offers DSN.
/// An `ORCPT` is relayed as received (already `type;xtext`); one with
/// characters xtext cannot hold is dropped rather than sent broken.
fn rcpt_command(address: &str, notify: &[DsnNotify], orcpt: Option<&str>, caps: &Capabilities) -> String {
    let mut command = format!("RCPT TO:<{address}>");
    if caps.dsn {
        if !notify.is_empty() {
            let values: Vec<&str> = notify
                .iter()
                .map(|n| match n {
                    DsnNotify::Never => "NEVER",
                    DsnNotify::Success => "SUCCESS",
                    DsnNotify::Failure => "FAILURE",
                    DsnNotify::Delay => "DELAY",
                })
                .collect();
            command.push_str(" NOTIFY=");
            command.push_str(&values.join(","));
        }
        if let Some(orcpt) = orcpt.filter(|o| o.contains(';') && o.bytes().all(|b| (0x21..=0x7e).contains(&b))) {
            command.push_str(" ORCPT=");
            command.push_str(orcpt);
        }
    }
    command.push_str("\r\n");
    command
}

/// xtext (RFC 3461 §4): `+`, `=`, and octets outside `!`..`~` as `+XX`.
fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

/// The content as sent after `354`: a `.` doubled at the start of every line
/// (RFC 5321 §4.5.2), a final CRLF added when missing, and `.` CRLF. A line
/// starts after any LF, not only after CRLF, so that a stray bare LF can never
/// let a receiver that ends lines at LF see an early end of data.
#[derive(Debug)]
struct DotStuffer<'a> {
    rest: &'a [u8],
    at_line_start: bool,
    ends_with_crlf: bool,
    done: bool,
}

impl<'a> DotStuffer<'a> {
    fn new(content: &'a [u8]) -> Self {
        Self {
            rest: content,
            at_line_start: true,
            ends_with_crlf: content.is_empty() || content.ends_with(b"\r\n"),
            done: false,
        }
    }

    /// The next piece of about `max` octets; the last one ends with `.` CRLF.
    fn next_chunk(&mut self, max: usize) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(max + 8);
        while out.len() < max && !self.rest.is_empty() {
            if self.at_line_start && self.rest[0] == b'.' {
                out.push(b'.');
            }
            let line_end = memchr::memchr(b'\n', self.rest).map_or(self.rest.len(), |i| i + 1);
            let take = line_end.min(max.saturating_sub(out.len()).max(1));
            out.extend_from_slice(&self.rest[..take]);
            self.at_line_start = self.rest[take - 1] == b'\n';
            self.rest = &self.rest[take..];
        }
        if self.rest.is_empty() {
            if !self.ends_with_crlf {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            self.done = true;
        }
        Some(out)
    }
}

fn outcome(tx: &Transaction<'_>, index: usize, outcome: Outcome, reply: SmtpReply) -> RecipientOutcome {
    RecipientOutcome { address: tx.recipients[index].address.clone(), outcome, reply }
}

fn every(tx: &Transaction<'_>, decided: Outcome, reply: &SmtpReply) -> Vec<RecipientOutcome> {
    (0..tx.recipients.len()).map(|index| outcome(tx, index, decided, reply.clone())).collect()
}

/// Every recipient has an outcome by now: each was refused by us, answered at
/// RCPT, or accepted and then decided at DATA or the end of data.
fn finish(outcomes: Vec<Option<RecipientOutcome>>) -> Vec<RecipientOutcome> {
    outcomes.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use mailflow_events::delivery::QueuedRecipient;

    use super::*;

    fn stuffed(content: &[u8], max: usize) -> Vec<u8> {
        let mut stuffer = DotStuffer::new(content);
        let mut all = Vec::new();
        while let Some(chunk) = stuffer.next_chunk(max) {
            assert!(chunk.len() <= max + 5, "chunk of {} octets for a limit of {max}", chunk.len());
            all.extend_from_slice(&chunk);
        }
        all
    }

    #[test]
    fn leading_dots_are_doubled_and_the_content_is_terminated() {
        let content = b".hidden\r\nline\r\n..two\r\n.\r\nend";
        for max in [1, 2, 3, 7, 64, 1 << 16] {
            assert_eq!(stuffed(content, max), b"..hidden\r\nline\r\n...two\r\n..\r\nend\r\n.\r\n", "chunk size {max}");
        }
        assert_eq!(stuffed(b"", 16), b".\r\n");
        assert_eq!(stuffed(b"a\r\n", 16), b"a\r\n.\r\n");
        assert_eq!(stuffed(b"a\n.\r\n", 16), b"a\n..\r\n.\r\n");
    }

    fn tx<'a>(recipients: &'a [QueuedRecipient]) -> Transaction<'a> {
        Transaction {
            mail_from: "anna@contoso.com",
            recipients,
            dsn_return: Some(DsnReturn::Headers),
            dsn_envid: Some("id 1+x=y"),
            body: BodyType::EightBitMime,
            smtputf8: false,
        }
    }

    #[test]
    fn dsn_parameters_are_sent_only_to_a_peer_that_offers_dsn() {
        let recipients = [QueuedRecipient {
            address: "bob@fabrikam.com".into(),
            notify: vec![DsnNotify::Success, DsnNotify::Failure],
            orcpt: Some("rfc822;bob@fabrikam.com".into()),
        }];
        let mut caps = Capabilities { eight_bit_mime: true, size: Some(1000), ..Capabilities::default() };
        assert_eq!(mail_command(&tx(&recipients), &caps, 42), "MAIL FROM:<anna@contoso.com> SIZE=42 BODY=8BITMIME\r\n");
        assert_eq!(
            rcpt_command("bob@fabrikam.com", &recipients[0].notify, recipients[0].orcpt.as_deref(), &caps),
            "RCPT TO:<bob@fabrikam.com>\r\n"
        );
        caps.dsn = true;
        assert_eq!(
            mail_command(&tx(&recipients), &caps, 42),
            "MAIL FROM:<anna@contoso.com> SIZE=42 BODY=8BITMIME RET=HDRS ENVID=id+201+2Bx+3Dy\r\n"
        );
        assert_eq!(
            rcpt_command("bob@fabrikam.com", &recipients[0].notify, recipients[0].orcpt.as_deref(), &caps),
            "RCPT TO:<bob@fabrikam.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@fabrikam.com\r\n"
        );
        assert_eq!(rcpt_command("b@f.com", &[], Some("rfc822;b c"), &caps), "RCPT TO:<b@f.com>\r\n");
    }

    #[test]
    fn a_message_the_peer_cannot_take_is_refused_with_our_reply() {
        let recipients = [QueuedRecipient { address: "bob@fabrikam.com".into(), notify: vec![], orcpt: None }];
        let plain = Capabilities::default();
        let code = |tx: &Transaction<'_>, caps: &Capabilities, size| {
            precheck(tx, caps, size).map(|r| (r.code, r.enhanced.unwrap_or_default()))
        };
        assert_eq!(code(&tx(&recipients), &plain, 10), Some((554, "5.6.3".into())));
        let utf8 = Transaction { smtputf8: true, ..tx(&recipients) };
        assert_eq!(code(&utf8, &plain, 10), Some((553, "5.6.7".into())));
        let seven = Transaction { body: BodyType::SevenBit, ..tx(&recipients) };
        assert_eq!(code(&seven, &plain, 10), None);
        let small = Capabilities { size: Some(100), ..Capabilities::default() };
        assert_eq!(code(&seven, &small, 100), None);
        assert_eq!(code(&seven, &small, 101), Some((552, "5.3.4".into())));
        let unlimited = Capabilities { size: Some(0), ..Capabilities::default() };
        assert_eq!(code(&seven, &unlimited, 1 << 30), None);
        let injected = Transaction { mail_from: "a@b.c>\r\nRCPT TO:<x@y.z", ..seven };
        assert_eq!(code(&injected, &plain, 10), Some((501, "5.1.7".into())));
        assert!(!plausible_path("x@y.z> NOTIFY=NEVER") && plausible_path("ünïcode@example.com"));
    }
}
