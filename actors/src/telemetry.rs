//! OpenTelemetry traces: one trace per message, across every role and process.
//!
//! The connection role opens a span when it accepts a message and writes that
//! span's W3C trace context into the envelope of `MessageReceived`. Every later
//! stage (verdict, routing, a delivery attempt, an expiry, NDR generation)
//! opens its span as a child of the context carried by the event it consumes
//! and writes its own span's context into the events it appends, so the spans
//! of one message share one trace id whichever processes the stages run in.
//! A [`Stage`] is that pair: the span, and the context its events carry on.
//! An NDR continues the trace of the message it reports on, as a child of the
//! span that generated it. The journal copies each source event's context into
//! its records and opens no span of its own.
//!
//! The spans are `tracing` spans of target [`TARGET`], turned into
//! OpenTelemetry spans by `tracing-opentelemetry`; the log layer never sees
//! them (log lines look the same with tracing on or off). Without an OTLP
//! endpoint (`[telemetry] otlp_endpoint`, else `$OTEL_EXPORTER_OTLP_ENDPOINT`)
//! no layer wants them: creating one is a disabled-callsite check, nothing is
//! recorded or exported, and the stages hand on the context they were given
//! unchanged, so a process without telemetry does not break the trace of the
//! processes around it.
//!
//! Export: finished spans are batched (the SDK's `BatchSpanProcessor`, its own
//! thread; `OTEL_BSP_*` variables tune it) and POSTed to
//! `<endpoint>/v1/traces` by the OTLP/HTTP exporter over hyper. hyper needs a
//! tokio runtime, and the router's actix runtimes end before the last batch
//! is flushed, so the exporter runs on a runtime of its own (one thread).
//! [`Telemetry::shutdown`], called once `serve` has drained, exports what is
//! still batched, so the spans of the last messages survive a SIGTERM.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mailflow_events::TraceContext;
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;

use crate::config::{OTLP_ENDPOINT_ENV, OtlpProtocol, TelemetryConfig};

/// Target of every span made here; only the OpenTelemetry layer takes it.
pub const TARGET: &str = "mailflow::telemetry";

/// Span names, one per stage.
pub mod name {
    /// The connection role stores a message and answers it (SMTP accept).
    pub const ACCEPT: &str = "smtp.accept";
    /// The verdict role judges a message.
    pub const VERDICT: &str = "verdict";
    /// The routing role routes a verdict to its destinations.
    pub const ROUTING: &str = "routing";
    /// One attempt at delivering a message to a destination.
    pub const DELIVERY_ATTEMPT: &str = "delivery.attempt";
    /// A message expires in a destination's queue.
    pub const EXPIRY: &str = "delivery.expiry";
    /// An NDR is generated and submitted as a new message.
    pub const NDR: &str = "ndr";
}

/// Resource attribute naming the roles a process runs (`connection,verdict`).
pub const ROLES_ATTRIBUTE: &str = "mailflow.roles";

/// A stage's span, a child of the context of the event the stage consumes,
/// and the context the events it appends carry on.
#[derive(Debug, Clone)]
pub struct Stage {
    span: tracing::Span,
    context: Option<TraceContext>,
}

impl Stage {
    /// Starts `span` as a child of `parent` (a new trace when there is none).
    /// With telemetry off the span is disabled and the stage hands `parent` on.
    pub fn start(span: tracing::Span, parent: Option<&TraceContext>) -> Self {
        if span.is_disabled() {
            return Self { span, context: parent.cloned() };
        }
        if let Some(parent) = parent {
            // Only fails once the span has started, which nothing did yet.
            let _ = span.set_parent(extract(parent));
        }
        let context = inject(&span.context()).or_else(|| parent.cloned());
        Self { span, context }
    }

    /// The span, to record fields on and to instrument futures with.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The context to write into the envelopes of the events this stage appends.
    pub fn context(&self) -> Option<TraceContext> {
        self.context.clone()
    }
}

