//! Applying a batch of events: one transaction, the vehicles it touches locked in a fixed order,
//! then one statement that stores what is new and keeps `vehicles.state` equal to each vehicle's
//! latest change.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::{DbError, answered_within};
use crate::domain::event::{Registration, StateChange};
use crate::telemetry::otel;

/// The first key of the advisory locks ingest takes, one per vehicle (`0x5653` is "VS"): the
/// second key is the vehicle's id. Nothing else in the database should use this key space.
pub const INGEST_LOCK_SPACE: i32 = 0x5653_0001;

/// Locks every vehicle of the batch for the rest of the transaction, in ascending id order, so
/// two batches that share vehicles wait for each other instead of deadlocking. One round trip,
/// one row back.
///
/// It also makes the transaction plan [`APPLY_SQL`] for its actual arrays: a generic plan of a
/// prepared statement knows neither their sizes nor how far the tables have grown, and picked
/// full scans of `"stateLogs"` (31 ms a batch of 84 events, growing with the table, against 4 ms
/// planned for the batch).
const LOCK_SQL: &str = r#"
SELECT set_config('plan_cache_mode', 'force_custom_plan', true),
       set_config('vehicle_state.fleet', 'maintained', true),
       count(pg_advisory_xact_lock($1, ids.id))
FROM (SELECT DISTINCT u.id FROM unnest($2::int4[]) AS u(id) ORDER BY u.id) AS ids
"#;

