//! What this replica knows of vehicles' versions from the change feed: per vehicle, the latest
//! version announced (its floor). An answer read at an older version was read before a change
//! that this replica knows committed: no tier of this replica serves it from a cache, and
//! memory does not keep it.

use std::time::Duration;

use super::{CacheKey, RenderedAnswer};
use crate::domain::VehicleId;

/// How many vehicles' floors are kept at most. A floor matters only while a read that began
/// before its change could still be written back or served (the TTL and stale-if-error window):
/// at 1,000 changes a second and a 120 s window that is 120,000 vehicles. A floor evicted
/// earlier leaves the answers it guarded to their TTL, as without the feed.
const MAX_FLOORS: u64 = 1 << 20;

#[derive(Clone)]
pub struct Floors(moka::sync::Cache<i32, u64>);

impl Floors {
    /// Floors kept for `keep` (the TTL and stale-if-error window) after each change.
    pub fn new(keep: Duration) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(MAX_FLOORS)
                .time_to_live(keep)
                .build(),
        )
    }

    /// Raises vehicle `id`'s floor to `version`; whether that was news (higher than known).
    pub fn raise(&self, id: VehicleId, version: u64) -> bool {
        let mut news = false;
        self.0.entry(id.get()).and_upsert_with(|held| {
            let known = held.map_or(0, |held| *held.value());
            news = version > known;
            known.max(version)
        });
        news
    }

    /// Vehicle `id`'s floor: 0 when no change to it is known.
    pub fn of(&self, id: i32) -> u64 {
        self.0.get(&id).unwrap_or(0)
    }

    /// Whether `answer`, cached under `key`, is no older than what this replica knows of its
    /// vehicle.
    pub fn admit(&self, key: &CacheKey, answer: &RenderedAnswer) -> bool {
        answer.version >= key.vehicle().map_or(0, |id| self.of(id))
    }
}
