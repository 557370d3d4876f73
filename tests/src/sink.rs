//! A scriptable SMTP/LMTP server for fault injection the real peers cannot do:
//! chosen replies at every stage (per recipient for RCPT and for LMTP's
//! end-of-data replies), a connection dropped or left hanging at a stage, and
//! garbage replies. It binds `127.0.0.1:0` and records every command and every
//! transaction it received, in order.
//!
//! Replies are written as scripted plus CRLF, so a multi-line reply is given
//! with `\r\n` between its lines, and garbage is just a string that is not a
//! reply. A connection refused is a port nobody listens on: [`Sink::closed_port`].
//! The sink has no TLS (the real STARTTLS peer is `crate::postfix::PrivatePostfix`);
//! it can only answer STARTTLS and then fail the handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A stage at which a fault can be injected instead of the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Instead of the greeting.
    Greeting,
    /// Instead of the reply to EHLO/LHLO/HELO.
    Ehlo,
    /// Instead of the reply to MAIL.
    Mail,
    /// Instead of the reply to RCPT.
    Rcpt,
    /// Instead of the reply to DATA.
    Data,
    /// After the final `.` was received, instead of the reply.
    EndOfData,
}

/// What to do at a [`Stage`] instead of replying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection without a reply.
    Drop,
    /// Keep the connection open and never answer (until the sink is dropped).
    Hang,
}

/// The replies the sink gives. Built with [`Script::smtp`] or
/// [`Script::lmtp`] and the builder methods.
#[derive(Debug, Clone)]
pub struct Script {
    lmtp: bool,
    greeting: String,
    ehlo: Option<String>,
    extensions: Vec<String>,
    helo: String,
    mail: String,
    rcpt_default: String,
    rcpt: HashMap<String, String>,
    data: String,
    end_of_data: String,
    lmtp_replies: HashMap<String, String>,
    lmtp_drop: Option<String>,
    starttls: String,
    faults: HashMap<Stage, Fault>,
}

impl Script {
    /// An SMTP server that accepts everything and offers PIPELINING,
    /// 8BITMIME, ENHANCEDSTATUSCODES, DSN and `SIZE 10485760`.
    pub fn smtp() -> Self {
        Self {
            lmtp: false,
            greeting: "220 sink.test ESMTP scriptable sink".into(),
            ehlo: None,
            extensions: ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "DSN", "SIZE 10485760"]
                .map(String::from)
                .to_vec(),
            helo: "250 sink.test".into(),
            mail: "250 2.1.0 Ok".into(),
            rcpt_default: "250 2.1.5 Ok".into(),
            rcpt: HashMap::new(),
            data: "354 End data with <CR><LF>.<CR><LF>".into(),
            end_of_data: "250 2.0.0 Ok: queued as SINK".into(),
            lmtp_replies: HashMap::new(),
            lmtp_drop: None,
            starttls: "502 5.5.1 STARTTLS not implemented".into(),
            faults: HashMap::new(),
        }
    }

    /// An LMTP server: LHLO, and one reply per accepted recipient after the
    /// content (the end-of-data reply unless [`Script::lmtp_reply`] says otherwise).
    pub fn lmtp() -> Self {
        Self { lmtp: true, ..Self::smtp() }
    }

    /// The greeting line(s).
    pub fn greeting(mut self, reply: &str) -> Self {
        self.greeting = reply.into();
        self
    }

    /// The whole reply to EHLO/LHLO instead of the one built from the extensions.
    pub fn ehlo(mut self, reply: &str) -> Self {
        self.ehlo = Some(reply.into());
        self
    }

    /// The extensions announced in the EHLO/LHLO reply.
    pub fn extensions(mut self, extensions: &[&str]) -> Self {
        self.extensions = extensions.iter().map(|e| e.to_string()).collect();
        self
    }

    /// The reply to HELO.
    pub fn helo(mut self, reply: &str) -> Self {
        self.helo = reply.into();
        self
    }

    /// The reply to MAIL.
    pub fn mail(mut self, reply: &str) -> Self {
        self.mail = reply.into();
        self
    }

    /// The reply to RCPT for `address` (as between the angle brackets).
    pub fn rcpt(mut self, address: &str, reply: &str) -> Self {
        self.rcpt.insert(address.to_ascii_lowercase(), reply.into());
        self
    }

    /// The reply to RCPT for every address without its own.
    pub fn rcpt_default(mut self, reply: &str) -> Self {
        self.rcpt_default = reply.into();
        self
    }

    /// The reply to DATA.
    pub fn data(mut self, reply: &str) -> Self {
        self.data = reply.into();
        self
    }

    /// The reply to the final `.` (LMTP: for each recipient without its own).
    pub fn end_of_data(mut self, reply: &str) -> Self {
        self.end_of_data = reply.into();
        self
    }

    /// LMTP: the end-of-data reply for `address`.
    pub fn lmtp_reply(mut self, address: &str, reply: &str) -> Self {
        self.lmtp_replies.insert(address.to_ascii_lowercase(), reply.into());
        self
    }

    /// LMTP: close the connection instead of the end-of-data reply for
    /// `address`, after the replies for the recipients before it.
    pub fn lmtp_drop_at(mut self, address: &str) -> Self {
        self.lmtp_drop = Some(address.to_ascii_lowercase());
        self
    }

    /// The reply to STARTTLS. The sink has no TLS: after a `220` it sends
    /// clear text where the handshake should be and closes, which is how a
    /// broken TLS peer looks to the client.
    pub fn starttls(mut self, reply: &str) -> Self {
        self.starttls = reply.into();
        self
    }

    /// At `stage`, `fault` instead of the reply, on every connection.
    pub fn fault(mut self, stage: Stage, fault: Fault) -> Self {
        self.faults.insert(stage, fault);
        self
    }

    fn ehlo_reply(&self) -> String {
        if let Some(reply) = &self.ehlo {
            return reply.clone();
        }
        let mut lines = vec!["sink.test".to_string()];
        lines.extend(self.extensions.iter().cloned());
        let last = lines.len() - 1;
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

/// One command as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Which connection (from 0, in accept order).
    pub connection: usize,
    /// The line without CRLF.
    pub line: String,
    /// Whether more bytes were already waiting when it was read: it came in
    /// one write with what follows (PIPELINING).
    pub pipelined: bool,
}

