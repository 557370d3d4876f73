//! What the fuzz targets share: the session configurations they run with, a
//! driver that carries out a session's steps the way
//! `actors/src/connection/driver.rs` does (without sockets, TLS or a log), and
//! the checks every reply and every stored message must pass.
//!
//! The targets' input formats are written down in `docs/fuzzing.md`; a seed
//! corpus per target is in `fuzz/corpus/<target>/`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use mailflow_actors::config::{Config, ListenerKind};
use mailflow_actors::connection::body;
use mailflow_actors::connection::reply::Reply;
use mailflow_actors::connection::session::{Incoming, Peer, Session, SessionConfig, Step, StoreOutcome};
use mailflow_actors::policy::InboundPolicy;
use mailflow_events::received::TlsInfo;

/// The router the sessions talk to: small limits, so that the fuzzer reaches
/// them, one authoritative and one relay domain, VRFY on, an on-premises and
/// a partner connector.
pub const SESSION_CONFIG: &str = r#"
[server]
hostname = "mx.fuzz.test"
max_message_size = 2048
max_recipients = 3
max_line_length = 512
max_errors = 8
max_received_headers = 3
vrfy = true

[[server.listeners]]
name = "smtp"
address = "127.0.0.1:2525"
kind = "smtp"

[[accepted_domains]]
name = "example.com"
type = "authoritative"
default = true

[[accepted_domains]]
name = "relay.example.com"
type = "internal_relay"

[[directory.recipients]]
address = "alice@example.com"
proxy_addresses = ["a.liddell@example.com"]

[[directory.recipients]]
address = "bob@example.com"

[[directory.recipients]]
address = "postmaster@example.com"

[[inbound_connectors]]
name = "onprem"
kind = "on_premises"
sender_ip_addresses = ["192.0.2.0/24"]

[[inbound_connectors]]
name = "partner"
kind = "partner"
sender_domains = ["partner.example"]
sender_ip_addresses = ["203.0.113.0/24"]
restrict_domains_to_ip_addresses = true
require_tls = true
"#;

/// How one fuzzed session runs, decoded from the first byte of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// A submission listener (AUTH after STARTTLS) rather than port 25.
    pub submission: bool,
    /// STARTTLS is offered.
    pub tls_available: bool,
    /// Which client: 0 anonymous IPv4, 1 anonymous IPv6 with a PTR name,
    /// 2 an on-premises server, 3 a partner's address.
    pub peer: u8,
    /// AUTH succeeds (as alice) when the password is checked.
    pub password_ok: bool,
    /// The TLS handshake succeeds (with a client certificate).
    pub tls_ok: bool,
    /// What storing a message gives.
    pub store: u8,
}

impl SessionOptions {
    /// Options from one byte (each bit or pair of bits one option).
    pub fn from_byte(byte: u8) -> Self {
        Self {
            submission: byte & 1 != 0,
            tls_available: byte & 2 != 0,
            peer: (byte >> 2) & 3,
            password_ok: byte & 16 != 0,
            tls_ok: byte & 32 != 0,
            store: byte >> 6,
        }
    }

    fn outcome(&self) -> StoreOutcome {
        match self.store {
            0 => StoreOutcome::Stored,
            1 => StoreOutcome::Failed,
            2 => StoreOutcome::NoSpace,
            _ if self.peer == 1 => StoreOutcome::Ipv6AuthenticationFailed,
            _ => StoreOutcome::DmarcRejected { domain: "example.net".into() },
        }
    }
}

/// The parsed and validated [`SESSION_CONFIG`] (built once per process).
pub fn router_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let config = Config::parse(SESSION_CONFIG, Path::new("fuzz.toml")).expect("the fuzz configuration parses");
        config.validate().expect("the fuzz configuration is valid");
        config
    })
}

fn policy() -> Arc<InboundPolicy> {
    static POLICY: OnceLock<Arc<InboundPolicy>> = OnceLock::new();
    Arc::clone(POLICY.get_or_init(|| Arc::new(InboundPolicy::new(router_config()))))
}

/// A session as the connection actor runs it: the driver's loop over
/// [`Session::feed`], with every effect completed at once.
#[derive(Debug)]
pub struct Driver {
    session: Session,
    options: SessionOptions,
    /// Bytes received and not yet consumed.
    input: Vec<u8>,
    /// Every reply, in order.
    pub replies: Vec<Reply>,
    /// Every message handed over for storing.
    pub stored: Vec<Incoming>,
    /// The session asked to close the connection.
    pub closed: bool,
}

