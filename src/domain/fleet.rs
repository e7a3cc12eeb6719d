//! The fleet at an instant: how many vehicles were in each state.

use serde::ser::{Serialize, SerializeMap, Serializer};
use utoipa::ToSchema;

use super::Timestamp;

/// The lifecycle's states, listed in every count (0 where no vehicle was in one).
pub const LIFECYCLE: [&str; 3] = ["quoted", "selling", "sold"];

/// How many vehicles were in each state at an instant, and their total.
///
/// A vehicle counts in the state of its latest change at or before `at` (in the lookup's order
/// for equal timestamps), whether or not it is registered: the plain rule over `"stateLogs"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ToSchema)]
pub struct FleetCounts {
    /// The instant counted (RFC 3339, UTC); for `now`, the server's clock.
    #[schema(value_type = String, format = DateTime, example = "2022-09-12T10:00:00Z")]
    pub at: Timestamp,
    /// Vehicles per state: `quoted`, `selling` and `sold` always (0 where none), then any other
    /// state text stored, by name.
    #[schema(value_type = std::collections::BTreeMap<String, u64>, example = json!({"quoted": 1, "selling": 0, "sold": 2}))]
    pub states: StateCounts,
    /// Vehicles in any state at `at`: the sum of `states`.
    #[schema(example = 3)]
    pub total: u64,
}

/// Counts per state, in lifecycle order then by name; serialised as a JSON object in that order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateCounts(Vec<(String, u64)>);

impl StateCounts {
    /// From sums per state in any order: the lifecycle's states first (0 when absent), then
    /// other states with vehicles, by name. A state named twice is summed.
    pub fn new(sums: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut states: Vec<(String, u64)> =
            LIFECYCLE.iter().map(|s| ((*s).to_owned(), 0)).collect();
        for (state, n) in sums {
            match states.iter_mut().find(|(s, _)| *s == state) {
                Some((_, count)) => *count += n,
                None if n > 0 => states.push((state, n)),
                None => {}
            }
        }
        // The lifecycle's three keep their places; the rest follow by name.
        states[LIFECYCLE.len()..].sort_by(|(a, _), (b, _)| a.cmp(b));
        Self(states)
    }

    pub fn get(&self, state: &str) -> u64 {
        self.0
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(s, n)| (s.as_str(), *n))
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

impl Serialize for StateCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (state, n) in &self.0 {
            map.serialize_entry(state, n)?;
        }
        map.end()
    }
}

impl FleetCounts {
    pub fn new(at: Timestamp, states: StateCounts) -> Self {
        let total = states.total();
        Self { at, states, total }
    }
}

/// The step of a series: a whole number of minutes, hours, days or weeks, or one calendar month;
/// at least a minute and at most a month (31 days for a fixed step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    /// A fixed length, in minutes.
    Minutes(u32),
    /// One calendar month: the same day of the next month (its last day where it is shorter).
    Month,
}

/// Why `every` is not a step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`every` must be an ISO 8601 duration of one unit from a minute to a month (PT15M, PT1H, P1D, P1W, P1M) or one of minute, hour, day, week, month; not {0:?}"
)]
pub struct EveryError(pub String);

impl Every {
    /// The most minutes a fixed step may have: 31 days.
    const MAX_MINUTES: u32 = 31 * 24 * 60;

