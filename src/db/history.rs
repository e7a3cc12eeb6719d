//! A page of a vehicle's timeline in one statement.

use sqlx::PgConnection;

use super::DbError;
use crate::domain::history::{self, HistoryPage, HistoryQuery};
use crate::domain::{Timestamp, Vehicle};

/// The lifecycle rank of a `"stateLogs"` row `l`, as in the lookup's tie order.
macro_rules! rank {
    () => {
        "CASE l.state WHEN 'sold' THEN 3 WHEN 'selling' THEN 2 WHEN 'quoted' THEN 1 ELSE 0 END"
    };
}

/// The vehicle by primary key, then, laterally, by two ranges of
/// `stateLogs_vehicleId_timestamp_idx`: the change in effect at `from` ($2, first page only: the
/// lookup's own probe), and up to $6 changes after the position the page starts from ($3 to $5:
/// `from` itself, or the cursor), oldest first in the lookup's tie order. Rows that repeat a
/// change exactly (same state, same instant: `"stateLogs"` has no key) count once, so a cursor
/// never splits them. No row: no such vehicle; one row with a NULL state: no changes.
pub const HISTORY_SQL: &str = concat!(
    r#"
SELECT v.make, v.model, h.state, (EXTRACT(EPOCH FROM h."timestamp") * 1000000)::int8, v.version
FROM vehicles v
LEFT JOIN LATERAL (
    (SELECT l.state, l."timestamp", "#,
    rank!(),
    r#" AS rank
     FROM "stateLogs" l
     WHERE $2::timestamptz IS NOT NULL AND l."vehicleId" = v.id AND l."timestamp" <= $2
     ORDER BY l."timestamp" DESC, "#,
    rank!(),
    r#" DESC, l.state COLLATE "C" DESC
     LIMIT 1)
    UNION ALL
    (SELECT DISTINCT l.state COLLATE "C" AS state, l."timestamp", "#,
    rank!(),
    r#" AS rank
     FROM "stateLogs" l
     WHERE l."vehicleId" = v.id
       AND l."timestamp" >= COALESCE($3::timestamptz, '-infinity')
       AND (l."timestamp", "#,
    rank!(),
    r#", l.state COLLATE "C")
           > (COALESCE($3::timestamptz, '-infinity'), $4::int4, $5::text COLLATE "C")
     ORDER BY l."timestamp", rank, state
     LIMIT $6)
) h ON true
WHERE v.id = $1
ORDER BY h."timestamp", h.rank, h.state COLLATE "C"
"#
);

/// Times as microseconds since the Unix epoch, as in the lookup (see its `ManyRow`).
type Row = (String, String, Option<String>, Option<i64>, i64);

/// The page, with the vehicle's version read in the same snapshot (0 for no such vehicle).
pub async fn history(
    conn: &mut PgConnection,
    query: &HistoryQuery,
) -> Result<(HistoryPage, u64), DbError> {
    // Where the page starts: after the cursor; or, on a first page, after `from` (the change in
    // effect at `from` comes from the first range), or from the beginning.
    let (effective_at, after_at, after_rank, after_state) = match (&query.after, query.from) {
        (Some(cursor), _) => (
            None,
            Some(cursor.0.at.as_datetime()),
            cursor.0.rank,
            cursor.0.state.as_str(),
        ),
        // Past every rank: strictly after `from`.
        (None, Some(from)) => (Some(from.as_datetime()), Some(from.as_datetime()), 4, ""),
        (None, None) => (None, None, -1, ""),
    };
    let rows: Vec<Row> = sqlx::query_as(HISTORY_SQL)
        .bind(query.id.get())
        .bind(effective_at)
        .bind(after_at)
        .bind(after_rank)
        .bind(after_state)
        .bind(i64::from(query.limit) + 1)
        .fetch_all(conn)
        .await?;
    let Some((make, model, _, _, version)) = rows.first() else {
        return Ok((HistoryPage::UnknownVehicle, 0));
    };
    let version = u64::try_from(*version).unwrap_or(0);
    let vehicle = Vehicle {
        id: query.id.get(),
        make: make.clone(),
        model: model.clone(),
    };
    let mut changes = Vec::with_capacity(rows.len());
    for (_, _, state, micros, _) in rows {
        let (Some(state), Some(micros)) = (state, micros) else {
            continue;
        };
        let at = Timestamp::from_unix_micros(micros).ok_or_else(|| {
            DbError::Query(sqlx::Error::Decode(
                format!(
                    "vehicle {}: a state change at {micros} µs, outside 0001 to 9999",
                    query.id
                )
                .into(),
            ))
        })?;
        changes.push((state, at));
    }
    Ok((
        HistoryPage::Found(history::page(query, vehicle, changes)),
        version,
    ))
}
