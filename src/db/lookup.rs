use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::DbError;
use crate::domain::{Instant, Lookup, StateAnswer, Vehicle, VehicleId};

/// One round trip answers all three outcomes: no row means no such vehicle; a row with a NULL
/// state means the vehicle had no state yet. The vehicle comes by primary key; the state row by
/// one probe of `stateLogs_vehicleId_timestamp_idx`, never by reading the history.
///
/// Rows with equal timestamps are ordered by lifecycle (a vehicle sold in the same second it went
/// on sale is sold), then by state text compared bytewise (`COLLATE "C"`, the same whatever the
/// database's collation), so the answer does not depend on physical row order.
pub const LOOKUP_SQL: &str = r#"
SELECT v.make, v.model, s.state, s."timestamp"
FROM vehicles v
LEFT JOIN LATERAL (
    SELECT l.state, l."timestamp"
    FROM "stateLogs" l
    WHERE l."vehicleId" = v.id AND l."timestamp" <= $2
    ORDER BY l."timestamp" DESC,
             CASE l.state WHEN 'sold' THEN 3 WHEN 'selling' THEN 2 WHEN 'quoted' THEN 1 ELSE 0 END DESC,
             l.state COLLATE "C" DESC
    LIMIT 1
) s ON true
WHERE v.id = $1
"#;

type Row = (String, String, Option<String>, Option<DateTime<Utc>>);

pub async fn lookup(pool: &PgPool, id: VehicleId, at: Instant) -> Result<Lookup, DbError> {
    let row: Option<Row> = sqlx::query_as(LOOKUP_SQL)
        .bind(id.get())
        .bind(at.as_datetime())
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        None => Lookup::UnknownVehicle,
        Some((make, model, Some(state), Some(state_since))) => Lookup::Found(StateAnswer {
            vehicle: Vehicle {
                id: id.get(),
                make,
                model,
            },
            state,
            state_since,
            timestamp: at,
        }),
        Some(_) => Lookup::NoStateYet,
    })
}