    pub fn parse(raw: &str) -> Result<Self, EveryError> {
        let error = || EveryError(raw.chars().take(64).collect());
        let minutes = match raw {
            "minute" => 1,
            "hour" => 60,
            "day" => 24 * 60,
            "week" => 7 * 24 * 60,
            "month" | "P1M" => return Ok(Every::Month),
            _ => {
                let (digits, per) = if let Some(rest) = raw.strip_prefix("PT") {
                    match rest.split_at_checked(rest.len().saturating_sub(1)) {
                        Some((n, "M")) => (n, 1),
                        Some((n, "H")) => (n, 60),
                        _ => return Err(error()),
                    }
                } else if let Some(rest) = raw.strip_prefix('P') {
                    match rest.split_at_checked(rest.len().saturating_sub(1)) {
                        Some((n, "D")) => (n, 24 * 60),
                        Some((n, "W")) => (n, 7 * 24 * 60),
                        _ => return Err(error()),
                    }
                } else {
                    return Err(error());
                };
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(error());
                }
                digits
                    .parse::<u32>()
                    .ok()
                    .and_then(|n| n.checked_mul(per))
                    .ok_or_else(error)?
            }
        };
        if (1..=Self::MAX_MINUTES).contains(&minutes) {
            Ok(Every::Minutes(minutes))
        } else {
            Err(error())
        }
    }

    /// The step `k` steps after `from`, if within the supported range.
    fn nth(self, from: Timestamp, k: u32) -> Option<Timestamp> {
        match self {
            Every::Minutes(minutes) => {
                let micros = i64::from(minutes) * 60_000_000 * i64::from(k);
                Timestamp::from_unix_micros(from.unix_micros().checked_add(micros)?)
            }
            Every::Month => {
                let at = from
                    .as_datetime()
                    .checked_add_months(chrono::Months::new(k))?;
                Timestamp::from_unix_micros(at.timestamp_micros())
            }
        }
    }
}

impl std::fmt::Display for Every {
    /// As ISO 8601: the largest whole unit.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Every::Month => f.write_str("P1M"),
            Every::Minutes(m) if m % (7 * 24 * 60) == 0 => write!(f, "P{}W", m / (7 * 24 * 60)),
            Every::Minutes(m) if m % (24 * 60) == 0 => write!(f, "P{}D", m / (24 * 60)),
            Every::Minutes(m) if m % 60 == 0 => write!(f, "PT{}H", m / 60),
            Every::Minutes(m) => write!(f, "PT{m}M"),
        }
    }
}

/// A series asked for: counts at `from`, `from + every`, ... up to `to` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesQuery {
    pub from: Timestamp,
    pub to: Timestamp,
    pub every: Every,
}

/// Why a series cannot be counted: more points than one request may ask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "from {from} to {to} every {every} is more than {max} points, the most one request may ask (FLEET_SERIES_MAX_POINTS): ask a shorter window or a longer step"
)]
pub struct TooManyPoints {
    pub from: Timestamp,
    pub to: Timestamp,
    pub every: Every,
    pub max: u32,
}

impl SeriesQuery {
    /// The instants of the series, at most `max` (else the error says so). `from` is the first;
    /// the last is the latest step at or before `to`.
    pub fn instants(&self, max: u32) -> Result<Vec<Timestamp>, TooManyPoints> {
        let mut instants = Vec::new();
        for k in 0.. {
            match self.every.nth(self.from, k) {
                Some(at) if at <= self.to => {
                    if instants.len() >= max as usize {
                        return Err(TooManyPoints {
                            from: self.from,
                            to: self.to,
                            every: self.every,
                            max,
                        });
                    }
                    instants.push(at);
                }
                _ => break,
            }
        }
        Ok(instants)
    }
}

/// Counts at each step of a series, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ToSchema)]
pub struct FleetSeries {
    /// The first instant counted (RFC 3339, UTC).
    #[schema(value_type = String, format = DateTime, example = "2022-09-10T00:00:00Z")]
    pub from: Timestamp,
    /// The end of the window asked (inclusive): the last point is the latest step at or before it.
    #[schema(value_type = String, format = DateTime, example = "2022-09-12T00:00:00Z")]
    pub to: Timestamp,
    /// The step, as an ISO 8601 duration (`PT15M`, `PT1H`, `P1D`, `P1W`, `P1M`).
    #[schema(value_type = String, example = "P1D")]
    #[serde(serialize_with = "display")]
    pub every: Every,
    /// The counts at `from`, `from + every`, ... in order.
    pub points: Vec<FleetCounts>,
}

fn display<S: Serializer>(every: &Every, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(every)
}

/// The most vehicles one page of the list may hold, and how many it holds unless asked.
pub const MAX_PAGE: u16 = 1000;
pub const DEFAULT_PAGE: u16 = 100;
/// The longest state a list may be asked for, in bytes (states are short words; the column is
/// free text).
pub const MAX_STATE_LEN: usize = 256;

