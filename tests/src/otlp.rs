//! An OTLP/HTTP trace collector on loopback: what an OpenTelemetry Collector
//! is to the router, reduced to keeping every span it is sent.
//!
//! It answers `POST /v1/traces` with `application/json` (OTLP/JSON) or
//! `application/x-protobuf` bodies, each decoded here: JSON with serde_json,
//! protobuf with a reader of the wire format that knows the few fields of
//! `ExportTraceServiceRequest` a test looks at (trace and span ids, parent,
//! name, kind, attributes, resource attributes). Anything else is refused with
//! `400` and the reason kept in [`Collector::errors`], so that a test fails on
//! a request it could not read instead of missing its spans. HTTP/1.1 with
//! `Content-Length` bodies and keep-alive, which is what the exporter sends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One span as the collector received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// The parent's span id; empty for a trace's root.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i64,
    /// The span's attributes, values as text (`"250"`, `"true"`).
    pub attributes: BTreeMap<String, String>,
    /// Its resource's attributes (`service.name`, `service.instance.id`, ...).
    pub resource: BTreeMap<String, String>,
    /// `json` or `protobuf`: how the request that carried it was encoded.
    pub encoding: &'static str,
}

impl Span {
    /// The attribute `key`, or an empty string.
    pub fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }

    /// The resource attribute `key`, or an empty string.
    pub fn resource(&self, key: &str) -> &str {
        self.resource.get(key).map_or("", String::as_str)
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<Span>,
    requests: usize,
    errors: Vec<String>,
}

/// A running collector; stops when dropped.
#[derive(Debug)]
pub struct Collector {
    /// Where it listens.
    pub address: SocketAddr,
    received: Arc<Mutex<Received>>,
    task: JoinHandle<()>,
}

impl Collector {
    /// Starts listening on a free loopback port (inside a tokio runtime).
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = Arc::clone(&received);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve(stream, Arc::clone(&shared)));
            }
        });
        Ok(Self { address, received, task })
    }

    /// The base URL to configure as `otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        self.lock().spans.clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    /// Why requests were refused, if any were.
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers the requests of one connection until the client closes it.
async fn serve(stream: TcpStream, received: Arc<Mutex<Received>>) {
    let mut stream = BufReader::new(stream);
    loop {
        let (status, content_type) = match read_request(&mut stream).await {
            Ok(None) => return,
            Ok(Some(request)) => {
                let decoded = decode(&request);
                let mut received = received.lock().unwrap_or_else(|e| e.into_inner());
                received.requests += 1;
                match decoded {
                    Ok(spans) => {
                        received.spans.extend(spans);
                        ("200 OK", request.content_type)
                    }
                    Err(err) => {
                        received.errors.push(format!("{} {}: {err:#}", request.method, request.path));
                        ("400 Bad Request", "text/plain".to_string())
                    }
                }
            }
            Err(err) => {
                received.lock().unwrap_or_else(|e| e.into_inner()).errors.push(format!("unreadable request: {err:#}"));
                return;
            }
        };
        // An empty `ExportTraceServiceResponse` is zero bytes in either encoding but JSON's `{}`.
        let body = if content_type == "application/json" { "{}" } else { "" };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.get_mut().write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One HTTP request.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// Reads the next request; `None` at a clean end of the connection.
async fn read_request(stream: &mut BufReader<TcpStream>) -> anyhow::Result<Option<Request>> {
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    let mut content_length = 0;
    let mut content_type = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            bail!("connection closed inside the header");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').context("a header line without a colon")?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.trim().parse()?,
            "content-type" => content_type = value.trim().to_ascii_lowercase(),
            "transfer-encoding" => bail!("transfer-encoding {} is not supported", value.trim()),
            _ => {}
        }
    }
    let mut body = vec![0; content_length];
    stream.read_exact(&mut body).await?;
    Ok(Some(Request { method, path, content_type, body }))
}

/// The spans of one export request.
fn decode(request: &Request) -> anyhow::Result<Vec<Span>> {
    if request.method != "POST" || request.path != "/v1/traces" {
        bail!("only POST /v1/traces is served");
    }
    match request.content_type.split(';').next().unwrap_or_default().trim() {
        "application/json" => json::spans(&request.body),
        "application/x-protobuf" => protobuf::spans(&request.body),
        other => bail!("content type `{other}` is neither OTLP/JSON nor OTLP/protobuf"),
    }
}

/// OTLP/JSON (the protobuf messages' JSON mapping: camelCase names, ids in
/// hex, 64-bit integers as strings or numbers).
mod json {
    use std::collections::BTreeMap;

    use anyhow::Context as _;
    use serde_json::Value;

    use super::Span;

