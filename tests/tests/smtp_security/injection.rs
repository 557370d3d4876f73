//! Reliability notes §2.5, header, command and spool injection: CR, LF, NUL
//! and other control characters in commands and their xtext parameters,
//! over-long lines and addresses (§2.6), non-ASCII without SMTPUTF8, and
//! organisation headers from untrusted senders (spec 9.6).

use mailflow_tests::wire::Wire;

use super::{accepted, connect_ehlo, expect, open_data, start_secured, stored_content};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_commands_and_parameters_are_refused_and_never_recorded() -> anyhow::Result<()> {
    let (mut router, _pki) = start_secured("", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    // (bytes sent, reply) — each a separate command; none may leave state behind.
    let attempts: [(&[u8], &str); 9] = [
        // 21Nails CVE-2020-28021/28026 class: xtext decoding to CR LF / NUL.
        (b"MAIL FROM:<s@example.net> ENVID=x+0D+0AX-Evil:+201\r\n", "501 5.5.4"),
        // Raw NUL and a bare CR inside one command line.
        (b"MAIL FROM:<s\x00@example.net>\r\n", "501 5.5.4"),
        (b"MAIL FROM:<s@example.net>\rX-Evil: 1\r\n", "501 5.5.4"),
        // A command ended by a bare LF.
        (b"MAIL FROM:<s@example.net>\n", "501 5.5.4"),
        // DEL and another control character inside the address.
        (b"MAIL FROM:<s\x7f@example.net>\r\n", "501 5.5.4"),
        (b"MAIL FROM:<s\x1b[31m@example.net>\r\n", "501 5.1.7"),
        (b"MAIL FROM:<s@example.net>\r\n", "250 2.1.0"),
        (b"RCPT TO:<bob@contoso.com> ORCPT=rfc822;x+0A.+0D+0AX-Evil:+201\r\n", "501 5.5.4"),
        (b"RCPT TO:<bob@contoso.com> ORCPT=rfc822;x+00y@contoso.com\r\n", "501 5.5.4"),
    ];
    for (bytes, status) in attempts {
        wire.send(bytes).await?;
        expect(&wire.reply().await?, status, &String::from_utf8_lossy(bytes));
    }
    // A quoted local part cut by CRLF: two command lines, neither accepted.
    wire.send(b"RCPT TO:<\"a\r\nRCPT TO:<victim@example.org>\"@contoso.com>\r\n").await?;
    expect(&wire.reply().await?, "501 5.1.3", "the first half");
    expect(&wire.reply().await?, "501 5.5.4", "the second half");
    // AUTH= from an unauthenticated client is ignored (RFC 4954 §5), so its
    // decoded CR LF is never stored anywhere. An ORCPT decoding to a space and
    // a parameter stays one xtext parameter, as relayed to the next hop.
    expect(&wire.command("RSET").await?, "250 2.0.0", "RSET");
    wire.send(
        b"MAIL FROM:<s@example.net> AUTH=x+0D+0AX-Evil:+201\r\n\
          RCPT TO:<bob@contoso.com> ORCPT=rfc822;bob+20NOTIFY=NEVER@contoso.com\r\nDATA\r\n",
    )
    .await?;
    let replies = wire.replies(3).await?;
    expect(&replies[0], "250 2.1.0", "MAIL with AUTH=");
    expect(&replies[1], "250 2.1.5", "RCPT");
    assert_eq!(replies[2].code, 354);
    wire.send(b"Subject: clean\r\n\r\nhi\r\n.\r\n").await?;
    expect(&wire.reply().await?, "250 2.0.0", "end of data");
    let (events, messages) = accepted(&mut router).await?;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1.envelope.dsn_envid, None);
    let orcpts: Vec<Option<&str>> = messages[0].1.recipients.iter().map(|r| r.orcpt.as_deref()).collect();
    assert_eq!(orcpts, [Some("rfc822;bob+20NOTIFY+3DNEVER@contoso.com")]);
    for event in &events {
        let json = String::from_utf8(event.to_json())?;
        assert!(!json.contains("Evil"), "an injected line reached the log: {json}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_lines_and_addresses_are_refused_with_bounded_memory() -> anyhow::Result<()> {
    // §2.6: command lines over max_line_length (default 2048, CRLF included)
    // get `500 5.5.2`, however long; the session stays in step.
    let (router, _pki) = start_secured("", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    let line = format!("NOOP {}\r\n", "x".repeat(2048 - 7));
    assert_eq!(line.len(), 2048);
    expect(&wire.command(&line[..line.len() - 2]).await?, "250 2.0.0", "a line at the limit");
    let long = format!("NOOP {}\r\n", "x".repeat(2048 - 6));
    wire.send(long.as_bytes()).await?;
    expect(&wire.reply().await?, "500 5.5.2", "one byte over");
    expect(&wire.command("NOOP").await?, "250 2.0.0", "in step");

    // 64 MiB without a line end: one reply once it ends, memory flat.
    let before = router.rss_kib()?;
    let block = vec![b'x'; 1 << 20];
    wire.send(b"NOOP ").await?;
    for _ in 0..64 {
        wire.send(&block).await?;
    }
    wire.send(b"\r\n").await?;
    expect(&wire.reply().await?, "500 5.5.2", "64 MiB line");
    expect(&wire.command("NOOP").await?, "250 2.0.0", "in step after the long line");
    let growth = router.rss_kib()?.saturating_sub(before);
    assert!(growth < 16 * 1024, "the router grew by {growth} KiB reading a 64 MiB line");

    // RFC 5321 §4.5.3.1: a 65-octet local part may be accepted; a path over
    // 256 octets is refused.
    expect(&wire.command("MAIL FROM:<s@example.net>").await?, "250 2.1.0", "MAIL");
    let local65 = format!("RCPT TO:<{}@fabrikam.com>", "a".repeat(65));
    expect(&wire.command(&local65).await?, "250 2.1.5", "65-octet local part");
    let path = format!("RCPT TO:<{}@{}.fabrikam.com>", "a".repeat(64), "b".repeat(200));
    expect(&wire.command(&path).await?, "501 5.1.3", "recipient path over 256 octets");
    expect(&wire.command("RSET").await?, "250 2.0.0", "RSET");
    let sender = format!("MAIL FROM:<{}@{}.example.net>", "a".repeat(64), "b".repeat(200));
    expect(&wire.command(&sender).await?, "501 5.1.7", "sender path over 256 octets");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_envelope_addresses_need_smtputf8() -> anyhow::Result<()> {
    // RFC 6531: `553 5.6.7` (Postfix's reply) to a UTF-8 address from a client
    // that did not declare SMTPUTF8; bytes that are not UTF-8 are no address.
    let (mut router, _pki) = start_secured("", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    let refused = wire.command("MAIL FROM:<josé@example.net>").await?;
    expect(&refused, "553 5.6.7", "UTF-8 sender without SMTPUTF8");
    assert_eq!(refused.text(), "5.6.7 Must declare SMTPUTF8 to send unicode address");
    expect(&wire.command("MAIL FROM:<s@example.net>").await?, "250 2.1.0", "ASCII sender");
    expect(&wire.command("RCPT TO:<jürgen@fabrikam.com>").await?, "553 5.6.7", "UTF-8 recipient without SMTPUTF8");
    expect(&wire.command("RSET").await?, "250 2.0.0", "RSET");
    wire.send(b"MAIL FROM:<jos\xe9@example.net> SMTPUTF8\r\n").await?;
    expect(&wire.reply().await?, "501 5.1.7", "Latin-1, not UTF-8");
    // Declared, the same addresses are taken and recorded as sent.
    expect(&wire.command("MAIL FROM:<josé@example.net> SMTPUTF8").await?, "250 2.1.0", "UTF-8 sender with SMTPUTF8");
    expect(&wire.command("RCPT TO:<jürgen@fabrikam.com>").await?, "250 2.1.5", "UTF-8 recipient with SMTPUTF8");
    assert_eq!(wire.command("DATA").await?.code, 354);
    wire.send("Subject: grüße\r\n\r\nhi\r\n.\r\n".as_bytes()).await?;
    expect(&wire.reply().await?, "250 2.0.0", "end of data");
    let (_, messages) = accepted(&mut router).await?;
    assert_eq!(messages.len(), 1);
    let envelope = &messages[0].1.envelope;
    assert_eq!((envelope.mail_from.as_str(), envelope.smtputf8), ("josé@example.net", true));
    assert_eq!(messages[0].1.recipients[0].address, "jürgen@fabrikam.com");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organisation_headers_are_stripped_from_anonymous_senders_and_kept_from_on_premises() -> anyhow::Result<()> {
    // Spec 9.6: `X-MS-Exchange-Organization-*` and our own
    // `Authentication-Results` only from the organisation's servers. The
    // on-premises connector is 127.0.0.1; the anonymous client comes from 127.0.0.2.
    let onprem =
        "[[inbound_connectors]]\nname = \"onprem\"\nkind = \"on_premises\"\nsender_ip_addresses = [\"127.0.0.1\"]\n";
    let (mut router, _pki) = start_secured("", onprem)?;
    let forged = "X-MS-Exchange-Organization-SCL: -1\r\n\
                  X-MS-Exchange-Organization-AuthAs: Internal\r\n\tfolded on\r\n\
                  Authentication-Results: mx.contoso.test; dmarc=pass header.from=contoso.com\r\n\
                  Received: from forged.example by mx.contoso.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
                  Subject: forged\r\n\r\nbody\r\n";

    let mut anonymous = Wire::connect_from("127.0.0.2".parse()?, router.smtp()).await?;
    assert_eq!(anonymous.reply().await?.code, 220);
    assert_eq!(anonymous.command("EHLO client.example").await?.code, 250);
    open_data(&mut anonymous, "s@example.net", "bob@contoso.com").await?;
    anonymous.send(format!("{forged}.\r\n").as_bytes()).await?;
    expect(&anonymous.reply().await?, "250 2.0.0", "anonymous");
    // A bare CR cannot hide a header inside another one.
    open_data(&mut anonymous, "s@example.net", "bob@contoso.com").await?;
    anonymous.send(b"Subject: x\rX-MS-Exchange-Organization-SCL: -1\r\n\r\nbody\r\n.\r\n").await?;
    expect(&anonymous.reply().await?, "550 5.6.11", "bare CR in a header");

    let (mut onprem, _) = connect_ehlo(router.smtp()).await?;
    open_data(&mut onprem, "alice@contoso.com", "bob@contoso.com").await?;
    onprem.send(format!("{forged}.\r\n").as_bytes()).await?;
    expect(&onprem.reply().await?, "250 2.0.0", "on-premises");

    let (_, messages) = accepted(&mut router).await?;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let from = |ip: &str| messages.iter().find(|(_, m)| m.session.client_ip == ip).expect("a message from the address");
    let (id, message) = from("127.0.0.2");
    let anonymous = stored_content(&router, id, message).await?;
    assert!(anonymous.starts_with("Received: from client.example (unknown [127.0.0.2])"), "{anonymous}");
    assert!(!anonymous.contains("X-MS-Exchange-Organization-") && !anonymous.contains("folded on"), "{anonymous}");
    assert!(!anonymous.contains("dmarc=pass"), "{anonymous}");
    assert!(
        anonymous.contains("\r\nX-MS-Exchange-Transport-CrossTenantHeadersStripped: mx.contoso.test\r\n"),
        "{anonymous}"
    );
    assert!(anonymous.ends_with("Received: from forged.example by mx.contoso.test; Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: forged\r\n\r\nbody\r\n"), "a forged trace header is only a trace header: {anonymous}");
    let (id, message) = from("127.0.0.1");
    let trusted = stored_content(&router, id, message).await?;
    assert!(
        trusted.contains(
            "\r\nX-MS-Exchange-Organization-SCL: -1\r\nX-MS-Exchange-Organization-AuthAs: Internal\r\n\tfolded on\r\n"
        ),
        "{trusted}"
    );
    assert_eq!(message.connector.as_ref().map(|c| c.name.as_str()), Some("onprem"));
    Ok(())
}
