//! Logs, traces, request ids and the shutdown signal.

mod format;
pub mod otel;
mod request;
mod shutdown;

pub use request::{REQUEST_ID_HEADER, RequestMeta, RequestSpan, request_id};
pub use shutdown::ShutdownSignals;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter};

use crate::config::{LogFormat, TraceSettings};
use format::WithTraceIds;

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

/// Most characters of a value from a request (a header, a path) that is written into a log
/// line or echoed in a problem: a client must not choose how much the replica writes.
pub const CLIPPED_CHARS: usize = 200;

/// `text` as it is when short, else its first [`CLIPPED_CHARS`] characters and `…`.
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(CLIPPED_CHARS) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..end])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_value_is_clipped_and_a_short_one_kept() {
        assert_eq!(clip("abc"), "abc");
        let long = "é".repeat(CLIPPED_CHARS + 1);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), CLIPPED_CHARS + 1);
        assert!(clipped.ends_with('…'));
        assert_eq!(clip(&long[..2 * CLIPPED_CHARS]), long[..2 * CLIPPED_CHARS]);
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
}
