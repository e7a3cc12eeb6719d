use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::DbError;
use crate::domain::{Lookup, StateAnswer, Timestamp, Vehicle, VehicleId};

/// The order of a vehicle's state changes, latest first: by time, then, for equal timestamps, by
/// lifecycle (a vehicle sold in the same second it went on sale is sold), then by state text
/// compared bytewise (`COLLATE "C"`, the same whatever the database's collation), so an answer
/// never depends on physical row order. Every query that picks "the change in effect" uses it.
macro_rules! latest_first {
    () => {
        r#"l."timestamp" DESC,
             CASE l.state WHEN 'sold' THEN 3 WHEN 'selling' THEN 2 WHEN 'quoted' THEN 1 ELSE 0 END DESC,
             l.state COLLATE "C" DESC"#
    };
}

/// One pair's lookup: no row means no such vehicle; a row with a NULL state means the vehicle had
/// no state yet. The vehicle comes by primary key; the state row by one probe of
/// `stateLogs_vehicleId_timestamp_idx`, never by reading the history, and the time of the next
/// change after the instant (NULL: none yet) by a second probe of the same index: until then
/// the answer holds. A change past the last instant that can be asked (9999, or `infinity`)
/// is never an answer, so it is no `until` either. The service sends
/// [`LOOKUP_MANY_SQL`] (this, for many pairs at once); this one-pair form is what `bench/run`
/// gives pgbench as the database's ceiling.
pub const LOOKUP_SQL: &str = concat!(
    r#"
SELECT v.make, v.model, s.state, (EXTRACT(EPOCH FROM s."timestamp") * 1000000)::int8,
    (EXTRACT(EPOCH FROM u."timestamp") * 1000000)::int8, v.version
FROM vehicles v
LEFT JOIN LATERAL (
    SELECT l.state, l."timestamp"
    FROM "stateLogs" l
    WHERE l."vehicleId" = v.id AND l."timestamp" <= $2
    ORDER BY "#,
    latest_first!(),
    r#"
    LIMIT 1
) s ON true
LEFT JOIN LATERAL (
    SELECT n."timestamp"
    FROM "stateLogs" n
    WHERE n."vehicleId" = v.id AND n."timestamp" > $2 AND n."timestamp" <= '9999-12-31 23:59:59.999999+00' 
    ORDER BY n."timestamp"
    LIMIT 1
) u ON true
WHERE v.id = $1
"#
);

/// Many (vehicle, instant) pairs in one statement: each pair, in order, joined to its vehicle by
/// primary key and laterally to the same two index probes as [`LOOKUP_SQL`]. A NULL make means
/// no such vehicle; a NULL state, no state yet; a NULL next change, none after the instant.
pub const LOOKUP_MANY_SQL: &str = concat!(
    r#"
SELECT v.make, v.model, s.state, (EXTRACT(EPOCH FROM s."timestamp") * 1000000)::int8,
    (EXTRACT(EPOCH FROM u."timestamp") * 1000000)::int8, v.version
FROM unnest($1::int4[], $2::timestamptz[]) WITH ORDINALITY AS q(id, at, n)
LEFT JOIN vehicles v ON v.id = q.id
LEFT JOIN LATERAL (
    SELECT l.state, l."timestamp"
    FROM "stateLogs" l
    WHERE l."vehicleId" = v.id AND l."timestamp" <= q.at
    ORDER BY "#,
    latest_first!(),
    r#"
    LIMIT 1
) s ON true
LEFT JOIN LATERAL (
    SELECT n."timestamp"
    FROM "stateLogs" n
    WHERE n."vehicleId" = v.id AND n."timestamp" > q.at AND n."timestamp" <= '9999-12-31 23:59:59.999999+00' 
    ORDER BY n."timestamp"
    LIMIT 1
) u ON true
ORDER BY q.n
"#
);

/// The state's time comes as microseconds since the Unix epoch, not as a `timestamptz`: decoding
/// an `infinity` or a year past chrono's range would overflow in the driver; as an integer, it
/// fails the statement (or is refused below) instead, and only its lookup fails.
type ManyRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// A vehicle's version (`vehicles.version`) as read with an answer: 0 for no such vehicle.
fn version(raw: Option<i64>) -> u64 {
    raw.map_or(0, |v| u64::try_from(v).unwrap_or(0))
}

