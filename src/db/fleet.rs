//! The fleet at an instant, from `fleet_sums` (see `migrations/20261208000000_fleet.sql`): counts
//! per state in a few index range scans, however large the fleet.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::DbError;
use crate::domain::Timestamp;
use crate::domain::fleet::{FleetCounts, FleetVehicle, StateCounts};

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

/// Up to this many vehicles in a state at T, a page reads the open segments of the state that
/// started by T (all of which hold T, so no more than that) by their start and sorts them by id;
/// past it, it reads the open segments of the state in id order, passing over those that started
/// after T (about 100 × open segments of the state / this many rows at most, for a page of 100).
pub const OPEN_BY_START_MAX: u64 = 30_000;

/// One range of `fleet_segments`' key: the closed segments of level `level` in T's bucket of
/// that size (`back` 0) or the one before (`back` 1) that hold T, with ids in `($3, $6]`, in id
/// order.
fn closed_range(level: u32, back: u32) -> String {
    let shift = 28 + 5 * level;
    format!(
        r#"
    (SELECT g."vehicleId" AS id, g.since FROM fleet_segments g
     WHERE g.state = $1 AND g.level = {level} AND g.bucket = ($2 >> {shift}) - {back}
       AND g."vehicleId" > $3 AND g."vehicleId" <= $6 AND g.since <= $2 AND g.until > $2
       AND (SELECT exact FROM status)
     ORDER BY g."vehicleId" LIMIT $4)
    UNION ALL"#
    )
}

/// The vehicles in state `$1` at `$2` (µs since the epoch) with ids in `($3, $6]`, at most `$4`,
/// in id order, with make, model (NULL: not registered) and since when (µs), and, alone in a row
/// of its own, whether the segments are exact (when they are not, no vehicle: ask
/// [`BY_RULE_SQL`]). A merge, in id order, of one range of `fleet_segments`' key per level and
/// bucket that can hold T (16), and of the open segments: in id order, or, when `$5` says few
/// vehicles are in the state at T ([`OPEN_BY_START_MAX`]), by their start. The id window bounds
/// what each range reads: a range with no vehicle in it would otherwise be read to its end before
/// the merge could begin. See `migrations/20261208000000_fleet.sql`.
pub static VEHICLES_SQL: LazyLock<String> = LazyLock::new(|| {
    let mut ranges = String::new();
    for level in 0..8 {
        for back in 0..2 {
            ranges.push_str(&closed_range(level, back));
        }
    }
    format!(
        r#"
WITH status AS MATERIALIZED (
    SELECT COALESCE((SELECT exact FROM fleet_status), false) AS exact
), page AS ({ranges}
    (SELECT g."vehicleId" AS id, g.since FROM fleet_segments g
     WHERE g.state = $1 AND g.level = 8 AND g.bucket = 0
       AND g."vehicleId" > $3 AND g."vehicleId" <= $6 AND g.since <= $2
       AND (SELECT exact FROM status) AND NOT $5
     ORDER BY g."vehicleId" LIMIT $4)
    UNION ALL
    (SELECT o.id, o.since FROM (
        SELECT g."vehicleId" AS id, g.since FROM fleet_segments g
        WHERE g.state = $1 AND g.level = 8 AND g.since <= $2 AND (SELECT exact FROM status) AND $5
        ORDER BY g.since OFFSET 0
     ) o WHERE o.id > $3 AND o.id <= $6 ORDER BY o.id LIMIT $4)
)
SELECT p.id, p.since, v.make, v.model, (SELECT exact FROM status)
FROM (SELECT * FROM page ORDER BY id LIMIT $4) p
LEFT JOIN vehicles v ON v.id = p.id
UNION ALL
SELECT NULL, NULL, NULL, NULL, (SELECT exact FROM status)
"#
    )
});

/// The same page by the plain rule over `"stateLogs"` (`$5` the instant), for when the segments
/// are not exact: each vehicle after `$3` in id order, its change in effect at T by the lookup's
/// index; as slow as the vehicles passed over are many.
pub const BY_RULE_SQL: &str = concat!(
    r#"
SELECT p.id, p.since, v.make, v.model, false
FROM (
    SELECT t.id, t.since FROM (
        SELECT DISTINCT ON (l."vehicleId") l."vehicleId" AS id, l.state,
            CASE WHEN l."timestamp" = '-infinity' THEN -4611686018427387904
                 ELSE (EXTRACT(EPOCH FROM l."timestamp") * 1000000)::int8 END AS since
        FROM "stateLogs" l
        WHERE l."vehicleId" > $3 AND l."timestamp" <= $5
        ORDER BY l."vehicleId", "#,
    latest_first!(),
    r#"
    ) t WHERE t.state = $1 ORDER BY t.id LIMIT $4
) p
LEFT JOIN vehicles v ON v.id = p.id
"#
);

