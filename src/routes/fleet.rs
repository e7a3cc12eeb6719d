//! `GET /fleet/states`: how many vehicles were in each state at an instant; and
//! `GET /fleet/states/series`: the same at each step of a window; and `GET /fleet/vehicles`:
//! which vehicles were in a state at an instant, a page at a time.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, route, web};

use super::vehicles::X_CACHE;
use crate::context::AppContext;
use crate::domain::Timestamp;
use crate::domain::fleet::{
    DEFAULT_PAGE, Every, FleetCounts, FleetSeries, FleetVehicles, ListCursor, MAX_PAGE,
    MAX_STATE_LEN, SeriesQuery,
};
use crate::error::{ApiError, Problem};
use crate::service::CacheStatus;
use crate::service::fleet::{FleetInstant, PageKey};

const PATH: &str = "/fleet/states";

/// How many vehicles were in each state at an instant.
///
/// Every vehicle with a state change at or before `at` counts once, in the state of its latest
/// one (changes with equal timestamps in the lookup's order): exactly what
/// `GET /vehicles/{id}/timestamp/{at}` answers for each of them, summed, including vehicles
/// whose registration has not arrived. `quoted`, `selling` and `sold` are always listed (0 where
/// none); any other state text stored follows by name. A few index range scans whatever the
/// fleet's size; cached for `CACHE_TTL_SECS` from the read, like a lookup.
#[utoipa::path(
    get,
    path = "/fleet/states",
    tag = "fleet",
    params(
        ("at" = Option<String>, Query, max_length = 64, description = "The instant, in any form the lookup's `ts` accepts, or `now` (the default): the server's clock when the counts are read. Counts at `now` are kept like any other for `CACHE_TTL_SECS`, so they may be that old; `at` in the answer says when they were counted. Type it here as it is: Swagger UI encodes it. In a query string of your own, send `+` as `%2B` (a bare `+` arrives as a space) and a space as `%20`.", example = "2022-09-12T10:00:00Z"),
    ),
    responses(
        (status = 200, description = "The counts at the instant.", body = FleetCounts, headers(
            ("X-Cache" = String, description = "`HIT` (this replica's memory) or `MISS` (read from PostgreSQL for this request)."),
            ("Cache-Control" = String, description = "`public, max-age=N`: N is how many more seconds these counts may be reused."),
        ), example = json!({
            "at": "2022-09-12T10:00:00Z",
            "states": {"quoted": 1, "selling": 1, "sold": 1},
            "total": 3
        })),
        (status = 400, description = "`at` is not an instant (`/problems/invalid-timestamp`), or is given twice (`/problems/invalid-query`).", body = Problem, content_type = "application/problem+json"),
        super::Refusals,
        (status = 503, description = "The database cannot answer and the counts are not cached (`/problems/database-unavailable`), or the replica shed the request (`/problems/overloaded`), or, with access tokens on, the identity provider's keys have not been fetched yet (`/problems/keys-unavailable`).", body = Problem, content_type = "application/problem+json", headers(
            ("Retry-After" = u32, description = "Seconds to wait before retrying."),
        )),
    ),
)]
#[route("/fleet/states", method = "GET", method = "HEAD")]
pub async fn fleet_states(req: HttpRequest, state: web::Data<AppContext>) -> HttpResponse {
    // Errors are rendered here rather than returned, so the request logs one line, not two.
    answer(&req, &state)
        .await
        .unwrap_or_else(|error| error.error_response())
}

async fn answer(req: &HttpRequest, state: &AppContext) -> Result<HttpResponse, ApiError> {
    let at = parse_query(req.query_string())?;
    let served = state
        .service
        .fleet
        .counts(at)
        .await
        .map_err(|e| ApiError::from_lookup(e, &state.retry_after))?;
    json(&served.read.value, served.cache, served.fresh_for, state)
}

/// `at`, at most once (`now` when absent); other parameters are ignored.
pub fn parse_query(raw: &str) -> Result<FleetInstant, ApiError> {
    let [at] = super::query::params(raw, ["at"])?;
    match at.as_deref() {
        None | Some("now") => Ok(FleetInstant::Now),
        Some(raw) => Timestamp::parse_query_value(raw)
            .map(FleetInstant::At)
            .map_err(|e| ApiError::InvalidTimestampParameter("at".to_owned(), e)),
    }
}

const SERIES_PATH: &str = "/fleet/states/series";