/// The answers for `pairs`, in their order, from one statement ([`LOOKUP_MANY_SQL`]), each with
/// its vehicle's version in the same snapshot.
pub async fn lookup_many(
    conn: &mut PgConnection,
    pairs: &[(VehicleId, Timestamp)],
) -> Result<Vec<(Lookup, u64)>, DbError> {
    let ids: Vec<i32> = pairs.iter().map(|(id, _)| id.get()).collect();
    let ats: Vec<DateTime<Utc>> = pairs.iter().map(|(_, at)| at.as_datetime()).collect();
    let rows: Vec<ManyRow> = sqlx::query_as(LOOKUP_MANY_SQL)
        .bind(&ids)
        .bind(&ats)
        .fetch_all(conn)
        .await?;
    if rows.len() != pairs.len() {
        // unnest yields one row per pair: anything else is a defect, not an outage.
        return Err(DbError::Query(sqlx::Error::Protocol(format!(
            "{} rows for {} pairs",
            rows.len(),
            pairs.len()
        ))));
    }
    pairs
        .iter()
        .zip(rows)
        .map(|(&(id, at), (make, model, state, since, until, v))| {
            let vehicle = make.zip(model);
            Ok((outcome(id, at, vehicle, state, since, until)?, version(v)))
        })
        .collect()
}

fn outcome(
    id: VehicleId,
    at: Timestamp,
    vehicle: Option<(String, String)>,
    state: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
) -> Result<Lookup, DbError> {
    let instant = |micros: i64| {
        Timestamp::from_unix_micros(micros).ok_or_else(|| {
            DbError::Query(sqlx::Error::Decode(
                format!("vehicle {id}: a state change at {micros} µs, outside 0001 to 9999").into(),
            ))
        })
    };
    Ok(match (vehicle, state, since) {
        (None, _, _) => Lookup::UnknownVehicle,
        (Some((make, model)), Some(state), Some(micros)) => {
            let since = instant(micros)?;
            let until = until.map(instant).transpose()?;
            Lookup::Found(StateAnswer {
                vehicle: Vehicle {
                    id: id.get(),
                    make,
                    model,
                },
                state,
                state_since: since.as_datetime(),
                until: until.map(Timestamp::as_datetime),
                timestamp: at,
            })
        }
        (Some(_), _, _) => Lookup::NoStateYet {
            until: until.map(instant).transpose()?.map(Timestamp::as_datetime),
        },
    })
}

/// Each vehicle of `$1` as it is now, in the order given: its version, make and model (NULL:
/// not registered) and its latest state change (NULL: none), the one `vehicles.state` holds.
/// One statement: the vehicle by primary key, the change by one probe of the lookup's index.
pub const CURRENT_SQL: &str = concat!(
    r#"
SELECT q.id, v.make, v.model, COALESCE(v.version, 0), s.state,
    CASE WHEN isfinite(s."timestamp") THEN (EXTRACT(EPOCH FROM s."timestamp") * 1000000)::int8 END
FROM unnest($1::int4[]) WITH ORDINALITY AS q(id, n)
LEFT JOIN vehicles v ON v.id = q.id
LEFT JOIN LATERAL (
    SELECT l.state, l."timestamp"
    FROM "stateLogs" l
    WHERE l."vehicleId" = q.id
    ORDER BY "#,
    latest_first!(),
    r#"
    LIMIT 1
) s ON true
ORDER BY q.n
"#
);

type CurrentRow = (
    i32,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    Option<i64>,
);

/// [`CURRENT_SQL`]: what a stream of changes starts from.
pub async fn current(
    conn: &mut PgConnection,
    ids: &[VehicleId],
) -> Result<Vec<super::VehicleNow>, DbError> {
    let ids: Vec<i32> = ids.iter().map(|id| id.get()).collect();
    let rows: Vec<CurrentRow> = sqlx::query_as(CURRENT_SQL)
        .bind(&ids)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, make, model, version, state, since)| super::VehicleNow {
                id,
                version: u64::try_from(version).unwrap_or(0),
                vehicle: make.zip(model),
                state: state.map(|state| (state, since)),
            },
        )
        .collect())
}
