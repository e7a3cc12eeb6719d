-- A vehicle's version: how many times `ingest` has committed something new about it (a state
-- change, late or not, or its registration). A lookup reads it in the same snapshot as its
-- answer, and every cached answer carries it; the change feed announces the version a change
-- produced, so a replica can refuse to cache an answer read before that change committed (see
-- docs/architecture.md, "The change feed").
--
-- A constant default adds the column without rewriting the table (PostgreSQL 11 and later), so
-- this is quick on any size and safe under sqlx's migration lock with many replicas starting.
ALTER TABLE vehicles ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 0;
