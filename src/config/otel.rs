//! Traces over OTLP, set by OpenTelemetry's own variables (the names every collector's docs use).

use std::time::Duration;

use super::parse::millis;
use clap::{Args, ValueEnum};

/// Where traces go, and which are kept. No endpoint: no exporter, no connection, nothing traced.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Tracing (OpenTelemetry)")]
pub struct TraceSettings {
    /// true: no traces, whatever else is set (the standard switch).
    #[arg(long = "otel-sdk-disabled", id = "OTEL_SDK_DISABLED", env = "OTEL_SDK_DISABLED", default_value = "false", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub sdk_disabled: bool,

    /// Base URL of an OTLP/HTTP collector (`http://collector:4318`); traces are sent to its
    /// `/v1/traces`. Unset or empty, with OTEL_EXPORTER_OTLP_TRACES_ENDPOINT unset too: tracing is
    /// off, and no connection is ever made.
    #[arg(long = "otel-exporter-otlp-endpoint", id = "OTEL_EXPORTER_OTLP_ENDPOINT", env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = parse_endpoint)]
    pub endpoint: Option<Endpoint>,

    /// Full URL traces are sent to, used as it is (wins over OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long = "otel-exporter-otlp-traces-endpoint", id = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_parser = parse_endpoint)]
    pub traces_endpoint: Option<Endpoint>,

    /// The OTLP transport: `http/protobuf`, which every collector takes on port 4318.
    #[arg(long = "otel-exporter-otlp-protocol", id = "OTEL_EXPORTER_OTLP_PROTOCOL", env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf", value_parser = parse_protocol)]
    pub protocol: Protocol,

    /// Headers sent with every export, `key=value` pairs separated by commas, values
    /// percent-encoded (`x-honeycomb-team=KEY`, `authorization=Bearer%20TOKEN`). Never logged.
    #[arg(long = "otel-exporter-otlp-headers", id = "OTEL_EXPORTER_OTLP_HEADERS", env = "OTEL_EXPORTER_OTLP_HEADERS", hide_env_values = true, value_parser = parse_headers)]
    pub headers: Option<OtlpHeaders>,

    /// `service.name` of every span. Unset: `vehicle-state` for `serve`, `vehicle-state-ingest`
    /// for `ingest`, `vehicle-state-publish` for `publish`.
    #[arg(long = "otel-service-name", id = "OTEL_SERVICE_NAME", env = "OTEL_SERVICE_NAME", value_parser = parse_service_name)]
    pub service_name: Option<String>,

    /// More resource attributes, `key=value` pairs separated by commas, values percent-encoded
    /// (`deployment.environment.name=prod,service.namespace=fleet`).
    #[arg(long = "otel-resource-attributes", id = "OTEL_RESOURCE_ATTRIBUTES", env = "OTEL_RESOURCE_ATTRIBUTES", value_parser = parse_attributes)]
    pub resource_attributes: Option<ResourceAttributes>,

    /// Which traces are kept: `parentbased_always_on` follows the caller's `traceparent` choice
    /// and keeps every trace that starts here; `parentbased_traceidratio` keeps
    /// OTEL_TRACES_SAMPLER_ARG of them; also `always_on`, `always_off`, `traceidratio`,
    /// `parentbased_always_off`.
    #[arg(
        long = "otel-traces-sampler",
        id = "OTEL_TRACES_SAMPLER",
        env = "OTEL_TRACES_SAMPLER",
        value_enum,
        default_value = "parentbased_always_on"
    )]
    pub sampler: SamplerKind,

    /// The share of traces the `*traceidratio` samplers keep, from 0 to 1.
    #[arg(long = "otel-traces-sampler-arg", id = "OTEL_TRACES_SAMPLER_ARG", env = "OTEL_TRACES_SAMPLER_ARG", value_parser = parse_ratio)]
    pub sampler_arg: Option<f64>,

    /// Milliseconds one export may take before it is given up and its spans dropped (a collector
    /// that hangs holds up the export thread this long, never a request).
    #[arg(long = "otel-exporter-otlp-timeout", id = "OTEL_EXPORTER_OTLP_TIMEOUT", env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value = "10000", value_parser = millis(1..=600_000))]
    pub export_timeout: Duration,

    /// Most finished spans waiting to be exported; past it, new spans are dropped and counted
    /// (`vehicle_state_trace_spans_dropped_total`), so a slow collector never fills memory.
    #[arg(long = "otel-bsp-max-queue-size", id = "OTEL_BSP_MAX_QUEUE_SIZE", env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = 2048, value_parser = parse_queue_size)]
    pub max_queue_size: usize,

    /// Milliseconds between exports of what has queued (sooner when 512 spans are waiting).
    #[arg(long = "otel-bsp-schedule-delay", id = "OTEL_BSP_SCHEDULE_DELAY", env = "OTEL_BSP_SCHEDULE_DELAY", default_value = "5000", value_parser = millis(1..=600_000))]
    pub schedule_delay: Duration,
}

