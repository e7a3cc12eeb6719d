use crate::domain::history::HistoryQuery;
use crate::domain::{Timestamp, VehicleId};

/// The Redis key of one lookup. Built from the parsed id and the normalised instant, so every
/// spelling of one instant shares an entry. `v3` names the value format: a change to what is
/// stored bumps it, and replicas of two versions then never read each other's values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    pub fn new(prefix: &str, id: VehicleId, at: Timestamp) -> Self {
        // Built by hand, not with `format!`: this runs on every lookup, hits included.
        const MIDDLE: &str = ":v3:state:";
        let mut id_digits = itoa::Buffer::new();
        let mut micros_digits = itoa::Buffer::new();
        let (id, micros) = (
            id_digits.format(id.get()),
            micros_digits.format(at.unix_micros()),
        );
        let mut key =
            String::with_capacity(prefix.len() + MIDDLE.len() + id.len() + 1 + micros.len());
        key.push_str(prefix);
        key.push_str(MIDDLE);
        key.push_str(id);
        key.push(':');
        key.push_str(micros);
        Self(key)
    }

    /// A page of a timeline: the vehicle, the bounds (`-` when open), the limit and the cursor.
    pub fn history(prefix: &str, query: &HistoryQuery) -> Self {
        let micros =
            |at: Option<Timestamp>| at.map_or("-".to_owned(), |at| at.unix_micros().to_string());
        Self(format!(
            "{prefix}:v1:history:{}:{}:{}:{}:{}",
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

    fn key(id: &str, ts: &str) -> CacheKey {
        CacheKey::new(
            "vs",
            VehicleId::parse(id).expect("id"),
            Timestamp::parse(ts).expect("instant"),
        )
    }

    #[test]
    fn a_key_names_prefix_version_vehicle_and_microseconds() {
        assert_eq!(
            key("3", "2022-09-12T10:00:00.000001Z").as_str(),
            "vs:v3:state:3:1662976800000001"
        );
        assert_eq!(key("1", "-1").as_str(), "vs:v3:state:1:-1000000");
    }

    #[test]
    fn every_spelling_of_one_instant_is_one_key() {
        let expected = key("3", "2022-09-12T10:00:00Z");
        for ts in [
            "2022-09-12 15:00:00+05",
            "2022-09-12 15:30:00+0530",
            "2022-09-12T12:00:00+02:00",
            "2022-09-12T10:00:00.0000001Z",
            "1662976800",
        ] {
            assert_eq!(key("3", ts), expected, "{ts}");
        }
    }

    #[test]
    fn different_vehicles_or_instants_are_different_keys() {
        assert_ne!(key("3", "1662976800"), key("2", "1662976800"));
        assert_ne!(key("3", "1662976800"), key("3", "1662976801"));
        assert_ne!(
            key("3", "2022-09-12T10:00:00Z"),
            key("3", "2022-09-12T10:00:00.000001Z")
        );
    }
}
