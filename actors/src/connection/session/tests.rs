//! Session transcripts: the protocol core driven with byte strings, no
//! sockets. Each assertion checks the reply code and the enhanced status.

use std::sync::Arc;

use mailflow_events::received::{ReceivedEvent, RejectReason, TlsInfo};

use super::*;
use crate::config::{Config, ListenerKind};

/// A session plus what it asked the driver to do.
struct Transcript {
    session: Session,
    replies: Vec<String>,
    stored: Vec<Incoming>,
    records: Vec<ReceivedEvent>,
    tls_requested: bool,
    closed: bool,
    store_outcome: StoreOutcome,
}

fn config(kind: ListenerKind, tls: bool) -> (Arc<SessionConfig>, Arc<InboundPolicy>) {
    let mut config = Config::builtin();
    config.server.max_recipients = 3;
    config.server.max_message_size = 4096;
    config.server.max_errors = 10;
    config.server.max_received_headers = 3;
    // alice's password is "secret" (argon2id PHC string).
    config.directory.recipients[0].password_hash = Some(crate::connection::auth::hash_password("secret"));
    let mut session = SessionConfig::new(&config.server, "test", kind);
    session.tls_available = tls;
    (Arc::new(session), Arc::new(InboundPolicy::new(&config)))
}

impl Transcript {
    fn new(kind: ListenerKind, tls: bool, ip: &str) -> Self {
        let (config, policy) = config(kind, tls);
        Self::at(config, policy, ip)
    }

    fn with_config(config: Arc<SessionConfig>, policy: Arc<InboundPolicy>) -> Self {
        Self::at(config, policy, "198.51.100.7")
    }

    fn at(config: Arc<SessionConfig>, policy: Arc<InboundPolicy>, ip: &str) -> Self {
        let peer = Peer { addr: format!("{ip}:40000").parse().expect("addr"), local: None, ptr: None };
        let (session, steps) = Session::new(config, policy, peer);
        let mut transcript = Self {
            session,
            replies: Vec::new(),
            stored: Vec::new(),
            records: Vec::new(),
            tls_requested: false,
            closed: false,
            store_outcome: StoreOutcome::Stored,
        };
        transcript.run(steps);
        transcript
    }

    fn smtp() -> Self {
        Self::new(ListenerKind::Smtp, false, "198.51.100.7")
    }

    fn run(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Reply(reply) => self.replies.push(reply.render()),
                Step::StartTls => self.tls_requested = true,
                Step::Store(incoming) => {
                    self.stored.push(*incoming);
                    let next = self.session.stored(self.store_outcome.clone());
                    self.run(next);
                }
                Step::Record(event) => self.records.push(*event),
                Step::CheckPassword { login, password } => {
                    let primary = crate::connection::auth::verify(&self.session.policy, &login, &password);
                    let next = self.session.password_checked(primary);
                    self.run(next);
                }
                Step::Close => self.closed = true,
            }
        }
    }

    /// Sends raw bytes; returns the replies they produced.
    fn send(&mut self, bytes: &[u8]) -> Vec<String> {
        let before = self.replies.len();
        let mut input = bytes.to_vec();
        let steps = self.session.feed(&mut input);
        self.run(steps);
        self.replies[before..].to_vec()
    }

    /// Sends one command and expects one reply starting with `expected`.
    fn cmd(&mut self, command: &str, expected: &str) -> String {
        let replies = self.send(format!("{command}\r\n").as_bytes());
        let all = replies.concat();
        assert!(all.starts_with(expected), "{command:?}: expected {expected:?}, got {all:?}");
        all
    }
}

