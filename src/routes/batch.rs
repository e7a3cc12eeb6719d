//! `POST /vehicles/states`: many (vehicle, instant) lookups in one request, each answered as the
//! single lookup would answer it.

mod body;

pub use body::{BatchRequest, parse_body};

use std::io::Write;

use actix_web::http::header::{self, CacheControl, CacheDirective, HeaderValue};
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, ResponseError, route, web};
use utoipa::ToSchema;

use crate::context::AppContext;
use crate::domain::{Outcome, StateAnswer, Timestamp, VehicleId};
use crate::error::{ApiError, Problem};
use crate::middleware::quota::{Charged, LastVerdict, refusal};
use crate::quota::Verdict;
use crate::service::CacheStatus;
use body::{is_json, parse, read_body};

pub const PATH: &str = "/vehicles/states";

/// One result per lookup, in the request's order.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Describes the bytes `write_results` writes; never built.
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// What the single lookup would have answered for this item: its status, and its body as
/// `answer` (200) or `problem` (anything else).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct BatchResult {
    /// 200, 404 (no such vehicle, or no state yet), 400 (this item's id or timestamp is not
    /// valid), 503 (the database cannot answer it now, or the replica shed it), 500 (a defect:
    /// its rows could not be read).
    #[schema(example = 200)]
    pub status: u16,
    /// Where the answer came from, as `X-Cache` says for a single lookup; absent for 400 and 503.
    #[schema(example = "HIT", pattern = "^(HIT|MISS|STALE)$")]
    pub cache: Option<String>,
    /// The single lookup's 200 body.
    pub answer: Option<StateAnswer>,
    /// The single lookup's problem body.
    pub problem: Option<Problem>,
}

/// Which state each of many vehicles was in, each at its own instant.
///
/// Each item is answered exactly as `GET /vehicles/{id}/timestamp/{ts}` would answer it, from
/// the same cache entries: a batch warms single lookups and the reverse. One bad item never
/// fails the others; an item the database cannot answer now is a 503 item while cached items
/// still answer. Items missing from the cache cost one Redis round trip and one SQL statement
/// for the whole batch.
#[utoipa::path(
    post,
    path = "/vehicles/states",
    tag = "vehicles",
    request_body(content = BatchRequest, content_type = "application/json", example = json!({
        "lookups": [
            {"id": 3, "timestamp": "2022-09-12T10:00:00Z"},
            {"id": 2, "timestamp": "1662976800"},
            {"id": 999, "timestamp": "2022-09-12 10:00:00+00"}
        ]
    })),
    responses(
        (status = 200, description = "One result per lookup, in order. `Cache-Control: no-store`: the results are the lookups' own, each with its own freshness.", body = BatchResponse, example = json!({
            "results": [
                {"status": 200, "cache": "HIT", "answer": {"vehicle": {"id": 3, "make": "VW", "model": "GOLF"}, "state": "selling", "stateSince": "2022-09-11T23:21:38Z", "until": "2022-09-12T12:41:41Z", "timestamp": "2022-09-12T10:00:00Z"}},
                {"status": 200, "cache": "MISS", "answer": {"vehicle": {"id": 2, "make": "AUDI", "model": "A4"}, "state": "selling", "stateSince": "2022-09-11T17:03:17Z", "until": null, "timestamp": "2022-09-12T10:00:00Z"}},
                {"status": 404, "cache": "MISS", "problem": {"type": "/problems/vehicle-not-found", "title": "Vehicle not found", "status": 404, "detail": "no vehicle has id 999"}}
            ]
        })),
        (status = 400, description = "The body is not JSON of this shape (`/problems/invalid-body`; `detail` names the field), or holds no lookups or more than `BATCH_MAX_LOOKUPS` (`/problems/invalid-batch-size`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than `BATCH_MAX_BODY_BYTES` (`/problems/body-too-large`).", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within `HTTP_CLIENT_REQUEST_TIMEOUT_MS` (`/problems/request-timeout`).", body = Problem, content_type = "application/problem+json"),
        (status = 411, description = "The body was sent chunked (`Transfer-Encoding`); send it with `Content-Length` (`/problems/length-required`). The connection is closed.", body = Problem, content_type = "application/problem+json"),
        super::Refusals,
        (status = 503, description = "With access tokens on (`AUTH_JWKS_URL`): the identity provider's keys have not been fetched yet, so the token cannot be checked (`/problems/keys-unavailable`); retry after `Retry-After` seconds. (A lookup the database cannot answer is a 503 item of a 200.)", body = Problem, content_type = "application/problem+json", headers(
            ("Retry-After" = u32, description = "Seconds to wait before retrying."),
        )),
        (status = 415, description = "The body is not `application/json` (`/problems/unsupported-media-type`).", body = Problem, content_type = "application/problem+json"),
    ),
)]
#[route("/vehicles/states", method = "POST")]
pub async fn vehicle_states(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppContext>,
) -> HttpResponse {
    // Errors are rendered here rather than returned, so the request logs one line, not two.
    answer(&req, body, &state)
        .await
        .unwrap_or_else(|error| error.error_response())
}