/// The OpenTelemetry context a `traceparent` (and `tracestate`) describes.
fn extract(trace: &TraceContext) -> opentelemetry::Context {
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_string(), trace.traceparent.clone());
    if !trace.tracestate.is_empty() {
        carrier.insert("tracestate".to_string(), trace.tracestate.clone());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The W3C trace context of `context`'s span; `None` when it has no valid one.
fn inject(context: &opentelemetry::Context) -> Option<TraceContext> {
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(context, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").unwrap_or_default(),
    })
}

/// The span of accepting message `id` from `client_ip`; `smtp.reply_code` is recorded with the answer.
pub fn accept_span(id: &str, client_ip: &str, listener: &str, sender: &str, recipients: usize) -> tracing::Span {
    tracing::info_span!(
        target: TARGET,
        name::ACCEPT,
        "otel.kind" = "server",
        "mailflow.message_id" = id,
        "client.address" = client_ip,
        "mailflow.listener" = listener,
        "mailflow.sender" = sender,
        "mailflow.recipient_count" = recipients,
        "smtp.reply_code" = tracing::field::Empty,
    )
}

/// The span of judging message `id`; the verdict's fields are recorded once known.
pub fn verdict_span(id: &str) -> tracing::Span {
    tracing::info_span!(
        target: TARGET,
        name::VERDICT,
        "otel.kind" = "consumer",
        "mailflow.message_id" = id,
        "mailflow.scl" = tracing::field::Empty,
        "mailflow.verdict" = tracing::field::Empty,
        "mailflow.action" = tracing::field::Empty,
    )
}

/// The span of routing message `id`; the destination counts are recorded once known.
pub fn routing_span(id: &str) -> tracing::Span {
    tracing::info_span!(
        target: TARGET,
        name::ROUTING,
        "otel.kind" = "consumer",
        "mailflow.message_id" = id,
        "mailflow.destination_count" = tracing::field::Empty,
        "mailflow.unroutable_count" = tracing::field::Empty,
    )
}

/// The span of attempt `attempt` at delivering message `id` to `destination`;
/// the next hop, its reply and the outcome are recorded as they become known.
pub fn delivery_span(id: &str, destination: &str, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        target: TARGET,
        name::DELIVERY_ATTEMPT,
        "otel.kind" = "client",
        "mailflow.message_id" = id,
        "mailflow.destination" = destination,
        "mailflow.attempt" = attempt,
        "server.address" = tracing::field::Empty,
        "network.peer.address" = tracing::field::Empty,
        "smtp.reply_code" = tracing::field::Empty,
        "mailflow.outcome" = tracing::field::Empty,
    )
}

/// The span of message `id` expiring in `destination`'s queue.
pub fn expiry_span(id: &str, destination: &str) -> tracing::Span {
    tracing::info_span!(
        target: TARGET,
        name::EXPIRY,
        "mailflow.message_id" = id,
        "mailflow.destination" = destination,
        "mailflow.outcome" = "expired",
    )
}

/// The span of generating the NDR for message `id`; `mailflow.ndr_message_id` once stored.
pub fn ndr_span(id: &str) -> tracing::Span {
    tracing::info_span!(
        target: TARGET,
        name::NDR,
        "mailflow.message_id" = id,
        "mailflow.ndr_message_id" = tracing::field::Empty,
    )
}