/// A vehicle in a state at an instant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ToSchema)]
pub struct FleetVehicle {
    #[schema(example = 3)]
    pub id: i32,
    /// Null when the vehicle's registration has not arrived (its changes count all the same).
    #[schema(example = "VW")]
    pub make: Option<String>,
    #[schema(example = "GOLF")]
    pub model: Option<String>,
    /// When it entered the state: its latest change at or before the instant (RFC 3339, UTC), as
    /// the lookup's `stateSince`; null when that change is at `-infinity`.
    #[schema(value_type = Option<String>, format = DateTime, example = "2022-09-11T23:21:38Z")]
    pub since: Option<Timestamp>,
}

/// A page of the vehicles in a state at an instant, in id order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ToSchema)]
pub struct FleetVehicles {
    #[schema(example = "selling")]
    pub state: String,
    /// The instant listed (RFC 3339, UTC); for `now`, the server's clock when the first page was
    /// read, which every later page of the same listing keeps.
    #[schema(value_type = String, format = DateTime, example = "2022-09-12T10:00:00Z")]
    pub at: Timestamp,
    /// At most `limit`, by id.
    pub vehicles: Vec<FleetVehicle>,
    /// The cursor of the next page (pass it as `after`), or null on the last page.
    #[schema(example = json!(null))]
    pub next: Option<String>,
}

/// The opaque `next` of a page of the list: the instant listed and the last id on the page.
/// Written as lowercase hex of `micros,id`, which clients need not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListCursor {
    pub at: Timestamp,
    pub after: i32,
}

/// Why `after` is not a cursor of the list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`after` is not a cursor in the form this service writes: pass the `next` of the previous page as it is"
)]
pub struct ListCursorError;

impl ListCursor {
    /// At most this long: hex of two 20-character integers and a comma.
    const MAX_LEN: usize = 86;

    pub fn encode(self) -> String {
        super::hex::encode(&format!("{},{}", self.at.unix_micros(), self.after))
    }

    pub fn parse(raw: &str) -> Result<Self, ListCursorError> {
        let text = super::hex::decode(raw, Self::MAX_LEN).ok_or(ListCursorError)?;
        let (micros, id) = text.split_once(',').ok_or(ListCursorError)?;
        let at = micros
            .parse()
            .ok()
            .and_then(Timestamp::from_unix_micros)
            .ok_or(ListCursorError)?;
        let after = id.parse().map_err(|_| ListCursorError)?;
        let cursor = Self { at, after };
        // Only the one spelling this service writes.
        if cursor.encode() != raw {
            return Err(ListCursorError);
        }
        Ok(cursor)
    }
}

