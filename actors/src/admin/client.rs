//! The command line's client of the admin API (`mailflow queue`, `replay --verify`):
//! one HTTP/1.1 request per connection over hyper.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// `host:port` of the admin listener.
    pub address: SocketAddr,
    /// Bearer token for actions.
    pub token: Option<String>,
}

impl AdminClient {
    /// `GET path` → JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body → JSON.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// `GET path` → status and body as text, whatever the status (for
    /// `/readyz`, `/metrics` and other answers that are not errors when not 2xx).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let (status, body) = self.send(Method::GET, path, None).await?;
        Ok((status.as_u16(), String::from_utf8_lossy(&body).into_owned()))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.send(method, path, body).await?;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("the admin API answered {status} with a body that is not JSON"))?;
        if !status.is_success() {
            let message = value.get("error").and_then(|e| e.as_str()).unwrap_or("no detail");
            bail!("the admin API refused {path}: {status}: {message}");
        }
        Ok(value)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(self.address))
            .await
            .map_err(|_| anyhow::anyhow!("the admin API at {} did not answer within 5 s", self.address))?
            .with_context(|| {
                format!("connecting to the admin API at {} (is `mailflow serve` running?)", self.address)
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.address.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let response =
            tokio::time::timeout(Duration::from_secs(60), sender.send_request(builder.body(Full::new(bytes))?))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("the admin API at {} did not answer {path} within 60 s", self.address)
                })??;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
