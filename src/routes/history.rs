//! `GET /vehicles/{id}/history`: a vehicle's timeline, a page at a time.

use actix_web::{HttpRequest, HttpResponse, ResponseError, route, web};

use super::vehicles::respond;
use crate::context::AppContext;
use crate::domain::history::{Cursor, DEFAULT_LIMIT, History, HistoryQuery, MAX_LIMIT};
use crate::domain::{Timestamp, VehicleId};
use crate::error::{ApiError, Problem};

/// A vehicle's timeline: every state it was in during a window.
///
/// Oldest first: the change in effect at `from` (if any), then each later change up to `to`
/// (both inclusive, both optional). Each change says when it came (`at`) and when the next one
/// did (`until`, null for the current state). Changes with equal timestamps are in the lookup's
/// order, so for every instant T the last change at or before T is what
/// `GET /vehicles/{id}/timestamp/{T}` answers. At most `limit` changes a page; `next` is the
/// cursor of the following page, to pass as `after`. Cached like the lookup.
#[utoipa::path(
    get,
    path = "/vehicles/{id}/history",
    tag = "vehicles",
    params(
        ("id" = i32, Path, description = "The vehicle's id: a decimal integer from 1 to 2147483647, no sign or leading zeros.", minimum = 1, maximum = 2147483647, example = 3),
        ("from" = Option<String>, Query, max_length = 64, description = "Start of the window, inclusive, in any form the lookup's `ts` accepts Type it here as it is: Swagger UI encodes it. In a query string of your own, send `+` as `%2B` (a bare `+` arrives as a space) and a space as `%20`. Unset: from the first change.", example = "2022-09-11T00:00:00Z"),
        ("to" = Option<String>, Query, max_length = 64, description = "End of the window, inclusive, in any form the lookup's `ts` accepts Type it here as it is: Swagger UI encodes it. In a query string of your own, send `+` as `%2B`. Unset: up to now and beyond.", example = "2022-09-12T23:59:59Z"),
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 1000, description = "Most changes in one page (default 100).", example = 100),
        ("after" = Option<String>, Query, max_length = 4096, description = "The `next` of the previous page, as it was given.", example = json!(null)),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a page the client holds: 304 if it is still the page."),
    ),
    responses(
        (status = 200, description = "A page of the vehicle's timeline.", body = History, headers(
            ("X-Cache" = String, description = "`HIT`, `MISS` or `STALE`, as for the lookup."),
            ("Cache-Control" = String, description = "`public, max-age=N`, as for the lookup."),
            ("ETag" = String, description = "A strong entity tag of this page."),
        ), example = json!({
            "vehicle": {"id": 3, "make": "VW", "model": "GOLF"},
            "changes": [
                {"state": "quoted", "at": "2022-09-11T09:11:45Z", "until": "2022-09-11T23:21:38Z"},
                {"state": "selling", "at": "2022-09-11T23:21:38Z", "until": "2022-09-12T12:41:41Z"},
                {"state": "sold", "at": "2022-09-12T12:41:41Z", "until": null}
            ],
            "next": null
        })),
        (status = 304, description = "Not modified: `If-None-Match` named this page's `ETag`.", headers(
            ("ETag" = String, description = "The page's entity tag."),
            ("X-Cache" = String, description = "`HIT`, `MISS` or `STALE`."),
            ("Cache-Control" = String, description = "As for 200."),
        )),
        (status = 400, description = "The id is not valid (`/problems/invalid-vehicle-id`), `from` or `to` is not an instant (`/problems/invalid-timestamp`; `detail` names the parameter), or `from` is after `to`, `limit` is not 1 to 1000, `after` is not in the form of a `next`, or a parameter is given twice (`/problems/invalid-query`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such vehicle (`/problems/vehicle-not-found`). Cached like a 200.", body = Problem, content_type = "application/problem+json"),
        super::Refusals,
        (status = 503, description = "The database cannot answer and the page is not cached (`/problems/database-unavailable`), or the replica shed the request (`/problems/overloaded`), or, with access tokens on, the identity provider's keys have not been fetched yet (`/problems/keys-unavailable`).", body = Problem, content_type = "application/problem+json", headers(
            ("Retry-After" = u32, description = "Seconds to wait before retrying."),
        )),
    ),
)]
#[route("/vehicles/{id}/history", method = "GET", method = "HEAD")]
pub async fn vehicle_history(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppContext>,
) -> HttpResponse {
    // Errors are rendered here rather than returned, so the request logs one line, not two.
    answer(&req, &path, &state)
        .await
        .unwrap_or_else(|error| error.error_response())
}

async fn answer(
    req: &HttpRequest,
    raw_id: &str,
    state: &AppContext,
) -> Result<HttpResponse, ApiError> {
    let id = VehicleId::parse(raw_id).map_err(ApiError::InvalidVehicleId)?;
    let query = parse_query(id, req.query_string())?;
    let served = state
        .service
        .history(query)
        .await
        .map_err(|e| ApiError::from_lookup(e, &state.retry_after))?;
    Ok(respond(req, &served, state, None, |_| {
        ApiError::VehicleNotFound(id)
    }))
}

/// The problems of `GET /vehicles/{id}/history`, by status (for the OpenAPI document).
pub(super) fn problem_examples() -> Vec<(&'static str, u16, Vec<ApiError>)> {
    const PATH: &str = "/vehicles/{id}/history";
    let mut invalid = Vec::new();
    invalid.extend(VehicleId::parse("-3").err().map(ApiError::InvalidVehicleId));
    if let Ok(id) = VehicleId::parse("3") {
        for query in ["from=2022-09-12T10:00:00%2002:00", "limit=5000"] {
            invalid.extend(parse_query(id, query).err());
        }
    }
    let not_found = VehicleId::parse("999")
        .ok()
        .map(ApiError::VehicleNotFound)
        .into_iter()
        .collect();
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

/// `from`, `to`, `limit` and `after`, each at most once; other parameters are ignored.
/// Public (as `routes::parse::history_query`) so that the fuzz targets in `fuzz/` run the very
/// code the handler runs.
pub fn parse_query(id: VehicleId, raw: &str) -> Result<HistoryQuery, ApiError> {
    let [from, to, limit, after] = super::query::params(raw, ["from", "to", "limit", "after"])?;
    let instant = |name: &str, raw: Option<String>| {
        raw.map(|raw| {
            Timestamp::parse_query_value(&raw)
                .map_err(|e| ApiError::InvalidTimestampParameter(name.to_owned(), e))
        })
        .transpose()
    };
    let from = instant("from", from)?;
    let to = instant("to", to)?;
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(ApiError::InvalidQuery(format!(
            "`from` ({from}) is after `to` ({to}); give a window that starts before it ends"
        )));
    }
    let limit = super::query::limit(limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = after
        .map(|raw| Cursor::parse(&raw).map_err(|e| ApiError::InvalidQuery(e.to_string())))
        .transpose()?;
    Ok(HistoryQuery {
        id,
        from,
        to,
        limit,
        after,
    })
}