/// A transaction whose content was received completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Which connection.
    pub connection: usize,
    /// The MAIL line's arguments after `MAIL FROM:`, e.g. `<a@b.c> BODY=8BITMIME`.
    pub mail: String,
    /// The RCPT lines' arguments after `RCPT TO:` of the accepted recipients, in order.
    pub rcpts: Vec<String>,
    /// The content with dot-stuffing undone, without the final `.` line.
    pub content: Vec<u8>,
}

impl Received {
    /// The `Subject: ` of the content, trimmed; empty without one.
    pub fn subject(&self) -> String {
        let text = String::from_utf8_lossy(&self.content);
        text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().trim().to_string()
    }
}

#[derive(Debug, Default)]
struct Record {
    connections: usize,
    commands: Vec<Command>,
    received: Vec<Received>,
}

/// A running sink; stops (closing every connection) when dropped.
#[derive(Debug)]
pub struct Sink {
    /// Where it listens.
    pub address: SocketAddr,
    record: Arc<Mutex<Record>>,
    task: JoinHandle<()>,
}

impl Sink {
    /// Starts serving `script` on a free loopback port (inside a tokio runtime).
    pub async fn start(script: Script) -> anyhow::Result<Self> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), script).await
    }

    /// Like [`Sink::start`], on a given address (e.g. a [`Sink::closed_port`]
    /// that a router was refused on, to let it recover).
    pub async fn start_at(address: SocketAddr, script: Script) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let record = Arc::new(Mutex::new(Record::default()));
        let script = Arc::new(script);
        let shared = Arc::clone(&record);
        let task = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let connection = {
                    let mut record = shared.lock().unwrap_or_else(|e| e.into_inner());
                    record.connections += 1;
                    record.connections - 1
                };
                sessions.spawn(session(stream, connection, Arc::clone(&script), Arc::clone(&shared)));
            }
        });
        Ok(Self { address, record, task })
    }

    /// Stops the sink and returns once its listener is closed, so that
    /// another can start at the same address (dropping it only asks the
    /// runtime to stop it).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// A loopback address where nothing listens (bound, then closed): connecting is refused.
    pub fn closed_port() -> anyhow::Result<SocketAddr> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
        Ok(listener.local_addr()?)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// Every command received so far, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.lock().commands.clone()
    }

    /// The command lines received so far (verbs and arguments), in order.
    pub fn command_lines(&self) -> Vec<String> {
        self.lock().commands.iter().map(|c| c.line.clone()).collect()
    }

    /// Every transaction whose content was received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Waits until `count` transactions were received or `timeout` passed;
    /// returns what was received (the caller checks the count).
    pub async fn wait_for_received(&self, count: usize, timeout: std::time::Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.lock().received.len() < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.received()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every session.
        self.task.abort();
    }
}

