//! The security suite: the attacks of reliability notes §2
//! (`notes/reliability.md`) against the real router on loopback, each with a
//! byte-exact client ([`mailflow_tests::wire::Wire`]) or the attacker's own
//! tool (nmap). Every test asserts reply codes with their enhanced status and,
//! where a message could slip through, what the event log holds afterwards.
//!
//! One module per section of the notes: `smuggling` (§2.1), `pipelining`
//! (§2.2), `starttls` (§2.3, and AUTH before TLS), `relay` (§2.4),
//! `injection` (§2.5), `limits` (§2.6). What `smtp_front_door.rs` already
//! covers (DATA smuggling over plain TCP, nmap on one listener, the
//! per-address limit, a silent and a NOOP-dripping client) is not repeated.

#[path = "smtp_security/injection.rs"]
mod injection;
#[path = "smtp_security/limits.rs"]
mod limits;
#[path = "smtp_security/pipelining.rs"]
mod pipelining;
#[path = "smtp_security/relay.rs"]
mod relay;
#[path = "smtp_security/smuggling.rs"]
mod smuggling;
#[path = "smtp_security/starttls.rs"]
mod starttls;

use mailflow_events::received::{MessageReceived, ReceivedEvent};
use mailflow_events::{Envelope, content};
use mailflow_tests::router::{BASE_CONFIG, Router, messages_received};
use mailflow_tests::wire::{Reply, TestPki, Wire};

/// The name the router's certificate is for (and its `hostname`).
const SERVER_NAME: &str = "mx.contoso.test";

/// The submission account's address and password.
const PRINTER: &str = "printer@contoso.com";
const PRINTER_PASSWORD: &str = "correct horse";

/// `AUTH PLAIN` initial response for the printer (`\0login\0password`).
fn printer_plain() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{PRINTER}\0{PRINTER_PASSWORD}"))
}

/// A router with STARTTLS (a CA the client trusts), the anonymous listener
/// `smtp` and the submission listener `submission`, and the printer account.
/// `server` lines go into `[server]`; `extra` is appended.
fn start_secured(server: &str, extra: &str) -> anyhow::Result<(Router, TestPki)> {
    let pki = TestPki::new(SERVER_NAME)?;
    let dir = tempfile::tempdir()?;
    let tls = pki.server_tls_section(dir.path())?;
    let hash = mailflow_actors::connection::auth::hash_password(PRINTER_PASSWORD);
    let base =
        BASE_CONFIG.replace("hostname = \"mx.contoso.test\"", &format!("hostname = \"mx.contoso.test\"\n{server}"));
    let config = format!(
        "{base}\n{tls}\n[[server.listeners]]\nname = \"submission\"\naddress = \"127.0.0.1:0\"\nkind = \"submission\"\n\n\
         [[directory.recipients]]\naddress = \"{PRINTER}\"\npassword_hash = \"{hash}\"\n{extra}"
    );
    Ok((Router::start_in(dir, &config)?, pki))
}

/// Asserts `reply` has exactly this code and enhanced status, e.g. `"550 5.6.11"`.
#[track_caller]
fn expect(reply: &Reply, status: &str, context: &str) {
    assert_eq!(reply.status(), status, "{context}: got {reply}");
}

/// Connects, checks the banner and says EHLO; returns the EHLO reply.
async fn connect_ehlo(server: std::net::SocketAddr) -> anyhow::Result<(Wire, Reply)> {
    let (mut wire, banner) = Wire::connect(server).await?;
    assert_eq!(banner.code, 220, "{banner}");
    let ehlo = wire.command("EHLO client.example").await?;
    assert_eq!(ehlo.code, 250, "{ehlo}");
    Ok((wire, ehlo))
}

/// STARTTLS, the handshake, and EHLO again; returns the EHLO reply inside TLS.
async fn upgrade(wire: &mut Wire, pki: &TestPki) -> anyhow::Result<Reply> {
    let ready = wire.command("STARTTLS").await?;
    expect(&ready, "220 2.0.0", "STARTTLS");
    wire.start_tls(&pki.connector, SERVER_NAME).await?;
    let ehlo = wire.command("EHLO client.example").await?;
    assert_eq!(ehlo.code, 250, "{ehlo}");
    Ok(ehlo)
}

/// Whether the EHLO reply lists `keyword` (a whole line, or its first word).
fn offers(ehlo: &Reply, keyword: &str) -> bool {
    ehlo.lines.iter().any(|line| line == keyword || line.starts_with(&format!("{keyword} ")))
}

/// MAIL, RCPT and DATA in one write (legal with PIPELINING); asserts
/// `250 2.1.0`, `250 2.1.5`, `354`.
async fn open_data(wire: &mut Wire, from: &str, to: &str) -> anyhow::Result<()> {
    wire.send(format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes()).await?;
    let replies = wire.replies(3).await?;
    expect(&replies[0], "250 2.1.0", "MAIL");
    expect(&replies[1], "250 2.1.5", "RCPT");
    assert_eq!(replies[2].code, 354, "DATA: {}", replies[2]);
    Ok(())
}

/// The messages accepted over SMTP, read after stopping the router.
async fn accepted(
    router: &mut Router,
) -> anyhow::Result<(Vec<Envelope<ReceivedEvent>>, Vec<(String, MessageReceived)>)> {
    let events = router.received_events().await?;
    let messages = messages_received(&events);
    Ok((events, messages))
}

/// The stored content of an accepted message (after [`accepted`]).
async fn stored_content(router: &Router, id: &str, message: &MessageReceived) -> anyhow::Result<String> {
    let log = mailflow_events::log::embedded::EmbeddedLog::open(router.log_path(), Default::default())?;
    let body = content::load(&log, id, &message.content).await?;
    Ok(String::from_utf8(body)?)
}
