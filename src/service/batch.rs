//! Many lookups at once (`POST /vehicles/states`): the same cache entries as the single lookup,
//! with the fewest round trips: memory for each, then one Redis round trip for all that memory
//! lacks, one SQL statement for all that Redis lacks, one round trip to write them back.

use std::collections::HashMap;
use std::sync::Arc;

use super::fetch::fetch_many;
use super::{CacheStatus, LookupError, Served, StateService, arrived};
use crate::cache::{CacheKey, LocalEntry};
use crate::domain::{Timestamp, VehicleId};
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
        pairs: &[(VehicleId, Timestamp)],
    ) -> Vec<Result<Served, Arc<LookupError>>> {
        // Distinct keys, in the order first asked; each item points at its key.
        let mut index: HashMap<CacheKey, usize> = HashMap::with_capacity(pairs.len());
        let mut distinct: Vec<(CacheKey, VehicleId, Timestamp)> = Vec::with_capacity(pairs.len());
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
            let pairs: Vec<(CacheKey, VehicleId, Timestamp)> =
                missing.iter().map(|&n| distinct[n].clone()).collect();
            let fetched = match self.limit.clone().try_acquire_owned() {
                Ok(_permit) => fetch_many(&self.db, &self.redis, &pairs).await,
                Err(_) => {
                    let shed = Arc::new(LookupError::Overloaded(self.max_in_flight));
                    pairs.iter().map(|_| Err(shed.clone())).collect()
                }
            };
            for ((n, (key, _, _)), fetched) in
                missing.iter().map(|&n| (n, &distinct[n])).zip(fetched)
            {
                outcomes[n] = Some(match fetched {
                    Ok(entry) => {
                        let (cache, result) = arrived(entry.source);
                        result.count();
                        if entry.source.kept_in_memory() {
                            self.local.insert(key.clone(), entry.clone()).await;
                        }
                        Ok((entry, cache))
                    }
                    Err(error) => {
                        error.counted_as().count();
                        Err(error)
                    }
                });
            }
        }

        slots
            .into_iter()
            .map(|n| match &outcomes[n] {
                Some(Ok((entry, cache))) => Ok(Served::new(entry.clone(), *cache)),
                Some(Err(error)) => Err(error.clone()),
                // Every distinct key was answered above; this cannot be reached.
                None => Err(LookupError::crashed()),
            })
            .collect()
    }
}
