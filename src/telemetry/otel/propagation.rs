//! W3C trace context in and out: from HTTP requests, to and from NATS messages.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace-context propagator (`traceparent`, `tracestate`), named here rather than taken
/// from OpenTelemetry's global, which is a no-op until set.
fn propagator() -> &'static TraceContextPropagator {
    static PROPAGATOR: std::sync::OnceLock<TraceContextPropagator> = std::sync::OnceLock::new();
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

/// The caller's trace context from W3C headers, if it sent a valid one.
pub fn extract(headers: &actix_web::http::header::HeaderMap) -> Context {
    struct Headers<'a>(&'a actix_web::http::header::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    propagator().extract(&Headers(headers))
}

/// The trace context of a NATS message's headers (`traceparent`, as `publish` sets it).
pub fn extract_nats(headers: &async_nats::HeaderMap) -> Context {
    struct Headers<'a>(&'a async_nats::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(|v| v.as_str())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| k.as_ref()).collect()
        }
    }
    propagator().extract(&Headers(headers))
}

/// `span`'s context as W3C headers (`traceparent`, and `tracestate` when there is one).
pub fn context_headers(span: &tracing::Span) -> std::collections::HashMap<String, String> {
    let mut headers = std::collections::HashMap::new();
    propagator().inject_context(&span.context(), &mut headers);
    headers
}

/// Links `span` to the trace context a NATS message carried, if it carried a valid one.
pub fn link_to_nats(span: &tracing::Span, headers: &async_nats::HeaderMap) {
    let context = extract_nats(headers);
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// Writes `span`'s context into NATS headers, so the consumer's spans can link to it.
pub fn inject_nats(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    struct Headers<'a>(&'a mut async_nats::HeaderMap);
    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key, value.as_str());
        }
    }
    propagator().inject_context(&span.context(), &mut Headers(headers));
}

/// `span`'s parent is the caller's context (when it carries one).
pub fn set_parent(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid()
        && let Err(error) = span.set_parent(parent)
    {
        tracing::debug!(error = %error, "the caller's trace context could not be set");
    }
}
