//! Reliability notes §2.1, SMTP smuggling: the non-standard end-of-data
//! sequences inside TLS and inside BDAT chunks, a real end-of-data inside a
//! chunk, and the "pipelining" vector. (DATA over plain TCP:
//! `smtp_front_door.rs`.)

use mailflow_events::received::{ReceivedEvent, SmtpStage};

use super::{accepted, connect_ehlo, expect, offers, open_data, start_secured, stored_content, upgrade};

/// The vectors of the §2.1 table, by the names the notes give them, plus a
/// bare LF ending an ordinary line.
const VECTORS: [(&str, &[u8]); 16] = [
    ("lflf", b"\n.\n"),
    ("lfcrlf", b"\n.\r\n"),
    ("crlflf", b"\r\n.\n"),
    ("crcr", b"\r.\r"),
    ("crlf", b"\r.\n"),
    ("lfcr", b"\n.\r"),
    ("crcrlf", b"\r.\r\n"),
    ("crlfcr", b"\r\n.\r"),
    ("null-before", b"\r\n\x00.\r\n"),
    ("null-after", b"\r\n.\x00\r\n"),
    ("crlf-crcrlf", b"\r\n.\r\r\n"),
    ("crcrlf2", b"\r\r\n.\r\r\n"),
    ("lflf-dot", b"\n\n.\r\n"),
    ("null-cr", b"\r\n\x00.\r"),
    ("null-lf", b"\r\n\x00.\n"),
    ("bare-lf-line", b"\nplain line\r\n"),
];

