//! Many lookups past memory in the fewest round trips: one Redis pipeline for all the pairs, one
//! SQL statement for all that Redis lacks, one pipeline to write the segments read back. Shared by the batch
//! endpoint and by the gathering of concurrent single misses.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use actix_web::web::Bytes;

use super::LookupError;
use crate::cache::local::Source;
use crate::cache::{
    CacheError, CacheKey, Cached, LocalEntry, OPEN_END, OPEN_START, RedisCache, RenderedAnswer,
    unix_ms,
};
use crate::db::{Database, DbError};
use crate::domain::{Lookup, Timestamp, VehicleId};

/// What one key came to: its entry (whose `source` says from where), or why there is none.
pub type Fetched = Result<Arc<LocalEntry>, Arc<LookupError>>;

/// Redis, then PostgreSQL, for `pairs` (distinct keys); one result per pair, in order. Entries
/// are neither kept in memory nor counted as lookups here: callers do both, as they know whether
/// the answer was shared. Redis and PostgreSQL failures are counted and logged here, once per
/// round trip; a failure fails only the pairs that needed it; a stale answer (within
/// `STALE_IF_ERROR_SECS`) stands in for a pair PostgreSQL cannot answer.
pub async fn fetch_many(
    db: &Database,
    redis: &RedisCache,
    pairs: &[(CacheKey, VehicleId, Timestamp)],
) -> Vec<Fetched> {
    fetch_many_unless(db, redis, pairs, None).await
}