impl Driver {
    /// Connects a client; the banner is the first reply.
    pub fn new(options: SessionOptions) -> Self {
        let server = &router_config().server;
        let kind = if options.submission { ListenerKind::Submission } else { ListenerKind::Smtp };
        let mut config = SessionConfig::new(server, "fuzz", kind);
        config.tls_available = options.tls_available;
        let (addr, ptr): (SocketAddr, _) = match options.peer {
            0 => ("198.51.100.7:40000".parse().expect("address"), None),
            1 => ("[2001:db8::7]:40000".parse().expect("address"), Some(Some("client.example".to_string()))),
            2 => ("192.0.2.10:40000".parse().expect("address"), Some(None)),
            _ => ("203.0.113.5:40000".parse().expect("address"), None),
        };
        let peer = Peer { addr, local: Some("192.0.2.1:25".parse().expect("address")), ptr };
        let (session, steps) = Session::new(Arc::new(config), policy(), peer);
        let mut driver =
            Self { session, options, input: Vec::new(), replies: Vec::new(), stored: Vec::new(), closed: false };
        driver.carry_out(steps);
        driver
    }

    /// The largest command line the session accepts.
    pub fn max_line_length(&self) -> usize {
        router_config().server.max_line_length
    }

    /// The largest message the session accepts.
    pub fn max_message_size(&self) -> usize {
        router_config().server.max_message_size as usize
    }

    /// Whether the session is reading message content.
    pub fn in_data(&self) -> bool {
        self.session.in_data()
    }

    /// One read from the socket: feeds it, carries out the steps, and answers
    /// what is already buffered behind an effect, as `driver.rs` does.
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.input.extend_from_slice(bytes);
        // Every round of the loop below consumes input or ends it; a session
        // that answers without consuming would spin the real driver forever.
        let mut rounds_left = self.input.len() + 8;
        let mut steps = self.session.feed(&mut self.input);
        loop {
            if !self.carry_out(steps) {
                return;
            }
            if self.input.is_empty() {
                break;
            }
            steps = self.session.feed(&mut self.input);
            if steps.is_empty() {
                break;
            }
            rounds_left = rounds_left.checked_sub(1).expect("the driver loop makes no progress");
        }
        // An incomplete command is all that waits between reads, and it is
        // bounded by the line limit (an over-long line is dropped as it comes).
        if !self.session.in_data() && !self.session.is_closed() {
            assert!(
                self.input.len() <= self.max_line_length(),
                "{} bytes buffered outside DATA/BDAT (limit {})",
                self.input.len(),
                self.max_line_length()
            );
        }
    }

    /// Carries out steps until the session waits for input; false once closed.
    fn carry_out(&mut self, mut steps: Vec<Step>) -> bool {
        while !steps.is_empty() {
            let mut next = Vec::new();
            let mut closing = false;
            let mut iter = steps.into_iter();
            while let Some(step) = iter.next() {
                match step {
                    Step::Reply(reply) => {
                        check_reply(&reply);
                        closing |= reply.closes();
                        self.replies.push(reply);
                    }
                    Step::Close => {
                        assert!(iter.next().is_none(), "steps after Close");
                        assert!(next.is_empty(), "steps after Close");
                        self.closed = true;
                        assert!(self.session.is_closed(), "Close from a session that is not closed");
                        return false;
                    }
                    Step::Record(_) => {}
                    Step::Store(incoming) => {
                        self.check_stored(&incoming);
                        self.stored.push(*incoming);
                        next.extend(self.session.stored(self.options.outcome()));
                    }
                    Step::CheckPassword { .. } => {
                        let primary = self.options.password_ok.then(|| "alice@example.com".to_string());
                        next.extend(self.session.password_checked(primary));
                    }
                    Step::StartTls => {
                        let ready = Reply::ReadyForTls;
                        check_reply(&ready);
                        self.replies.push(ready);
                        self.input.clear();
                        let tls = self.options.tls_ok.then(|| TlsInfo {
                            protocol: "TLSv1.3".into(),
                            cipher: "TLS_AES_256_GCM_SHA384".into(),
                            client_certificate_subject: Some("CN=mail.partner.example".into()),
                            client_certificate_names: vec!["mail.partner.example".into()],
                        });
                        next.extend(self.session.tls_started(tls));
                    }
                }
            }
            // A reply that says the connection closes comes with Close.
            assert!(!closing, "a closing reply without Close: {:?}", self.replies.last());
            steps = next;
        }
        !self.session.is_closed()
    }

    /// What a stored message must look like: our `Received:` header (one
    /// field, however odd the client's HELO), possibly the stripped-headers
    /// marker, then the client's content within the size limit, with CRLF
    /// line endings only.
    fn check_stored(&self, incoming: &Incoming) {
        let content = &incoming.content;
        body::check_line_endings(content).expect("stored content has a bare CR or LF, or a NUL");
        assert!(content.starts_with(b"Received: from "), "no Received: header first");
        let mut end = 0;
        loop {
            let at = find(&content[end..], b"\r\n").expect("the Received: header ends") + end + 2;
            end = at;
            if content.get(at) != Some(&b'\t') {
                break;
            }
        }
        let header = std::str::from_utf8(&content[..end]).expect("our header is UTF-8");
        assert!(header.trim_end().ends_with("+0000"), "the Received: header ends with its date: {header:?}");
        let mut rest = &content[end..];
        let marker = b"X-MS-Exchange-Transport-CrossTenantHeadersStripped: mx.fuzz.test\r\n";
        if rest.starts_with(marker) {
            rest = &rest[marker.len()..];
        }
        assert!(rest.len() <= self.max_message_size(), "stored {} bytes, over the limit", rest.len());
        assert!(!incoming.recipients.is_empty(), "a message without recipients");
        assert!(incoming.recipients.len() <= router_config().server.max_recipients);
    }
}

