//! A vehicle's timeline: the state changes in a window of time, a page at a time.

use serde::Serialize;
use utoipa::ToSchema;

use super::{Timestamp, Vehicle, VehicleId};

/// The most changes one page may hold, and how many it holds unless asked.
pub const MAX_LIMIT: u16 = 1000;
pub const DEFAULT_LIMIT: u16 = 100;

/// Where a change stands in a vehicle's timeline: by time, then, for equal timestamps, by
/// lifecycle rank and state text (the order the lookup uses, oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub at: Timestamp,
    pub rank: i32,
    pub state: String,
}

/// The lifecycle rank of a state: `quoted` < `selling` < `sold` < nothing else (0).
pub fn rank(state: &str) -> i32 {
    match state {
        "sold" => 3,
        "selling" => 2,
        "quoted" => 1,
        _ => 0,
    }
}

/// The opaque `next` of a page: the position of its last change, so the next page starts right
/// after it. Written as lowercase hex of `micros,rank,state`, which clients need not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub Position);

/// Why `after` is not a cursor: not in the form `next` is written in. A well-formed one is taken
/// as the position it names, whoever wrote it: it holds nothing secret (docs/api.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`after` is not a cursor in the form this service writes: pass the `next` of the previous page as it is"
)]
pub struct CursorError;

impl Cursor {
    /// At most this long (hex of the time, the rank and a state of up to 2,000 bytes): states
    /// are short words, but `"stateLogs".state` is free text, and a cursor this service writes
    /// must parse.
    pub const MAX_LEN: usize = 4096;

    pub fn encode(&self) -> String {
        let Position { at, rank, state } = &self.0;
        super::hex::encode(&format!("{},{rank},{state}", at.unix_micros()))
    }

    pub fn parse(raw: &str) -> Result<Self, CursorError> {
        let text = super::hex::decode(raw, Self::MAX_LEN).ok_or(CursorError)?;
        let mut parts = text.splitn(3, ',');
        let (Some(micros), Some(rank), Some(state)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CursorError);
        };
        let at = micros
            .parse()
            .ok()
            .and_then(Timestamp::from_unix_micros)
            .ok_or(CursorError)?;
        let rank: i32 = rank.parse().map_err(|_| CursorError)?;
        if rank != self::rank(state) {
            return Err(CursorError);
        }
        let cursor = Self(Position {
            at,
            rank,
            state: state.to_owned(),
        });
        // Only the one spelling this service writes (lowercase hex, no leading zeros in the time).
        if cursor.encode() != raw {
            return Err(CursorError);
        }
        Ok(cursor)
    }
}

/// One page of a timeline, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub id: VehicleId,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub limit: u16,
    pub after: Option<Cursor>,
}

/// A state the vehicle was in, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Change {
    /// The state the vehicle entered (`quoted`, `selling`, `sold`; other text as stored).
    #[schema(example = "selling")]
    pub state: String,
    /// When it entered it (RFC 3339, UTC).
    #[schema(value_type = String, format = DateTime, example = "2022-09-11T23:21:38Z")]
    pub at: Timestamp,
    /// When the next change came, or null while this is the current state.
    #[schema(value_type = Option<String>, format = DateTime, example = "2022-09-12T12:41:41Z")]
    pub until: Option<Timestamp>,
}

/// A page of a vehicle's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct History {
    pub vehicle: Vehicle,
    /// Every state the vehicle was in during `[from, to]`, oldest first: the one in effect at
    /// `from` (if any), then each later change up to `to`; at most `limit`.
    pub changes: Vec<Change>,
    /// The cursor of the next page (pass it as `after`), or null on the last page.
    #[schema(example = json!(null))]
    pub next: Option<String>,
}

/// The outcome of asking for a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryPage {
    Found(History),
    UnknownVehicle,
}

