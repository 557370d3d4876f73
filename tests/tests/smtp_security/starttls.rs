//! Reliability notes §2.3, STARTTLS command injection (CVE-2011-0411) and
//! the state reset after the handshake (RFC 3207 §4.2), and AUTH only after
//! TLS on the submission listener (spec 5.1, notes §2.3 T3).

use super::{PRINTER, SERVER_NAME, connect_ehlo, expect, offers, printer_plain, start_secured, upgrade};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_sent_behind_starttls_is_never_executed_inside_tls() -> anyhow::Result<()> {
    // T1: the injected command would have been answered before EHLO's reply,
    // and would have left its state behind (a transaction, a login).
    let (router, pki) = start_secured("", "")?;

    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    wire.send(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\n").await?;
    expect(&wire.reply().await?, "220 2.0.0", "STARTTLS");
    wire.start_tls(&pki.connector, SERVER_NAME).await?;
    let ehlo = wire.command("EHLO client.example").await?;
    assert_eq!(ehlo.code, 250, "the first reply inside TLS answers EHLO: {ehlo}");
    assert!(ehlo.lines[0].starts_with("mx.contoso.test Hello"), "{ehlo}");
    expect(&wire.command("RCPT TO:<bob@contoso.com>").await?, "503 5.5.1", "the injected MAIL opened no transaction");

    let (mut wire, ehlo) = connect_ehlo(router.listener("submission")).await?;
    assert!(!offers(&ehlo, "AUTH"), "{ehlo}");
    wire.send(format!("STARTTLS\r\nAUTH PLAIN {}\r\n", printer_plain()).as_bytes()).await?;
    expect(&wire.reply().await?, "220 2.0.0", "STARTTLS");
    wire.start_tls(&pki.connector, SERVER_NAME).await?;
    let ehlo = wire.command("EHLO printer.example").await?;
    assert!(ehlo.code == 250 && offers(&ehlo, "AUTH"), "the first reply inside TLS answers EHLO: {ehlo}");
    expect(&wire.command(&format!("MAIL FROM:<{PRINTER}>")).await?, "530 5.7.57", "the injected AUTH logged nobody in");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_starttls_the_session_starts_over_and_starttls_is_not_offered_again() -> anyhow::Result<()> {
    // T2: what was said in the clear is forgotten; EHLO again first.
    let (router, pki) = start_secured("", "")?;
    let (mut wire, ehlo) = connect_ehlo(router.smtp()).await?;
    assert!(offers(&ehlo, "STARTTLS"), "{ehlo}");
    expect(&wire.command("MAIL FROM:<s@example.net>").await?, "250 2.1.0", "MAIL in the clear");
    expect(&wire.command("STARTTLS").await?, "220 2.0.0", "STARTTLS");
    wire.start_tls(&pki.connector, SERVER_NAME).await?;
    expect(&wire.command("MAIL FROM:<s@example.net>").await?, "503 5.5.1", "MAIL before the new EHLO");
    let ehlo = wire.command("EHLO client.example").await?;
    assert!(ehlo.code == 250 && !offers(&ehlo, "STARTTLS"), "{ehlo}");
    expect(&wire.command("STARTTLS").await?, "503 5.5.1", "a second STARTTLS");
    expect(&wire.command("RCPT TO:<bob@contoso.com>").await?, "503 5.5.1", "the clear-text transaction is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_submission_listener_refuses_auth_and_mail_before_starttls_with_530_5_7_0() -> anyhow::Result<()> {
    let (router, pki) = start_secured("", "")?;
    let (mut wire, ehlo) = connect_ehlo(router.listener("submission")).await?;
    assert!(!offers(&ehlo, "AUTH") && offers(&ehlo, "STARTTLS"), "no AUTH before TLS: {ehlo}");
    // Valid credentials in the clear are refused, not checked.
    let plain = wire.command(&format!("AUTH PLAIN {}", printer_plain())).await?;
    expect(&plain, "530 5.7.0", "AUTH PLAIN before TLS");
    assert_eq!(plain.text(), "5.7.0 Must issue a STARTTLS command first");
    expect(&wire.command("AUTH LOGIN").await?, "530 5.7.0", "AUTH LOGIN before TLS");
    expect(&wire.command(&format!("MAIL FROM:<{PRINTER}>")).await?, "530 5.7.0", "MAIL before TLS");

    let ehlo = upgrade(&mut wire, &pki).await?;
    assert!(ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{ehlo}");
    // RFC 4954 §4: AUTH PLAIN with its initial response may share a write
    // with MAIL; MAIL is answered once the password check is done.
    wire.send(format!("AUTH PLAIN {}\r\nMAIL FROM:<{PRINTER}>\r\n", printer_plain()).as_bytes()).await?;
    expect(&wire.reply().await?, "235 2.7.0", "AUTH PLAIN inside TLS");
    expect(&wire.reply().await?, "250 2.1.0", "MAIL pipelined behind AUTH");

    // The anonymous listener has no AUTH, in the clear or inside TLS.
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    let ehlo = upgrade(&mut wire, &pki).await?;
    assert!(!offers(&ehlo, "AUTH"), "{ehlo}");
    expect(&wire.command(&format!("AUTH PLAIN {}", printer_plain())).await?, "502 5.5.1", "AUTH on port 25");
    Ok(())
}
