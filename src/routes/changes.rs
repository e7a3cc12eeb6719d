//! `GET /vehicles/{id}/changes` and `GET /changes?ids=…`: live changes as Server-Sent Events.
//!
//! A stream starts with one `snapshot` event per vehicle (what it is now, read from
//! PostgreSQL), then sends each `change` the feed announces for its vehicles. Every event has
//! the feed's sequence as its `id`: a client that reconnects with `Last-Event-ID` (browsers'
//! `EventSource` does so by itself) or `?after=` gets what it missed, replayed from the change
//! stream, and then the live changes, none lost and none twice; one further behind than the
//! stream keeps gets a fresh snapshot that says so.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, ResponseError, route, web};

use crate::context::AppContext;
use crate::domain::change::{Snapshot, SnapshotReason};
use crate::domain::{Timestamp, Vehicle, VehicleId};
use crate::error::{ApiError, Problem};
use crate::metrics::{SSE_ENDED, SSE_EVENTS};
use crate::service::changes::Watch;

pub const PATH_ONE: &str = "/vehicles/{id}/changes";
pub const PATH_MANY: &str = "/changes";

/// How long a resuming stream waits for a replica that has just started to find the change
/// stream, before it is sent a snapshot instead of what it missed.
const ATTACH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a client waits before reconnecting after the stream ends (the `retry:` field, ms).
const RETRY_MS: u32 = 2_000;

/// Live changes of one vehicle, as Server-Sent Events.
///
/// `text/event-stream`: first a `snapshot` event (the vehicle as it is now), then a `change`
/// event for each change committed to it, as soon as `ingest` announces it. Each event's `id`
/// is its place in the change feed: reconnect with `Last-Event-ID` (an `EventSource` does so by
/// itself) or `?after=` to get every change missed, and then the live ones. A comment line
/// (`: keep-alive`) comes every `CHANGES_KEEPALIVE_SECS` while nothing changes. The stream ends
/// with an `end` event whose data says why: the replica is stopping (reconnect: the load
/// balancer sends you to another), or the client read slower than the vehicle changed
/// (reconnect with `Last-Event-ID`: nothing is lost). Needs a replica that follows the change
/// feed (`NATS_URL`).
#[utoipa::path(
    get,
    path = "/vehicles/{id}/changes",
    tag = "changes",
    params(
        ("id" = i32, Path, description = "The vehicle's id: a decimal integer from 1 to 2147483647.", minimum = 1, maximum = 2147483647, example = 3),
        ("after" = Option<u64>, Query, description = "Resume after this event `id` (as `Last-Event-ID` does; the header wins when both are sent)."),
        ("Last-Event-ID" = Option<u64>, Header, description = "The `id` of the last event received: the stream resumes after it."),
    ),
    responses(
        (status = 200, description = "A stream of events, each `event:` `snapshot`, `change` or `end`, with an `id:` and one line of JSON `data:` (a `Snapshot`, an `Announcement`, or `{\"reason\": …}`).", content_type = "text/event-stream", body = String, headers(
            ("Cache-Control" = String, description = "`no-cache`."),
            ("X-Accel-Buffering" = String, description = "`no`: proxies pass each event on at once."),
        ), example = "retry: 2000\n\nid: 41\nevent: snapshot\ndata: {\"vehicleId\":3,\"version\":6,\"vehicle\":{\"id\":3,\"make\":\"VW\",\"model\":\"GOLF\"},\"state\":\"selling\",\"stateSince\":\"2022-09-11T23:21:38Z\",\"reason\":\"start\"}\n\nid: 42\nevent: change\ndata: {\"vehicleId\":3,\"version\":7,\"change\":{\"kind\":\"state_changed\",\"state\":\"sold\",\"timestamp\":\"2022-09-12T12:41:41Z\"},\"vehicle\":{\"id\":3,\"make\":\"VW\",\"model\":\"GOLF\"},\"state\":\"sold\",\"stateSince\":\"2022-09-12T12:41:41Z\"}\n\n"),
        (status = 400, description = "The id is not valid (`/problems/invalid-vehicle-id`), or `after`/`Last-Event-ID` is not an event id (`/problems/invalid-query`).", body = Problem, content_type = "application/problem+json"),
        super::Refusals,
        (status = 503, description = "This replica does not follow the change feed (`/problems/feed-unavailable`), streams as many clients as it may (`/problems/too-many-streams`, with `Retry-After`), or the database cannot answer for the snapshot (`/problems/database-unavailable`).", body = Problem, content_type = "application/problem+json", headers(
            ("Retry-After" = u32, description = "Seconds to wait before retrying."),
        )),
    ),
)]
#[route("/vehicles/{id}/changes", method = "GET")]
pub async fn vehicle_changes(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppContext>,
) -> HttpResponse {
    let stream = async {
        let id = VehicleId::parse(&path.into_inner()).map_err(ApiError::InvalidVehicleId)?;
        let (_, after) = parse_query(req.query_string(), false, 1)?;
        open(&req, vec![id], after, &state).await
    };
    stream.await.unwrap_or_else(|error| error.error_response())
}