/// A message whose first content line ends in `vector`, followed by a whole
/// second transaction from `smuggled@example.net`, as the scanners send it.
fn smuggling_content(vector: &[u8]) -> Vec<u8> {
    let mut content = b"From: s@example.net\r\nSubject: carrier\r\n\r\nline".to_vec();
    content.extend_from_slice(vector);
    content.extend_from_slice(
        b"MAIL FROM:<smuggled@example.net>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n\
          From: smuggled@example.net\r\nSubject: smuggled\r\n\r\nSMUGGLED\r\n",
    );
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_smuggling_vector_inside_tls_gets_one_550_5_6_11_and_no_message() -> anyhow::Result<()> {
    let (mut router, pki) = start_secured("", "")?;
    for (name, vector) in VECTORS {
        let (mut wire, ehlo) = connect_ehlo(router.smtp()).await?;
        assert!(offers(&ehlo, "STARTTLS"), "{ehlo}");
        let ehlo = upgrade(&mut wire, &pki).await?;
        assert!(!offers(&ehlo, "STARTTLS"), "{name}: STARTTLS inside TLS: {ehlo}");
        open_data(&mut wire, "s@example.net", "bob@contoso.com").await?;
        let mut bytes = smuggling_content(vector);
        bytes.extend_from_slice(b".\r\n");
        wire.send(&bytes).await?;
        expect(&wire.reply().await?, "550 5.6.11", name);
        // The next reply answers QUIT: nothing was answered in between.
        expect(&wire.command("QUIT").await?, "221 2.0.0", name);
    }
    let (events, messages) = accepted(&mut router).await?;
    assert!(messages.is_empty(), "no message was accepted, smuggled or not: {messages:?}");
    let refusals: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            ReceivedEvent::MessageRejected(r) if r.stage == SmtpStage::EndOfData => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(refusals.len(), VECTORS.len(), "one recorded refusal per vector");
    for refusal in refusals {
        assert_eq!(refusal.reply.enhanced.as_deref(), Some("5.6.11"));
        assert_eq!(refusal.mail_from.as_deref(), Some("s@example.net"), "never the smuggled sender");
        assert!(refusal.session.tls.is_some(), "refused inside TLS");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_smuggling_vector_inside_a_bdat_chunk_gets_one_550_5_6_11_and_no_message() -> anyhow::Result<()> {
    let (mut router, _pki) = start_secured("", "")?;
    let (mut wire, ehlo) = connect_ehlo(router.smtp()).await?;
    assert!(offers(&ehlo, "CHUNKING"), "{ehlo}");
    // BDAT outside a transaction: the chunk is read and refused, the session stays in step.
    wire.send(b"BDAT 5 LAST\r\nhello").await?;
    expect(&wire.reply().await?, "503 5.5.1", "BDAT before MAIL");
    for (name, vector) in VECTORS {
        let mut chunk = smuggling_content(vector);
        // A DATA terminator inside a chunk is content, not an end.
        chunk.extend_from_slice(b".\r\n");
        let mut bytes =
            format!("MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@contoso.com>\r\nBDAT {} LAST\r\n", chunk.len())
                .into_bytes();
        bytes.extend_from_slice(&chunk);
        wire.send(&bytes).await?;
        let replies = wire.replies(3).await?;
        expect(&replies[0], "250 2.1.0", name);
        expect(&replies[1], "250 2.1.5", name);
        expect(&replies[2], "550 5.6.11", name);
    }
    expect(&wire.command("QUIT").await?, "221 2.0.0", "QUIT");
    let (_, messages) = accepted(&mut router).await?;
    assert!(messages.is_empty(), "no message was accepted: {messages:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crlf_dot_crlf_inside_a_bdat_chunk_is_content_of_one_message() -> anyhow::Result<()> {
    // §2.1: "BDAT: `\r\n.\r\n` inside a BDAT chunk is content"; over the size
    // limit a chunk gets 552 5.3.4 and the session stays in step.
    let (mut router, _pki) = start_secured("max_message_size = 65536", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    let chunk = b"From: s@example.net\r\nSubject: chunked\r\n\r\nline\r\n.\r\n\
                  MAIL FROM:<smuggled@example.net>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\nSMUGGLED\r\n";
    let mut bytes =
        format!("MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@contoso.com>\r\nBDAT {} LAST\r\n", chunk.len()).into_bytes();
    bytes.extend_from_slice(chunk);
    wire.send(&bytes).await?;
    let replies = wire.replies(3).await?;
    expect(&replies[0], "250 2.1.0", "MAIL");
    expect(&replies[1], "250 2.1.5", "RCPT");
    expect(&replies[2], "250 2.0.0", "BDAT LAST");
    a_chunk_over_the_size_limit_gets_552_5_3_4(&mut wire).await?;
    expect(&wire.command("QUIT").await?, "221 2.0.0", "QUIT");
    let (_, messages) = accepted(&mut router).await?;
    assert_eq!(messages.len(), 1, "one message: {messages:?}");
    let (id, message) = &messages[0];
    assert_eq!(message.envelope.mail_from, "s@example.net");
    let content = stored_content(&router, id, message).await?;
    assert!(content.ends_with(std::str::from_utf8(chunk)?), "the chunk is stored as sent: {content:?}");
    Ok(())
}

/// A second transaction whose one chunk is over the 64 KiB limit: 552 5.3.4.
async fn a_chunk_over_the_size_limit_gets_552_5_3_4(wire: &mut mailflow_tests::wire::Wire) -> anyhow::Result<()> {
    let size = 70_000;
    let mut bytes =
        format!("MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@contoso.com>\r\nBDAT {size} LAST\r\n").into_bytes();
    bytes.resize(bytes.len() + size, b'x');
    wire.send(&bytes).await?;
    let replies = wire.replies(3).await?;
    expect(&replies[0], "250 2.1.0", "MAIL");
    expect(&replies[1], "250 2.1.5", "RCPT");
    expect(&replies[2], "552 5.3.4", "BDAT over the size limit");
    expect(&wire.command("NOOP").await?, "250 2.0.0", "in step after the chunk");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipelining_vector_queues_its_carrier_and_ends_the_stuffed_transaction_with_554_5_5_0() -> anyhow::Result<()>
{
    // §2.1 "pipelining" (smtpsmug), §2.2: a real end of data, then a whole
    // transaction with its content in the same write. The second DATA did
    // not wait for its 354.
    let (mut router, _pki) = start_secured("", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    open_data(&mut wire, "s@example.net", "bob@contoso.com").await?;
    wire.send(
        b"From: s@example.net\r\nSubject: carrier\r\n\r\nfirst\r\n.\r\n\
          MAIL FROM:<smuggled@example.net>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n\
          From: smuggled@example.net\r\n\r\nSMUGGLED\r\n.\r\n",
    )
    .await?;
    let replies = wire.replies(4).await?;
    expect(&replies[0], "250 2.0.0", "the carrier");
    expect(&replies[1], "250 2.1.0", "pipelined MAIL");
    expect(&replies[2], "250 2.1.5", "pipelined RCPT");
    expect(&replies[3], "554 5.5.0", "DATA with its content in the same write");
    assert!(wire.until_closed().await?.is_empty(), "closed after the 554, nothing more said");
    let (_, messages) = accepted(&mut router).await?;
    let senders: Vec<&str> = messages.iter().map(|(_, m)| m.envelope.mail_from.as_str()).collect();
    assert_eq!(senders, ["s@example.net"], "only the carrier was accepted");
    Ok(())
}
