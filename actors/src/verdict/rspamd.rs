//! rspamd as an optional external engine, over its HTTP protocol: the message
//! is POSTed to `/checkv2` with the envelope in protocol headers (`IP`, `Helo`,
//! `From`, one `Rcpt` per recipient, `Hostname`, `Queue-Id`, `User` when the
//! client authenticated), and the JSON reply's action is mapped to an SCL:
//!
//! | rspamd action | here |
//! |---|---|
//! | `no action`, `greylist`, `soft reject` | no change (a temporary refusal means nothing once the message is accepted) |
//! | `add header`, `rewrite subject` | spam, SCL 5 (`CAT:SPM`) |
//! | `reject` | high-confidence spam, SCL 9 (`CAT:HSPM`) |
//!
//! rspamd's own symbols and scores are recorded in the verdict, not mixed into
//! the SCL. One connection per scan (HTTP/1.1, hyper's connection API), bounded
//! by `timeout` from connect to the last byte of the reply. A timeout, refused
//! connection, HTTP error or undecodable reply is recorded in the verdict
//! (`rspamd.error`) and the message is judged without rspamd: never lost,
//! never held.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Uri};
use mailflow_events::verdicts::RspamdScan;
use serde::Deserialize;

use super::score::EngineVerdict;

/// `[anti_spam.rspamd]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RspamdConfig {
    /// rspamd's normal worker, `http://host:port` (e.g. `http://127.0.0.1:11333`);
    /// plain HTTP only, as rspamd serves it.
    pub url: String,
    /// How long one scan may take, connect to reply (default 5s).
    #[serde(default = "default_timeout", with = "crate::config::humane")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl RspamdConfig {
    /// Checks the URL; pushes one line per problem.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if let Err(err) = self.endpoint() {
            problems.push(format!("anti_spam.rspamd.url: {err}"));
        }
        if self.timeout.is_zero() {
            problems.push("anti_spam.rspamd.timeout must be more than 0".to_string());
        }
    }

    /// (host, port, authority) of the URL.
    fn endpoint(&self) -> Result<(String, u16, String), RspamdError> {
        let invalid = |why: &str| RspamdError::Url(format!("`{}` {why}", self.url));
        let uri: Uri = self.url.parse().map_err(|_| invalid("is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("is not an http:// URL"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("must not have a path (`/checkv2` is added)"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("has no host"))?;
        let host = authority.host().trim_matches(['[', ']']).to_string();
        Ok((host, authority.port_u16().unwrap_or(80), authority.to_string()))
    }
}

/// Why a scan has no answer.
#[derive(Debug, thiserror::Error)]
pub enum RspamdError {
    /// The configured URL is unusable (refused by `check-config`; permanent).
    #[error("bad url: {0}")]
    Url(String),
    /// No answer within the timeout (temporary).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connection failed (temporary).
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed (temporary).
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// rspamd answered with an error status (temporary: overload, bad request).
    #[error("status {0}")]
    Status(u16),
    /// The reply is not rspamd's JSON (permanent for this message).
    #[error("undecodable reply: {0}")]
    Decode(#[from] serde_json::Error),
}

/// The envelope as rspamd's protocol headers want it.
#[derive(Debug, Clone, Copy)]
pub struct ScanRequest<'a> {
    /// The client IP (the original sender's under Enhanced Filtering).
    pub ip: &'a str,
    /// HELO/EHLO name.
    pub helo: &'a str,
    /// MAIL FROM (empty for `<>`).
    pub mail_from: &'a str,
    /// RCPT TO addresses.
    pub recipients: &'a [String],
    /// The client's host name from reverse DNS, if any.
    pub hostname: Option<&'a str>,
    /// Our message id.
    pub queue_id: &'a str,
    /// The SMTP AUTH identity, if the client authenticated.
    pub user: Option<&'a str>,
}

/// The part of rspamd's `/checkv2` reply that is used.
#[derive(Debug, Deserialize)]
struct Reply {
    action: String,
    score: f64,
    required_score: f64,
    #[serde(default)]
    symbols: BTreeMap<String, serde_json::Value>,
}

/// The SCL mapping of the module doc.
pub fn verdict(action: &str) -> EngineVerdict {
    match action {
        "reject" => EngineVerdict::HighConfidenceSpam,
        "add header" | "rewrite subject" => EngineVerdict::Spam,
        _ => EngineVerdict::NoChange,
    }
}

/// What a recorded scan means for the verdict (nothing, when it failed).
pub fn verdict_of(scan: &RspamdScan) -> EngineVerdict {
    scan.action.as_deref().map_or(EngineVerdict::NoChange, verdict)
}

/// Scans `content`; the answer, or the error, as the verdict records it.
pub async fn scan(config: &RspamdConfig, request: &ScanRequest<'_>, content: &[u8]) -> RspamdScan {
    let outcome = match tokio::time::timeout(config.timeout, check(config, request, content)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(RspamdError::Timeout(config.timeout)),
    };
    match outcome {
        Ok(reply) => RspamdScan {
            action: Some(reply.action),
            score: Some(reply.score),
            required_score: Some(reply.required_score),
            symbols: reply.symbols.into_keys().collect(),
            error: None,
        },
        Err(err) => {
            tracing::warn!(error = %err, queue_id = request.queue_id, "rspamd scan failed; judged without it");
            RspamdScan {
                action: None,
                score: None,
                required_score: None,
                symbols: Vec::new(),
                error: Some(err.to_string()),
            }
        }
    }
}

/// The protocol headers; values that cannot be header values (control
/// characters in a HELO, say) are left out rather than failing the scan.
fn protocol_headers<'a>(request: &ScanRequest<'a>) -> Vec<(&'static str, &'a str)> {
    let mut headers = vec![("IP", request.ip), ("Helo", request.helo), ("From", request.mail_from)];
    headers.extend(request.recipients.iter().map(|rcpt| ("Rcpt", rcpt.as_str())));
    headers.extend(request.hostname.map(|host| ("Hostname", host)));
    headers.push(("Queue-Id", request.queue_id));
    headers.extend(request.user.map(|user| ("User", user)));
    headers.retain(|(_, value)| !value.is_empty() && HeaderValue::from_str(value).is_ok());
    headers
}