/// [`fetch_many`]; with `db_down` (PostgreSQL just failed while these pairs waited for it),
/// Redis is still asked, but PostgreSQL is not: what Redis lacks fails with `db_down` (or is
/// served stale) at once, so no pair waits out the acquire timeout twice.
pub async fn fetch_many_unless(
    db: &Database,
    redis: &RedisCache,
    pairs: &[(CacheKey, VehicleId, Timestamp)],
    db_down: Option<Arc<LookupError>>,
) -> Vec<Fetched> {
    // Taken before asking, so memory never keeps an answer longer than Redis does.
    let asked = Instant::now();
    let keys: Vec<&CacheKey> = pairs.iter().map(|(key, _, _)| key).collect();
    let asks: Vec<(&CacheKey, i64)> = pairs
        .iter()
        .map(|(key, _, at)| (key, at.unix_micros()))
        .collect();
    metrics::histogram!(crate::metrics::REDIS_BATCH_SIZE).record(keys.len() as f64);
    let mut fetched: Vec<Option<Fetched>> = vec![None; pairs.len()];
    let mut stale: Vec<Option<RenderedAnswer>> = vec![None; pairs.len()];
    let mut redis_failed = false;
    match redis.get_many(&asks).await {
        Ok(cached) => {
            for (m, reply) in cached.into_iter().enumerate() {
                match reply {
                    // Read before a change this replica knows of: as if absent.
                    Ok(Cached::Fresh(answer, _) | Cached::Stale(answer))
                        if !redis.floors().admit(keys[m], &answer) => {}
                    Ok(Cached::Fresh(answer, remaining)) => {
                        let entry = LocalEntry::new(answer, asked + remaining, Source::Redis);
                        fetched[m] = Some(Ok(Arc::new(entry)));
                    }
                    Ok(Cached::Stale(answer)) => stale[m] = Some(answer),
                    Ok(Cached::Absent) => {}
                    Err(corrupt) => {
                        let error = CacheError::Corrupt(corrupt);
                        if let Some(errors) = redis.record_error("get", &error) {
                            tracing::warn!(error = %crate::telemetry::chain(&error), key = keys[m].as_str(), errors, "cache read failed; asking PostgreSQL");
                        }
                    }
                }
            }
        }
        Err(error) => {
            redis_failed = true;
            if let Some(errors) = redis.record_error("get", &error) {
                tracing::warn!(error = %crate::telemetry::chain(&error), keys = keys.len(), errors, "cache read failed; asking PostgreSQL");
            }
        }
    }

    let ask: Vec<usize> = (0..pairs.len()).filter(|&m| fetched[m].is_none()).collect();
    if let Some(error) = db_down.filter(|_| !ask.is_empty()) {
        for &m in &ask {
            fetched[m] = Some(match stale[m].take() {
                Some(answer) => Ok(Arc::new(LocalEntry::new(
                    answer,
                    Instant::now(),
                    Source::Stale,
                ))),
                None => Err(error.clone()),
            });
        }
    } else if !ask.is_empty() {
        let lookups: Vec<(VehicleId, Timestamp)> =
            ask.iter().map(|&m| (pairs[m].1, pairs[m].2)).collect();
        metrics::histogram!(crate::metrics::DB_BATCH_SIZE).record(lookups.len() as f64);
        // Taken before the query, so the recorded age errs on the old side.
        let read_at = unix_ms(SystemTime::now());
        let started = Instant::now();
        let mut answered = Vec::with_capacity(ask.len());
        let mut failed: Option<Arc<LookupError>> = None;
        match lookup_each_if_need_be(db, &lookups).await {
            Ok(results) => {
                for (&m, result) in ask.iter().zip(results) {
                    match result {
                        Ok(lookup) => answered.push((m, lookup)),
                        Err(error) => {
                            // A pair that fails on its own (a defect in its rows), answered alone.
                            metrics::counter!(crate::metrics::DB_ERRORS, "kind" => error.kind())
                                .increment(1);
                            tracing::warn!(error = %crate::telemetry::chain(&error), key = keys[m].as_str(), "PostgreSQL could not answer this lookup");
                            fetched[m] = Some(Err(Arc::new(LookupError::Db(error))));
                        }
                    }
                }
            }
            Err(error) => {
                metrics::counter!(crate::metrics::DB_ERRORS, "kind" => error.kind()).increment(1);
                failed = Some(Arc::new(LookupError::Db(error)));
            }
        }
        let expires_at = started + redis.ttl();
        let written: Vec<(usize, RenderedAnswer)> = answered
            .into_iter()
            .map(|(m, (lookup, version))| {
                let segment = lookup.render();
                let answer = RenderedAnswer {
                    outcome: segment.outcome,
                    body: Bytes::from(segment.body),
                    read_at_ms: read_at,
                    start_us: segment.start_us.unwrap_or(OPEN_START),
                    end_us: segment.end_us.unwrap_or(OPEN_END),
                    version,
                };
                (m, answer)
            })
            .collect();
        // Without Redis (its read failed, or this write-back did), an answer is in no cache but
        // memory: its source says so, and memory keeps it at once.
        let mut without_redis = redis_failed;
        if !written.is_empty() {
            // After a failed read the breaker skips this at once (counted as `skipped`).
            let puts: Vec<(&CacheKey, &RenderedAnswer)> = written
                .iter()
                .map(|(m, answer)| (keys[*m], answer))
                .collect();
            if let Err(error) = redis.put_many(&puts).await {
                without_redis = true;
                if let Some(errors) = redis.record_error("set", &error) {
                    tracing::warn!(error = %crate::telemetry::chain(&error), keys = puts.len(), errors, "cache write failed");
                }
            }
        }
        let source = if without_redis {
            Source::PostgresWithoutRedis
        } else {
            Source::Postgres
        };
        for (m, answer) in written {
            fetched[m] = Some(Ok(Arc::new(LocalEntry::new(answer, expires_at, source))));
        }
        if let Some(error) = failed {
            let unavailable = matches!(&*error, LookupError::Db(db) if db.is_unavailable());
            let mut served_stale = 0;
            for &m in &ask {
                fetched[m] = Some(match (unavailable, stale[m].take()) {
                    (true, Some(answer)) => {
                        served_stale += 1;
                        // Expired on arrival: memory keeps it for nobody, so the next request
                        // asks PostgreSQL again.
                        Ok(Arc::new(LocalEntry::new(
                            answer,
                            Instant::now(),
                            Source::Stale,
                        )))
                    }
                    _ => Err(error.clone()),
                });
            }
            if matches!(&*error, LookupError::Db(DbError::Down)) {
                // Logged once, when the outage was found (see `db::Database`); counted as `down`.
                tracing::debug!(keys = ask.len(), served_stale, "PostgreSQL is known down");
            } else {
                tracing::warn!(error = %crate::telemetry::chain(&*error), keys = ask.len(), served_stale, "PostgreSQL could not answer");
            }
        }
    }
    fetched
        .into_iter()
        .map(|f| {
            // Every pair was answered above; this cannot be reached.
            f.unwrap_or_else(|| Err(LookupError::crashed()))
        })
        .collect()
}

/// The answers for `pairs` from one statement; if that statement fails for a reason of its own
/// (not an outage: a row it cannot read, say), each pair again on its own, so that a bad row
/// fails only its pair. An outage fails them all (`Err`).
async fn lookup_each_if_need_be(
    db: &Database,
    pairs: &[(VehicleId, Timestamp)],
) -> Result<Vec<Result<(Lookup, u64), DbError>>, DbError> {
    match db.lookup_many(pairs).await {
        Ok(lookups) => Ok(lookups.into_iter().map(Ok).collect()),
        Err(error) if error.is_unavailable() => Err(error),
        Err(error) if pairs.len() == 1 => Ok(vec![Err(error)]),
        Err(error) => {
            tracing::warn!(error = %crate::telemetry::chain(&error), pairs = pairs.len(), "a lookup statement failed; asking for each pair on its own");
            let mut each = Vec::with_capacity(pairs.len());
            for pair in pairs {
                metrics::histogram!(crate::metrics::DB_BATCH_SIZE).record(1.0);
                each.push(
                    db.lookup_many(std::slice::from_ref(pair))
                        .await
                        .and_then(|mut one| {
                            one.pop()
                                .ok_or_else(|| DbError::Query(sqlx::Error::RowNotFound))
                        }),
                );
            }
            Ok(each)
        }
    }
}
