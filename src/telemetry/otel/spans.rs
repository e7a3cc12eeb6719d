//! What the layers use to make, mark and link spans; each costs nothing when tracing is off.

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::on;

/// Runs `work` inside `span`, and marks the span failed if the work fails: what every span
/// around a Redis or PostgreSQL call does.
pub async fn traced<T, E: std::fmt::Display>(
    span: tracing::Span,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use tracing::Instrument;
    let result = work.instrument(span.clone()).await;
    if let Err(error) = &result {
        failed(&span, error);
    }
    result
}

/// Marks `span` failed with `error`'s message (when tracing is on).
pub fn failed(span: &tracing::Span, error: &dyn std::fmt::Display) {
    if on() {
        span.set_status(opentelemetry::trace::Status::error(error.to_string()));
    }
}

/// Notes on the current span that something happened (an OpenTelemetry span event), when
/// tracing is on.
pub fn note(what: &'static str) {
    if on() {
        tracing::Span::current().add_event(what, Vec::new());
    }
}

/// The span context of `span` (activating it), for a link.
fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// Links `span` to `other` (both ways, so each trace shows the other), when both are traced.
pub fn link_both(span: &tracing::Span, other: &tracing::Span) {
    let theirs = span_context(other);
    let ours = span_context(span);
    if theirs.is_valid() && ours.is_valid() {
        span.add_link(theirs);
        other.add_link(ours);
    }
}

/// The current span, to carry into a task of its own (`Span::none()` when tracing is off, so
/// nothing is cloned or reference-counted then).
#[inline]
pub fn current() -> tracing::Span {
    if on() {
        tracing::Span::current()
    } else {
        tracing::Span::none()
    }
}

/// The trace and span ids of the span `id`, as hex, when it is traced.
pub fn ids_of(id: &tracing::span::Id, dispatch: &tracing::Dispatch) -> Option<(String, String)> {
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| {
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
        )
    })
}