/// Live changes of several vehicles, as Server-Sent Events.
///
/// As `GET /vehicles/{id}/changes`, for each vehicle of `ids`: one `snapshot` event each, then
/// their `change` events in the feed's order.
#[utoipa::path(
    get,
    path = "/changes",
    tag = "changes",
    params(
        ("ids" = String, Query, description = "The vehicles' ids, comma-separated: 1 to `CHANGES_MAX_IDS` (100) of them.", example = "1,2,3"),
        ("after" = Option<u64>, Query, description = "Resume after this event `id` (as `Last-Event-ID` does)."),
        ("Last-Event-ID" = Option<u64>, Header, description = "The `id` of the last event received: the stream resumes after it."),
    ),
    responses(
        (status = 200, description = "A stream of events, as for one vehicle.", content_type = "text/event-stream", body = String, headers(
            ("Cache-Control" = String, description = "`no-cache`."),
            ("X-Accel-Buffering" = String, description = "`no`."),
        )),
        (status = 400, description = "`ids` is missing, empty, longer than `CHANGES_MAX_IDS`, or holds something that is not a vehicle id, or `after`/`Last-Event-ID` is not an event id (`/problems/invalid-query`).", body = Problem, content_type = "application/problem+json"),
        super::Refusals,
        (status = 503, description = "As for one vehicle: this replica does not follow the change feed (`/problems/feed-unavailable`), streams as many clients as it may (`/problems/too-many-streams`), or the database cannot answer for the snapshots (`/problems/database-unavailable`).", body = Problem, content_type = "application/problem+json", headers(
            ("Retry-After" = u32, description = "Seconds to wait before retrying."),
        )),
    ),
)]
#[route("/changes", method = "GET")]
pub async fn changes(req: HttpRequest, state: web::Data<AppContext>) -> HttpResponse {
    let stream = async {
        let (ids, after) = parse_query(req.query_string(), true, state.changes.max_ids)?;
        open(&req, ids, after, &state).await
    };
    stream.await.unwrap_or_else(|error| error.error_response())
}

/// `ids` (when `want_ids`) and `after`, from a query string.
pub fn parse_query(
    raw: &str,
    want_ids: bool,
    max_ids: usize,
) -> Result<(Vec<VehicleId>, Option<u64>), ApiError> {
    let [ids, after] = if want_ids {
        super::query::params(raw, ["ids", "after"])?
    } else {
        let [after] = super::query::params(raw, ["after"])?;
        [None, after]
    };
    let after = after.map(|raw| event_id(&raw, "after")).transpose()?;
    if !want_ids {
        return Ok((Vec::new(), after));
    }
    let Some(raw) = ids.filter(|raw| !raw.is_empty()) else {
        return Err(ApiError::InvalidQuery(
            "give the vehicles to watch as `ids`, comma-separated, such as ids=1,2,3".to_owned(),
        ));
    };
    let mut parsed = Vec::new();
    for one in raw.split(',') {
        let id = VehicleId::parse(one.trim()).map_err(|e| {
            ApiError::InvalidQuery(format!("`ids`: {:?} is not a vehicle id: {e}", one))
        })?;
        if !parsed.contains(&id) {
            parsed.push(id);
        }
        if parsed.len() > max_ids {
            return Err(ApiError::InvalidQuery(format!(
                "`ids` holds more than {max_ids} vehicles (CHANGES_MAX_IDS); open several streams"
            )));
        }
    }
    Ok((parsed, after))
}

