//! Request ids, and the root span and completion line of each request.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;

use super::otel;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id and start time, put in the request's extensions by [`request_id`].
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub id: HeaderValue,
    pub started: Instant,
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
        started: Instant::now(),
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
            path = %super::clip(request.path()),
            client = %Client(request),
            caller = tracing::field::Empty,
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

/// Who sent the request, for the request log: the peer's address (a load balancer's, behind
/// one), `-` when unknown.
struct Client<'a>(&'a ServiceRequest);

impl std::fmt::Display for Client<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.peer_addr() {
            Some(addr) => write!(f, "{}", addr.ip()),
            None => f.write_str("-"),
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
        path = %super::clip(request.path()),
        client = %Client(request),
        caller = tracing::field::Empty,
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
    );
    otel::set_parent(&span, otel::extract(request.headers()));
    span.set_attribute("http.request.method", method.as_str().to_owned());
    span.set_attribute("url.path", super::clip(request.path()).into_owned());
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
    fn generated_request_ids_are_uuids() {
        let id = new_request_id();
        assert!(uuid::Uuid::parse_str(id.to_str().expect("ascii")).is_ok());
    }
}