async fn answer(
    req: &HttpRequest,
    body: web::Payload,
    state: &AppContext,
) -> Result<HttpResponse, ApiError> {
    if !is_json(req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let limits = state.batch;
    let raw = tokio::time::timeout(
        limits.read_timeout,
        read_body(req, body, limits.max_body_bytes),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout(limits.read_timeout))??;
    let parsed = parse_body(&raw, state.batch.max_lookups)?;
    let count = parsed.len();
    // The request took one token at the door; a batch counts one per lookup.
    let charged = charge_the_rest(req, state, count).await;
    if let Some(verdict) = charged.filter(|v| !v.allowed) {
        let mut refused = state
            .quota
            .as_deref()
            .map(|quota| refusal(quota, &verdict))
            .unwrap_or_else(|| HttpResponse::TooManyRequests().finish());
        refused.extensions_mut().insert(LastVerdict(verdict));
        return Ok(refused);
    }
    let pairs: Vec<(VehicleId, Timestamp)> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().copied())
        .collect();
    let mut served = state.service.vehicle_states(&pairs).await.into_iter();

    let mut out = Vec::with_capacity(64 + count * 192);
    out.extend_from_slice(b"{\"results\":[");
    let mut defect = None;
    for (n, item) in parsed.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let result = match item {
            Err(invalid) => Err(invalid),
            Ok((id, at)) => match served.next() {
                Some(Ok(answer)) => Ok((id, at, answer)),
                Some(Err(error)) => Err(ApiError::from_lookup(error, &state.retry_after)),
                None => Err(ApiError::Internal(anyhow::anyhow!(
                    "no answer for a lookup"
                ))),
            },
        };
        match result {
            Ok((id, at, answer)) => {
                let cache = answer.cache;
                match answer.entry.answer.outcome {
                    Outcome::Found => {
                        write_head(&mut out, 200, Some(cache), b"answer");
                        answer.entry.answer.write_at(&mut out, at);
                        out.push(b'}');
                    }
                    Outcome::UnknownVehicle => {
                        write_problem(&mut out, &ApiError::VehicleNotFound(id), Some(cache))
                    }
                    Outcome::NoStateYet => {
                        write_problem(&mut out, &ApiError::NoStateYet(id, at), Some(cache))
                    }
                }
            }
            Err(error) => {
                if error.is_logged() {
                    defect.get_or_insert_with(|| crate::telemetry::chain(&error).to_string());
                }
                write_problem(&mut out, &error, None);
            }
        }
    }
    out.extend_from_slice(b"]}");
    if let Some(error) = defect {
        // Once per batch, however many items it failed.
        tracing::error!(%error, "batch items failed");
    }
    let mut res = HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .body(out);
    if let Some(verdict) = charged {
        res.extensions_mut().insert(LastVerdict(verdict));
    }
    Ok(res)
}

/// Takes the tokens of a batch's lookups beyond the first from its client's budget, when
/// quotas are on; the verdict, for the answer's `RateLimit` field.
async fn charge_the_rest(req: &HttpRequest, state: &AppContext, count: usize) -> Option<Verdict> {
    let quota = state.quota.as_deref()?;
    let client = req.extensions().get::<Charged>()?.0.clone();
    let rest = u32::try_from(count.saturating_sub(1)).unwrap_or(u32::MAX);
    if rest == 0 {
        return None;
    }
    Some(quota.take(&client, rest).await)
}

/// The problems of `POST /vehicles/states`, by status (for the OpenAPI document).
pub(super) fn problem_examples() -> Vec<(&'static str, u16, Vec<ApiError>)> {
    let mut invalid: Vec<ApiError> =
        parse(br#"{"lookups":[{"id":"3","timestamp":"2022-09-12T10:00:00Z"}]}"#)
            .err()
            .into_iter()
            .collect();
    invalid.push(ApiError::InvalidBatchSize { count: 0, max: 100 });
    vec![
        (PATH, 400, invalid),
        (
            PATH,
            408,
            vec![ApiError::BodyTimeout(std::time::Duration::from_secs(5))],
        ),
        (PATH, 411, vec![ApiError::LengthRequired]),
        (PATH, 413, vec![ApiError::BodyTooLarge { max: 64 * 1024 }]),
        (PATH, 415, vec![ApiError::UnsupportedMediaType]),
        (
            PATH,
            401,
            vec![ApiError::Unauthorized(crate::auth::Refusal::Missing)],
        ),
        (PATH, 429, vec![super::rate_limited()]),
        (
            PATH,
            503,
            vec![ApiError::KeysUnavailable {
                retry_after_secs: 10,
            }],
        ),
    ]
}

fn write_item(
    out: &mut Vec<u8>,
    status: u16,
    cache: Option<CacheStatus>,
    field: &[u8],
    body: &[u8],
) {
    write_head(out, status, cache, field);
    out.extend_from_slice(body);
    out.push(b'}');
}

/// An item up to its `field`'s value: `{"status":…,"cache":…,"field":`.
fn write_head(out: &mut Vec<u8>, status: u16, cache: Option<CacheStatus>, field: &[u8]) {
    // Writing to a Vec cannot fail.
    let _infallible = write!(out, "{{\"status\":{status},");
    if let Some(cache) = cache {
        let _infallible = write!(out, "\"cache\":\"{}\",", cache.as_str());
    }
    out.push(b'"');
    out.extend_from_slice(field);
    out.extend_from_slice(b"\":");
}

fn write_problem(out: &mut Vec<u8>, error: &ApiError, cache: Option<CacheStatus>) {
    let problem = error.problem();
    // A Problem of plain strings and integers always serialises.
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    write_item(out, problem.status, cache, b"problem", &body);
}
