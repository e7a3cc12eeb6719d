-- The lookup asks for one vehicle's latest row at or before an instant: an equality on
-- "vehicleId" and a descending range on "timestamp", so this index answers it with one probe, and
-- INCLUDE (state) lets it do so without visiting the table (an index-only scan once vacuumed).
--
-- Not CONCURRENTLY: migrations run under sqlx's advisory lock, and a concurrent build waits for
-- every other session, including replicas waiting on that lock, which deadlocks when several
-- replicas start together. A plain build blocks writes to "stateLogs" while it runs (seconds per
-- few million rows); on a very large live table, build the index by hand with CONCURRENTLY first,
-- and this statement then does nothing.
CREATE INDEX IF NOT EXISTS "stateLogs_vehicleId_timestamp_idx"
    ON "stateLogs" ("vehicleId", "timestamp" DESC) INCLUDE (state);
