//! The fleet at an instant, from `fleet_sums` (see `migrations/20261208000000_fleet.sql`): counts
//! per state in a few index range scans, however large the fleet.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::DbError;
use crate::domain::Timestamp;
use crate::domain::fleet::{FleetCounts, StateCounts};

/// The index on `"stateLogs"("timestamp")` the counts read the last minutes' changes by, as
/// `migrations/20261208000000_fleet.sql` creates it; `seed synthetic` builds it after its load.
pub const DROP_TIMESTAMP_INDEX_SQL: &str = r#"DROP INDEX IF EXISTS "stateLogs_timestamp_idx""#;
pub const TIMESTAMP_INDEX_SQL: &str = r#"CREATE INDEX IF NOT EXISTS "stateLogs_timestamp_idx" ON "stateLogs" ("timestamp") INCLUDE ("vehicleId")"#;

/// The bits of the finest bucket of `fleet_sums` (2^28 µs, about 4.5 minutes): the changes of
/// the last partial bucket before an instant are read from `"stateLogs"` itself.
pub const FINEST_BUCKET_BITS: u32 = 28;

/// Counts per state at each instant of `$2` (whose microseconds since the epoch are in `$1`, and
/// the starts of whose finest buckets are in `$3`), by its position in the arrays (1-based).
/// When `fleet_status` says the sums are exact: per instant, the sums of each bucket size between
/// the end of the larger bucket around it and the start of its own (a range scan of the primary
/// key per size), plus, for each vehicle with a change in `[start, instant]`, +1 for the change
/// in effect there and -1 for the one before it (two probes of the lookup's index each). When
/// they are not (something other than `ingest` wrote to `"stateLogs"` since the last rebuild),
/// the plain rule over `"stateLogs"`: exact, and as slow as the table is large. One statement
/// either way; the status is read in its snapshot, and returned with each row and alone at
/// position 0.
pub const COUNTS_SQL: &str = concat!(
    r#"
WITH status AS MATERIALIZED (
    SELECT COALESCE((SELECT exact FROM fleet_status), false) AS exact
), q AS MATERIALIZED (
    SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::timestamptz[])
        WITH ORDINALITY AS q(micros, at, start, n)
), recent AS (
    SELECT DISTINCT q.n, g."vehicleId" AS id, g."timestamp" AS at
    FROM q JOIN "stateLogs" g ON g."timestamp" >= q.start AND g."timestamp" <= q.at
    WHERE (SELECT exact FROM status)
), parts AS (
    -- One range of the key per size: index-only scans (an OR of the five would be a bitmap
    -- scan visiting the table's pages).
    SELECT q.n, f.state, f.delta FROM q JOIN fleet_sums f
        ON f.level = 5 AND f.bucket < (q.micros >> 48)
    WHERE (SELECT exact FROM status)
    UNION ALL
    SELECT q.n, f.state, f.delta FROM q JOIN fleet_sums f
        ON f.level = 4 AND f.bucket >= ((q.micros >> 48) << 5) AND f.bucket < (q.micros >> 43)
    WHERE (SELECT exact FROM status)
    UNION ALL
    SELECT q.n, f.state, f.delta FROM q JOIN fleet_sums f
        ON f.level = 3 AND f.bucket >= ((q.micros >> 43) << 5) AND f.bucket < (q.micros >> 38)
    WHERE (SELECT exact FROM status)
    UNION ALL
    SELECT q.n, f.state, f.delta FROM q JOIN fleet_sums f
        ON f.level = 2 AND f.bucket >= ((q.micros >> 38) << 5) AND f.bucket < (q.micros >> 33)
    WHERE (SELECT exact FROM status)
    UNION ALL
    SELECT q.n, f.state, f.delta FROM q JOIN fleet_sums f
        ON f.level = 1 AND f.bucket >= ((q.micros >> 33) << 5) AND f.bucket < (q.micros >> 28)
    WHERE (SELECT exact FROM status)
    UNION ALL
    SELECT r.n, t.state, 1 FROM recent r
    CROSS JOIN LATERAL (
        SELECT l.state FROM "stateLogs" l
        WHERE l."vehicleId" = r.id AND l."timestamp" = r.at
        ORDER BY "#,
    latest_first!(),
    r#"
        LIMIT 1
    ) t
    UNION ALL
    SELECT r.n, p.state, -1 FROM recent r
    CROSS JOIN LATERAL (
        SELECT l.state FROM "stateLogs" l
        WHERE l."vehicleId" = r.id AND l."timestamp" < r.at
        ORDER BY "#,
    latest_first!(),
    r#"
        LIMIT 1
    ) p
    UNION ALL
    SELECT q.n, s.state, s.vehicles FROM q CROSS JOIN LATERAL (
        SELECT d.state, count(*) AS vehicles FROM (
            SELECT DISTINCT ON (l."vehicleId") l.state FROM "stateLogs" l
            WHERE l."timestamp" <= q.at AND NOT (SELECT exact FROM status)
            ORDER BY l."vehicleId", "#,
    latest_first!(),
    r#"
        ) d GROUP BY d.state
    ) s
)
SELECT p.n, p.state, sum(p.delta)::int8, (SELECT exact FROM status)
FROM parts p GROUP BY p.n, p.state
UNION ALL
-- Position 0: the status alone, so it is known even with nothing to count.
SELECT 0, NULL, 0, (SELECT exact FROM status)
"#
);

