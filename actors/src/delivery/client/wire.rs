//! The byte stream to the peer, plain or TLS, with a read buffer and a time
//! limit on every read and write.
//!
//! Reads return whole replies ([`RawReply`]); the buffer never grows past one
//! line of [`MAX_LINE`] octets. Bytes the peer sends beyond the reply being
//! read stay buffered for the next read, which is how pipelined replies are
//! consumed in order. Before STARTTLS the buffer must be empty: anything there
//! was sent before the handshake and could be an injection (CVE-2011-0411 in
//! reverse), so the upgrade refuses it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::reply::{MAX_LINE, RawReply, ReplyCollector};

/// Why a read or write did not complete.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// No complete reply (or the write did not drain) within the limit.
    #[error("no progress within {0:?}")]
    TimedOut(Duration),
    /// The peer closed the connection.
    #[error("connection closed by the remote server")]
    Closed,
    /// An I/O error, e.g. a reset.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a reply.
    #[error("{0}")]
    Garbage(String),
}

/// The connection, before or after STARTTLS.
#[derive(Debug)]
pub enum Stream {
    /// Clear text.
    Plain(TcpStream),
    /// After a TLS handshake.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream with its read buffer.
#[derive(Debug)]
pub struct Wire {
    stream: Stream,
    buffer: Vec<u8>,
}

impl Wire {
    /// Wraps a stream with an empty buffer.
    pub fn new(stream: Stream) -> Self {
        Self { stream, buffer: Vec::with_capacity(1024) }
    }

    /// The stream (for TLS details).
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Writes and flushes `bytes`, all within `limit`.
    pub async fn write(&mut self, bytes: &[u8], limit: Duration) -> Result<(), WireError> {
        let io = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(limit, io).await {
            Ok(result) => result.map_err(closed_or_io),
            Err(_) => Err(WireError::TimedOut(limit)),
        }
    }

    /// Reads one whole reply within `limit`.
    pub async fn read_reply(&mut self, limit: Duration) -> Result<RawReply, WireError> {
        match tokio::time::timeout(limit, self.read_reply_unlimited()).await {
            Ok(result) => result,
            Err(_) => Err(WireError::TimedOut(limit)),
        }
    }

    async fn read_reply_unlimited(&mut self) -> Result<RawReply, WireError> {
        let mut collector = ReplyCollector::default();
        loop {
            let line = self.read_line().await?;
            if let Some(reply) = collector.push(&line).map_err(WireError::Garbage)? {
                return Ok(reply);
            }
        }
    }

    /// One line without its CRLF (a bare LF also ends a line).
    async fn read_line(&mut self) -> Result<Vec<u8>, WireError> {
        loop {
            if let Some(end) = memchr::memchr(b'\n', &self.buffer) {
                if end + 1 > MAX_LINE {
                    return Err(WireError::Garbage(format!("reply line longer than {MAX_LINE} octets")));
                }
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buffer.len() >= MAX_LINE {
                return Err(WireError::Garbage(format!("reply line longer than {MAX_LINE} octets")));
            }
            let mut chunk = [0u8; 2048];
            let want = chunk.len().min(MAX_LINE - self.buffer.len());
            let n = self.stream.read(&mut chunk[..want]).await.map_err(closed_or_io)?;
            if n == 0 {
                return Err(WireError::Closed);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Gives the TCP stream back for a TLS handshake; refuses when already TLS
    /// or when the peer sent bytes after its reply to STARTTLS.
    pub fn into_plain(self) -> Result<TcpStream, WireError> {
        if !self.buffer.is_empty() {
            return Err(WireError::Garbage("data sent after the reply to STARTTLS".into()));
        }
        match self.stream {
            Stream::Plain(tcp) => Ok(tcp),
            Stream::Tls(_) => Err(WireError::Garbage("STARTTLS on a TLS connection".into())),
        }
    }

    /// Closes the write side, ignoring errors (the peer may be gone).
    pub async fn shutdown(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.stream.shutdown()).await;
    }
}

/// A TLS stream reports a close without `close_notify` as `UnexpectedEof`: the
/// peer went away, as with an orderly close.
fn closed_or_io(err: std::io::Error) -> WireError {
    match err.kind() {
        std::io::ErrorKind::UnexpectedEof => WireError::Closed,
        _ => WireError::Io(err),
    }
}
