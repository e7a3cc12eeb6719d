//! The change feed's series: announcements `ingest` made, and how fast replicas carried them out.

/// Announcements by outcome: `stored`, `duplicate` (the stream had it already) or `failed` (its
/// event is delivered again).
pub const FEED_ANNOUNCEMENTS: &str = "vehicle_state_ingest_announcements_total";
/// From an announcement stored in the change stream to this replica dropping what it held.
pub const FEED_LAG: &str = "vehicle_state_feed_lag_seconds";
/// 1 while this replica follows the change feed, 0 while it cannot (NATS unreachable, the
/// stream missing); absent when it is not configured to.
pub const FEED_FOLLOWING: &str = "vehicle_state_feed_following";
/// Vehicles dropped on the feed's word, by tier (`memory`: this replica's; `redis`: carried
/// out by this replica for every replica).
pub const FEED_INVALIDATIONS: &str = "vehicle_state_feed_invalidations_total";

/// Streams of changes open on this replica.
pub const SSE_STREAMS: &str = "vehicle_state_change_streams";
/// Events sent on streams of changes, by event (`snapshot`, `change`).
pub const SSE_EVENTS: &str = "vehicle_state_change_stream_events_total";
/// Streams ended by the replica, by reason (`slow`: the client read slower than its vehicles
/// changed; `closing`: the replica stopped).
pub const SSE_ENDED: &str = "vehicle_state_change_streams_ended_total";

pub(super) const FEED_LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub fn count_announcement(outcome: &'static str) {
    metrics::counter!(FEED_ANNOUNCEMENTS, "outcome" => outcome).increment(1);
}

pub(super) fn describe() {
    metrics::describe_gauge!(SSE_STREAMS, "Streams of changes open on this replica.");
    metrics::describe_counter!(
        SSE_EVENTS,
        "Events sent on streams of changes, by event (snapshot, change)."
    );
    metrics::describe_counter!(
        SSE_ENDED,
        "Streams of changes ended by the replica, by reason (slow, closing)."
    );
    metrics::describe_counter!(
        FEED_ANNOUNCEMENTS,
        "Change-feed announcements by outcome (stored, duplicate, failed)."
    );
    metrics::describe_histogram!(
        FEED_LAG,
        metrics::Unit::Seconds,
        "From an announcement stored in the change stream to this replica dropping what it held of the vehicle."
    );
    metrics::describe_gauge!(
        FEED_FOLLOWING,
        "1 while this replica follows the change feed, 0 while it cannot."
    );
    metrics::describe_counter!(
        FEED_INVALIDATIONS,
        "Vehicles dropped on the change feed's word, by tier (memory, redis)."
    );
}
