//! Many lookups at once (`POST /vehicles/states`): the same cache entries as the single lookup,
//! with the fewest round trips: memory for each, then one Redis round trip for all that memory
//! lacks, one SQL statement for all that Redis lacks, one round trip to write them back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant as Clock, SystemTime};

use actix_web::web::Bytes;

use super::{CacheStatus, LookupError, Served, StateService};
use crate::cache::local::Source;
use crate::cache::{Answer, CacheKey, Cached, LocalEntry, unix_ms};
use crate::db::{self, DbError};
use crate::domain::{Instant, VehicleId};
use crate::metrics::LookupResult;

/// What one distinct pair came to, before it is handed to every item that asked for it.
type Outcome = Result<(Arc<LocalEntry>, CacheStatus), Arc<LookupError>>;

impl StateService {
    /// The answers for `pairs`, in their order. A pair asked twice is fetched once. Only pairs
    /// that miss memory take part in the round trips; all of them together take one permit of
    /// `LOOKUP_CONCURRENCY_LIMIT` (a batch is one fetch), and without one they are shed. A failure of
    /// PostgreSQL fails only the pairs that needed it (or serves them stale, under
    /// `STALE_IF_ERROR_SECS`); a Redis failure only sends them to PostgreSQL.
    pub async fn vehicle_states(
        &self,
        pairs: &[(VehicleId, Instant)],
    ) -> Vec<Result<Served, Arc<LookupError>>> {
        // Distinct keys, in the order first asked; each item points at its key.
        let mut index: HashMap<CacheKey, usize> = HashMap::with_capacity(pairs.len());
        let mut distinct: Vec<(CacheKey, VehicleId, Instant)> = Vec::with_capacity(pairs.len());
        let slots: Vec<usize> = pairs
            .iter()
            .map(|&(id, at)| {
                let key = self.redis.key(id, at);
                *index.entry(key.clone()).or_insert_with(|| {
                    distinct.push((key, id, at));
                    distinct.len() - 1
                })
            })
            .collect();

        let mut outcomes: Vec<Option<Outcome>> = vec![None; distinct.len()];
        let mut missing = Vec::new();
        for (n, (key, _, _)) in distinct.iter().enumerate() {
            match self.local.get(key).await {
                Some(entry) => {
                    LookupResult::MemoryHit.count();
                    outcomes[n] = Some(Ok((entry, CacheStatus::Hit)));
                }
                None => missing.push(n),
            }
        }
        if !missing.is_empty() {
            let fetched = match self.limit.clone().try_acquire_owned() {
                Ok(_permit) => self.fetch_many(&distinct, &missing).await,
                Err(_) => {
                    let shed = Arc::new(LookupError::Overloaded(self.max_in_flight));
                    missing.iter().map(|_| Err(shed.clone())).collect()
                }
            };
            for (n, outcome) in missing.iter().zip(fetched) {
                outcomes[*n] = Some(outcome);
            }
        }

        let now = Clock::now();
        slots
            .into_iter()
            .map(|n| match &outcomes[n] {
                Some(Ok((entry, cache))) => Ok(Served {
                    entry: entry.clone(),
                    cache: *cache,
                    fresh_for: entry.expires_at.saturating_duration_since(now),
                }),
                Some(Err(error)) => Err(error.clone()),
                // Every distinct key was answered above; this cannot be reached.
                None => Err(Arc::new(LookupError::Db(DbError::Unavailable(
                    sqlx::Error::WorkerCrashed,
                )))),
            })
            .collect()
    }

