//! OpenTelemetry traces: the provider and its OTLP exporter, W3C propagation, and the helpers
//! the layers use to make spans. Off (no endpoint, or `OTEL_SDK_DISABLED=true`), nothing here is
//! built: [`on`] is false, the work spans' callsites are disabled by the log filter, and a request
//! costs what it cost before tracing existed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::{SamplerKind, TraceSettings};

/// The target of the spans for work that takes time (Redis, PostgreSQL, batches, ingest). They
/// are at `TRACE` level, so the log filter (`info` by default) never lets them into log lines,
/// and without tracing their callsites are disabled: making one costs a load and a branch.
pub const SPANS: &str = "vehicle_state::spans";

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (set once, at start).
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The W3C trace-context propagator (`traceparent`, `tracestate`), named here rather than taken
/// from OpenTelemetry's global, which is a no-op until set.
fn propagator() -> &'static TraceContextPropagator {
    static PROPAGATOR: std::sync::OnceLock<TraceContextPropagator> = std::sync::OnceLock::new();
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

/// The provider behind the spans; shut it down (see [`Tracing::shutdown`]) so the last spans go
/// out before the process exits.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Flushes what is queued (up to the export timeout) and stops the export thread. Blocks:
    /// call it off the runtime's worker threads.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(error = %error, "the trace exporter did not shut down cleanly");
        }
    }
}

/// The provider for `settings`, or `None` when tracing is off. `default_name` is the
/// `service.name` when OTEL_SERVICE_NAME is unset.
pub fn provider(
    settings: &TraceSettings,
    default_name: &'static str,
) -> Result<Option<(Tracing, opentelemetry_sdk::trace::Tracer)>, String> {
    let Some(endpoint) = settings.traces_endpoint() else {
        return Ok(None);
    };
    // The exporter's HTTP client uses rustls with the process-wide provider: ring, as everywhere.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_millis(settings.otel_exporter_otlp_timeout));
    if let Some(headers) = &settings.otel_exporter_otlp_headers {
        exporter = exporter.with_headers(headers.0.iter().cloned().collect());
    }
    let exporter = exporter
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let capacity = settings.otel_bsp_max_queue_size;
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(capacity)
            .with_max_export_batch_size(capacity.min(512))
            .with_scheduled_delay(Duration::from_millis(settings.otel_bsp_schedule_delay))
            .build(),
    )
    .build();
    let mut resource = Resource::builder_empty()
        .with_service_name(
            settings
                .otel_service_name
                .clone()
                .unwrap_or_else(|| default_name.to_owned()),
        )
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(attributes) = &settings.otel_resource_attributes {
        for (key, value) in &attributes.0 {
            resource = resource.with_attribute(KeyValue::new(key.clone(), value.clone()));
        }
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Bounded {
            inner: batch,
            queued,
            capacity,
        })
        .with_sampler(sampler(settings))
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("vehicle-state");
    ON.store(true, Ordering::Relaxed);
    Ok(Some((Tracing { provider }, tracer)))
}

fn sampler(settings: &TraceSettings) -> Sampler {
    let ratio = settings.ratio();
    match settings.otel_traces_sampler {
        SamplerKind::AlwaysOn => Sampler::AlwaysOn,
        SamplerKind::AlwaysOff => Sampler::AlwaysOff,
        SamplerKind::Traceidratio => Sampler::TraceIdRatioBased(ratio),
        SamplerKind::ParentbasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerKind::ParentbasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerKind::ParentbasedTraceidratio => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    }
}

/// The SDK's batch processor behind a bound of our own, so a span that does not fit is counted
/// (`vehicle_state_trace_spans_dropped_total{reason="queue_full"}`): the SDK drops it too, but
/// says so only once. `queued` counts spans handed on and not yet given to the exporter, so the
/// SDK's own queue (as large as `capacity`) never overflows.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(crate::metrics::TRACE_SPANS_DROPPED, "reason" => "queue_full")
                .increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it sends and what it loses: spans a collector refused or
/// never answered for are dropped (`reason="export_failed"`), never retried into memory.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

/// Export failures logged: the first, then one in this many (a collector that is down would
/// otherwise write a line per batch).
const LOG_EVERY_FAILURES: usize = 100;

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        static FAILURES: AtomicUsize = AtomicUsize::new(0);
        let spans = batch.len();
        self.queued.fetch_sub(spans, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                metrics::counter!(crate::metrics::TRACE_SPANS_EXPORTED).increment(spans as u64)
            }
            Err(error) => {
                metrics::counter!(crate::metrics::TRACE_SPANS_DROPPED, "reason" => "export_failed")
                    .increment(spans as u64);
                let failures = FAILURES.fetch_add(1, Ordering::Relaxed);
                if failures.is_multiple_of(LOG_EVERY_FAILURES) {
                    // Written from the export thread, outside any request: it cannot join one.
                    tracing::warn!(error = %error, spans, failures = failures + 1, "spans could not be exported; dropped");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Puts the span counters at zero once the metrics recorder is installed, so that a dashboard
/// sees them before the first drop; nothing when tracing is off.
pub fn register_at_zero() {
    if on() {
        for reason in ["queue_full", "export_failed"] {
            metrics::counter!(crate::metrics::TRACE_SPANS_DROPPED, "reason" => reason).increment(0);
        }
        metrics::counter!(crate::metrics::TRACE_SPANS_EXPORTED).increment(0);
    }
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

/// `span`'s parent is the caller's context (when it carries one).
pub fn set_parent(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid()
        && let Err(error) = span.set_parent(parent)
    {
        tracing::debug!(error = %error, "the caller's trace context could not be set");
    }
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