/// The checks every reply passes: one or more lines of `DDD SP text` (or
/// `DDD-text` before the last), a code 2xx–5xx, printable ASCII, at most 512
/// bytes a line (RFC 5321 §4.5.3.1.5), and an RFC 3463 enhanced status of the
/// code's class wherever the session uses them.
pub fn check_reply(reply: &Reply) {
    let code = reply.code();
    assert!((200..600).contains(&code) && code % 100 / 10 <= 5, "bad code {code} in {reply:?}");
    let rendered = reply.render();
    assert!(rendered.ends_with("\r\n"), "{rendered:?}");
    let lines: Vec<&str> = rendered[..rendered.len() - 2].split("\r\n").collect();
    for (i, line) in lines.iter().enumerate() {
        let bytes = line.as_bytes();
        assert!(bytes.len() >= 4 && bytes.len() + 2 <= 512, "reply line of {} bytes: {line:?}", bytes.len());
        assert_eq!(&line[..3], code.to_string(), "{rendered:?}");
        let separator = if i + 1 == lines.len() { b' ' } else { b'-' };
        assert_eq!(bytes[3], separator, "{rendered:?}");
        assert!(bytes.iter().all(|b| (0x20..0x7f).contains(b)), "not printable ASCII: {line:?}");
    }
    let without = matches!(
        reply,
        Reply::Greeting { .. } | Reply::Ehlo { .. } | Reply::Helo { .. } | Reply::AuthChallenge(_) | Reply::StartData
    );
    match reply.enhanced() {
        None => assert!(without, "no enhanced status in {reply:?}"),
        Some(enhanced) => {
            assert!(!without, "an enhanced status where none belongs: {reply:?}");
            let parts: Vec<&str> = enhanced.split('.').collect();
            assert_eq!(parts.len(), 3, "{enhanced}");
            assert_eq!(parts[0], (code / 100).to_string(), "class of {enhanced} differs from {code}");
            for part in &parts[1..] {
                assert!(!part.is_empty() && part.len() <= 3 && part.bytes().all(|b| b.is_ascii_digit()), "{enhanced}");
            }
            assert!(rendered.starts_with(&format!("{code} {enhanced} ")), "{rendered:?}");
        }
    }
}

/// Splits `data` into reads, as a network would: mode 0 cuts after every LF
/// (a client that waits for each reply), 1 cuts after every LF and at
/// pseudo-random places in between, 2 only at pseudo-random places, 3 makes
/// one read of everything (a client that pipelines all it has). `seed` drives
/// the pseudo-random cuts.
pub fn split_reads(data: &[u8], mode: u8, seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut next_len = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + (state % 64) as usize
    };
    let mut reads = Vec::new();
    let mut start = 0;
    let mut budget = next_len();
    for i in 0..data.len() {
        let at_lf = data[i] == b'\n' && mode <= 1;
        let random = mode == 1 || mode == 2;
        let len = i + 1 - start;
        if at_lf || (random && len >= budget) {
            reads.push(&data[start..=i]);
            start = i + 1;
            budget = next_len();
        }
    }
    if start < data.len() {
        reads.push(&data[start..]);
    }
    reads
}

/// First position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}