/// The start of the finest bucket of `fleet_sums` around `at` (before 0001 by at most one
/// bucket: chrono's range reaches far below that).
fn finest_start(micros: i64) -> DateTime<Utc> {
    let start = (micros >> FINEST_BUCKET_BITS) << FINEST_BUCKET_BITS;
    DateTime::<Utc>::from_timestamp_micros(start).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// [`COUNTS_SQL`] at each instant of `ats`, in their order, and whether the sums were exact (the
/// counts came from them, not from the plain rule over the table).
pub async fn counts(
    conn: &mut PgConnection,
    ats: &[Timestamp],
) -> Result<(Vec<FleetCounts>, bool), DbError> {
    let micros: Vec<i64> = ats.iter().map(|at| at.unix_micros()).collect();
    let instants: Vec<DateTime<Utc>> = ats.iter().map(|at| at.as_datetime()).collect();
    let starts: Vec<DateTime<Utc>> = micros.iter().map(|m| finest_start(*m)).collect();
    let rows: Vec<(i64, Option<String>, i64, bool)> = sqlx::query_as(COUNTS_SQL)
        .bind(&micros)
        .bind(&instants)
        .bind(&starts)
        .fetch_all(conn)
        .await?;
    let mut from_sums = false;
    let mut sums: Vec<Vec<(String, u64)>> = vec![Vec::new(); ats.len()];
    for (n, state, vehicles, exact) in rows {
        let Some(state) = state.filter(|_| n > 0) else {
            // The status row.
            from_sums = exact;
            continue;
        };
        let at = usize::try_from(n - 1).ok().filter(|i| *i < ats.len());
        let (Some(i), Ok(vehicles)) = (at, u64::try_from(vehicles)) else {
            // A position not asked, or fewer than no vehicles: the sums are not what the
            // changes say, a defect to report, not an answer to give.
            return Err(DbError::Query(sqlx::Error::Decode(
                format!("fleet_sums: {vehicles} vehicles in state {state:?} at position {n}")
                    .into(),
            )));
        };
        sums[i].push((state, vehicles));
    }
    let counts = ats
        .iter()
        .zip(sums)
        .map(|(at, sums)| FleetCounts::new(*at, StateCounts::new(sums)))
        .collect();
    Ok((counts, from_sums))
}

/// Builds `fleet_sums` anew from `"stateLogs"` (writers wait meanwhile) and marks it exact; the
/// number of rows written.
pub async fn rebuild(conn: &mut PgConnection) -> Result<i64, DbError> {
    Ok(sqlx::query_scalar("SELECT vehicle_state_fleet_rebuild()")
        .fetch_one(conn)
        .await?)
}
