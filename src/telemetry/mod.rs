//! Logs, traces, request ids and the shutdown signal.

pub mod otel;

use std::io::IsTerminal;
use std::time::Instant as Clock;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter};

use crate::config::{LogFormat, TraceSettings};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Installs the global subscriber: JSON or human-readable lines on standard output, and, when
/// `traces` names a collector, spans exported to it (`default_name` is their `service.name`
/// unless OTEL_SERVICE_NAME says otherwise). The returned [`otel::Tracing`] must be shut down
/// before the process exits.
pub fn init(
    format: LogFormat,
    filter: EnvFilter,
    traces: Option<(&TraceSettings, &'static str)>,
) -> Result<Option<otel::Tracing>, String> {
    let Some((settings, default_name)) = traces else {
        init_logs(format, filter);
        return Ok(None);
    };
    let Some((tracing, tracer)) = otel::provider(settings, default_name)? else {
        init_logs(format, filter);
        return Ok(None);
    };
    // Spans of this crate at any level (the work spans are TRACE), and its warnings and errors as
    // span events; the log filter decides the log lines alone.
    let traced = filter::filter_fn(|meta| {
        meta.target().starts_with("vehicle_state")
            && (meta.is_span() || *meta.level() <= tracing::Level::WARN)
    });
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        // No `busy_ns`/`idle_ns`: a clock read on every enter and exit of every span, and two
        // attributes more to export, for what the span's own start and end already say.
        .with_tracked_inactivity(false)
        .with_filter(traced);
    let registry = tracing_subscriber::registry().with(spans);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(WithTraceIds(
                        tracing_subscriber::fmt::format()
                            .json()
                            .with_target(true)
                            .flatten_event(true)
                            .with_current_span(true)
                            .with_span_list(false),
                    ))
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_target(true)
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_filter(filter),
            )
            .init(),
    }
    Ok(Some(tracing))
}

/// JSON lines with the trace and span ids of the request they were written in (`trace_id`,
/// `span_id`, as OpenTelemetry's log data model names them), so logs and traces join.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.lookup_current().and_then(|span| {
            tracing::dispatcher::get_default(|dispatch| otel::ids_of(&span.id(), dispatch))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// Log lines alone, as before tracing existed: one global filter, so a callsite the filter
/// leaves out (every work span) costs nothing.
fn init_logs(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        // Colours only for a person at a terminal, not for a file or a collector.
        LogFormat::Pretty => builder
            .compact()
            .with_ansi(std::io::stdout().is_terminal())
            .init(),
    }
}

/// `RUST_LOG` unset: `info`, without actix-server's and async-nats's own info lines.
pub const DEFAULT_FILTER: &str = "info,actix_server=warn,async_nats=warn";

pub fn parse_filter(raw: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(raw)
        .map_err(|e| format!("not a log filter (try `info` or `vehicle_state=debug,info`): {e}"))
}

/// SIGTERM (what orchestrators send) and Ctrl-C, listened for from the moment this is made:
/// a signal that arrives before anything awaits it is kept, not lost to the default action.
pub struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Takes over both signals now. Must run inside the runtime.
    pub fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the next signal.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("Ctrl-C received"),
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The request's id and start time, put in the request's extensions by [`request_id`].
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub id: HeaderValue,
    pub started: Clock,
}

/// Takes `X-Request-Id` from the request when it is a sensible token (so a load balancer's id
/// carries through), or makes one; returns it on the response.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .filter(|v| is_acceptable_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestMeta {
        id: id.clone(),
        started: Clock::now(),
    });
    let mut res = next.call(req).await?;
    res.headers_mut().insert(REQUEST_ID_HEADER, id);
    Ok(res)
}

/// Up to 128 visible ASCII characters: enough for any tracing id format, and safe to log.
fn is_acceptable_request_id(raw: &[u8]) -> bool {
    !raw.is_empty() && raw.len() <= 128 && raw.iter().all(|b| b.is_ascii_graphic())
}

fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The root span of each request, and the one log line written when it ends.
///
/// The span holds what is known when the request arrives (id, method, path), so every line
/// logged while it is served carries them; the route, status and latency are fields of the
/// completion line itself. Recording them into the span instead would make the JSON formatter
/// parse and rewrite the span's fields once per field, on every request.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let extensions = request.extensions();
        let id = extensions
            .get::<RequestMeta>()
            .map(|m| m.id.to_str().unwrap_or("-"))
            .unwrap_or("-");
        if otel::on() {
            return traced_request_span(request, id);
        }
        tracing::info_span!(
            "request",
            request_id = %id,
            method = %request.method(),
            path = %request.path(),
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        if otel::on() {
            end_traced_request_span(&span, outcome);
        }
        let _entered = span.enter();
        match outcome {
            Ok(res) => {
                let request = res.request();
                let latency_ms = request
                    .extensions()
                    .get::<RequestMeta>()
                    // Whole microseconds, so the line reads `0.412`, not `0.41200000000000003`.
                    .map(|m| m.started.elapsed().as_micros() as f64 / 1000.0);
                tracing::info!(
                    route = crate::metrics::route_of(request),
                    status = res.status().as_u16(),
                    latency_ms,
                    "request completed"
                );
            }
            Err(error) => tracing::info!(
                status = error.as_response_error().status_code().as_u16(),
                "request completed"
            ),
        }
    }
}

/// The request span when tracing is on: the same fields for log lines, the caller's
/// `traceparent` as its parent, its name and kind for the trace (`GET /v1/vehicles/{id}/state`,
/// server), and the semantic-convention attributes, set on the trace alone so log lines do not
/// repeat them.
fn traced_request_span(request: &ServiceRequest, id: &str) -> Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let route = crate::metrics::route_of(request.request());
    let method = request.method();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        path = %request.path(),
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
    );
    otel::set_parent(&span, otel::extract(request.headers()));
    span.set_attribute("http.request.method", method.as_str().to_owned());
    span.set_attribute("url.path", request.path().to_owned());
    span.set_attribute("http.route", route);
    span
}

/// The answer's status and source on the request span; a 5xx marks it failed (a 4xx is the
/// caller's error, not the server's, as the HTTP conventions say).
fn end_traced_request_span<B>(span: &Span, outcome: &Result<ServiceResponse<B>, Error>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let status = match outcome {
        Ok(res) => {
            if let Some(cache) = res
                .headers()
                .get(HeaderName::from_static("x-cache"))
                .and_then(|v| v.to_str().ok())
            {
                span.set_attribute("vehicle_state.cache", cache.to_owned());
            }
            res.status()
        }
        Err(error) => error.as_response_error().status_code(),
    };
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_status(opentelemetry::trace::Status::error(
            status.canonical_reason().unwrap_or("server error"),
        ));
    }
}

/// An error and all its causes on one line, for logs and for the message a command exits with.
/// A cause its parent's message already ends with is not repeated (sqlx's `error communicating
/// with database: X` has `X` as its source), and PostgreSQL's errors are their message alone,
/// without sqlx's `at line N` (a line of PostgreSQL's own source, meaningless to a reader).
pub fn chain<'a>(error: &'a (dyn std::error::Error + 'static)) -> impl std::fmt::Display + 'a {
    struct Chain<'a>(&'a (dyn std::error::Error + 'static));
    impl std::fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let mut written = String::new();
            let mut current = Some(self.0);
            while let Some(error) = current {
                let text = if let Some(sqlx::Error::Database(db)) = error.downcast_ref() {
                    format!("error returned from database: {}", db.message())
                } else if let Some(db) = error.downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    db.message().to_owned()
                } else {
                    error.to_string()
                };
                if !written.ends_with(&text) {
                    if !written.is_empty() {
                        written.push_str(": ");
                    }
                    written.push_str(&text);
                }
                current = error.source();
            }
            f.write_str(&written)
        }
    }
    Chain(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_request_ids_are_taken_from_clients() {
        assert!(is_acceptable_request_id(
            b"4bf92f3577b34da6a3ce929d0e0e4736"
        ));
        assert!(is_acceptable_request_id(b"lb-1/req:42"));
        assert!(!is_acceptable_request_id(b""));
        assert!(!is_acceptable_request_id(b"has space"));
        assert!(!is_acceptable_request_id(b"new\nline"));
        assert!(!is_acceptable_request_id(&[b'a'; 129]));
    }

    #[test]
    fn a_cause_already_in_its_parent_message_is_written_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = io.to_string();
        let error = sqlx::Error::Io(io);
        let once = chain(&error).to_string();
        assert_eq!(once.matches(&text).count(), 1, "{once}");
        let wrapped = anyhow::Error::new(error).context("cannot reach PostgreSQL");
        let line = chain(wrapped.as_ref()).to_string();
        assert!(line.starts_with("cannot reach PostgreSQL: "), "{line}");
        assert_eq!(line.matches(&text).count(), 1, "{line}");
    }

    #[test]
    fn generated_request_ids_are_uuids() {
        let id = new_request_id();
        assert!(uuid::Uuid::parse_str(id.to_str().expect("ascii")).is_ok());
    }
}