    /// Redis, then PostgreSQL, for the pairs of `distinct` that `missing` names; each result
    /// is counted in the metrics and, when it came from Redis or PostgreSQL, kept in memory.
    async fn fetch_many(
        &self,
        distinct: &[(CacheKey, VehicleId, Instant)],
        missing: &[usize],
    ) -> Vec<Outcome> {
        let asked = Clock::now();
        let keys: Vec<&CacheKey> = missing.iter().map(|&n| &distinct[n].0).collect();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; missing.len()];
        let mut stale: Vec<Option<Answer>> = vec![None; missing.len()];
        let mut redis_failed = false;
        match self.redis.get_many(&keys).await {
            Ok(cached) => {
                for (m, reply) in cached.into_iter().enumerate() {
                    match reply {
                        Ok(Cached::Fresh(answer, remaining)) => {
                            LookupResult::RedisHit.count();
                            let entry =
                                Arc::new(LocalEntry::new(answer, asked + remaining, Source::Redis));
                            self.local.insert(keys[m].clone(), entry.clone()).await;
                            outcomes[m] = Some(Ok((entry, CacheStatus::Hit)));
                        }
                        Ok(Cached::Stale(answer)) => stale[m] = Some(answer),
                        Ok(Cached::Absent) => {}
                        Err(corrupt) => {
                            tracing::warn!(error = %corrupt, key = keys[m].as_str(), "cache read failed; asking PostgreSQL");
                        }
                    }
                }
            }
            Err(error) => {
                redis_failed = true;
                if let Some(errors) = self.redis.record_error("get", &error) {
                    tracing::warn!(error = %crate::telemetry::chain(&error), keys = keys.len(), errors, "cache read failed; asking PostgreSQL");
                }
            }
        }

        let ask: Vec<usize> = (0..missing.len())
            .filter(|&m| outcomes[m].is_none())
            .collect();
        if !ask.is_empty() {
            let pairs: Vec<(VehicleId, Instant)> = ask
                .iter()
                .map(|&m| {
                    let (_, id, at) = &distinct[missing[m]];
                    (*id, *at)
                })
                .collect();
            let read_at = unix_ms(SystemTime::now());
            let started = Clock::now();
            match db::lookup_many(&self.db, &pairs).await {
                Ok(lookups) => {
                    let expires_at = started + self.redis.ttl();
                    let (source, result) = if redis_failed {
                        (Source::PostgresWithoutRedis, LookupResult::RedisError)
                    } else {
                        (Source::Postgres, LookupResult::Miss)
                    };
                    let mut written = Vec::with_capacity(ask.len());
                    for (&m, lookup) in ask.iter().zip(lookups) {
                        let (outcome, body) = lookup.render();
                        let answer = Answer {
                            outcome,
                            body: Bytes::from(body),
                            read_at_ms: read_at,
                        };
                        result.count();
                        let entry = Arc::new(LocalEntry::new(answer, expires_at, source));
                        written.push((m, entry.clone()));
                        outcomes[m] = Some(Ok((entry, CacheStatus::Miss)));
                    }
                    let puts: Vec<(&CacheKey, &Answer)> = written
                        .iter()
                        .map(|(m, entry)| (keys[*m], &entry.answer))
                        .collect();
                    if !redis_failed
                        && let Err(error) = self.redis.put_many(&puts).await
                        && let Some(errors) = self.redis.record_error("set", &error)
                    {
                        tracing::warn!(error = %crate::telemetry::chain(&error), keys = puts.len(), errors, "cache write failed");
                    }
                    for (m, entry) in written {
                        self.local.insert(keys[m].clone(), entry).await;
                    }
                }
                Err(error) => {
                    metrics::counter!(crate::metrics::DB_ERRORS, "kind" => error.kind())
                        .increment(1);
                    let unavailable = matches!(error, DbError::Unavailable(_));
                    let error = Arc::new(LookupError::Db(error));
                    for &m in &ask {
                        outcomes[m] = Some(match (unavailable, stale[m].take()) {
                            (true, Some(answer)) => {
                                LookupResult::Stale.count();
                                let entry =
                                    Arc::new(LocalEntry::new(answer, Clock::now(), Source::Stale));
                                Ok((entry, CacheStatus::Stale))
                            }
                            _ => {
                                LookupResult::Error.count();
                                Err(error.clone())
                            }
                        });
                    }
                    tracing::warn!(error = %crate::telemetry::chain(&*error), pairs = ask.len(), "PostgreSQL could not answer a batch");
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(Arc::new(LookupError::Db(DbError::Unavailable(
                        sqlx::Error::WorkerCrashed,
                    ))))
                })
            })
            .collect()
    }
}