/// A row of the list's statements: id, since (µs), make, model, whether the segments were exact.
type VehicleRow = (
    Option<i32>,
    Option<i64>,
    Option<String>,
    Option<String>,
    bool,
);

/// Where a page of the list starts and how wide its first window of ids is.
#[derive(Debug, Clone, Copy)]
pub struct ListScan {
    /// The last id of the page before (`None`: the first page).
    pub after: Option<i32>,
    /// How many ids the first window spans (it grows four times each window that does not fill
    /// the page).
    pub window: u32,
    /// Whether few vehicles are in the state at T: the open segments are read by their start.
    pub open_by_start: bool,
}

/// Up to `limit` vehicles in `state` at `at` after `scan.after`, in id order, and whether the
/// segments were exact (else the plain rule answered). [`VEHICLES_SQL`] over windows of ids from
/// `scan.after`, until the page is full or the ids run out.
pub async fn vehicles(
    conn: &mut PgConnection,
    state: &str,
    at: Timestamp,
    scan: ListScan,
    limit: u16,
) -> Result<(Vec<FleetVehicle>, bool), DbError> {
    let mut vehicles = Vec::with_capacity(usize::from(limit));
    let mut from = scan.after.map_or(i64::MIN, i64::from);
    let mut window = i64::from(scan.window.max(1));
    loop {
        // Ids are 32-bit: the window ends at the last, and the first covers every id at or below
        // zero with the first `window` above it.
        let to = from.max(0).saturating_add(window).min(i64::from(i32::MAX));
        let wanted = i64::from(limit) - vehicles.len() as i64;
        let rows: Vec<VehicleRow> = sqlx::query_as(VEHICLES_SQL.as_str())
            .bind(state)
            .bind(at.unix_micros())
            .bind(from)
            .bind(wanted)
            .bind(scan.open_by_start)
            .bind(to)
            .fetch_all(&mut *conn)
            .await?;
        let (page, exact) = decode(rows);
        if !exact {
            return by_rule(conn, state, at, scan.after, limit).await;
        }
        vehicles.extend(page);
        if vehicles.len() >= usize::from(limit) || to >= i64::from(i32::MAX) {
            return Ok((vehicles, true));
        }
        from = to;
        window = window.saturating_mul(4);
    }
}

/// [`BY_RULE_SQL`]: the page by the plain rule.
async fn by_rule(
    conn: &mut PgConnection,
    state: &str,
    at: Timestamp,
    after: Option<i32>,
    limit: u16,
) -> Result<(Vec<FleetVehicle>, bool), DbError> {
    let rows: Vec<VehicleRow> = sqlx::query_as(BY_RULE_SQL)
        .bind(state)
        .bind(at.unix_micros())
        .bind(after.map_or(i64::MIN, i64::from))
        .bind(i64::from(limit))
        .bind(at.as_datetime())
        .fetch_all(conn)
        .await?;
    Ok((decode(rows).0, false))
}

/// The vehicles of a statement's rows, in id order, and what its status row says.
fn decode(rows: Vec<VehicleRow>) -> (Vec<FleetVehicle>, bool) {
    let mut exact = false;
    let mut vehicles = Vec::with_capacity(rows.len());
    for (id, since, make, model, status) in rows {
        let Some(id) = id else {
            exact = status;
            continue;
        };
        vehicles.push(FleetVehicle {
            id,
            make,
            model,
            // `-infinity` (or anything outside 0001 to 9999) is no instant to show.
            since: since.and_then(Timestamp::from_unix_micros),
        });
    }
    // The page came in id order; the status row's union does not promise to keep it.
    vehicles.sort_unstable_by_key(|v| v.id);
    (vehicles, exact)
}

/// Builds `fleet_sums` anew from `"stateLogs"` (writers wait meanwhile) and marks it exact; the
/// number of rows written.
pub async fn rebuild(conn: &mut PgConnection) -> Result<i64, DbError> {
    Ok(sqlx::query_scalar("SELECT vehicle_state_fleet_rebuild()")
        .fetch_one(conn)
        .await?)
}