/// The problems of both routes, by status (for the OpenAPI document).
pub(super) fn problem_examples() -> Vec<(&'static str, u16, Vec<ApiError>)> {
    let mut one_invalid: Vec<ApiError> = VehicleId::parse("abc")
        .err()
        .map(ApiError::InvalidVehicleId)
        .into_iter()
        .collect();
    one_invalid.extend(parse_query("after=x", false, 1).err());
    let many_invalid: Vec<ApiError> = ["ids=1,x", "ids=1&after=x"]
        .into_iter()
        .filter_map(|raw| parse_query(raw, true, 100).err())
        .collect();
    let mut examples = Vec::new();
    for (path, invalid) in [(PATH_ONE, one_invalid), (PATH_MANY, many_invalid)] {
        examples.push((path, 400, invalid));
        examples.push((
            path,
            401,
            vec![ApiError::Unauthorized(crate::auth::Refusal::Missing)],
        ));
        examples.push((path, 429, vec![super::rate_limited()]));
        let too_many = ApiError::TooManyStreams {
            max: 10_000,
            retry_after_secs: 1,
        };
        let mut unavailable = vec![ApiError::FeedUnavailable, too_many];
        unavailable.extend(super::unavailable().into_iter().take(1));
        examples.push((path, 503, unavailable));
    }
    examples
}

fn event_id(raw: &str, name: &str) -> Result<u64, ApiError> {
    raw.trim().parse().map_err(|_| {
        ApiError::InvalidQuery(format!(
            "`{name}` must be the `id` of an event this service sent (a whole number), not {raw:?}"
        ))
    })
}

/// Opens the stream: registers it (so nothing announced from now on is missed), then reads
/// what comes first: a snapshot, or what the client missed since `Last-Event-ID`.
async fn open(
    req: &HttpRequest,
    ids: Vec<VehicleId>,
    after: Option<u64>,
    state: &AppContext,
) -> Result<HttpResponse, ApiError> {
    let streams = &state.changes;
    if !streams.hub.on() {
        return Err(ApiError::FeedUnavailable);
    }
    let after = match req.headers().get("last-event-id") {
        Some(value) => Some(event_id(value.to_str().unwrap_or("?"), "Last-Event-ID")?),
        None => after,
    };
    // A replica just started finds the change stream within moments: a stream opened meanwhile
    // waits for it. One that cannot reach it (NATS down) could send no change: 503, and the
    // client comes back later (to this replica or another).
    if !streams.hub.attached(ATTACH_WAIT).await {
        return Err(ApiError::FeedNotFollowed {
            retry_after_secs: state.retry_after.database,
        });
    }
    let watch = streams
        .hub
        .watch(&ids)
        .map_err(|full| ApiError::TooManyStreams {
            max: full.0,
            retry_after_secs: state.retry_after.overloaded,
        })?;
    let from = watch.from;
    let mut first = VecDeque::new();
    first.push_back(Bytes::from(format!("retry: {RETRY_MS}\n\n")));
    let replayed = match (after, streams.hub.stream()) {
        (None, _) | (Some(_), None) => None,
        (Some(after), Some(stream)) => {
            let subjects = ids
                .iter()
                .map(|id| crate::broker::change_subject(&streams.subject_prefix, id.get()))
                .collect();
            // Replays read the stream into memory: a few at a time per replica, so a storm of
            // reconnections costs NATS and memory a bounded amount.
            let _turn = streams.replays.acquire().await;
            crate::broker::replay(stream, subjects, after, from, streams.replay_max)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(error = %format!("{error:#}"), "cannot replay the change stream; sending a snapshot instead");
                    None
                })
        }
    };
    match replayed {
        Some(events) => {
            for (sequence, payload) in events {
                first.push_back(change_event(sequence, &payload));
            }
        }
        None => {
            let reason = if after.is_some() {
                SnapshotReason::Expired
            } else {
                SnapshotReason::Start
            };
            let now = state.service.db.current(&ids).await.map_err(|error| {
                ApiError::from_lookup(
                    Arc::new(crate::service::LookupError::Db(error)),
                    &state.retry_after,
                )
            })?;
            for vehicle in now {
                first.push_back(snapshot_event(from, vehicle, reason));
            }
        }
    }
    let body = Body {
        first,
        watch,
        after: after.unwrap_or(0).max(from),
        keepalive: tokio::time::interval_at(
            tokio::time::Instant::now() + streams.keepalive,
            streams.keepalive,
        ),
        ended: false,
    };
    let events = futures_util::stream::unfold(body, next);
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header(("X-Accel-Buffering", HeaderValue::from_static("no")))
        .streaming(events))
}

/// A stream's state between events.
struct Body {
    /// What goes before the live changes: `retry:`, then the snapshot or the replay.
    first: VecDeque<Bytes>,
    watch: Watch,
    /// The last event id sent: a live change at or before it was sent already.
    after: u64,
    keepalive: tokio::time::Interval,
    ended: bool,
}

