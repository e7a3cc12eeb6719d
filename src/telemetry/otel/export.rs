//! The export path: the SDK's batch processor and the OTLP exporter, each wrapped so that a span
//! dropped on the way is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor};

/// The SDK's batch processor behind a bound of our own, so a span that does not fit is counted
/// (`vehicle_state_trace_spans_dropped_total{reason="queue_full"}`): the SDK drops it too, but
/// says so only once. `queued` counts spans handed on and not yet given to the exporter, so the
/// SDK's own queue (as large as `capacity`) never overflows.
#[derive(Debug)]
pub(super) struct Bounded {
    pub(super) inner: BatchSpanProcessor,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) capacity: usize,
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
pub(super) struct Counted<E> {
    pub(super) inner: E,
    pub(super) queued: Arc<AtomicUsize>,
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
