//! The problem catalogue: every `type` URI this service sends, with its title, and the body
//! that carries one.

use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem body. Its examples are per response, each status with its own problems
/// (see `openapi::add_problem_examples`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Identifies the kind of problem; stable, so clients can match on it.
    #[serde(rename = "type")]
    pub kind: ProblemType,
    /// A short summary of the kind of problem; the same for every occurrence.
    pub title: &'static str,
    /// The HTTP status code.
    #[schema(example = 404)]
    pub status: u16,
    /// What went wrong this time and, for 4xx, how to fix it.
    pub detail: String,
}

/// Every problem `type` this service sends. Relative URIs, resolved against the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
pub enum ProblemType {
    #[serde(rename = "/problems/invalid-vehicle-id")]
    InvalidVehicleId,
    #[serde(rename = "/problems/invalid-timestamp")]
    InvalidTimestamp,
    #[serde(rename = "/problems/vehicle-not-found")]
    VehicleNotFound,
    #[serde(rename = "/problems/no-state-at-timestamp")]
    NoStateAtTimestamp,
    #[serde(rename = "/problems/route-not-found")]
    RouteNotFound,
    #[serde(rename = "/problems/method-not-allowed")]
    MethodNotAllowed,
    #[serde(rename = "/problems/database-unavailable")]
    DatabaseUnavailable,
    #[serde(rename = "/problems/overloaded")]
    Overloaded,
    #[serde(rename = "/problems/internal-error")]
    InternalError,
    #[serde(rename = "/problems/invalid-body")]
    InvalidBody,
    #[serde(rename = "/problems/invalid-batch-size")]
    InvalidBatchSize,
    #[serde(rename = "/problems/body-too-large")]
    BodyTooLarge,
    #[serde(rename = "/problems/unsupported-media-type")]
    UnsupportedMediaType,
    #[serde(rename = "/problems/invalid-query")]
    InvalidQuery,
    #[serde(rename = "/problems/request-timeout")]
    RequestTimeout,
    #[serde(rename = "/problems/length-required")]
    LengthRequired,
    #[serde(rename = "/problems/rate-limited")]
    RateLimited,
    #[serde(rename = "/problems/unauthorized")]
    Unauthorized,
    #[serde(rename = "/problems/cors-refused")]
    CorsRefused,
    #[serde(rename = "/problems/keys-unavailable")]
    KeysUnavailable,
    #[serde(rename = "/problems/feed-unavailable")]
    FeedUnavailable,
    #[serde(rename = "/problems/too-many-streams")]
    TooManyStreams,
}

impl ProblemType {
    /// The `title`: the same for every occurrence of the type.
    pub fn title(self) -> &'static str {
        match self {
            ProblemType::InvalidVehicleId => "Invalid vehicle id",
            ProblemType::InvalidTimestamp => "Invalid timestamp",
            ProblemType::VehicleNotFound => "Vehicle not found",
            ProblemType::NoStateAtTimestamp => "No state at this timestamp",
            ProblemType::RouteNotFound => "Route not found",
            ProblemType::MethodNotAllowed => "Method not allowed",
            ProblemType::DatabaseUnavailable => "Database unavailable",
            ProblemType::Overloaded => "Overloaded",
            ProblemType::InternalError => "Internal server error",
            ProblemType::InvalidBody => "Invalid request body",
            ProblemType::InvalidBatchSize => "Invalid batch size",
            ProblemType::BodyTooLarge => "Request body too large",
            ProblemType::UnsupportedMediaType => "Unsupported media type",
            ProblemType::InvalidQuery => "Invalid query",
            ProblemType::RequestTimeout => "Request timeout",
            ProblemType::LengthRequired => "Length required",
            ProblemType::RateLimited => "Too many requests",
            ProblemType::Unauthorized => "Unauthorized",
            ProblemType::CorsRefused => "Cross-origin request refused",
            ProblemType::KeysUnavailable => "Identity provider's keys unavailable",
            ProblemType::FeedUnavailable => "Change feed unavailable",
            ProblemType::TooManyStreams => "Too many streams",
        }
    }
}