fn parse_queue_size(raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(size) if (1..=1_000_000).contains(&size) => Ok(size),
        _ => Err("a number of spans from 1 to 1000000".to_owned()),
    }
}

/// Tracing off, every other field at its documented default: what `serve` reads from an
/// environment without `OTEL_*` (a unit test holds the two equal).
impl Default for TraceSettings {
    fn default() -> Self {
        Self {
            sdk_disabled: false,
            endpoint: None,
            traces_endpoint: None,
            protocol: Protocol::HttpProtobuf,
            headers: None,
            service_name: None,
            resource_attributes: None,
            sampler: SamplerKind::ParentbasedAlwaysOn,
            sampler_arg: None,
            export_timeout: Duration::from_millis(10_000),
            max_queue_size: 2048,
            schedule_delay: Duration::from_millis(5000),
        }
    }
}

impl TraceSettings {
    /// Where spans are exported, or `None` when tracing is off.
    pub fn export_url(&self) -> Option<String> {
        if self.sdk_disabled {
            return None;
        }
        match (&self.traces_endpoint, &self.endpoint) {
            (Some(Endpoint(Some(full))), _) => Some(full.clone()),
            (_, Some(Endpoint(Some(base)))) => {
                Some(format!("{}/v1/traces", base.trim_end_matches('/')))
            }
            _ => None,
        }
    }

    /// The sampler's ratio: OTEL_TRACES_SAMPLER_ARG, 1 when unset (as the specification says).
    pub fn ratio(&self) -> f64 {
        self.sampler_arg.unwrap_or(1.0)
    }
}

/// An OTLP endpoint: `Some(url)`, or `None` for an empty value (`OTEL_EXPORTER_OTLP_ENDPOINT=` in
/// a compose file means unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint(pub Option<String>);

fn parse_endpoint(raw: &str) -> Result<Endpoint, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(Endpoint(None));
    }
    let url = url::Url::parse(raw).map_err(|e| {
        format!("`{raw}` is not a URL ({e}): write it as http://collector:4318 or https://…")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "`{raw}` is not an http:// or https:// URL with a host, such as http://collector:4318"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "an OTLP endpoint holds no user name or password: send credentials in OTEL_EXPORTER_OTLP_HEADERS"
                .to_owned(),
        );
    }
    Ok(Endpoint(Some(raw.to_owned())))
}

/// The transports this build speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
}

fn parse_protocol(raw: &str) -> Result<Protocol, String> {
    match raw.trim() {
        "http/protobuf" | "" => Ok(Protocol::HttpProtobuf),
        "grpc" | "http/json" => Err(format!(
            "`{raw}` is not built in: use http/protobuf (collectors take it on port 4318)"
        )),
        _ => Err(format!(
            "`{raw}` is not an OTLP protocol: use http/protobuf"
        )),
    }
}

/// The export's headers. Printed without their values: they are credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpHeaders(pub Vec<(String, String)>);

impl std::fmt::Debug for OtlpHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| format!("{name}=<redacted>")))
            .finish()
    }
}

