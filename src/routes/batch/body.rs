//! The request of `POST /vehicles/states`: its shape, how it is read off the connection, and how
//! it becomes one pair or one 400 per item.

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::domain::{Timestamp, VehicleId};
use crate::error::ApiError;

/// The lookups of one request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to `BATCH_MAX_LOOKUPS` (100 by default) lookups; the same pair may appear more than once.
    #[schema(min_items = 1, max_items = 100)]
    pub lookups: Vec<BatchLookup>,
}

/// One lookup: a vehicle and an instant, as in `GET /vehicles/{id}/timestamp/{ts}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchLookup {
    /// The vehicle's id (1 to 2147483647; another integer is a 400 item).
    #[schema(example = 3)]
    pub id: i64,
    /// The instant, in any form the path's `ts` accepts, `now` included (a string the lookup
    /// cannot read is a 400 item).
    #[schema(example = "2022-09-12T10:00:00Z")]
    pub timestamp: String,
}

/// `application/json`, with or without parameters such as `charset`.
pub(super) fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The body, refused with 413 as soon as it is known to be larger than `max`: from its
/// `Content-Length`, or while it streams in.
pub(super) async fn read_body(
    req: &HttpRequest,
    mut body: web::Payload,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::BodyTooLarge { max });
    }
    let mut raw = Vec::with_capacity(declared.unwrap_or(1024).min(max));
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::InvalidBody(format!("the body could not be read: {e}")))?;
        if raw.len() + chunk.len() > max {
            return Err(ApiError::BodyTooLarge { max });
        }
        raw.extend_from_slice(&chunk);
    }
    Ok(raw)
}

/// One lookup of a body: the pair it asks for, or the 400 of this item alone.
pub type Item = Result<(VehicleId, Timestamp), ApiError>;

/// The lookups a body asks for, each parsed on its own (a bad item is a 400 item, the others go
/// on), or the 400 of the whole body: not JSON of the batch's shape, or not 1 to `max` lookups.
/// Public (as `routes::parse::batch_body`) so that the fuzz targets in `fuzz/` run the very
/// code the handler runs.
pub fn parse_body(raw: &[u8], max: usize) -> Result<Vec<Item>, ApiError> {
    let request = parse(raw)?;
    let count = request.lookups.len();
    if count == 0 || count > max {
        return Err(ApiError::InvalidBatchSize { count, max });
    }
    Ok(request
        .lookups
        .iter()
        .map(|lookup| {
            let id = VehicleId::from_i64(lookup.id).map_err(ApiError::InvalidVehicleId)?;
            let (at, _) =
                Timestamp::parse_or_now(&lookup.timestamp).map_err(ApiError::InvalidTimestamp)?;
            Ok((id, at))
        })
        .collect())
}

/// The request, or a 400 naming the field that is wrong (`lookups[2].id: invalid type ...`).
pub(super) fn parse(raw: &[u8]) -> Result<BatchRequest, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(raw);
    let request: BatchRequest = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // Paths that name nothing are the body's: the body itself (`.`), a key that could not
        // be read (`?`, as in `{1:2}`), an unknown key that is empty (``, as in `{"":3}`).
        let at = match path.as_str() {
            "" | "." | "?" => "the body".to_owned(),
            _ => path,
        };
        ApiError::InvalidBody(format!(
            "{at}: {inner}; expected {{\"lookups\":[{{\"id\":3,\"timestamp\":\"2022-09-12T10:00:00Z\"}}]}}"
        ))
    })?;
    json.end()
        .map_err(|e| ApiError::InvalidBody(format!("the body: {e} after the JSON object")))?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_whose_first_key_is_not_text_is_blamed_on_the_body_not_on_a_question_mark() {
        // Found by fuzz/fuzz_targets/batch_body.rs: the detail began `?: key must be a string`.
        let raw = b"{\xe5\x93\x90\x8deonot json,\"more\xa2;true}";

        let refused = parse_body(raw, 100).err().map(|e| e.problem());

        let problem = refused.expect("refused");
        assert_eq!(problem.status, 400);
        assert!(
            problem.detail.starts_with("the body: key must be a string"),
            "{}",
            problem.detail
        );
    }

    #[test]
    fn a_body_with_an_empty_unknown_key_is_blamed_on_the_body_not_on_nothing() {
        // Found by fuzz/fuzz_targets/batch_body.rs: the detail began `: unknown field ```.
        let found = b"{\"\": 3, \"timestamp\": \"2022-09-12T10:00:00Z\"},\n   80400\"},\n      \
            {looku\xff\xff\":[\xff\xff],\"mor/\":true}";
        for raw in [&b"{\"\": 3}"[..], found] {
            let refused = parse_body(raw, 100).err().map(|e| e.problem());

            let problem = refused.expect("refused");
            assert_eq!(problem.status, 400);
            assert!(
                problem.detail.starts_with("the body: unknown field ``"),
                "{}",
                problem.detail
            );
        }
    }
}