    pub fn spans(body: &[u8]) -> anyhow::Result<Vec<Span>> {
        let request: Value = serde_json::from_slice(body).context("not JSON")?;
        let mut spans = Vec::new();
        for resource_spans in list(&request, "resourceSpans") {
            let resource = attributes(&resource_spans["resource"]);
            for scope_spans in list(resource_spans, "scopeSpans") {
                for span in list(scope_spans, "spans") {
                    let text = |key: &str| span[key].as_str().unwrap_or_default().to_ascii_lowercase();
                    spans.push(Span {
                        trace_id: text("traceId"),
                        span_id: text("spanId"),
                        parent_span_id: text("parentSpanId"),
                        name: span["name"].as_str().context("a span without a name")?.to_string(),
                        kind: kind(&span["kind"]),
                        attributes: attributes(span),
                        resource: resource.clone(),
                        encoding: "json",
                    });
                }
            }
        }
        Ok(spans)
    }

    fn list<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
        value[key].as_array().into_iter().flatten()
    }

    /// `kind` as a number, or as the enum's name (`SPAN_KIND_SERVER`).
    fn kind(value: &Value) -> i64 {
        const NAMES: [&str; 6] = ["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"];
        match value {
            Value::Number(number) => number.as_i64().unwrap_or(-1),
            Value::String(name) => {
                let name = name.trim_start_matches("SPAN_KIND_");
                NAMES.iter().position(|n| *n == name).map_or(-1, |i| i as i64)
            }
            _ => 0,
        }
    }

    fn attributes(value: &Value) -> BTreeMap<String, String> {
        list(value, "attributes")
            .map(|kv| {
                let value = &kv["value"];
                let text = if let Some(text) = value["stringValue"].as_str() {
                    text.to_string()
                } else if let Some(int) = value.get("intValue") {
                    int.as_str().map_or_else(|| int.to_string(), str::to_string)
                } else if let Some(other) = value.as_object().and_then(|o| o.values().next()) {
                    other.to_string()
                } else {
                    String::new()
                };
                (kv["key"].as_str().unwrap_or_default().to_string(), text)
            })
            .collect()
    }
}

/// OTLP/protobuf: just enough of the wire format (varints, 64-bit and
/// length-delimited fields) for the messages and fields [`Span`] holds.
mod protobuf {
    use std::collections::BTreeMap;

    use anyhow::{Context as _, bail};

    use super::Span;

    /// A field's value: what the wire type says, undecoded.
    enum Value<'a> {
        Varint(u64),
        Fixed64(u64),
        Bytes(&'a [u8]),
        Fixed32,
    }

