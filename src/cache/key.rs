use crate::domain::history::HistoryQuery;
use crate::domain::{Timestamp, VehicleId};

/// Where a vehicle's answers are cached: its known segments, each answering every instant
/// inside it (in Redis a sorted set scored by segment start; in memory a sorted list), or one
/// timeline page. `v4` names the value format: a change to what is stored bumps it, and replicas
/// of two versions then never read each other's values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of vehicle `id`'s segments, whatever the instant asked.
    pub fn new(prefix: &str, id: VehicleId) -> Self {
        // Built by hand, not with `format!`: this runs on every lookup, hits included.
        const MIDDLE: &str = ":v4:segments:";
        let mut id_digits = itoa::Buffer::new();
        let id = id_digits.format(id.get());
        let mut key = String::with_capacity(prefix.len() + MIDDLE.len() + id.len());
        key.push_str(prefix);
        key.push_str(MIDDLE);
        key.push_str(id);
        Self(key)
    }

    /// A page of a timeline: the vehicle, the bounds (`-` when open), the limit and the cursor.
    pub fn history(prefix: &str, query: &HistoryQuery) -> Self {
        let micros =
            |at: Option<Timestamp>| at.map_or("-".to_owned(), |at| at.unix_micros().to_string());
        Self(format!(
            "{prefix}:v2:history:{}:{}:{}:{}:{}",
            query.id.get(),
            micros(query.from),
            micros(query.to),
            query.limit,
            query.after.as_ref().map_or("-".to_owned(), |c| c.encode()),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> CacheKey {
        CacheKey::new("vs", VehicleId::parse(id).expect("id"))
    }

    #[test]
    fn a_key_names_prefix_version_and_vehicle() {
        assert_eq!(key("3").as_str(), "vs:v4:segments:3");
        assert_eq!(key("2147483647").as_str(), "vs:v4:segments:2147483647");
        assert_ne!(key("3"), key("2"));
    }

    #[test]
    fn a_timeline_page_has_a_key_of_its_own() {
        let query = HistoryQuery {
            id: VehicleId::parse("3").expect("id"),
            from: Timestamp::parse("1662976800").ok(),
            to: None,
            limit: 10,
            after: None,
        };
        assert_eq!(
            CacheKey::history("vs", &query).as_str(),
            "vs:v2:history:3:1662976800000000:-:10:-"
        );
    }
}
