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

-- `fleet_segments`, for the vehicles in a state at T, in id order, a page at a time: one row per
-- segment of a vehicle's timeline (from a change, in effect there, to the vehicle's next change, or open while it is the
-- latest), filed by how long it lasts. A closed segment is at the lowest level L (0 to 7) whose
-- size, 2^(28+5L) µs (4.5 minutes, then 32 times larger each), exceeds its length, in the bucket
-- of that size its start falls in: it reaches at most the next bucket, so the segments that hold
-- T at level L lie in T's bucket of that size or the one before (and, being at least a 32nd of the
-- size long, are not rare among them). Open segments are at level 8. A page merges, in id order,
-- one range of the key per level and bucket (17 in all), each from the id after the last one
-- listed.
-- `vehicle_state_fleet_rebuild()` below makes it (and its indexes), from "stateLogs".

-- The level of a segment from `since` to `until` (µs; NULL: open), as above.
CREATE OR REPLACE FUNCTION vehicle_state_fleet_level(since BIGINT, until BIGINT) RETURNS SMALLINT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT (CASE
        WHEN until IS NULL THEN 8
        WHEN until - since < (1::int8 << 28) THEN 0
        WHEN until - since < (1::int8 << 33) THEN 1
        WHEN until - since < (1::int8 << 38) THEN 2
        WHEN until - since < (1::int8 << 43) THEN 3
        WHEN until - since < (1::int8 << 48) THEN 4
        WHEN until - since < (1::int8 << 53) THEN 5
        WHEN until - since < (1::int8 << 58) THEN 6
        ELSE 7
    END)::smallint
$fn$;

-- The bucket of a segment starting at `since` at `level`.
CREATE OR REPLACE FUNCTION vehicle_state_fleet_bucket(level SMALLINT, since BIGINT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN level = 8 THEN 0::int8 ELSE since >> (28 + 5 * level) END
$fn$;

-- One row: whether `fleet_sums` and `fleet_segments` are exact. `ingest` keeps it exact in its own transaction (it sets
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
    -- One rebuild at a time (readers of the status do not wait).
    LOCK TABLE fleet_status IN EXCLUSIVE MODE;
    -- The segments are made in a table of their own, without indexes, which are built after it
    -- is filled (a sort each, not 27 million inserts into each at 10 million vehicles); it takes
    -- the place of the old one at the end, so pages read the old one meanwhile.
    DROP TABLE IF EXISTS fleet_segments_build;
    CREATE TABLE fleet_segments_build (
        state       TEXT     NOT NULL,
        level       SMALLINT NOT NULL,
        bucket      BIGINT   NOT NULL,
        "vehicleId" INTEGER  NOT NULL,
        since       BIGINT   NOT NULL,
        -- NULL while open.
        until       BIGINT
    );
    DELETE FROM fleet_sums;
    WITH tops AS (
        -- Per vehicle and instant, the change in effect there.
        SELECT DISTINCT ON (l."vehicleId", l."timestamp") l."vehicleId" AS id, l."timestamp" AS at, l.state
        FROM "stateLogs" l
        WHERE l."timestamp" <= '9999-12-31 23:59:59.999999+00'
        ORDER BY l."vehicleId", l."timestamp",
            CASE l.state WHEN 'sold' THEN 3 WHEN 'selling' THEN 2 WHEN 'quoted' THEN 1 ELSE 0 END DESC,
            l.state COLLATE "C" DESC
    ), segments AS (
        SELECT t.id, t.state,
            CASE WHEN t.at = '-infinity' THEN -4611686018427387904
                 ELSE (EXTRACT(EPOCH FROM t.at) * 1000000)::int8 END AS since,
            (EXTRACT(EPOCH FROM lead(t.at) OVER (PARTITION BY t.id ORDER BY t.at)) * 1000000)::int8 AS until
        FROM tops t
    )
    INSERT INTO fleet_segments_build (state, level, bucket, "vehicleId", since, until)
    SELECT g.state, g.level, vehicle_state_fleet_bucket(g.level, g.since), g.id, g.since, g.until
    FROM (SELECT s.*, vehicle_state_fleet_level(s.since, s.until) AS level FROM segments s) g;
    ALTER TABLE fleet_segments_build
        ADD CONSTRAINT fleet_segments_build_pkey PRIMARY KEY (state, level, bucket, "vehicleId", since) INCLUDE (until);
    -- Where few vehicles of a state were in it at T (early in the fleet's life), most open
    -- segments of the state start after T: a page then reads those that started before T by
    -- this index (no more rows than vehicles in the state at T) rather than scanning past the
    -- rest in id order.
    CREATE INDEX fleet_segments_build_open_since ON fleet_segments_build (state, since)
        INCLUDE ("vehicleId") WHERE level = 8;
    -- The sums from the segments: +1 where each starts, -1 where each ends (a vehicle's next
    -- segment in the same state cancels it out).
    WITH deltas AS (
        SELECT g.since AS micros, g.state, 1 AS delta FROM fleet_segments_build g
        UNION ALL
        SELECT g.until, g.state, -1 FROM fleet_segments_build g WHERE g.until IS NOT NULL
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
    -- Last, so pages wait on the old table's lock for moments, not for the sums.
    DROP TABLE IF EXISTS fleet_segments;
    ALTER TABLE fleet_segments_build RENAME TO fleet_segments;
    ALTER INDEX fleet_segments_build_pkey RENAME TO fleet_segments_pkey;
    ALTER INDEX fleet_segments_build_open_since RENAME TO fleet_segments_open_since;
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