/// Records a delivery outcome on a delivery attempt's span.
pub fn record_outcome(span: &tracing::Span, outcome: &str, code: Option<u16>, host: Option<&str>, ip: Option<&str>) {
    span.record("mailflow.outcome", outcome);
    if let Some(code) = code {
        span.record("smtp.reply_code", code);
    }
    if let Some(host) = host {
        span.record("server.address", host);
    }
    if let Some(ip) = ip {
        span.record("network.peer.address", ip);
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The `[telemetry]` settings (or `$OTEL_EXPORTER_OTLP_ENDPOINT`) are wrong
    /// (permanent: fix the configuration).
    #[error("invalid telemetry settings:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    /// The exporter's runtime could not be started (temporary: out of threads or memory).
    #[error("starting the trace exporter's runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The OTLP exporter refused its settings (permanent).
    #[error("building the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The process's trace pipeline, when an endpoint is configured.
pub struct Telemetry {
    provider: SdkTracerProvider,
    /// Runs the exporter's HTTP requests; dropped after the provider's shutdown.
    runtime: tokio::runtime::Runtime,
    url: String,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("url", &self.url).finish_non_exhaustive()
    }
}

/// A layer of the process's subscriber.
pub type BoxedLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

impl Telemetry {
    /// Starts exporting when an endpoint is configured (`None` otherwise), for
    /// a process running `roles`; the layer turns [`TARGET`] spans into
    /// OpenTelemetry spans and belongs in the process's subscriber.
    pub fn start(config: &TelemetryConfig, roles: &str) -> Result<Option<(Self, BoxedLayer)>, TelemetryError> {
        let env = std::env::var(OTLP_ENDPOINT_ENV).ok();
        let mut problems = Vec::new();
        config.validate(env.as_deref(), &mut problems);
        if !problems.is_empty() {
            return Err(TelemetryError::Invalid(problems));
        }
        let Some(url) = config.traces_url(env.as_deref()) else { return Ok(None) };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        let protocol = match config.protocol {
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
            OtlpProtocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
        };
        let exporter = {
            let _runtime = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_endpoint(url.clone())
                .build()?
        };
        let exporter = OnRuntime { inner: Arc::new(exporter), runtime: runtime.handle().clone() };
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_string());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", format!("{host}/{}", std::process::id())),
                KeyValue::new(ROLES_ATTRIBUTE, roles.to_string()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
            .with_resource(resource)
            .build();
        let layer = layer(provider.tracer("mailflow"));
        Ok(Some((Self { provider, runtime, url }, layer)))
    }

    /// Where spans are POSTed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Exports every span still batched and stops the exporter; call once
    /// the process has drained, outside any async runtime (it blocks).
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, url = %self.url, "spans not all exported at exit");
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// The OpenTelemetry layer over `tracer`: [`TARGET`] spans, and warnings and
/// errors inside them as span events.
fn layer(tracer: opentelemetry_sdk::trace::SdkTracer) -> BoxedLayer {
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target(TARGET, tracing::Level::INFO)
        .with_default(tracing::Level::WARN);
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_location(false)
        .with_filter(filter)
        .boxed()
}

/// The OTLP exporter, its requests run on the telemetry runtime: the batch
/// processor's thread polls `export` without one, and hyper needs tokio.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.inner);
        match self.runtime.spawn(async move { inner.export(batch).await }).await {
            Ok(result) => result,
            Err(err) => Err(OTelSdkError::InternalFailure(format!("export task: {err}"))),
        }
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        // Exports are awaited one at a time, so no task holds a clone by now.
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.shutdown_with_timeout(timeout),
            None => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Called while the provider is built, before any export.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use mailflow_events::Envelope;
    use mailflow_events::delivery::DeliveryEvent;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Keeps every span it is given.
    #[derive(Debug, Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("recorder").extend(batch);
            Ok(())
        }
    }

    /// Runs `f` with spans recorded, and returns them in the order they ended.
    fn recorded(sample_ratio: f64, f: impl FnOnce()) -> Vec<SpanData> {
        let recorder = Recorder::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(recorder.clone())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(sample_ratio))))
            .build();
        let subscriber = tracing_subscriber::registry().with(layer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f);
        provider.shutdown().expect("shuts down");
        recorder.0.lock().expect("recorder").clone()
    }

    /// `context` written into an envelope and read back as a consumer does.
    fn through_the_log(context: Option<TraceContext>) -> Option<TraceContext> {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/tests/fixtures/v1/delivery.Resumed.json");
        let bytes = std::fs::read(fixture).expect("fixture is readable");
        let mut envelope = Envelope::<DeliveryEvent>::from_json(&bytes).expect("fixture decodes");
        envelope.trace_context = context;
        Envelope::<DeliveryEvent>::from_json(&envelope.to_json()).expect("decodes").trace_context
    }

    #[test]
    fn a_stage_continues_the_trace_its_event_carried_through_the_log() {
        let spans = recorded(1.0, || {
            let accept = Stage::start(accept_span("m1", "192.0.2.1", "smtp", "a@example.net", 1), None);
            let carried = through_the_log(accept.context());
            assert_eq!(carried, accept.context(), "the envelope keeps the context as it was");
            let routing = Stage::start(routing_span("m1"), carried.as_ref());
            assert_ne!(routing.context(), accept.context(), "the next stage hands on its own span");
            let delivery = Stage::start(delivery_span("m1", "internet:example.org", 1), routing.context().as_ref());
            record_outcome(delivery.span(), "delivered", Some(250), Some("mx.example.org"), Some("192.0.2.9"));
        });
        let by_name = |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}: {spans:?}"));
        let (accept, routing, delivery) =
            (by_name(name::ACCEPT), by_name(name::ROUTING), by_name(name::DELIVERY_ATTEMPT));
        let trace = accept.span_context.trace_id();
        assert!(routing.span_context.trace_id() == trace && delivery.span_context.trace_id() == trace);
        assert_eq!(accept.parent_span_id, opentelemetry::trace::SpanId::INVALID, "accept starts the trace");
        assert_eq!(routing.parent_span_id, accept.span_context.span_id());
        assert_eq!(delivery.parent_span_id, routing.span_context.span_id());
        let attribute =
            |name: &str| delivery.attributes.iter().find(|kv| kv.key.as_str() == name).map(|kv| kv.value.to_string());
        assert_eq!(attribute("smtp.reply_code").as_deref(), Some("250"));
        assert_eq!(attribute("mailflow.outcome").as_deref(), Some("delivered"));
        assert_eq!(attribute("server.address").as_deref(), Some("mx.example.org"));
    }

    #[test]
    fn two_messages_get_two_traces() {
        let spans = recorded(1.0, || {
            Stage::start(accept_span("m1", "192.0.2.1", "smtp", "a@example.net", 1), None);
            Stage::start(accept_span("m2", "192.0.2.1", "smtp", "a@example.net", 1), None);
        });
        assert_eq!(spans.len(), 2);
        assert_ne!(spans[0].span_context.trace_id(), spans[1].span_context.trace_id());
    }

    #[test]
    fn an_unsampled_message_stays_unsampled_downstream_and_records_nothing() {
        let spans = recorded(0.0, || {
            let accept = Stage::start(accept_span("m1", "192.0.2.1", "smtp", "a@example.net", 1), None);
            let context = accept.context().expect("a context even when not sampled");
            assert!(context.traceparent.ends_with("-00"), "{context:?}");
            let verdict = Stage::start(verdict_span("m1"), Some(&context));
            assert!(verdict.context().is_some_and(|c| c.traceparent.ends_with("-00")));
        });
        assert!(spans.is_empty(), "{spans:?}");
    }

    #[test]
    fn without_telemetry_a_stage_hands_on_the_context_it_was_given() {
        let given = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            tracestate: "vendor=1".to_string(),
        };
        let hands_on = || {
            assert_eq!(Stage::start(verdict_span("m1"), Some(&given)).context(), Some(given.clone()));
            assert_eq!(Stage::start(accept_span("m1", "192.0.2.1", "smtp", "", 0), None).context(), None);
        };
        // No subscriber at all, and one without the OpenTelemetry layer (a process without an endpoint).
        hands_on();
        tracing::subscriber::with_default(tracing_subscriber::registry(), hands_on);
    }

    #[test]
    fn the_tracestate_travels_with_the_trace() {
        let given = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            tracestate: "vendor=1".to_string(),
        };
        let spans = recorded(1.0, || {
            let stage = Stage::start(verdict_span("m1"), Some(&given));
            let context = stage.context().expect("a context");
            assert!(context.traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{context:?}");
            assert_eq!(context.tracestate, "vendor=1");
        });
        assert_eq!(spans[0].parent_span_id.to_string(), "00f067aa0ba902b7");
    }
}
