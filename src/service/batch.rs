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
        // Distinct pairs, in the order first asked; each item points at its pair.
        let mut index: HashMap<(VehicleId, Timestamp), usize> = HashMap::with_capacity(pairs.len());
        let mut distinct: Vec<(CacheKey, VehicleId, Timestamp)> = Vec::with_capacity(pairs.len());
        let slots: Vec<usize> = pairs
            .iter()
            .map(|&(id, at)| {
                *index.entry((id, at)).or_insert_with(|| {
                    distinct.push((self.redis.key(id), id, at));
                    distinct.len() - 1
                })
            })
            .collect();

        let mut outcomes: Vec<Option<Outcome>> = vec![None; distinct.len()];
        let mut missing = Vec::new();
        for (n, (key, _, at)) in distinct.iter().enumerate() {
            match self.local.get(key, at.unix_micros()).await {
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
                            let floors = self.redis.floors();
                            self.local.keep(key.clone(), entry.clone(), floors).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use actix_web::web::Bytes;

    use crate::cache::local::Source;
    use crate::cache::{LocalCache, RedisCache, RenderedAnswer};
    use crate::config::ServeSettings;
    use crate::db::Database;
    use crate::domain::Outcome;
    use crate::service::Gathering;

    /// A service with the default settings whose lookups never get past memory: its pools would
    /// connect on first use, which never comes, as it has no permit of `LOOKUP_CONCURRENCY_LIMIT`
    /// to fetch with.
    fn memory_only() -> StateService {
        let settings = ServeSettings::from_args(["vehicle-state"]).expect("the defaults parse");
        let redis = RedisCache::new(&settings.redis, &settings.cache).expect("a pool, unconnected");
        StateService::new(
            Database::new(&settings.database, Duration::from_secs(1), true),
            Arc::new(redis),
            LocalCache::new(1 << 20),
            0,
            Gathering {
                max_batch: 1,
                in_flight: 1,
            },
        )
    }

    fn pair(id: &str, at: &str) -> (VehicleId, Timestamp) {
        (
            VehicleId::parse(id).expect("an id"),
            Timestamp::parse(at).expect("an instant"),
        )
    }

    /// Puts an answer for `pair` in the service's memory, as a fetch from Redis would have.
    async fn remember(
        service: &StateService,
        (id, at): (VehicleId, Timestamp),
        body: &'static str,
    ) -> Arc<LocalEntry> {
        let answer = RenderedAnswer {
            outcome: Outcome::Found,
            body: Bytes::from_static(body.as_bytes()),
            read_at_ms: 0,
            // The segment [at, at + 1 µs): only this instant.
            start_us: at.unix_micros(),
            end_us: at.unix_micros() + 1,
            version: 0,
        };
        let expires_at = std::time::Instant::now() + Duration::from_secs(60);
        let entry = Arc::new(LocalEntry::new(answer, expires_at, Source::Redis));
        service
            .local
            .insert(service.redis.key(id), entry.clone())
            .await;
        entry
    }

    #[tokio::test]
    async fn each_item_gets_the_answer_to_its_own_pair_in_the_order_asked() {
        let service = memory_only();
        let one = pair("1", "2022-09-12T10:00:00Z");
        let two = pair("2", "2022-09-12T10:00:00Z");
        // The instant of `one`, spelled another way: the same key.
        let one_again = pair("1", "2022-09-12T12:00:00+02:00");
        let first = remember(&service, one, r#"{"state":"sold"}"#).await;
        let second = remember(&service, two, r#"{"state":"quoted"}"#).await;

        let served = service
            .vehicle_states(&[two, one, one_again, two, one])
            .await;

        let entries: Vec<&Arc<LocalEntry>> = served
            .iter()
            .map(|s| &s.as_ref().expect("every pair is in memory").entry)
            .collect();
        let expected = [&second, &first, &first, &second, &first];
        assert_eq!(entries.len(), expected.len());
        for (n, (got, want)) in entries.iter().zip(expected).enumerate() {
            assert!(
                Arc::ptr_eq(got, want),
                "item {n}: {:?}, expected {:?}",
                got.answer.body,
                want.answer.body
            );
        }
        assert!(
            served
                .iter()
                .all(|s| s.as_ref().is_ok_and(|s| s.cache == CacheStatus::Hit))
        );
    }

    #[tokio::test]
    async fn pairs_memory_lacks_are_shed_without_a_permit_and_the_others_still_answer() {
        let service = memory_only();
        let held = pair("1", "2022-09-12T10:00:00Z");
        let absent = pair("3", "2022-09-12T10:00:00Z");
        let absent_later = pair("3", "2022-09-12T10:00:01Z");
        let entry = remember(&service, held, r#"{"state":"sold"}"#).await;

        let served = service
            .vehicle_states(&[absent, held, absent_later, absent])
            .await;

        assert_eq!(served.len(), 4);
        assert!(
            served[1]
                .as_ref()
                .is_ok_and(|s| Arc::ptr_eq(&s.entry, &entry)),
            "{:?}",
            served[1]
        );
        for n in [0, 2, 3] {
            let error = served[n].as_ref().err().map(|e| &**e);
            assert!(
                matches!(error, Some(LookupError::Overloaded(0))),
                "item {n}: {:?}",
                served[n]
            );
        }
    }

    #[tokio::test]
    async fn an_empty_batch_has_no_answers() {
        assert!(memory_only().vehicle_states(&[]).await.is_empty());
    }
}