/// How many vehicles were in each state at each step of a window: a series for a chart.
///
/// The counts of `GET /fleet/states` at `from`, `from + every`, `from + 2 × every`, ... up to
/// `to` (inclusive), oldest first. Points already counted (by this series or another, or a single
/// count at that instant) come from memory; the rest are read in one statement. At most
/// `FLEET_SERIES_MAX_POINTS` points (1000 by default).
#[utoipa::path(
    get,
    path = "/fleet/states/series",
    tag = "fleet",
    params(
        ("from" = String, Query, max_length = 64, description = "The first instant, in any form the lookup's `ts` accepts, or `now`. Type it here as it is: Swagger UI encodes it; in a query string of your own, send `+` as `%2B`.", example = "2022-09-10T00:00:00Z"),
        ("to" = Option<String>, Query, max_length = 64, description = "The end of the window, inclusive, in the same forms (default `now`, the server's clock). The last point is the latest step at or before it. Type it here as it is: Swagger UI encodes it; in a query string of your own, send `+` as `%2B`.", example = "2022-09-13T00:00:00Z"),
        ("every" = String, Query, max_length = 64, description = "The step: an ISO 8601 duration of one unit from a minute to a month (`PT15M`, `PT1H`, `P1D`, `P1W`, at most 31 days; `P1M` is a calendar month: the same day of the next month, or its last day), or one of `minute`, `hour`, `day`, `week`, `month`.", example = "P1D"),
    ),
    responses(
        (status = 200, description = "The counts at each step.", body = FleetSeries, headers(
            ("X-Cache" = String, description = "`HIT` when every point came from this replica's memory, `MISS` when any was read from PostgreSQL."),
            ("Cache-Control" = String, description = "`public, max-age=N`: N is how many more seconds the oldest point may be reused."),
        ), example = json!({
            "from": "2022-09-10T00:00:00Z",
            "to": "2022-09-13T00:00:00Z",
            "every": "P1D",
            "points": [
                {"at": "2022-09-10T00:00:00Z", "states": {"quoted": 0, "selling": 0, "sold": 0}, "total": 0},
                {"at": "2022-09-11T00:00:00Z", "states": {"quoted": 2, "selling": 0, "sold": 0}, "total": 2},
                {"at": "2022-09-12T00:00:00Z", "states": {"quoted": 1, "selling": 2, "sold": 0}, "total": 3},
                {"at": "2022-09-13T00:00:00Z", "states": {"quoted": 1, "selling": 1, "sold": 1}, "total": 3}
            ]
        })),
        (status = 400, description = "`from` or `to` is not an instant (`/problems/invalid-timestamp`; `detail` names it), or `from` or `every` is missing, `every` is not a step from a minute to a month, `from` is after `to`, the series has more than `FLEET_SERIES_MAX_POINTS` points, or a parameter is given twice (`/problems/invalid-query`).", body = Problem, content_type = "application/problem+json"),
        super::Refusals,
        (status = 503, description = "The database cannot answer and some points are not cached (`/problems/database-unavailable`), or the replica shed the request (`/problems/overloaded`), or, with access tokens on, the identity provider's keys have not been fetched yet (`/problems/keys-unavailable`).", body = Problem, content_type = "application/problem+json", headers(
            ("Retry-After" = u32, description = "Seconds to wait before retrying."),
        )),
    ),
)]
#[route("/fleet/states/series", method = "GET", method = "HEAD")]
pub async fn fleet_series(req: HttpRequest, state: web::Data<AppContext>) -> HttpResponse {
    series_answer(&req, &state)
        .await
        .unwrap_or_else(|error| error.error_response())
}

async fn series_answer(req: &HttpRequest, state: &AppContext) -> Result<HttpResponse, ApiError> {
    let query = parse_series_query(req.query_string())?;
    let instants = query
        .instants(state.fleet_series_max_points)
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
    let (reads, cache, fresh_for) = state
        .service
        .fleet
        .series(&instants)
        .await
        .map_err(|e| ApiError::from_lookup(e, &state.retry_after))?;
    let series = FleetSeries {
        from: query.from,
        to: query.to,
        every: query.every,
        points: reads.iter().map(|read| read.value.clone()).collect(),
    };
    json(&series, cache, fresh_for, state)
}