/// The stream's next chunk; `None` once it has ended.
async fn next(mut body: Body) -> Option<(Result<Bytes, Infallible>, Body)> {
    if let Some(bytes) = body.first.pop_front() {
        return Some((Ok(bytes), body));
    }
    if body.ended {
        return None;
    }
    loop {
        if body.watch.slow.load(Ordering::Acquire) {
            body.ended = true;
            metrics::counter!(SSE_ENDED, "reason" => "slow").increment(1);
            return Some((
                Ok(end_event(
                    "too slow: this client read slower than its vehicles changed; reconnect with Last-Event-ID to get what was missed",
                    RETRY_MS,
                )),
                body,
            ));
        }
        if *body.watch.closing.borrow() {
            body.ended = true;
            metrics::counter!(SSE_ENDED, "reason" => "closing").increment(1);
            return Some((
                Ok(end_event(
                    "this replica is stopping; reconnect with Last-Event-ID (the load balancer sends you to another)",
                    500,
                )),
                body,
            ));
        }
        tokio::select! {
            biased;
            _ = body.watch.closing.changed() => continue,
            event = body.watch.events.recv() => match event {
                Some(event) if event.sequence <= body.after => continue,
                Some(event) => {
                    body.after = event.sequence;
                    return Some((Ok(change_event(event.sequence, &event.payload)), body));
                }
                // Every sender gone: the hub let this stream go.
                None => {
                    body.watch.slow.store(true, Ordering::Release);
                    continue;
                }
            },
            _ = body.keepalive.tick() => {
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), body));
            }
        }
    }
}

fn change_event(sequence: u64, payload: &[u8]) -> Bytes {
    metrics::counter!(SSE_EVENTS, "event" => "change").increment(1);
    let mut out = Vec::with_capacity(payload.len() + 40);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(itoa::Buffer::new().format(sequence).as_bytes());
    out.extend_from_slice(b"\nevent: change\ndata: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn snapshot_event(id: u64, now: crate::db::VehicleNow, reason: SnapshotReason) -> Bytes {
    metrics::counter!(SSE_EVENTS, "event" => "snapshot").increment(1);
    let snapshot = Snapshot {
        vehicle_id: now.id,
        version: now.version,
        vehicle: now.vehicle.map(|(make, model)| Vehicle {
            id: now.id,
            make,
            model,
        }),
        state_since: now
            .state
            .as_ref()
            .and_then(|(_, since)| since.and_then(Timestamp::from_unix_micros)),
        state: now.state.map(|(state, _)| state),
        reason,
    };
    // Strings, integers and instants: it always serialises.
    let data = serde_json::to_string(&snapshot).unwrap_or_default();
    Bytes::from(format!("id: {id}\nevent: snapshot\ndata: {data}\n\n"))
}

fn end_event(reason: &str, retry_ms: u32) -> Bytes {
    let data = serde_json::json!({ "reason": reason });
    Bytes::from(format!("event: end\nretry: {retry_ms}\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_after_are_parsed_and_bad_ones_say_why() {
        let (ids, after) = parse_query("ids=3,1,3&after=42", true, 5).expect("valid");
        assert_eq!(
            ids.iter().map(|id| id.get()).collect::<Vec<_>>(),
            [3, 1],
            "in order, once each"
        );
        assert_eq!(after, Some(42));
        assert_eq!(parse_query("", false, 1).ok().map(|q| q.1), Some(None));
        for (raw, says) in [
            ("", "give the vehicles"),
            ("ids=", "give the vehicles"),
            ("ids=1,x", "not a vehicle id"),
            ("ids=1,0", "not a vehicle id"),
            ("ids=1,2,3,4,5,6", "more than 5"),
            ("ids=1&ids=2", "more than once"),
            ("ids=1&after=-1", "whole number"),
        ] {
            let error = parse_query(raw, true, 5).expect_err(raw);
            assert!(error.to_string().contains(says), "{raw}: {error}");
        }
    }

    #[test]
    fn events_are_one_line_of_data_with_their_id() {
        assert_eq!(
            &change_event(42, br#"{"vehicleId":3}"#)[..],
            b"id: 42\nevent: change\ndata: {\"vehicleId\":3}\n\n"
        );
        let end = end_event("a \"quoted\"\nreason", 500);
        let text = std::str::from_utf8(&end).expect("text");
        assert_eq!(text.matches('\n').count(), 4, "{text}");
        assert!(
            text.starts_with("event: end\nretry: 500\ndata: {"),
            "{text}"
        );
    }
}
