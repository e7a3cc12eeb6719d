//! OpenTelemetry traces: the provider and its OTLP exporter, W3C propagation, and the helpers
//! the layers use to make spans. Off (no endpoint, or `OTEL_SDK_DISABLED=true`), nothing here is
//! built: [`on`] is false, the work spans' callsites are disabled by the log filter, and a request
//! costs what it cost before tracing existed.

mod export;
mod propagation;
mod spans;

pub use propagation::{
    context_headers, extract, extract_nats, inject_nats, link_to_nats, set_parent,
};
pub use spans::{current, failed, ids_of, link_both, note, traced};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};

use crate::config::{SamplerKind, TraceSettings};
use export::{Bounded, Counted};

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
    let Some(endpoint) = settings.export_url() else {
        return Ok(None);
    };
    // The exporter's HTTP client uses rustls with the process-wide provider: ring, as everywhere.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(settings.export_timeout);
    if let Some(headers) = &settings.headers {
        exporter = exporter.with_headers(headers.0.iter().cloned().collect());
    }
    let exporter = exporter
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let capacity = settings.max_queue_size;
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(capacity)
            .with_max_export_batch_size(capacity.min(512))
            .with_scheduled_delay(settings.schedule_delay)
            .build(),
    )
    .build();
    let mut resource = Resource::builder_empty()
        .with_service_name(
            settings
                .service_name
                .clone()
                .unwrap_or_else(|| default_name.to_owned()),
        )
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(attributes) = &settings.resource_attributes {
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
    match settings.sampler {
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