fn parse_headers(raw: &str) -> Result<OtlpHeaders, String> {
    let pairs = parse_pairs(raw, "OTEL_EXPORTER_OTLP_HEADERS")?;
    for (name, value) in &pairs {
        actix_web::http::header::HeaderName::try_from(name.as_str())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        actix_web::http::header::HeaderValue::try_from(value.as_str())
            .map_err(|_| format!("the value of `{name}` is not a header value"))?;
    }
    Ok(OtlpHeaders(pairs))
}

/// `OTEL_RESOURCE_ATTRIBUTES`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceAttributes(pub Vec<(String, String)>);

fn parse_attributes(raw: &str) -> Result<ResourceAttributes, String> {
    parse_pairs(raw, "OTEL_RESOURCE_ATTRIBUTES").map(ResourceAttributes)
}

/// The W3C Baggage-like list both variables use: `k=v,k2=v2`, values percent-encoded.
fn parse_pairs(raw: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(n, entry)| {
            // The entry itself is not echoed: in OTEL_EXPORTER_OTLP_HEADERS it may be a key.
            let Some((key, value)) = entry.split_once('=') else {
                return Err(format!(
                    "entry {} has no `=` ({what} is a comma-separated list of key=value)",
                    n + 1
                ));
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("an entry of {what} has no key"));
            }
            let value = percent_decode(value.trim())
                .ok_or_else(|| format!("the value of `{key}` is not percent-encoded UTF-8"))?;
            Ok((key.to_owned(), value))
        })
        .collect()
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_service_name(raw: &str) -> Result<String, String> {
    match raw.trim() {
        "" => Err("an empty service name: unset OTEL_SERVICE_NAME for the default".to_owned()),
        name => Ok(name.to_owned()),
    }
}

/// OTEL_TRACES_SAMPLER's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SamplerKind {
    AlwaysOn,
    AlwaysOff,
    Traceidratio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    ParentbasedTraceidratio,
}

fn parse_ratio(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("a ratio from 0 to 1, such as 0.1".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_what_clap_reads_from_no_arguments_and_no_environment() {
        use clap::{CommandFactory, FromArgMatches, Parser};
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            traces: TraceSettings,
        }
        let command = Only::command().mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command.try_get_matches_from(["serve"]).expect("defaults");
        let parsed = Only::from_arg_matches(&matches).expect("settings");
        assert_eq!(
            format!("{:?}", parsed.traces),
            format!("{:?}", TraceSettings::default())
        );
        assert_eq!(TraceSettings::default().export_url(), None);
    }

    #[test]
    fn an_empty_endpoint_is_unset_and_a_base_gets_the_traces_path() {
        assert_eq!(parse_endpoint(""), Ok(Endpoint(None)));
        assert!(parse_endpoint("collector:4318").is_err());
        assert!(parse_endpoint("http://u:p@collector:4318").is_err());
        let base = parse_endpoint("http://collector:4318/").expect("a URL");
        assert_eq!(base, Endpoint(Some("http://collector:4318/".to_owned())));
    }

    #[test]
    fn headers_and_attributes_are_percent_decoded_pairs() {
        let headers = parse_headers("authorization=Bearer%20abc, x-team = k1 ").expect("pairs");
        assert_eq!(
            headers.0,
            vec![
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("x-team".to_owned(), "k1".to_owned())
            ]
        );
        assert!(!format!("{headers:?}").contains("abc"));
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("bad header=1").is_err());
        assert!(parse_attributes("a=%zz").is_err());
        assert_eq!(parse_attributes("").expect("empty").0, vec![]);
    }

    #[test]
    fn only_http_protobuf_is_taken_and_ratios_are_fractions() {
        assert_eq!(parse_protocol("http/protobuf"), Ok(Protocol::HttpProtobuf));
        assert!(
            parse_protocol("grpc")
                .expect_err("no grpc")
                .contains("http/protobuf")
        );
        assert!(parse_ratio("1.5").is_err());
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
    }
}
