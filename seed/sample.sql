-- The sample data set. Idempotent: loading it twice changes nothing, and it never alters rows that
-- are already there. Load it with `vehicle-state seed sample` (or psql -f after the migrations).
BEGIN;

INSERT INTO vehicles (id, make, model, state) VALUES
    (1, 'BMW',  'X1',   'quoted'),
    (2, 'AUDI', 'A4',   'selling'),
    (3, 'VW',   'GOLF', 'sold')
ON CONFLICT (id) DO NOTHING;

-- "stateLogs" has no key, so each row is added only where an identical row is absent.
INSERT INTO "stateLogs" ("vehicleId", state, "timestamp")
SELECT s."vehicleId", s.state, s."timestamp"
FROM (VALUES
    (1, 'quoted',  TIMESTAMPTZ '2022-09-10 10:23:54+00'),
    (2, 'quoted',  TIMESTAMPTZ '2022-09-10 14:59:01+00'),
    (2, 'selling', TIMESTAMPTZ '2022-09-11 17:03:17+00'),
    (3, 'quoted',  TIMESTAMPTZ '2022-09-11 09:11:45+00'),
    (3, 'selling', TIMESTAMPTZ '2022-09-11 23:21:38+00'),
    (3, 'sold',    TIMESTAMPTZ '2022-09-12 12:41:41+00')
) AS s("vehicleId", state, "timestamp")
WHERE NOT EXISTS (
    SELECT 1 FROM "stateLogs" l
    WHERE l."vehicleId" = s."vehicleId" AND l.state = s.state AND l."timestamp" = s."timestamp"
);

COMMIT;