/// Builds a page from the rows the query gave: `rows` in timeline order, starting with the
/// change in effect at `from` (when asked for), and holding up to `limit + 1` changes after the
/// position the page starts from, `to` not applied: the one past the page gives the last
/// change's `until`, and tells whether there is a next page.
pub fn page(query: &HistoryQuery, vehicle: Vehicle, rows: Vec<(String, Timestamp)>) -> History {
    let to = query.to;
    let mut changes = Vec::with_capacity(rows.len().min(usize::from(query.limit)));
    let mut next = None;
    let positions = rows;
    for (n, (state, at)) in positions.iter().enumerate() {
        let in_range = to.is_none_or(|to| *at <= to);
        if !in_range {
            break;
        }
        if changes.len() == usize::from(query.limit) {
            // A full page, and more in range: the next page starts after the last change.
            if let Some(Change { state, at, .. }) = changes.last() {
                next = Some(
                    Cursor(Position {
                        at: *at,
                        rank: rank(state),
                        state: state.clone(),
                    })
                    .encode(),
                );
            }
            break;
        }
        changes.push(Change {
            state: state.clone(),
            at: *at,
            until: positions.get(n + 1).map(|(_, next)| *next),
        });
    }
    History {
        vehicle,
        changes,
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_micros(secs * 1_000_000).expect("in range")
    }

    #[test]
    fn a_cursor_round_trips_and_nothing_else_parses() {
        let cursor = Cursor(Position {
            at: at(1_662_976_800),
            rank: 2,
            state: "selling".to_owned(),
        });
        let text = cursor.encode();
        assert!(
            text.bytes().all(|b| b"0123456789abcdef".contains(&b)),
            "{text}"
        );
        assert_eq!(Cursor::parse(&text), Ok(cursor));
        for bad in [
            "",
            "zz",
            "abc",
            &text.to_uppercase(),
            &text[..text.len() - 2],
            // "1,2,sold": the rank does not match the state.
            "312c322c736f6c64",
            &"0".repeat(5000),
        ] {
            assert_eq!(Cursor::parse(bad), Err(CursorError), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_cursor_only_if_it_is_the_one_spelling_of_one(raw in "\\PC{0,60}|[0-9a-f]{0,60}") {
            if let Ok(cursor) = Cursor::parse(&raw) {
                proptest::prop_assert_eq!(cursor.encode(), raw);
            }
        }
    }

    #[test]
    fn a_page_holds_the_changes_in_range_each_until_the_next() {
        let query = |to: Option<i64>, limit| HistoryQuery {
            id: VehicleId::from_i64(1).expect("id"),
            from: None,
            to: to.map(at),
            limit,
            after: None,
        };
        let vehicle = Vehicle {
            id: 1,
            make: "VW".to_owned(),
            model: "GOLF".to_owned(),
        };
        let rows = |n: i64| -> Vec<(String, Timestamp)> {
            (0..n).map(|i| ("quoted".to_owned(), at(100 + i))).collect()
        };

        let all = page(&query(None, 10), vehicle.clone(), rows(3));
        let first = page(&query(None, 2), vehicle.clone(), rows(3));
        let bounded = page(&query(Some(101), 10), vehicle.clone(), rows(3));
        let bounded_full = page(&query(Some(101), 2), vehicle.clone(), rows(3));

        assert_eq!(all.changes.len(), 3);
        assert_eq!(all.changes[0].until, Some(at(101)));
        assert_eq!(all.changes[2].until, None, "the current state");
        assert_eq!(all.next, None);
        assert_eq!(first.changes.len(), 2);
        let next = Cursor::parse(first.next.as_deref().expect("a next page")).expect("ours");
        assert_eq!(next.0.at, at(101));
        assert_eq!(bounded.changes.len(), 2);
        assert_eq!(
            bounded.changes[1].until,
            Some(at(102)),
            "until may lie past `to`"
        );
        assert_eq!(bounded.next, None);
        assert_eq!(bounded_full.next, None, "nothing more in range");
    }
}