/// The batch, under the locks: state changes not already stored (same vehicle, state and
/// instant) are inserted once; registrations of vehicles not yet known are inserted with the
/// state of their latest change (or `quoted`); every vehicle touched gets the state of its latest
/// change, stored or new. Every data-modifying part sees the snapshot taken after the locks were
/// granted, so nothing another batch committed for these vehicles is missed. One row per input
/// event: which list (`change`), its 1-based position, and its outcome (0 applied, 1 duplicate,
/// 2 a registration that contradicts the vehicle's, with the vehicle's make and model).
pub const APPLY_SQL: &str = concat!(
    r#"
WITH reg_in AS (
    SELECT * FROM unnest($1::int4[], $2::text[], $3::text[]) WITH ORDINALITY AS r(id, make, model, n)
), chg_in AS (
    SELECT * FROM unnest($4::int4[], $5::text[], $6::timestamptz[]) WITH ORDINALITY AS c(id, state, "timestamp", n)
), chg_new AS (
    SELECT DISTINCT ON (c.id, c.state, c."timestamp") c.id, c.state, c."timestamp", c.n
    FROM chg_in c
    WHERE NOT EXISTS (
        SELECT 1 FROM "stateLogs" s
        WHERE s."vehicleId" = c.id AND s."timestamp" = c."timestamp" AND s.state = c.state
    )
    ORDER BY c.id, c.state, c."timestamp", c.n
), chg_ins AS (
    INSERT INTO "stateLogs" ("vehicleId", state, "timestamp")
    SELECT id, state, "timestamp" FROM chg_new
), fleet_new AS (
    -- The fleet's sums and segments (`fleet_sums`, `fleet_segments`, see
    -- migrations/20261208000000_fleet.sql), kept exact in this statement: per vehicle and
    -- instant of the new changes, the best of them in the lookup's order (changes past 9999 are
    -- never an answer, and left out).
    SELECT DISTINCT ON (c.id, c."timestamp") c.id, c."timestamp" AS at, c.state
    FROM chg_new c
    WHERE c."timestamp" <= '9999-12-31 23:59:59.999999+00'
      -- Nothing while they are not exact: a rebuild, which waits for this transaction, makes
      -- them anew.
      AND (SELECT fs.exact FROM fleet_status fs)
    ORDER BY c.id, c."timestamp",
        CASE c.state WHEN 'sold' THEN 3 WHEN 'selling' THEN 2 WHEN 'quoted' THEN 1 ELSE 0 END DESC,
        c.state COLLATE "C" DESC
), fleet_moves AS (
    -- What each such instant changes: from it until the vehicle's next change (stored or new),
    -- the vehicle was in `before` (the stored change in effect there, as this statement's
    -- snapshot has it, before its own insert) and is now in `after` (the better of that and
    -- the new one, if the stored one is at the same instant).
    SELECT f.id, o.state AS before,
        CASE WHEN o."timestamp" = f.at
             AND (CASE o.state WHEN 'sold' THEN 3 WHEN 'selling' THEN 2 WHEN 'quoted' THEN 1 ELSE 0 END,
                  o.state COLLATE "C")
               > (CASE f.state WHEN 'sold' THEN 3 WHEN 'selling' THEN 2 WHEN 'quoted' THEN 1 ELSE 0 END,
                  f.state COLLATE "C")
             THEN o.state ELSE f.state END AS after,
        CASE WHEN f.at = '-infinity' THEN -4611686018427387904
             ELSE (EXTRACT(EPOCH FROM f.at) * 1000000)::int8 END AS micros,
        (EXTRACT(EPOCH FROM LEAST(lead(f.at) OVER (PARTITION BY f.id ORDER BY f.at), x."timestamp"))
            * 1000000)::int8 AS next_micros,
        CASE WHEN o."timestamp" = '-infinity' THEN -4611686018427387904
             ELSE (EXTRACT(EPOCH FROM o."timestamp") * 1000000)::int8 END AS o_micros,
        (EXTRACT(EPOCH FROM x."timestamp") * 1000000)::int8 AS x_micros
    FROM fleet_new f
    LEFT JOIN LATERAL (
        SELECT l.state, l."timestamp" FROM "stateLogs" l
        WHERE l."vehicleId" = f.id AND l."timestamp" <= f.at
        ORDER BY "#,
    latest_first!(),
    r#"
        LIMIT 1
    ) o ON true
    LEFT JOIN LATERAL (
        SELECT l."timestamp" FROM "stateLogs" l
        WHERE l."vehicleId" = f.id AND l."timestamp" > f.at
          AND l."timestamp" <= '9999-12-31 23:59:59.999999+00'
        ORDER BY l."timestamp" LIMIT 1
    ) x ON true
), fleet_deltas AS (
    -- +1 for the state entered and -1 for the one left, at the instant; the reverse at the next
    -- change, whose own move is now from `after`.
    SELECT m.micros, m.after AS state, 1 AS delta FROM fleet_moves m
    WHERE m.before IS DISTINCT FROM m.after
    UNION ALL
    SELECT m.micros, m.before, -1 FROM fleet_moves m WHERE m.before <> m.after
    UNION ALL
    SELECT m.next_micros, m.before, 1 FROM fleet_moves m
    WHERE m.before <> m.after AND m.next_micros IS NOT NULL
    UNION ALL
    SELECT m.next_micros, m.after, -1 FROM fleet_moves m
    WHERE m.before IS DISTINCT FROM m.after AND m.next_micros IS NOT NULL
), fleet_upsert AS (
    -- Into the five buckets around each instant, in key order: two batches that move the same
    -- sums lock them in the same order, and wait rather than deadlock.
    INSERT INTO fleet_sums (level, bucket, state, delta)
    SELECT s.level, d.micros >> (23 + 5 * s.level), d.state, sum(d.delta)
    FROM fleet_deltas d CROSS JOIN (VALUES (1), (2), (3), (4), (5)) AS s(level)
    GROUP BY 1, 2, 3
    HAVING sum(d.delta) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (level, bucket, state) DO UPDATE SET delta = fleet_sums.delta + EXCLUDED.delta
), fleet_points AS (
    -- The segments of the timelines (`fleet_segments`) the new changes cut: each new instant
    -- starts one, and so does each stored segment a new instant falls in (from its own start).
    -- At an instant that is both, the new one's state (the better of the two).
    SELECT DISTINCT ON (p.id, p.since) p.id, p.since, p.state, p.x_micros
    FROM (
        SELECT m.id, m.micros AS since, m.after AS state, m.x_micros, 0 AS stored FROM fleet_moves m
        UNION ALL
        SELECT m.id, m.o_micros, m.before, m.x_micros, 1 FROM fleet_moves m
        WHERE m.o_micros < m.micros
    ) p
    ORDER BY p.id, p.since, p.stored
), fleet_cut AS (
    -- Each runs to the next such start or to the end of the stored segment it lies in (the
    -- vehicle's next stored change), whichever is first; open when neither is.
    SELECT c.id, c.state, c.since, c.until, vehicle_state_fleet_level(c.since, c.until) AS level
    FROM (
        SELECT p.id, p.state, p.since,
            LEAST(lead(p.since) OVER (PARTITION BY p.id ORDER BY p.since), p.x_micros) AS until
        FROM fleet_points p
    ) c
), fleet_gone AS (
    -- The stored segments a new instant fell in, unless one of the new ones has the same key
    -- (that one is updated in place: a statement cannot both delete and insert one key).
    SELECT m.before AS state, vehicle_state_fleet_level(m.o_micros, m.x_micros) AS level,
        m.id, m.o_micros AS since
    FROM fleet_moves m WHERE m.o_micros IS NOT NULL
    EXCEPT
    SELECT c.state, c.level, c.id, c.since FROM fleet_cut c
), fleet_segments_gone AS (
    DELETE FROM fleet_segments s USING fleet_gone g
    WHERE s.state = g.state AND s.level = g.level
      AND s.bucket = vehicle_state_fleet_bucket(g.level, g.since)
      AND s."vehicleId" = g.id AND s.since = g.since
), fleet_segments_new AS (
    -- Only this batch's vehicles' rows, which their locks keep to this transaction.
    INSERT INTO fleet_segments (state, level, bucket, "vehicleId", since, until)
    SELECT c.state, c.level, vehicle_state_fleet_bucket(c.level, c.since), c.id, c.since, c.until
    FROM fleet_cut c
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (state, level, bucket, "vehicleId", since) DO UPDATE SET until = EXCLUDED.until
), touched AS (
    -- Every vehicle the batch names, duplicates too: each is announced on the change feed with
    -- what it is now, so a change committed before and redelivered is announced again.
    SELECT id FROM chg_in UNION SELECT id FROM reg_in
), latest AS (
    -- Per vehicle, the later of its latest new change and its latest stored one (one index
    -- probe): linear in the batch, whatever its size.
    SELECT DISTINCT ON (l.id) l.id, l.state, l."timestamp"
    FROM (
        SELECT n.id, n.state, n."timestamp" FROM (
            SELECT DISTINCT ON (l.id) l.id, l.state, l."timestamp" FROM chg_new l
            ORDER BY l.id, "#,
    latest_first!(),
    r#"
        ) AS n
        UNION ALL
        SELECT t.id, o.state, o."timestamp"
        FROM touched t
        CROSS JOIN LATERAL (
            SELECT l.state, l."timestamp" FROM "stateLogs" l
            WHERE l."vehicleId" = t.id
            ORDER BY "#,
    latest_first!(),
    r#"
            LIMIT 1
        ) AS o
    ) AS l
    ORDER BY l.id, "#,
    latest_first!(),
    r#"
), existing AS (
    SELECT v.id, v.make, v.model FROM vehicles v WHERE v.id IN (SELECT id FROM reg_in)
), reg_first AS (
    SELECT DISTINCT ON (r.id) r.id, r.make, r.model, r.n FROM reg_in r ORDER BY r.id, r.n
), reg_ins AS (
    INSERT INTO vehicles (id, make, model, state, version)
    SELECT f.id, f.make, f.model, COALESCE(lt.state, 'quoted'), 1
    FROM reg_first f LEFT JOIN latest lt ON lt.id = f.id
    WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.id = f.id)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, make, model, version
), upd AS (
    -- A vehicle with a new change (late or not) gets a new version: what was cached of it
    -- before may be wrong now.
    UPDATE vehicles v SET state = lt.state, version = v.version + 1
    FROM latest lt
    WHERE v.id = lt.id
      AND (v.id IN (SELECT id FROM chg_new) OR v.state IS DISTINCT FROM lt.state)
    RETURNING v.id, v.version
)
SELECT 0::int2 AS kind, r.n,
    (CASE
        WHEN e.id IS NULL AND f.n = r.n THEN 0
        WHEN COALESCE(e.make, f.make) = r.make AND COALESCE(e.model, f.model) = r.model THEN 1
        ELSE 2
    END)::int2 AS outcome,
    COALESCE(e.make, f.make) AS make, COALESCE(e.model, f.model) AS model,
    NULL::int4 AS id, NULL::int8 AS version, NULL::text AS state, NULL::int8 AS since
