-- no-transaction
-- The lookup asks for one vehicle's latest row at or before an instant: an equality on
-- "vehicleId" and a descending range on "timestamp", so this index answers it with one probe and
-- INCLUDE (state) lets it do so without visiting the table (an index-only scan once vacuumed).
-- CONCURRENTLY keeps writers unblocked while it builds on a table that already holds data, which
-- is why this migration runs outside a transaction.
CREATE INDEX CONCURRENTLY IF NOT EXISTS "stateLogs_vehicleId_timestamp_idx"
    ON "stateLogs" ("vehicleId", "timestamp" DESC) INCLUDE (state);
