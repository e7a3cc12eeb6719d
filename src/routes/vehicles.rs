use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError, route, web};

use super::conditional::not_modified;
use crate::context::{AppContext, CacheControlValues};
use crate::domain::{Outcome, StateAnswer, Timestamp, VehicleId};
use crate::error::{ApiError, Problem};
use crate::middleware::compression::{self, Uncompressed};
use crate::service::{CacheStatus, Served};

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Which state a vehicle was in at an instant.
///
/// The answer is the latest state change of the vehicle at or before `ts` (inclusive); `ts` may
/// be `now`, the server's clock. State changes with equal timestamps are ordered by lifecycle
/// (`quoted` < `selling` < `sold`), then by state text. An answer holds from `stateSince` until
/// `until`, and is cached for that whole interval: every instant inside it is answered from the
/// cache. Answers, the two 404s included, are cached for up to `CACHE_TTL_SECS` (60 by default)
/// after they were read: `X-Cache` says whether this one came from the cache, and
/// `Cache-Control: max-age` how many more seconds it may be reused.
#[utoipa::path(
    get,
    path = "/vehicles/{id}/timestamp/{ts}",
    tag = "vehicles",
    params(
        ("id" = i32, Path, description = "The vehicle's id: a decimal integer from 1 to 2147483647, no sign or leading zeros.", minimum = 1, maximum = 2147483647, example = 3),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of an answer the client holds: 304 if it is still the answer."),
        ("ts" = String, Path, max_length = 64, description = "The instant (at most 64 characters). RFC 3339 with an offset (`2022-09-12T10:00:00Z`, `2022-09-12T12:00:00.25+02:00`), PostgreSQL style with a space and an offset of hours, hours:minutes or hhmm (`2022-09-12 10:00:00+00`, `2022-09-12 15:30:00+05:30`), integer Unix epoch seconds (`1662976800`), or `now` for the server's clock. Normalised to UTC and truncated to microseconds. Type it here as it is: Swagger UI encodes it. In a URL of your own, write a space as `%20`; a `+` in the path is taken as it is.", example = "2022-09-12T10:00:00Z"),
    ),
    responses(
        (status = 200, description = "The vehicle and its state at `ts`.", body = StateAnswer, headers(
            ("X-Cache" = String, description = "`HIT` when served from the cache, `MISS` when read from the database, `STALE` when older than the TTL and served because the database cannot answer (only with `STALE_IF_ERROR_SECS` set)."),
            ("Cache-Control" = String, description = "`public, max-age=N`: N is how many more seconds this answer may be reused (0 on a stale answer); `no-cache` for `now`, whose answer a cache must revalidate each time (with `If-None-Match`). With `STALE_IF_ERROR_SECS` set, also `stale-if-error=S` (RFC 5861)."),
            ("Age" = u64, description = "On a `STALE` answer only: seconds since it was read from the database."),
            ("ETag" = String, description = "The entity tag of this answer: it names the answer, not the instant, so it is the same for every instant the answer holds for. Strong for an instant, weak (`W/\"…\"`) for `now`, whose `timestamp` moves with the clock. Send it back in `If-None-Match` to get 304 while the answer is unchanged (a client polling `now` gets 304 until the vehicle's state changes)."),
        )),
        (status = 304, description = "Not modified: `If-None-Match` named this answer's `ETag`. No body; `ETag`, `Cache-Control` and `X-Cache` as for 200.", headers(
            ("ETag" = String, description = "The answer's entity tag."),
            ("X-Cache" = String, description = "`HIT`, `MISS` or `STALE`."),
            ("Cache-Control" = String, description = "As for 200."),
        )),
        (status = 400, description = "The id or the timestamp is not valid (`type` `/problems/invalid-vehicle-id` or `/problems/invalid-timestamp`); `detail` says why and lists the accepted forms.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such vehicle (`type` `/problems/vehicle-not-found`), or the vehicle had no state yet at `ts` (`type` `/problems/no-state-at-timestamp`). Cached like a 200.", body = Problem, content_type = "application/problem+json", headers(
            ("X-Cache" = String, description = "`HIT`, `MISS` or `STALE`."),
            ("Cache-Control" = String, description = "`public, max-age=N`, as for 200."),
            ("Age" = u64, description = "On a `STALE` answer only: seconds since it was read from the database."),
        )),
        super::Refusals,
        (status = 503, description = "The database cannot be reached and the answer is not cached (`type` `/problems/database-unavailable`), or the replica is at `LOOKUP_CONCURRENCY_LIMIT` and shed the request (`/problems/overloaded`), or, with access tokens on, the identity provider's keys have not been fetched yet (`/problems/keys-unavailable`); retry after `Retry-After` seconds.", body = Problem, content_type = "application/problem+json", headers(
            ("Retry-After" = u32, description = "Seconds to wait before retrying."),
        )),
    ),
)]
#[route("/vehicles/{id}/timestamp/{ts}", method = "GET", method = "HEAD")]
pub async fn vehicle_state_at(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppContext>,
) -> HttpResponse {
    let (raw_id, raw_ts) = path.into_inner();
    // Errors are rendered here rather than returned, so the request logs one line, not two.
    answer(&req, &raw_id, &raw_ts, &state)
        .await
        .unwrap_or_else(|error| error.error_response())
}