/// `from`, `to` and `every`, each at most once (`to` is `now` when absent); other parameters
/// are ignored.
pub fn parse_series_query(raw: &str) -> Result<SeriesQuery, ApiError> {
    let [from, to, every] = super::query::params(raw, ["from", "to", "every"])?;
    let now = Timestamp::now();
    let instant = |name: &str, raw: &str| match raw {
        "now" => Ok(now),
        raw => Timestamp::parse_query_value(raw)
            .map_err(|e| ApiError::InvalidTimestampParameter(name.to_owned(), e)),
    };
    let from = from.ok_or_else(|| {
        ApiError::InvalidQuery("`from` is required: the first instant of the series".to_owned())
    })?;
    let from = instant("from", &from)?;
    let to = to.map_or(Ok(now), |raw| instant("to", &raw))?;
    let every = every.ok_or_else(|| {
        ApiError::InvalidQuery("`every` is required: the step, such as P1D or PT1H".to_owned())
    })?;
    let every = Every::parse(&every).map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
    if from > to {
        return Err(ApiError::InvalidQuery(format!(
            "`from` ({from}) is after `to` ({to}); give a window that starts before it ends"
        )));
    }
    Ok(SeriesQuery { from, to, every })
}

const VEHICLES_PATH: &str = "/fleet/vehicles";

/// Which vehicles were in a state at an instant, in id order, a page at a time.
///
/// The vehicles `GET /fleet/states` counts in `state` at `at`, each with make and model (null
/// while its registration has not arrived) and since when it was in the state (the lookup's
/// `stateSince`). Pages follow each other by `next`, an opaque cursor to pass as `after`; it
/// carries the instant, so the pages of a listing at `now` list one instant. A page costs a few
/// index range scans however deep it is. Cached for `CACHE_TTL_SECS` from the read, like counts.
#[utoipa::path(
    get,
    path = "/fleet/vehicles",
    tag = "fleet",
    params(
        ("state" = String, Query, max_length = 256, description = "The state: `quoted`, `selling`, `sold`, or any other state text stored (a state no vehicle was in lists none).", example = "selling"),
        ("at" = Option<String>, Query, max_length = 64, description = "The instant, in any form the lookup's `ts` accepts, or `now` (the default): the server's clock when the first page is read. With `after`, the cursor's instant is used; an `at` that names another instant is a 400. Type it here as it is: Swagger UI encodes it; in a query string of your own, send `+` as `%2B`.", example = "2022-09-12T10:00:00Z"),
        ("limit" = Option<u16>, Query, minimum = 1, maximum = 1000, description = "The most vehicles on the page (default 100).", example = 100),
        ("after" = Option<String>, Query, max_length = 86, description = "The `next` of the previous page, as it was given."),
    ),
    responses(
        (status = 200, description = "A page of the vehicles in the state at the instant.", body = FleetVehicles, headers(
            ("X-Cache" = String, description = "`HIT` (this replica's memory) or `MISS` (read from PostgreSQL for this request)."),
            ("Cache-Control" = String, description = "`public, max-age=N`: N is how many more seconds this page may be reused."),
        ), example = json!({
            "state": "selling",
            "at": "2022-09-12T10:00:00Z",
            "vehicles": [
                {"id": 2, "make": "AUDI", "model": "A4", "since": "2022-09-11T17:03:17Z"},
                {"id": 3, "make": "VW", "model": "GOLF", "since": "2022-09-11T23:21:38Z"}
            ],
            "next": null
        })),
        (status = 400, description = "`state` is missing, empty or longer than 256 bytes, `limit` is not from 1 to 1000, `after` is not a cursor this service wrote or names another instant than `at`, or a parameter is given twice (`/problems/invalid-query`); `at` is not an instant (`/problems/invalid-timestamp`).", body = Problem, content_type = "application/problem+json"),
        super::Refusals,
        (status = 503, description = "The database cannot answer and the page is not cached (`/problems/database-unavailable`), or the replica shed the request (`/problems/overloaded`), or, with access tokens on, the identity provider's keys have not been fetched yet (`/problems/keys-unavailable`).", body = Problem, content_type = "application/problem+json", headers(
            ("Retry-After" = u32, description = "Seconds to wait before retrying."),
        )),
    ),
)]
#[route("/fleet/vehicles", method = "GET", method = "HEAD")]
pub async fn fleet_vehicles(req: HttpRequest, state: web::Data<AppContext>) -> HttpResponse {
    vehicles_answer(&req, &state)
        .await
        .unwrap_or_else(|error| error.error_response())
}