/// The angle-bracket argument of MAIL/RCPT, lower case, e.g. `a@b.c`.
fn path_of(arguments: &str) -> String {
    let start = arguments.find('<').map_or(0, |i| i + 1);
    let end = arguments[start..].find('>').map_or(arguments.len(), |i| start + i);
    arguments[start..end].to_ascii_lowercase()
}

async fn session(stream: TcpStream, connection: usize, script: Arc<Script>, record: Arc<Mutex<Record>>) {
    let _ = serve(stream, connection, &script, &record).await;
}

/// Returns when the connection ends or a `Drop` fault closes it.
async fn serve(stream: TcpStream, connection: usize, script: &Script, record: &Mutex<Record>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let lock = || record.lock().unwrap_or_else(|e| e.into_inner());
    macro_rules! reply {
        ($stage:expr, $text:expr) => {{
            match script.faults.get(&$stage) {
                Some(Fault::Drop) => return Ok(()),
                Some(Fault::Hang) => std::future::pending::<()>().await,
                None => write.write_all(format!("{}\r\n", $text).as_bytes()).await?,
            }
        }};
    }
    reply!(Stage::Greeting, script.greeting);
    let mut mail: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let mut raw = Vec::new();
        if reader.read_until(b'\n', &mut raw).await? == 0 {
            return Ok(());
        }
        let pipelined = !reader.buffer().is_empty();
        let line = String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_string();
        lock().commands.push(Command { connection, line: line.clone(), pipelined });
        let upper = line.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or_default();
        match verb {
            "EHLO" if !script.lmtp => reply!(Stage::Ehlo, script.ehlo_reply()),
            "LHLO" if script.lmtp => reply!(Stage::Ehlo, script.ehlo_reply()),
            "HELO" if !script.lmtp => reply!(Stage::Ehlo, script.helo),
            "MAIL" => {
                reply!(Stage::Mail, script.mail);
                if script.mail.starts_with('2') {
                    mail = Some(line.get(10..).unwrap_or_default().to_string());
                    rcpts.clear();
                }
            }
            "RCPT" => {
                let arguments = line.get(8..).unwrap_or_default().to_string();
                let answer = script.rcpt.get(&path_of(&arguments)).unwrap_or(&script.rcpt_default);
                reply!(Stage::Rcpt, answer);
                if answer.starts_with('2') && mail.is_some() {
                    rcpts.push(arguments);
                }
            }
            "DATA" => {
                reply!(Stage::Data, script.data);
                if !script.data.starts_with("354") {
                    continue;
                }
                let content = read_content(&mut reader).await?;
                lock().received.push(Received {
                    connection,
                    mail: mail.take().unwrap_or_default(),
                    rcpts: rcpts.clone(),
                    content,
                });
                if script.lmtp {
                    for rcpt in std::mem::take(&mut rcpts) {
                        if script.lmtp_drop.as_deref() == Some(path_of(&rcpt).as_str()) {
                            return Ok(());
                        }
                        let answer = script.lmtp_replies.get(&path_of(&rcpt)).unwrap_or(&script.end_of_data);
                        reply!(Stage::EndOfData, answer);
                    }
                } else {
                    rcpts.clear();
                    reply!(Stage::EndOfData, script.end_of_data);
                }
            }
            "RSET" => {
                mail = None;
                rcpts.clear();
                write.write_all(b"250 2.0.0 Ok\r\n").await?;
            }
            "STARTTLS" => {
                write.write_all(format!("{}\r\n", script.starttls).as_bytes()).await?;
                if script.starttls.starts_with("220") {
                    // Wait for the ClientHello, so that the garbage is the answer to it.
                    let _ = reader.fill_buf().await?;
                    write.write_all(b"this is not a TLS server hello\r\n").await?;
                    return Ok(());
                }
            }
            "NOOP" => write.write_all(b"250 2.0.0 Ok\r\n").await?,
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"502 5.5.2 Error: command not recognized\r\n").await?,
        }
    }
}

/// Lines up to `.` CRLF, with one leading dot removed from each.
async fn read_content(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<Vec<u8>> {
    let mut content = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" {
            return Ok(content);
        }
        let unstuffed = if line.starts_with(b".") { &line[1..] } else { &line[..] };
        content.extend_from_slice(unstuffed);
    }
}