#[test]
fn a_whole_transaction_is_queued_with_its_id_and_a_received_header() {
    let mut t = Transcript::smtp();
    assert!(t.replies[0].starts_with("220 mailflow.localhost "), "{:?}", t.replies);
    let ehlo = t.cmd("EHLO client.example", "250-mailflow.localhost Hello [198.51.100.7]");
    for keyword in ["PIPELINING", "SIZE 4096", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"] {
        assert!(ehlo.contains(keyword), "EHLO lacks {keyword}: {ehlo}");
    }
    assert!(!ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "no TLS configured, no AUTH on port 25: {ehlo}");
    t.cmd("MAIL FROM:<sender@example.net> BODY=8BITMIME RET=HDRS ENVID=abc", "250 2.1.0 ");
    t.cmd("RCPT TO:<alice@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.com", "250 2.1.5 ");
    t.cmd("DATA", "354 ");
    let replies = t.send(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n");
    assert_eq!(replies.len(), 1);
    assert!(replies[0].starts_with("250 2.0.0 OK <"), "{replies:?}");
    let stored = &t.stored[0];
    assert!(replies[0].contains(&stored.id));
    let content = String::from_utf8(stored.content.clone()).expect("utf-8");
    assert!(
        content.starts_with("Received: from client.example (unknown [198.51.100.7])\r\n\tby mailflow.localhost"),
        "{content}"
    );
    assert!(content.contains("with ESMTP\r\n\tid ") && content.contains("for <alice@example.com>"), "{content}");
    assert!(content.ends_with("Subject: hi\r\n\r\n.dot\r\nbody\r\n"), "dot-unstuffed: {content:?}");
    assert_eq!(stored.envelope.mail_from, "sender@example.net");
    assert_eq!(stored.envelope.dsn_envid.as_deref(), Some("abc"));
    assert_eq!(stored.recipients[0].notify.len(), 2);
    assert_eq!(stored.recipients[0].accepted_domain.as_deref(), Some("example.com"));
    t.cmd("QUIT", "221 2.0.0 ");
    assert!(t.closed);
}

#[test]
fn unknown_recipients_of_an_authoritative_domain_are_refused_at_rcpt_and_recorded() {
    // Spec 2.4 (DBEB), 1.1 T: refused at RCPT, before any filtering.
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<s@example.net>", "250 2.1.0");
    t.cmd("RCPT TO:<nobody@example.com>", "550 5.4.1 Recipient address rejected: Access denied");
    t.cmd("RCPT TO:<victim@example.org>", "550 5.4.1 Relay Access Denied");
    t.cmd("DATA", "503 5.5.1 ");
    let reasons: Vec<_> = t
        .records
        .iter()
        .map(|r| match r {
            ReceivedEvent::RecipientRejected(r) => (r.address.clone(), r.reason, r.reply.code),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("nobody@example.com".into(), RejectReason::UnknownRecipient, 550),
            ("victim@example.org".into(), RejectReason::RelayDenied, 550)
        ]
    );
}

#[test]
fn limits_answer_with_their_replies() {
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<s@example.net> SIZE=999999", "552 5.3.4 ");
    t.cmd("MAIL FROM:<s@example.net>", "250 2.1.0");
    for _ in 0..3 {
        t.cmd("RCPT TO:<bob@example.com>", "250 2.1.5");
    }
    t.cmd("RCPT TO:<bob@example.com>", "452 4.5.3 Too many recipients");
    t.cmd("DATA", "354");
    let mut big = vec![b'x'; 5000];
    big.extend_from_slice(b"\r\n.\r\n");
    assert!(t.send(&big)[0].starts_with("552 5.3.4 "));
    assert!(t.stored.is_empty());
    // A command line over max_line_length, then the session goes on.
    let long = format!("NOOP {}\r\n", "x".repeat(3000));
    assert!(t.send(long.as_bytes())[0].starts_with("500 5.5.2 "));
    t.cmd("NOOP", "250 2.0.0");
}

#[test]
fn a_message_with_too_many_received_headers_is_a_loop() {
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<s@example.net>", "250");
    t.cmd("RCPT TO:<bob@example.com>", "250");
    t.cmd("DATA", "354");
    let replies = t.send(b"Received: a\r\nReceived: b\r\nReceived: c\r\nReceived: d\r\n\r\nx\r\n.\r\n");
    assert!(replies[0].starts_with("554 5.4.14 "), "{replies:?}");
}

#[test]
fn header_bombs_get_552_5_3_4_by_size_and_by_field_count() {
    // reliability.md §2.5.5: more fields, or a bigger header section, than the
    // limits is `552 5.3.4` (Stalwart's answer), recorded, nothing stored; the
    // same fields as the body of a message are fine.
    let (config, policy) = config(ListenerKind::Smtp, false);
    let mut small = (*config).clone();
    small.max_message_size = 1 << 20;
    small.max_header_fields = 50;
    small.max_header_size = 2000;
    let send = |content: Vec<u8>| {
        let mut t = Transcript::with_config(Arc::new(small.clone()), Arc::clone(&policy));
        t.cmd("EHLO c", "250");
        t.cmd("MAIL FROM:<s@example.net>", "250");
        t.cmd("RCPT TO:<bob@example.com>", "250");
        t.cmd("DATA", "354");
        let mut bytes = content;
        bytes.extend_from_slice(b".\r\n");
        let replies = t.send(&bytes);
        (replies.concat(), t)
    };
    let fields = |n: usize| (0..n).map(|i| format!("X-F{i}: v\r\n")).collect::<String>();
    let (reply, t) = send(format!("{}\r\nbody\r\n", fields(51)).into_bytes());
    assert!(reply.starts_with("552 5.3.4 Message header size or field count exceeds limit"), "{reply:?}");
    assert!(t.stored.is_empty());
    assert!(matches!(&t.records[..], [ReceivedEvent::MessageRejected(r)] if r.reply.code == 552), "{:?}", t.records);
    let (reply, _) = send(format!("Subject: {}\r\n\r\nbody\r\n", "x ".repeat(1100)).into_bytes());
    assert!(reply.starts_with("552 5.3.4 "), "one long field over the size: {reply:?}");
    let folded = format!("Subject: x\r\n{}\r\nbody\r\n", " more\r\n".repeat(60));
    assert!(send(folded.into_bytes()).0.starts_with("250 2.0.0 "), "continuations are one field");
    let (reply, t) = send(format!("{}\r\n{}", fields(50), fields(500)).into_bytes());
    assert!(reply.starts_with("250 2.0.0 "), "at the limits, and header-like body lines: {reply:?}");
    assert_eq!(t.stored.len(), 1);
    let defaults = crate::config::ServerConfig::default();
    assert_eq!((defaults.max_header_size, defaults.max_header_fields, defaults.min_data_rate), (102_400, 1000, 500));
}

#[test]
fn every_smuggling_vector_gets_one_550_5_6_11_and_stores_nothing() {
    // reliability.md §2.1: a test per vector, through the whole session.
    let vectors: [(&str, &[u8]); 16] = [
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
        ("bare-lf-line", b"\nplain bare lf\r\n"),
    ];
    for (name, vector) in vectors {
        let mut t = Transcript::smtp();
        t.cmd("EHLO c", "250");
        t.cmd("MAIL FROM:<s@example.net>", "250");
        t.cmd("RCPT TO:<bob@example.com>", "250");
        t.cmd("DATA", "354");
        let mut bytes = b"From: s@example.net\r\n\r\nline".to_vec();
        bytes.extend_from_slice(vector);
        bytes.extend_from_slice(b"MAIL FROM:<smuggled@x>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSMUGGLED\r\n.\r\n");
        let replies = t.send(&bytes);
        assert_eq!(replies.len(), 1, "{name}: exactly one reply, got {replies:?}");
        assert!(replies[0].starts_with("550 5.6.11 "), "{name}: {replies:?}");
        assert!(t.stored.is_empty(), "{name}: nothing stored");
        assert!(matches!(&t.records[..], [ReceivedEvent::MessageRejected(_)]), "{name}: the refusal is recorded");
    }
}

#[test]
fn a_dot_without_its_line_end_is_content_of_one_message() {
    // reliability.md §2.1 "no-term" (`\r\n.` then more): the dot starts a content
    // line (and is removed as a stuffed dot); the commands after it are content.
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<s@example.net>", "250");
    t.cmd("RCPT TO:<bob@example.com>", "250");
    t.cmd("DATA", "354");
    let replies =
        t.send(b"From: s@example.net\r\n\r\nline\r\n.MAIL FROM:<smuggled@x>\r\nRCPT TO:<bob@example.com>\r\n.\r\n");
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].starts_with("250 2.0.0 "), "{replies:?}");
    assert_eq!(t.stored.len(), 1);
    assert_eq!(t.stored[0].envelope.mail_from, "s@example.net");
    assert!(t.stored[0].content.ends_with(b"line\r\nMAIL FROM:<smuggled@x>\r\nRCPT TO:<bob@example.com>\r\n"));
}