FROM reg_in r
JOIN reg_first f ON f.id = r.id
LEFT JOIN existing e ON e.id = r.id
UNION ALL
SELECT 1::int2, c.n, (CASE WHEN w.n IS NULL THEN 1 ELSE 0 END)::int2, NULL, NULL,
    NULL, NULL, NULL, NULL
FROM chg_in c
LEFT JOIN chg_new w ON w.n = c.n
UNION ALL
-- Each vehicle as the batch leaves it, for the change feed: its version, make and model (NULL
-- while unregistered) and its latest state, as of this statement's writes.
SELECT 2::int2, NULL, NULL, COALESCE(ri.make, v.make), COALESCE(ri.model, v.model),
    t.id, COALESCE(u.version, ri.version, v.version, 0), lt.state,
    CASE WHEN isfinite(lt."timestamp")
        THEN (EXTRACT(EPOCH FROM lt."timestamp") * 1000000)::int8 END
FROM touched t
LEFT JOIN upd u ON u.id = t.id
LEFT JOIN reg_ins ri ON ri.id = t.id
LEFT JOIN vehicles v ON v.id = t.id
LEFT JOIN latest lt ON lt.id = t.id
"#
);

/// What became of one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Stored now.
    New,
    /// Already stored (or earlier in the same batch): nothing changed.
    Duplicate,
    /// A registration of a vehicle registered as something else; nothing changed.
    Contradicts { make: String, model: String },
    /// PostgreSQL refused the event itself (not the connection): it can never be applied.
    Refused(String),
}