async fn answer(
    req: &HttpRequest,
    raw_id: &str,
    raw_ts: &str,
    state: &AppContext,
) -> Result<HttpResponse, ApiError> {
    let id = VehicleId::parse(raw_id).map_err(ApiError::InvalidVehicleId)?;
    let (at, now) = Timestamp::parse_or_now(raw_ts).map_err(ApiError::InvalidTimestamp)?;
    let served = state
        .service
        .vehicle_state(id, at)
        .await
        .map_err(|e| ApiError::from_lookup(e, &state.retry_after))?;
    Ok(respond(
        req,
        &served,
        state,
        Some((at, now)),
        |outcome| match outcome {
            Outcome::NoStateYet => ApiError::NoStateYet(id, at),
            Outcome::Found | Outcome::UnknownVehicle => ApiError::VehicleNotFound(id),
        },
    ))
}

/// The problems of `GET /vehicles/{id}/timestamp/{ts}`, by status (for the OpenAPI document).
pub(super) fn problem_examples() -> Vec<(&'static str, u16, Vec<ApiError>)> {
    let id = VehicleId::parse("3").ok();
    let at = Timestamp::parse("2022-09-10T10:00:00Z").ok();
    let mut invalid = Vec::new();
    invalid.extend(
        VehicleId::parse("abc")
            .err()
            .map(ApiError::InvalidVehicleId),
    );
    invalid.extend(
        Timestamp::parse("2022-09-12T10:00:00")
            .err()
            .map(ApiError::InvalidTimestamp),
    );
    let mut not_found = Vec::new();
    not_found.extend(VehicleId::parse("999").ok().map(ApiError::VehicleNotFound));
    not_found.extend(id.zip(at).map(|(id, at)| ApiError::NoStateYet(id, at)));
    vec![
        (PATH, 400, invalid),
        (PATH, 404, not_found),
        (
            PATH,
            401,
            vec![ApiError::Unauthorized(crate::auth::Refusal::Missing)],
        ),
        (PATH, 429, vec![super::rate_limited()]),
        (PATH, 503, super::unavailable()),
    ]
}

const PATH: &str = "/vehicles/{id}/timestamp/{ts}";

/// A cached answer as a response: the body as cached for a found one, with the instant asked
/// (`at`, for a lookup; `true` when it was `now`) added, and its `ETag` (or 304 when
/// `If-None-Match` names it), `problem`'s for the others; the cache headers either way.
///
/// A lookup's tag names the answer, not the instant: the cached segment's body. For a path
/// with an instant, that and the path make the body, so the tag is strong; for `now`, whose
/// `timestamp` moves with the clock, it is weak (the same answer while the state holds), so a
/// client polling `now` with `If-None-Match` gets 304 until the vehicle changes.
pub(super) fn respond(
    req: &HttpRequest,
    served: &Served,
    state: &AppContext,
    at: Option<(Timestamp, bool)>,
    problem: impl FnOnce(Outcome) -> ApiError,
) -> HttpResponse {
    let answer = &served.entry.answer;
    let cache_control = &state.cache_control;
    let body = answer.body_at(at.map(|(at, _)| at));
    let now = at.is_some_and(|(_, now)| now);
    let etag = if now {
        &served.entry.weak_etag
    } else {
        &served.entry.etag
    };
    if let Some(etag) = etag
        && not_modified(req, etag, || {
            compression::selected(req, body.len(), state.compress_at)
        })
    {
        let mut builder = HttpResponse::NotModified();
        builder.insert_header((header::ETAG, etag.clone()));
        // So compression gives the 304 the tag its 200 would have had.
        builder.extensions_mut().insert(Uncompressed(body.len()));
        cache_headers(&mut builder, served, cache_control, now);
        return builder.finish();
    }
    let (mut builder, body) = match answer.outcome {
        Outcome::Found => {
            let mut builder = HttpResponse::Ok();
            builder.insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
            if let Some(etag) = etag {
                builder.insert_header((header::ETAG, etag.clone()));
            }
            // The bytes as cached and the instant: a hit does no JSON work.
            (builder, body)
        }
        outcome @ (Outcome::UnknownVehicle | Outcome::NoStateYet) => {
            let (builder, body) = problem(outcome).response_builder();
            (builder, body.into())
        }
    };
    cache_headers(&mut builder, served, cache_control, now);
    builder.body(body)
}

/// `X-Cache`; `Cache-Control` with what is left of the TTL (and, when the service keeps stale
/// answers, the same `stale-if-error` window for caches downstream); `Age` on a stale answer.
/// An answer at `now` is `no-cache` instead: what `now` names moves with the clock, and the
/// answer may end (`until`) before its TTL does, so a browser or CDN must ask again each time,
/// with the weak tag, and gets a 304 while the answer holds.
fn cache_headers(
    builder: &mut HttpResponseBuilder,
    served: &Served,
    cache_control: &CacheControlValues,
    now: bool,
) {
    builder.insert_header((X_CACHE, HeaderValue::from_static(served.cache.as_str())));
    builder.insert_header((
        header::CACHE_CONTROL,
        if now {
            HeaderValue::from_static("no-cache")
        } else {
            cache_control.get(served.fresh_for.as_secs())
        },
    ));
    if served.cache == CacheStatus::Stale {
        builder.insert_header((header::AGE, served.age_secs()));
    }
}
