//! The series of the span exporter (only while tracing is on).

/// Spans that never reached the collector, by `reason`: `queue_full` (finished while
/// OTEL_BSP_MAX_QUEUE_SIZE spans were waiting) or `export_failed` (refused, unreachable, timed out).
pub const TRACE_SPANS_DROPPED: &str = "vehicle_state_trace_spans_dropped_total";
/// Spans the collector accepted.
pub const TRACE_SPANS_EXPORTED: &str = "vehicle_state_trace_spans_exported_total";
