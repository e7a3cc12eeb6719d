-- The fleet at any instant: how many vehicles were in each state at T, in a few index range scans
-- whatever the fleet's size (see docs/architecture.md, "The fleet at an instant").
--
-- A vehicle's state changes at each instant it has a change (the change in effect there, in the
-- lookup's order): +1 for the state it enters and -1 for the one it leaves. The count of a state
-- at T is the sum of those deltas up to T. `fleet_sums` holds the sums per state over aligned
-- buckets of five sizes (2^28 µs, about 4.5 minutes, then 32 times larger each: 2.4 hours, 3.2
-- days, 102 days, 8.9 years), so a count at T reads the buckets of each size between the end of the
-- larger one around T and T's own (at most 31 a size and state), and then the changes of T's last
-- 4.5 minutes from "stateLogs" itself (by the timestamp index below). A change moves the sums of the
-- five buckets around its instant, and, when it comes late, of the five around the next change.
--
-- Instants are microseconds since the Unix epoch; `-infinity` counts as -2^62 (before anything that
-- can be asked). Changes after 9999-12-31T23:59:59.999999Z are never an answer and are left out.
CREATE TABLE IF NOT EXISTS fleet_sums (
    level  SMALLINT NOT NULL,
    bucket BIGINT   NOT NULL,
    state  TEXT     NOT NULL,
    delta  BIGINT   NOT NULL,
    -- With the sum in the key's index, a count reads the key alone (index-only range scans).
    PRIMARY KEY (level, bucket, state) INCLUDE (delta)
);

-- One row: whether `fleet_sums` is exact. `ingest` keeps it exact in its own transaction (it sets
-- `vehicle_state.fleet` to `maintained` there); any other write to "stateLogs" marks it inexact, and
-- the service then answers fleet questions from "stateLogs" alone (exact, slower) until
-- `vehicle_state_fleet_rebuild()` runs (`vehicle-state fleet rebuild`, or `seed`).
CREATE TABLE IF NOT EXISTS fleet_status (
    id       BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    exact    BOOLEAN NOT NULL,
    built_at TIMESTAMPTZ NOT NULL
);

-- The changes of a short span of time, for the part of a count that is finer than the buckets.
-- Not CONCURRENTLY, for the reason given in 20260101000001_state_logs_lookup_index.sql.
CREATE INDEX IF NOT EXISTS "stateLogs_timestamp_idx" ON "stateLogs" ("timestamp") INCLUDE ("vehicleId");

CREATE OR REPLACE FUNCTION vehicle_state_fleet_rebuild() RETURNS BIGINT
LANGUAGE plpgsql AS $fn$
DECLARE
    written BIGINT;
BEGIN
    -- Writers wait (readers do not); a rebuild sees every change committed before it.
    LOCK TABLE "stateLogs" IN SHARE MODE;
    DELETE FROM fleet_sums;
    WITH tops AS (
        -- Per vehicle and instant, the change in effect there, latest first.
        SELECT DISTINCT ON (l."vehicleId", l."timestamp") l."vehicleId" AS id, l."timestamp" AS at, l.state
        FROM "stateLogs" l
        WHERE l."timestamp" <= '9999-12-31 23:59:59.999999+00'
        ORDER BY l."vehicleId", l."timestamp" DESC,
            CASE l.state WHEN 'sold' THEN 3 WHEN 'selling' THEN 2 WHEN 'quoted' THEN 1 ELSE 0 END DESC,
            l.state COLLATE "C" DESC
    ), moves AS (
        SELECT CASE WHEN t.at = '-infinity' THEN -4611686018427387904
                    ELSE (EXTRACT(EPOCH FROM t.at) * 1000000)::int8 END AS micros,
            t.state,
            lead(t.state) OVER (PARTITION BY t.id ORDER BY t.at DESC) AS previous
        FROM tops t
    ), deltas AS (
        SELECT m.micros, m.state, 1 AS delta FROM moves m WHERE m.previous IS DISTINCT FROM m.state
        UNION ALL
        SELECT m.micros, m.previous, -1 FROM moves m WHERE m.previous <> m.state
    ), finest AS (
        SELECT d.micros >> 28 AS bucket, d.state, sum(d.delta)::int8 AS delta
        FROM deltas d GROUP BY 1, 2
    )
    INSERT INTO fleet_sums (level, bucket, state, delta)
    SELECT 1, f.bucket, f.state, f.delta FROM finest f WHERE f.delta <> 0
    UNION ALL
    SELECT s.level, f.bucket >> (5 * (s.level - 1)), f.state, sum(f.delta)
    FROM finest f CROSS JOIN (VALUES (2), (3), (4), (5)) AS s(level)
    GROUP BY 1, 2, 3
    HAVING sum(f.delta) <> 0
    -- In key order: the rows a count reads lie together.
    ORDER BY 1, 2, 3;
    GET DIAGNOSTICS written = ROW_COUNT;
    INSERT INTO fleet_status (id, exact, built_at) VALUES (true, true, now())
    ON CONFLICT (id) DO UPDATE SET exact = true, built_at = now();
    RETURN written;
END
$fn$;

CREATE OR REPLACE FUNCTION vehicle_state_fleet_written() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_setting('vehicle_state.fleet', true) IS DISTINCT FROM 'maintained' THEN
        UPDATE fleet_status SET exact = false WHERE exact;
    END IF;
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS "stateLogs_fleet_written" ON "stateLogs";
CREATE TRIGGER "stateLogs_fleet_written"
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "stateLogs"
    FOR EACH STATEMENT EXECUTE FUNCTION vehicle_state_fleet_written();

SELECT vehicle_state_fleet_rebuild();