#[test]
fn legal_pipelining_gets_one_reply_per_command_in_order() {
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    let replies =
        t.send(b"MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<nobody@example.com>\r\nDATA\r\n");
    let codes: Vec<&str> = replies.iter().map(|r| &r[..3]).collect();
    assert_eq!(codes, ["250", "250", "550", "354"]);
}

#[test]
fn content_sent_before_the_354_is_a_synchronization_error() {
    // reliability.md §2.2: 554 5.5.0 and disconnect.
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    let replies =
        t.send(b"MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n");
    assert!(replies.last().expect("reply").starts_with("554 5.5.0 "), "{replies:?}");
    assert!(t.closed && t.stored.is_empty());
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    // CVE-2011-0411: the RSET and MAIL sent in the clear are never answered.
    let mut t = Transcript::new(ListenerKind::Smtp, true, "198.51.100.7");
    assert!(t.cmd("EHLO c", "250").contains("STARTTLS"));
    let replies = t.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.net>\r\n");
    assert!(replies.is_empty() && t.tls_requested, "{replies:?}");
    let steps = t.session.tls_started(Some(TlsInfo::new("TLSv1.3", "TLS_AES_256_GCM_SHA384")));
    t.run(steps);
    assert_eq!(t.send(b"").len(), 0, "nothing pending after the handshake");
    t.cmd("MAIL FROM:<s@example.net>", "503 5.5.1 "); // RFC 3207: EHLO again first
    let ehlo = t.cmd("EHLO c", "250");
    assert!(!ehlo.contains("STARTTLS"), "no STARTTLS inside TLS");
    t.cmd("STARTTLS", "503 5.5.1 ");
}

