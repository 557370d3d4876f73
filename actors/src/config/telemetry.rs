//! `[telemetry]`: OpenTelemetry traces and where they are exported (see `crate::telemetry`).

use serde::Deserialize;

/// The environment variable read when `otlp_endpoint` is not set (the
/// OpenTelemetry standard's base URL of a collector, e.g. `http://collector:4318`).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Where traces go; with no endpoint (here or in [`OTLP_ENDPOINT_ENV`]) no
/// span is recorded and nothing is exported.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector, e.g. `http://collector:4318`; spans
    /// are POSTed to `<otlp_endpoint>/v1/traces`. Default none: then
    /// `$OTEL_EXPORTER_OTLP_ENDPOINT` if set, else no export. `http://` only
    /// (the exporter has no TLS client: use a local collector or sidecar).
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (the default) or `http/json`.
    pub protocol: OtlpProtocol,
    /// `service.name` of every span (default `mailflow`).
    pub service_name: String,
    /// Share of new traces (messages) recorded, 0.0 to 1.0 (default 1.0:
    /// every message). A message's later stages follow the decision taken when
    /// it was accepted, in whichever process they run.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            service_name: "mailflow".to_string(),
            sample_ratio: 1.0,
        }
    }
}

/// The OTLP/HTTP encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf (`application/x-protobuf`).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// JSON (`application/json`).
    #[serde(rename = "http/json")]
    HttpJson,
}

impl TelemetryConfig {
    /// The traces URL: `otlp_endpoint`, else `env` (the value of
    /// [`OTLP_ENDPOINT_ENV`]), with `/v1/traces` appended; `None`: no export.
    pub fn traces_url(&self, env: Option<&str>) -> Option<String> {
        Some(format!("{}/v1/traces", self.endpoint(env)?.trim().trim_end_matches('/')))
    }

    /// The configured base URL, else `env`'s.
    fn endpoint<'a>(&'a self, env: Option<&'a str>) -> Option<&'a str> {
        self.otlp_endpoint.as_deref().or(env.filter(|value| !value.trim().is_empty()))
    }

    /// Adds what is wrong with these settings to `problems`; `env` as for [`TelemetryConfig::traces_url`].
    pub fn validate(&self, env: Option<&str>, problems: &mut Vec<String>) {
        if let Some(base) = self.endpoint(env) {
            let source = if self.otlp_endpoint.is_some() { "telemetry.otlp_endpoint" } else { OTLP_ENDPOINT_ENV };
            if let Err(problem) = check_url(base.trim()) {
                problems.push(format!("{source}: `{base}` {problem} (e.g. http://collector:4318)"));
            }
        }
        if self.service_name.trim().is_empty() {
            problems.push("telemetry.service_name must not be empty".to_string());
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problems.push(format!("telemetry.sample_ratio must be 0.0..=1.0, not {}", self.sample_ratio));
        }
    }
}

/// Whether `url` is an `http://host[:port][/path]` the exporter can POST to;
/// else what is wrong with it.
fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|err| format!("is not an http:// URL ({err})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("uses https, which is not supported (no TLS client): use http://".to_string()),
        _ => return Err("must start with http://".to_string()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("names no host".to_string());
    }
    if uri.query().is_some() {
        return Err("must not have a query".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml_text: &str, env: Option<&str>) -> Vec<String> {
        let config: TelemetryConfig = toml::from_str(toml_text).expect("parses");
        let mut problems = Vec::new();
        config.validate(env, &mut problems);
        problems
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported_unless_the_standard_variable_names_one() {
        let config = TelemetryConfig::default();
        assert_eq!(config.traces_url(None), None);
        assert_eq!(config.traces_url(Some(" ")), None);
        assert_eq!(config.traces_url(Some("http://env:4318")).as_deref(), Some("http://env:4318/v1/traces"));
        let set = TelemetryConfig { otlp_endpoint: Some("http://collector:4318/".into()), ..config };
        assert_eq!(set.traces_url(Some("http://env:4318")).as_deref(), Some("http://collector:4318/v1/traces"));
    }

    #[test]
    fn every_key_has_its_documented_default() {
        let config: TelemetryConfig = toml::from_str("").expect("empty section");
        assert_eq!(config, TelemetryConfig::default());
        assert_eq!(config.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(config.service_name, "mailflow");
        assert_eq!(config.sample_ratio, 1.0);
        let json: TelemetryConfig = toml::from_str("protocol = \"http/json\"").expect("parses");
        assert_eq!(json.protocol, OtlpProtocol::HttpJson);
    }

    #[test]
    fn bad_values_are_reported_with_their_key_not_a_panic() {
        let found = problems("otlp_endpoint = \"https://c:4318\"\nservice_name = \"\"\nsample_ratio = 1.5\n", None);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("telemetry.otlp_endpoint: `https://c:4318` uses https"), "{found:?}");
        let bare = problems("otlp_endpoint = \"collector:4318\"", None);
        assert!(bare.len() == 1 && bare[0].contains("`collector:4318`") && bare[0].contains("http://"), "{bare:?}");
        assert!(problems("otlp_endpoint = \"http://\"", None).len() == 1);
        assert!(problems("", Some("not a url"))[0].starts_with(OTLP_ENDPOINT_ENV));
        assert!(problems("sample_ratio = nan", None)[0].contains("sample_ratio"));
        assert!(problems("otlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.0", None).is_empty());
        let grpc = toml::from_str::<TelemetryConfig>("protocol = \"grpc\"").expect_err("grpc is not offered");
        assert!(grpc.to_string().contains("http/protobuf"), "{grpc}");
    }
}