/// Builds a page from up to `limit + 1` vehicles read after the cursor's id: the one past the
/// page says there is a next one.
pub fn list_page(
    state: String,
    at: Timestamp,
    limit: u16,
    mut vehicles: Vec<FleetVehicle>,
) -> FleetVehicles {
    let limit = usize::from(limit);
    let next = if vehicles.len() > limit {
        vehicles.truncate(limit);
        vehicles
            .last()
            .map(|v| ListCursor { at, after: v.id }.encode())
    } else {
        None
    };
    FleetVehicles {
        state,
        at,
        vehicles,
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifecycle_comes_first_with_zeros_then_other_states_by_name() {
        let counts = StateCounts::new([
            ("sold".to_owned(), 4),
            ("scrapped".to_owned(), 2),
            ("auctioned".to_owned(), 1),
            ("quoted".to_owned(), 3),
            ("leased".to_owned(), 0),
        ]);
        let at = Timestamp::from_unix_micros(0).expect("in range");
        let json = serde_json::to_string(&FleetCounts::new(at, counts)).expect("serialises");
        assert_eq!(
            json,
            r#"{"at":"1970-01-01T00:00:00Z","states":{"quoted":3,"selling":0,"sold":4,"auctioned":1,"scrapped":2},"total":10}"#
        );
    }

    #[test]
    fn a_step_is_one_unit_from_a_minute_to_a_month() {
        for (raw, every) in [
            ("PT1M", Every::Minutes(1)),
            ("PT15M", Every::Minutes(15)),
            ("PT6H", Every::Minutes(360)),
            ("P1D", Every::Minutes(1440)),
            ("P2W", Every::Minutes(20160)),
            ("P31D", Every::Minutes(44640)),
            ("P1M", Every::Month),
            ("day", Every::Minutes(1440)),
            ("month", Every::Month),
        ] {
            assert_eq!(Every::parse(raw), Ok(every), "{raw}");
        }
        for raw in [
            "",
            "P",
            "PT",
            "PT0M",
            "P0D",
            "P32D",
            "P5W",
            "P2M",
            "PT1S",
            "P1Y",
            "PT-1M",
            "PT+1M",
            "P1DT1H",
            "1d",
            "PT99999999999M",
        ] {
            assert!(Every::parse(raw).is_err(), "{raw}");
        }
        assert_eq!(Every::Minutes(1440).to_string(), "P1D");
        assert_eq!(Every::Minutes(90).to_string(), "PT90M");
        assert_eq!(Every::Minutes(10080).to_string(), "P1W");
    }

    #[test]
    fn a_series_steps_from_its_start_and_stops_at_its_end_or_its_cap() {
        let at = |s: &str| Timestamp::parse(s).expect("an instant");
        let query = SeriesQuery {
            from: at("2022-01-31T00:00:00Z"),
            to: at("2022-04-30T00:00:00Z"),
            every: Every::Month,
        };
        let months: Vec<String> = query
            .instants(10)
            .expect("within the cap")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            months,
            [
                "2022-01-31T00:00:00Z",
                "2022-02-28T00:00:00Z",
                "2022-03-31T00:00:00Z",
                "2022-04-30T00:00:00Z"
            ]
        );
        let days = SeriesQuery {
            from: at("2022-01-01T00:00:00Z"),
            to: at("2022-01-30T23:59:59Z"),
            every: Every::Minutes(1440),
        };
        assert_eq!(days.instants(30).map(|v| v.len()), Ok(30));
        let error = days.instants(29).expect_err("past the cap");
        assert!(error.to_string().contains("more than 29 points"), "{error}");
        let end = SeriesQuery {
            from: at("9999-12-31T00:00:00Z"),
            to: at("9999-12-31T23:59:59Z"),
            every: Every::Minutes(1440),
        };
        assert_eq!(
            end.instants(5).map(|v| v.len()),
            Ok(1),
            "stops at the end of time"
        );
    }

    #[test]
    fn a_list_cursor_round_trips_and_nothing_else_parses() {
        let at = Timestamp::from_unix_micros(1_662_976_800_123_456).expect("in range");
        for after in [1, 42, i32::MAX, 0, i32::MIN] {
            let cursor = ListCursor { at, after };
            let text = cursor.encode();
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_eq!(ListCursor::parse(&text), Ok(cursor));
        }
        let good = ListCursor { at, after: 7 }.encode();
        for bad in [
            "".to_owned(),
            "zz".to_owned(),
            good.to_uppercase(),
            format!("{good}00"),
            good[..good.len() - 2].to_owned() + "2c",
            ListCursor { at, after: 7 }
                .encode()
                .replacen("31", "3031", 1),
            "2c".repeat(50),
        ] {
            assert_eq!(ListCursor::parse(&bad), Err(ListCursorError), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_list_cursor_only_if_it_is_the_one_spelling_of_one(raw in "\\PC{0,60}|[0-9a-f]{0,60}|(3[0-9]|2c|2d){1,40}") {
            if let Ok(cursor) = ListCursor::parse(&raw) {
                proptest::prop_assert_eq!(cursor.encode(), raw);
            }
        }
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_more_was_read_than_it_holds() {
        let at = Timestamp::from_unix_micros(0).expect("in range");
        let vehicle = |id| FleetVehicle {
            id,
            make: None,
            model: None,
            since: None,
        };
        let full = list_page(
            "sold".to_owned(),
            at,
            2,
            vec![vehicle(1), vehicle(5), vehicle(9)],
        );
        assert_eq!(full.vehicles, vec![vehicle(1), vehicle(5)]);
        assert_eq!(
            full.next.as_deref().map(ListCursor::parse),
            Some(Ok(ListCursor { at, after: 5 }))
        );
        let last = list_page("sold".to_owned(), at, 2, vec![vehicle(1), vehicle(5)]);
        assert_eq!(last.next, None);
        assert_eq!(last.vehicles.len(), 2);
    }
}