async fn vehicles_answer(req: &HttpRequest, state: &AppContext) -> Result<HttpResponse, ApiError> {
    let key = parse_list_query(req.query_string())?;
    let served = state
        .service
        .fleet
        .vehicles(key)
        .await
        .map_err(|e| ApiError::from_lookup(e, &state.retry_after))?;
    json(&served.read.value, served.cache, served.fresh_for, state)
}

/// `state`, `at`, `limit` and `after`, each at most once; other parameters are ignored.
pub fn parse_list_query(raw: &str) -> Result<PageKey, ApiError> {
    let [state, at, limit, after] = super::query::params(raw, ["state", "at", "limit", "after"])?;
    let state = state.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::InvalidQuery(
            "`state` is required: the state to list, such as quoted, selling or sold".to_owned(),
        )
    })?;
    if state.contains('\0') {
        // PostgreSQL's text cannot hold it: no stored state does.
        return Err(ApiError::InvalidQuery(
            "`state` contains a NUL character, which no state can".to_owned(),
        ));
    }
    if state.len() > MAX_STATE_LEN {
        return Err(ApiError::InvalidQuery(format!(
            "`state` is {} bytes long; a state is at most {MAX_STATE_LEN}",
            state.len()
        )));
    }
    let limit = super::query::limit(limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let at = match at.as_deref() {
        None | Some("now") => None,
        Some(raw) => Some(
            Timestamp::parse_query_value(raw)
                .map_err(|e| ApiError::InvalidTimestampParameter("at".to_owned(), e))?,
        ),
    };
    let (at, after) = match after {
        None => (at.map_or(FleetInstant::Now, FleetInstant::At), None),
        Some(raw) => {
            let cursor =
                ListCursor::parse(&raw).map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
            if at.is_some_and(|at| at != cursor.at) {
                return Err(ApiError::InvalidQuery(format!(
                    "`after` continues the listing at {}, not at `at`; pass the `at` of the first page or none",
                    cursor.at
                )));
            }
            (FleetInstant::At(cursor.at), Some(cursor.after))
        }
    };
    Ok(PageKey {
        state,
        at,
        after,
        limit,
    })
}

/// A JSON body with the cache headers of counts.
fn json(
    body: &impl serde::Serialize,
    cache: CacheStatus,
    fresh_for: std::time::Duration,
    state: &AppContext,
) -> Result<HttpResponse, ApiError> {
    let body = serde_json::to_vec(body).map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .insert_header((X_CACHE, HeaderValue::from_static(cache.as_str())))
        .insert_header((
            header::CACHE_CONTROL,
            state.cache_control.get(fresh_for.as_secs()),
        ))
        .body(body))
}

/// The problems of `GET /fleet/states`, by status (for the OpenAPI document).
pub(super) fn problem_examples() -> Vec<(&'static str, u16, Vec<ApiError>)> {
    let invalid = [
        "at=2022-09-12T10:00:00%2002:00",
        "at=yesterday",
        "at=now&at=now",
    ]
    .into_iter()
    .filter_map(|query| parse_query(query).err())
    .collect();
    let series_invalid = [
        "from=2022-09-10T00:00:00Z&every=P1Y",
        "from=2022-09-12T00:00:00Z&to=2022-09-10T00:00:00Z&every=P1D",
        "every=P1D",
        "from=yesterday&every=P1D",
    ]
    .into_iter()
    .filter_map(|query| parse_series_query(query).err())
    .chain(
        parse_series_query("from=2020-01-01T00:00:00Z&to=2022-01-01T00:00:00Z&every=PT1H")
            .ok()
            .and_then(|q| q.instants(1000).err())
            .map(|e| ApiError::InvalidQuery(e.to_string())),
    )
    .collect();
    let list_invalid = [
        "at=2022-09-12T10:00:00Z",
        "state=selling&limit=0",
        "state=selling&after=zz",
        "state=selling&state=sold",
        "state=selling&at=yesterday",
    ]
    .into_iter()
    .filter_map(|query| parse_list_query(query).err())
    .collect();
    let mut examples = Vec::new();
    for (path, invalid) in [
        (PATH, invalid),
        (SERIES_PATH, series_invalid),
        (VEHICLES_PATH, list_invalid),
    ] {
        examples.extend([
            (path, 400, invalid),
            (
                path,
                401,
                vec![ApiError::Unauthorized(crate::auth::Refusal::Missing)],
            ),
            (path, 429, vec![super::rate_limited()]),
            (path, 503, super::unavailable()),
        ]);
    }
    examples
}
