use crate::domain::history::HistoryQuery;
use crate::domain::{Timestamp, VehicleId};

/// Where a vehicle's answers are cached: its known segments, each answering every instant
/// inside it (in Redis a sorted set scored by segment start; in memory a sorted list), or one
/// timeline page. `v5` names the value format: a change to what is stored bumps it, and replicas
/// of two versions then never read each other's values.
///
/// The vehicle's id is the key's hash tag (`{3}`): in a Redis Cluster every key of one vehicle
/// (its segments, its version floor, its timeline pages) lives in one slot, so one script can
/// read and write them together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of vehicle `id`'s segments, whatever the instant asked.
    pub fn new(prefix: &str, id: VehicleId) -> Self {
        Self::tagged(prefix, ":v5:segments:{", id)
    }

    /// The key of vehicle `id`'s version floor: the latest version the change feed announced
    /// for it, below which no answer is written (see `RedisCache::invalidate`).
    pub fn floor(prefix: &str, id: VehicleId) -> Self {
        Self::tagged(prefix, ":v5:floor:{", id)
    }

    /// The vehicle whose key this is: its hash tag.
    pub fn vehicle(&self) -> Option<i32> {
        let open = self.0.find('{')?;
        let rest = &self.0[open + 1..];
        rest[..rest.find('}')?].parse().ok()
    }

    /// The floor key beside a segments key (`…:v5:segments:{id}` → `…:v5:floor:{id}`); `None`
    /// for a key of another kind.
    pub fn floor_of_segments(&self) -> Option<Self> {
        let at = self.0.rfind(":v5:segments:{")?;
        let (prefix, rest) = self.0.split_at(at);
        let tag = rest.strip_prefix(":v5:segments:")?;
        Some(Self(format!("{prefix}:v5:floor:{tag}")))
    }

    fn tagged(prefix: &str, middle: &str, id: VehicleId) -> Self {
        // Built by hand, not with `format!`: this runs on every lookup, hits included.
        let mut id_digits = itoa::Buffer::new();
        let id = id_digits.format(id.get());
        let mut key = String::with_capacity(prefix.len() + middle.len() + id.len() + 1);
        key.push_str(prefix);
        key.push_str(middle);
        key.push_str(id);
        key.push('}');
        Self(key)
    }

    /// A page of a timeline: the vehicle, the bounds (`-` when open), the limit and the cursor.
    pub fn history(prefix: &str, query: &HistoryQuery) -> Self {
        let micros =
            |at: Option<Timestamp>| at.map_or("-".to_owned(), |at| at.unix_micros().to_string());
        Self(format!(
            "{prefix}:v3:history:{{{}}}:{}:{}:{}:{}",
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
        assert_eq!(key("3").as_str(), "vs:v5:segments:{3}");
        assert_eq!(key("2147483647").as_str(), "vs:v5:segments:{2147483647}");
        assert_eq!(
            CacheKey::floor("vs", VehicleId::parse("3").expect("id")).as_str(),
            "vs:v5:floor:{3}"
        );
        assert_eq!(key("2147483647").vehicle(), Some(2_147_483_647));
        assert_eq!(
            key("3").floor_of_segments().map(|k| k.0),
            Some("vs:v5:floor:{3}".to_owned())
        );
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
            "vs:v3:history:{3}:1662976800000000:-:10:-"
        );
    }
}