async fn check(config: &RspamdConfig, request: &ScanRequest<'_>, content: &[u8]) -> Result<Reply, RspamdError> {
    let (host, port, authority) = config.endpoint()?;
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(RspamdError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let mut builder = Request::post("/checkv2").header(HOST, authority);
    for (name, value) in protocol_headers(request) {
        builder = builder.header(name, value);
    }
    // The builder only fails on invalid names or values, filtered above.
    let http_request =
        builder.body(Full::new(Bytes::copy_from_slice(content))).map_err(|err| RspamdError::Url(err.to_string()))?;
    let exchange = async move {
        let response = sender.send_request(http_request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(RspamdError::Status(status.as_u16()));
        }
        Ok(serde_json::from_slice::<Reply>(&body)?)
    };
    // The connection is driven beside the exchange; it ends with it.
    tokio::pin!(exchange);
    tokio::select! {
        reply = &mut exchange => reply,
        closed = connection => match closed {
            Ok(()) => exchange.await,
            Err(err) => Err(err.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rspamd_action_maps_as_documented() {
        let table = [
            ("no action", EngineVerdict::NoChange),
            ("greylist", EngineVerdict::NoChange),
            ("soft reject", EngineVerdict::NoChange),
            ("add header", EngineVerdict::Spam),
            ("rewrite subject", EngineVerdict::Spam),
            ("reject", EngineVerdict::HighConfidenceSpam),
        ];
        for (action, expected) in table {
            assert_eq!(verdict(action), expected, "{action}");
        }
        let failed = RspamdScan {
            action: None,
            score: None,
            required_score: None,
            symbols: Vec::new(),
            error: Some("connecting: refused".into()),
        };
        assert_eq!(verdict_of(&failed), EngineVerdict::NoChange);
    }

    #[test]
    fn urls_must_be_plain_http_without_a_path() {
        let config = |url: &str| RspamdConfig { url: url.to_string(), timeout: default_timeout() };
        assert_eq!(
            config("http://127.0.0.1:11333").endpoint().expect("valid"),
            ("127.0.0.1".to_string(), 11333, "127.0.0.1:11333".to_string())
        );
        assert_eq!(config("http://[::1]:11333/").endpoint().expect("valid").0, "::1");
        assert_eq!(config("http://rspamd").endpoint().expect("valid").1, 80);
        for bad in ["https://127.0.0.1:11333", "http://127.0.0.1:11333/checkv2", "127.0.0.1:11333", "not a url"] {
            let mut problems = Vec::new();
            config(bad).validate(&mut problems);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
        }
    }

    #[test]
    fn protocol_headers_carry_the_envelope_and_skip_what_cannot_be_sent() {
        let recipients = vec!["alice@contoso.com".to_string(), "bob@contoso.com".to_string()];
        let request = ScanRequest {
            ip: "192.0.2.1",
            helo: "bad\nhelo",
            mail_from: "",
            recipients: &recipients,
            hostname: Some("mta.example"),
            queue_id: "m-1",
            user: Some("alice@contoso.com"),
        };
        assert_eq!(
            protocol_headers(&request),
            vec![
                ("IP", "192.0.2.1"),
                ("Rcpt", "alice@contoso.com"),
                ("Rcpt", "bob@contoso.com"),
                ("Hostname", "mta.example"),
                ("Queue-Id", "m-1"),
                ("User", "alice@contoso.com"),
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_recorded_not_raised() {
        // A port just released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let config = RspamdConfig { url: format!("http://127.0.0.1:{port}"), timeout: default_timeout() };
        let request = ScanRequest {
            ip: "192.0.2.1",
            helo: "h",
            mail_from: "a@b.example",
            recipients: &[],
            hostname: None,
            queue_id: "m-1",
            user: None,
        };
        let scan = scan(&config, &request, b"Subject: x\r\n\r\nx\r\n").await;
        assert!(scan.error.as_deref().is_some_and(|e| e.starts_with("connecting:")), "{scan:?}");
        assert_eq!((scan.action, scan.score), (None, None));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout() {
        // Accepts the connection (the kernel's backlog) and never reads.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let config = RspamdConfig {
            url: format!("http://{}", silent.local_addr().expect("addr")),
            timeout: Duration::from_millis(200),
        };
        let request = ScanRequest {
            ip: "192.0.2.1",
            helo: "h",
            mail_from: "a@b.example",
            recipients: &[],
            hostname: None,
            queue_id: "m-1",
            user: None,
        };
        let scan = scan(&config, &request, b"Subject: x\r\n\r\nx\r\n").await;
        assert_eq!(scan.error.as_deref(), Some("no answer within 200ms"));
    }
}