    /// The fields of one message, in order.
    fn fields(mut buf: &[u8]) -> anyhow::Result<Vec<(u64, Value<'_>)>> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            let value = match key & 7 {
                0 => Value::Varint(varint(&mut buf)?),
                1 => Value::Fixed64(u64::from_le_bytes(take(&mut buf, 8)?.try_into()?)),
                2 => {
                    let len = usize::try_from(varint(&mut buf)?)?;
                    Value::Bytes(take(&mut buf, len)?)
                }
                5 => {
                    take(&mut buf, 4)?;
                    Value::Fixed32
                }
                other => bail!("wire type {other} is not supported"),
            };
            out.push((key >> 3, value));
        }
        Ok(out)
    }

    fn varint(buf: &mut &[u8]) -> anyhow::Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first().context("truncated varint")?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("varint longer than 64 bits")
    }

    fn take<'a>(buf: &mut &'a [u8], len: usize) -> anyhow::Result<&'a [u8]> {
        anyhow::ensure!(buf.len() >= len, "truncated field");
        let (head, rest) = buf.split_at(len);
        *buf = rest;
        Ok(head)
    }

    /// The length-delimited fields numbered `number`.
    fn messages<'a>(fields: &[(u64, Value<'a>)], number: u64) -> Vec<&'a [u8]> {
        fields
            .iter()
            .filter_map(|(n, v)| match v {
                Value::Bytes(bytes) if *n == number => Some(*bytes),
                _ => None,
            })
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }`.
    pub fn spans(body: &[u8]) -> anyhow::Result<Vec<Span>> {
        let mut spans = Vec::new();
        for resource_spans in messages(&fields(body)?, 1) {
            // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
            let resource_spans = fields(resource_spans)?;
            let mut resource = BTreeMap::new();
            for message in messages(&resource_spans, 1) {
                // Resource { repeated KeyValue attributes = 1; }
                resource.extend(attributes(&fields(message)?, 1)?);
            }
            for scope_spans in messages(&resource_spans, 2) {
                // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }
                for span in messages(&fields(scope_spans)?, 2) {
                    spans.push(decode_span(span, &resource)?);
                }
            }
        }
        Ok(spans)
    }

    /// `Span { bytes trace_id = 1; bytes span_id = 2; bytes parent_span_id = 4;
    /// string name = 5; SpanKind kind = 6; repeated KeyValue attributes = 9; ... }`.
    fn decode_span(bytes: &[u8], resource: &BTreeMap<String, String>) -> anyhow::Result<Span> {
        let fields = fields(bytes)?;
        let bytes_of = |number: u64| messages(&fields, number).first().map_or_else(String::new, |b| hex(b));
        let name = messages(&fields, 5).first().map(|b| String::from_utf8_lossy(b).into_owned());
        let kind = fields.iter().find_map(|(n, v)| match v {
            Value::Varint(kind) if *n == 6 => Some(*kind as i64),
            _ => None,
        });
        Ok(Span {
            trace_id: bytes_of(1),
            span_id: bytes_of(2),
            parent_span_id: bytes_of(4),
            name: name.context("a span without a name")?,
            kind: kind.unwrap_or(0),
            attributes: attributes(&fields, 9)?,
            resource: resource.clone(),
            encoding: "protobuf",
        })
    }

    /// `KeyValue { string key = 1; AnyValue value = 2; }` fields numbered `number`, values as text.
    fn attributes(fields: &[(u64, Value<'_>)], number: u64) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for kv in messages(fields, number) {
            let kv = self::fields(kv)?;
            let key = messages(&kv, 1).first().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
            let value = match messages(&kv, 2).first() {
                Some(any) => any_value(any)?,
                None => String::new(),
            };
            out.insert(key, value);
        }
        Ok(out)
    }

    /// `AnyValue { oneof { string string_value = 1; bool bool_value = 2;
    /// int64 int_value = 3; double double_value = 4; ... } }` as text.
    fn any_value(bytes: &[u8]) -> anyhow::Result<String> {
        Ok(match fields(bytes)?.first() {
            Some((1, Value::Bytes(text))) => String::from_utf8_lossy(text).into_owned(),
            Some((2, Value::Varint(flag))) => (*flag != 0).to_string(),
            Some((3, Value::Varint(int))) => (*int as i64).to_string(),
            Some((4, Value::Fixed64(bits))) => f64::from_bits(*bits).to_string(),
            Some(_) => "<complex>".to_string(),
            None => String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length-delimited field.
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2];
        let mut len = bytes.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(bytes);
        out
    }

    fn key_value(key: &str, value: &[u8]) -> Vec<u8> {
        [field(1, key.as_bytes()), field(2, value)].concat()
    }

    #[test]
    fn a_protobuf_request_decodes_to_its_spans() {
        let span = [
            field(1, &[0xab; 16]),
            field(2, &[0x01; 8]),
            field(4, &[0x02; 8]),
            field(5, b"smtp.accept"),
            vec![6 << 3, 2],
            field(9, &key_value("smtp.reply_code", &[3 << 3, 250, 1])),
            field(9, &key_value("client.address", &field(1, b"127.0.0.1"))),
        ]
        .concat();
        let resource = field(1, &key_value("service.name", &field(1, b"mailflow")));
        let resource_spans = [field(1, &resource), field(2, &field(2, &span))].concat();
        let spans = protobuf::spans(&field(1, &resource_spans)).expect("decodes");
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!((span.trace_id.as_str(), span.span_id.as_str()), ("ab".repeat(16).as_str(), "0101010101010101"));
        assert_eq!(
            (span.parent_span_id.as_str(), span.name.as_str(), span.kind),
            ("0202020202020202", "smtp.accept", 2)
        );
        assert_eq!(span.attribute("smtp.reply_code"), "250");
        assert_eq!(span.attribute("client.address"), "127.0.0.1");
        assert_eq!(span.resource("service.name"), "mailflow");
        assert!(protobuf::spans(&[0x0a, 0x05, 0x01]).is_err(), "a truncated field is refused");
    }

    #[test]
    fn a_json_request_decodes_to_its_spans() {
        let body = serde_json::json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "mailflow"}}]},
            "scopeSpans": [{"spans": [{
                "traceId": "AB".repeat(16), "spanId": "0101010101010101", "parentSpanId": "",
                "name": "verdict", "kind": 5,
                "attributes": [{"key": "mailflow.scl", "value": {"intValue": "1"}},
                               {"key": "flag", "value": {"boolValue": true}}]
            }]}]
        }]});
        let spans = json::spans(body.to_string().as_bytes()).expect("decodes");
        assert_eq!(spans.len(), 1);
        assert_eq!((spans[0].trace_id.as_str(), spans[0].kind), ("ab".repeat(16).as_str(), 5));
        assert_eq!((spans[0].attribute("mailflow.scl"), spans[0].attribute("flag")), ("1", "true"));
        assert_eq!(spans[0].resource("service.name"), "mailflow");
    }
}