#[test]
fn bare_line_endings_in_commands_are_refused() {
    let mut t = Transcript::smtp();
    assert!(t.send(b"EHLO c\n")[0].starts_with("501 5.5.4 "));
}

#[test]
fn too_many_errors_close_the_session() {
    let mut t = Transcript::smtp();
    for _ in 0..9 {
        t.cmd("BOGUS", "500 5.5.1");
    }
    let last = t.send(b"BOGUS\r\n");
    assert!(last[1].starts_with("421 4.7.0 "), "{last:?}");
    assert!(t.closed);
}

#[test]
fn failed_passwords_count_as_errors_and_the_last_one_closes_the_session() {
    // Found by the smtp_session fuzz target: the `421 4.7.0` after the
    // max_errors-th failed AUTH was sent, but the session stayed open and
    // took further guesses (fuzz/corpus/smtp_session/regression-auth-421-stays-open).
    let mut t = Transcript::new(ListenerKind::Submission, true, "198.51.100.7");
    t.cmd("EHLO printer", "250");
    t.send(b"STARTTLS\r\n");
    let steps = t.session.tls_started(Some(TlsInfo::new("TLSv1.3", "TLS_AES_128_GCM_SHA256")));
    t.run(steps);
    t.cmd("EHLO printer", "250");
    // "\0alice@example.com\0wrong", max_errors (10) times.
    for _ in 0..9 {
        t.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHdyb25n", "535 5.7.3 ");
    }
    let last = t.send(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHdyb25n\r\n");
    assert!(last.len() == 2 && last[1].starts_with("421 4.7.0 "), "{last:?}");
    assert!(t.closed && t.session.is_closed());
    assert!(t.send(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==\r\n").is_empty(), "no guess after 421");
}

#[test]
fn content_starting_with_a_continuation_line_is_refused_rather_than_folded_into_our_received_field() {
    // Found by the body_reader fuzz target: a first line "\t." was stored as
    // the last line of our own Received: field
    // (fuzz/corpus/body_reader/regression-folded-first-line).
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<s@example.net>", "250");
    t.cmd("RCPT TO:<bob@example.com>", "250");
    t.cmd("DATA", "354");
    let replies = t.send(b"\t; Mon, 1 Jan 2001 00:00:00 +0000\r\nSubject: x\r\n\r\nbody\r\n.\r\n");
    assert_eq!(replies.len(), 1);
    assert!(replies[0].starts_with("550 5.6.0 "), "{replies:?}");
    t.cmd("MAIL FROM:<s@example.net>", "250");
    t.cmd("RCPT TO:<bob@example.com>", "250");
    t.cmd("BDAT 10 LAST", "");
    assert!(t.send(b" x\r\n\r\nbody")[0].starts_with("550 5.6.0 "));
    assert!(t.stored.is_empty(), "nothing stored");
    assert_eq!(t.records.len(), 2, "both refusals recorded");
}

#[test]
fn bdat_chunks_make_one_message_and_orphan_chunks_are_consumed() {
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    // BDAT without a transaction: the chunk is read, then refused.
    let replies = t.send(b"BDAT 4\r\nabcd");
    assert!(replies[0].starts_with("503 5.5.1 "), "{replies:?}");
    t.cmd("MAIL FROM:<s@example.net>", "250");
    t.cmd("RCPT TO:<bob@example.com>", "250");
    let replies = t.send(b"BDAT 14\r\nSubject: x\r\n\r\nBDAT 4 LAST\r\nhi\r\n");
    assert!(replies[0].starts_with("250 2.6.0 "), "{replies:?}");
    assert!(replies[1].starts_with("250 2.0.0 OK <"), "{replies:?}");
    assert!(t.stored[0].content.ends_with(b"Subject: x\r\n\r\nhi\r\n"));
}

#[test]
fn store_failures_answer_4xx_never_250() {
    for (outcome, expected) in [
        (StoreOutcome::Failed, "451 4.3.0 "),
        (StoreOutcome::NoSpace, "452 4.3.1 "),
        (StoreOutcome::Ipv6AuthenticationFailed, "450 4.7.26 "),
        (
            StoreOutcome::DmarcRejected { domain: "contoso.com".into() },
            "550 5.7.509 Access denied, sending domain [contoso.com]",
        ),
    ] {
        let mut t = Transcript::smtp();
        t.store_outcome = outcome.clone();
        t.cmd("EHLO c", "250");
        t.cmd("MAIL FROM:<s@example.net>", "250");
        t.cmd("RCPT TO:<bob@example.com>", "250");
        t.cmd("DATA", "354");
        let replies = t.send(b"x\r\n.\r\n");
        assert!(replies[0].starts_with(expected), "{outcome:?}: {replies:?}");
    }
}

#[test]
fn submission_requires_tls_then_auth_and_checks_send_as() {
    // Spec 5.1: AUTH only after STARTTLS; anonymous MAIL gets 530 5.7.57.
    let mut t = Transcript::new(ListenerKind::Submission, true, "198.51.100.7");
    let ehlo = t.cmd("EHLO printer", "250");
    assert!(!ehlo.contains("AUTH"), "no AUTH before TLS: {ehlo}");
    t.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==", "530 5.7.0 ");
    t.cmd("MAIL FROM:<alice@example.com>", "530 5.7.0 ");
    t.send(b"STARTTLS\r\n");
    let steps = t.session.tls_started(Some(TlsInfo::new("TLSv1.3", "TLS_AES_128_GCM_SHA256")));
    t.run(steps);
    assert!(t.cmd("EHLO printer", "250").contains("AUTH PLAIN LOGIN"));
    t.cmd("MAIL FROM:<alice@example.com>", "530 5.7.57 ");
    // "\0alice@example.com\0wrong"
    t.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHdyb25n", "535 5.7.3 ");
    t.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6");
    t.cmd("YS5saWRkZWxsQGV4YW1wbGUuY29t", "334 UGFzc3dvcmQ6"); // the alias a.liddell@example.com
    t.cmd("c2VjcmV0", "235 2.7.0 ");
    t.cmd("MAIL FROM:<bob@example.com>", "550 5.7.60 ");
    t.cmd("MAIL FROM:<a.liddell@example.com>", "250 2.1.0 ");
    t.cmd("RCPT TO:<friend@example.org>", "250 2.1.5 "); // authenticated: may relay
}

#[test]
fn vrfy_is_252_by_default_and_answers_from_the_directory_when_enabled() {
    let mut t = Transcript::smtp();
    t.cmd("VRFY alice@example.com", "252 2.1.5 ");
    let mut enabled = Transcript::smtp();
    let mut config = (*enabled.session.config).clone();
    config.vrfy = true;
    enabled.session.config = Arc::new(config);
    enabled.cmd("VRFY a.liddell@example.com", "250 2.1.5 <alice@example.com>");
    enabled.cmd("VRFY nobody@example.com", "550 5.1.1 ");
}

#[test]
fn organisation_headers_from_the_internet_are_stripped_and_marked() {
    // Spec 9.6: a sender cannot pre-set its own SCL or our authentication results.
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<s@example.net>", "250");
    t.cmd("RCPT TO:<bob@example.com>", "250");
    t.cmd("DATA", "354");
    t.send(b"X-MS-Exchange-Organization-SCL: -1\r\nAuthentication-Results: mailflow.localhost; dmarc=pass\r\nSubject: x\r\n\r\nhi\r\n.\r\n");
    let content = String::from_utf8(t.stored[0].content.clone()).expect("utf-8");
    assert!(!content.contains("X-MS-Exchange-Organization-SCL") && !content.contains("dmarc=pass"), "{content}");
    assert!(
        content.contains("X-MS-Exchange-Transport-CrossTenantHeadersStripped: mailflow.localhost\r\nSubject: x\r\n"),
        "{content}"
    );
}

#[test]
fn a_client_not_offered_pipelining_may_not_pipeline() {
    // reliability.md §2.2: without EHLO there was no PIPELINING; commands sent
    // before the previous reply get 554 5.5.0 and the session ends.
    let mut t = Transcript::smtp();
    let replies = t.send(b"MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@example.com>\r\n");
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].starts_with("554 5.5.0 "), "{replies:?}");
    assert!(t.closed);

    let mut t = Transcript::smtp();
    t.cmd("HELO c", "250 ");
    let replies = t.send(b"MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].starts_with("554 5.5.0 "), "{replies:?}");
    assert!(t.closed);

    // One command at a time is fine after HELO.
    let mut t = Transcript::smtp();
    t.cmd("HELO c", "250 ");
    t.cmd("MAIL FROM:<s@example.net>", "250 2.1.0 ");
    t.cmd("RCPT TO:<bob@example.com>", "250 2.1.5 ");
}

#[test]
fn envelope_addresses_are_recorded_as_mailboxes() {
    // reliability.md §2.4/§2.5: quotes are kept where the local part needs them,
    // non-ASCII needs SMTPUTF8 (553 5.6.7), and `user@` is no mailbox.
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<user@>", "501 5.1.7 ");
    t.cmd("MAIL FROM:<josé@example.net>", "553 5.6.7 Must declare SMTPUTF8 to send unicode address");
    t.cmd("MAIL FROM:<s@example.net>", "250 2.1.0 ");
    t.cmd("RCPT TO:<jürgen@example.com>", "553 5.6.7 ");
    t.cmd("RCPT TO:<\"relay@example.org\"@example.com>", "550 5.4.1 ");
    t.cmd("RCPT TO:<\"bob\"@example.com>", "250 2.1.5 ");
    t.cmd("DATA", "354");
    t.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    assert_eq!(t.stored[0].recipients[0].address, "bob@example.com", "needless quotes are dropped");
    match &t.records[0] {
        ReceivedEvent::RecipientRejected(r) => assert_eq!(r.address, "\"relay@example.org\"@example.com"),
        other => panic!("unexpected {other:?}"),
    }

    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<josé@example.net> SMTPUTF8", "250 2.1.0 ");
    t.send(b"MAIL FROM:<jos\xe9@example.net> SMTPUTF8\r\n");
    t.cmd("RCPT TO:<jürgen@example.com>", "550 5.4.1 ");
}

#[test]
fn orcpt_is_recorded_with_its_type_and_in_xtext() {
    // The event's contract (`rfc822;anna@contoso.com`), which the delivery
    // client relays as is; the parser gave the decoded address alone.
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<s@example.net>", "250");
    t.cmd("RCPT TO:<alice@example.com> ORCPT=rfc822;Alice@Example.COM", "250 2.1.5 ");
    t.cmd("RCPT TO:<bob@example.com> ORCPT=rfc822;George+20@Tax-+20ME+2BX+3D.GOV", "250 2.1.5 ");
    t.cmd("DATA", "354");
    t.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    let orcpts: Vec<Option<&str>> = t.stored[0].recipients.iter().map(|r| r.orcpt.as_deref()).collect();
    assert_eq!(orcpts, [Some("rfc822;Alice@Example.COM"), Some("rfc822;George+20@Tax-+20ME+2BX+3D.GOV")]);
}

#[test]
fn by_default_twenty_received_headers_pass_and_the_twenty_first_is_a_loop() {
    // Spec 6.5 / requirements Q-13: EOP interrupts a loop after 20 iterations
    // (`554 5.4.14 Hop count exceeded - possible mail loop`).
    assert_eq!(crate::config::ServerConfig::default().max_received_headers, 20);
    let content = |hops: usize| format!("{}Subject: hop\r\n\r\nx\r\n.\r\n", "Received: from a by b\r\n".repeat(hops));
    for (hops, expected) in [(20, "250 "), (21, "554 5.4.14 Hop count exceeded")] {
        let (config, policy) = config(ListenerKind::Smtp, false);
        let mut config = (*config).clone();
        config.max_received_headers = crate::config::ServerConfig::default().max_received_headers;
        let mut t = Transcript::with_config(Arc::new(config), policy);
        t.cmd("EHLO c", "250");
        t.cmd("MAIL FROM:<s@example.net>", "250");
        t.cmd("RCPT TO:<bob@example.com>", "250");
        t.cmd("DATA", "354");
        let replies = t.send(content(hops).as_bytes());
        assert!(replies[0].starts_with(expected), "{hops} hops: {replies:?}");
    }
}

#[test]
fn rcpt_to_postmaster_without_a_domain_is_the_default_domains_postmaster() {
    // RFC 5321 §4.1.1.3: `RCPT TO:<Postmaster>` must be accepted, any case; it
    // names the postmaster of the default accepted domain. As a reverse path it
    // is no mailbox (501 5.1.7), not the null sender smtp-proto reads it as.
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<PostMaster>", "501 5.1.7 ");
    t.cmd("MAIL FROM:<>", "250 2.1.0 ");
    t.cmd("RCPT TO:<>", "501 5.1.3 ");
    t.cmd("RCPT TO:<Postmaster>", "250 2.1.5 ");
    t.cmd("DATA", "354");
    t.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    assert_eq!(t.stored[0].recipients[0].address, "postmaster@example.com");
    assert_eq!(t.stored[0].recipients[0].accepted_domain.as_deref(), Some("example.com"));
}

#[test]
fn address_literals_are_mailboxes_and_relaying_to_them_is_refused_like_any_domain() {
    // RFC 5321 §4.1.3: `user@[192.0.2.1]` and `user@[IPv6:…]` are mailboxes;
    // a literal is never an accepted domain, so an anonymous client may not
    // relay to one (spec 2.4, the relay refusal of any outside domain).
    let mut t = Transcript::smtp();
    t.cmd("EHLO c", "250");
    t.cmd("MAIL FROM:<s@[192.0.2.1]>", "250 2.1.0 ");
    t.cmd("RCPT TO:<victim@[IPv6:2001:db8::25]>", "550 5.4.1 Relay Access Denied");
    t.cmd("RCPT TO:<victim@[mail.example.org]>", "501 5.1.3 ");
    t.cmd("RCPT TO:<bob@example.com>", "250 2.1.5 ");
    t.cmd("DATA", "354");
    t.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    assert_eq!(t.stored[0].envelope.mail_from, "s@[192.0.2.1]");
    match &t.records[0] {
        ReceivedEvent::RecipientRejected(r) => assert_eq!(r.address, "victim@[IPv6:2001:db8::25]"),
        other => panic!("unexpected {other:?}"),
    }
}
