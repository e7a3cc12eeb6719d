-- The tables of the existing data set, created only where absent, so the service can be pointed at
-- a database that already holds them. "stateLogs" has no key in that data set and gains none here.
CREATE TABLE IF NOT EXISTS vehicles (
    id    INTEGER PRIMARY KEY,
    make  TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS "stateLogs" (
    "vehicleId" INTEGER     NOT NULL,
    state       TEXT        NOT NULL,
    "timestamp" TIMESTAMPTZ NOT NULL
);