/// The outcome of each registration and each change, in the order given, and each vehicle the
/// batch named as the batch left it.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub registrations: Vec<Applied>,
    pub changes: Vec<Applied>,
    pub vehicles: Vec<VehicleNow>,
}

/// A vehicle as a committed batch left it: what the change feed announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleNow {
    pub id: i32,
    /// `vehicles.version`: raised by every batch that stored something new about it.
    pub version: u64,
    /// Make and model; `None` while no registration is stored.
    pub vehicle: Option<(String, String)>,
    /// Its latest state change (state, microseconds since the epoch; `None` for an instant out
    /// of range), if any.
    pub state: Option<(String, Option<i64>)>,
}

/// Applies the batch in one transaction: BEGIN, the locks, the apply statement, COMMIT. Either all
/// of it is committed or none of it. Each statement waits at most `response_timeout`
/// (`DB_RESPONSE_TIMEOUT_MS`) for its reply; past it the connection is dropped rather than
/// returned to the pool (see [`super::Database`]) and the batch fails as `no_response`, to be
/// delivered again: applying is idempotent, so a COMMIT whose reply was lost is harmless.
pub async fn apply(
    pool: &PgPool,
    response_timeout: Duration,
    registrations: &[&Registration],
    changes: &[&StateChange],
) -> Result<BatchOutcome, DbError> {
    let mut vehicles: Vec<i32> = registrations
        .iter()
        .map(|r| r.vehicle.get())
        .chain(changes.iter().map(|c| c.vehicle.get()))
        .collect();
    vehicles.sort_unstable();
    vehicles.dedup();
    let reg_ids: Vec<i32> = registrations.iter().map(|r| r.vehicle.get()).collect();
    let makes: Vec<&str> = registrations.iter().map(|r| r.make.as_str()).collect();
    let models: Vec<&str> = registrations.iter().map(|r| r.model.as_str()).collect();
    let chg_ids: Vec<i32> = changes.iter().map(|c| c.vehicle.get()).collect();
    let states: Vec<&str> = changes.iter().map(|c| c.state.as_str()).collect();
    let ats: Vec<DateTime<Utc>> = changes.iter().map(|c| c.at.as_datetime()).collect();

    let statement = tracing::trace_span!(
        target: otel::SPANS,
        "postgresql apply_events",
        otel.kind = "client",
        db.system = "postgresql",
        db.operation.name = "SELECT",
        db.query.summary = "apply_events",
        vehicle_state.events = registrations.len() + changes.len(),
    );
    let mut conn = pool.acquire().await?;
    let limit = response_timeout;
    let applied = async {
        let (tx, rows) = otel::traced(statement, async {
            let mut tx = answered_within(limit, sqlx::Connection::begin(&mut *conn)).await?;
            answered_within(
                limit,
                sqlx::query(LOCK_SQL)
                    .bind(INGEST_LOCK_SPACE)
                    .bind(&vehicles)
                    .execute(&mut *tx),
            )
            .await?;
            let rows = answered_within(
                limit,
                sqlx::query(APPLY_SQL)
                    .bind(&reg_ids)
                    .bind(&makes)
                    .bind(&models)
                    .bind(&chg_ids)
                    .bind(&states)
                    .bind(&ats)
                    .fetch_all(&mut *tx),
            )
            .await?;
            Ok::<_, DbError>((tx, rows))
        })
        .await?;
        let commit = tracing::trace_span!(
            target: otel::SPANS,
            "postgresql COMMIT",
            otel.kind = "client",
            db.system = "postgresql",
            db.operation.name = "COMMIT",
        );
        otel::traced(commit, answered_within(limit, tx.commit())).await?;
        Ok::<_, DbError>(rows)
    };
    let rows = match applied.await {
        Ok(rows) => rows,
        Err(error) => {
            if error.kind() == "no_response" {
                drop(conn.detach());
            }
            return Err(error);
        }
    };

    let mut outcome = BatchOutcome {
        registrations: vec![Applied::Duplicate; registrations.len()],
        changes: vec![Applied::Duplicate; changes.len()],
        vehicles: Vec::with_capacity(vehicles.len()),
    };
    for row in rows {
        let kind: i16 = row.try_get(0)?;
        if kind == 2 {
            let make: Option<String> = row.try_get(3)?;
            let model: Option<String> = row.try_get(4)?;
            let state: Option<String> = row.try_get(7)?;
            let version: i64 = row.try_get(6)?;
            outcome.vehicles.push(VehicleNow {
                id: row.try_get(5)?,
                version: u64::try_from(version).unwrap_or(0),
                vehicle: make.zip(model),
                state: match state {
                    Some(state) => Some((state, row.try_get(8)?)),
                    None => None,
                },
            });
            continue;
        }
        let change = kind == 1;
        let n: i64 = row.try_get(1)?;
        let code: i16 = row.try_get(2)?;
        let applied = match code {
            0 => Applied::New,
            1 => Applied::Duplicate,
            _ => Applied::Contradicts {
                make: row.try_get(3)?,
                model: row.try_get(4)?,
            },
        };
        let list = if change {
            &mut outcome.changes
        } else {
            &mut outcome.registrations
        };
        // Ordinality is 1-based and within the list's length, as the statement built it.
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| list.get_mut(i)) {
            *slot = applied;
        }
    }
    Ok(outcome)
}
