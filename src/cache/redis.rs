//! Redis: answers shared by every replica, kept for `CACHE_TTL_SECS`.
//!
//! Redis only speeds answers up. Every call's failure is returned to the caller, which logs it
//! and asks PostgreSQL instead. How calls reach Redis, and when they do not try, is
//! `connection`'s and `breaker`'s: this module says what they ask and what the replies mean.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use actix_web::web::Bytes;

use super::connection::Connections;
use super::topology::{self, Connection, Nodes};
use super::{CacheError, CacheKey, Corrupt, RenderedAnswer, time_left, unix_ms};
use crate::config::{CacheSettings, RedisMode, RedisSettings};
use crate::domain::VehicleId;
use crate::telemetry::otel;

/// What Redis holds for a key.
#[derive(Debug)]
pub enum Cached {
    /// Servable, for this much longer.
    Fresh(RenderedAnswer, Duration),
    /// Past the TTL but within `STALE_IF_ERROR_SECS`: only for when PostgreSQL cannot answer.
    Stale(RenderedAnswer),
    Absent,
}

/// What a client's bucket gave ([`RedisCache::take_tokens`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// Tokens taken: 0 when fewer than the cost were there (refused).
    pub taken: u32,
    /// Tokens still in the bucket.
    pub left: u64,
    /// Until the bucket is full again.
    pub full_in: Duration,
    /// When refused, until the cost's tokens are there.
    pub retry_in: Duration,
}

/// The generic cell rate algorithm over one key: the client's theoretical arrival time (TAT),
/// in microseconds of Redis's clock. `available` tokens are those the bucket holds now; a
/// request that finds fewer than its cost is refused and changes nothing. The key expires once
/// the bucket is full again, so idle clients cost Redis nothing.
static GCRA: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local available = math.floor((now + tolerance - tat) / interval)
if available < cost then
  return {0, available, tat - now, tat + cost * interval - tolerance - now}
end
local take = math.min(available, want)
local new_tat = tat + take * interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
return {take, available - take, new_tat - now, 0}
",
    )
});

/// A segment's write-back, unless the change feed has announced a later version of its vehicle
/// than the one it was read at (the floor): the members that start inside the segment go (the
/// same segment read before, segments a change has since merged or cut short, or a value that
/// is not an answer), it is added, scored by its start, and the key is kept for the TTL and
/// stale-if-error window from this read. KEYS: segments, floor. ARGV: version, start, end
/// (exclusive, as Redis spells ranges), member, keep (ms).
static WRITE_SEGMENT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if tonumber(ARGV[1]) < tonumber(redis.call('GET', KEYS[2]) or '0') then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

/// A timeline page's write-back, under the same floor. KEYS: page, floor. ARGV: version,
/// value, keep (ms).
static WRITE_PAGE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if tonumber(ARGV[1]) < tonumber(redis.call('GET', KEYS[2]) or '0') then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// A change to a vehicle, as the change feed announced it: its floor rises to the new version
/// (kept for the TTL and stale-if-error window, longer than any read that began before the
/// change can take to write back) and its segments go. An announcement no newer than the floor
/// was carried out before and changes nothing. KEYS: segments, floor. ARGV: version, keep (ms).
static INVALIDATE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if tonumber(ARGV[1]) <= tonumber(redis.call('GET', KEYS[2]) or '0') then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[1])
return 1
",
    )
});

pub struct RedisCache {
    connections: Connections,
    prefix: String,
    ttl: Duration,
    /// TTL plus the stale-if-error window: how long answers are kept.
    keep: Duration,
    errors: AtomicU64,
    /// What the change feed announced to this replica: answers older than it are not served
    /// from here, nor written back.
    floors: super::Floors,
}

impl RedisCache {
    /// Builds the pool; connects on first use, so a Redis that is down does not stop the start.
    pub fn new(redis: &RedisSettings, cache: &CacheSettings) -> anyhow::Result<Self> {
        let connections = Connections::new(redis)?;
        let keep =
            Duration::from_secs(u64::from(cache.ttl_secs) + u64::from(cache.stale_if_error_secs));
        Ok(Self {
            connections,
            prefix: cache.key_prefix.clone(),
            ttl: Duration::from_secs(cache.ttl_secs.into()),
            keep,
            errors: AtomicU64::new(0),
            floors: super::Floors::new(keep),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The TTL and stale-if-error window: how long Redis keeps an answer after its read.
    pub fn keep(&self) -> Duration {
        self.keep
    }

    /// This replica's knowledge of vehicles' versions (see [`super::Floors`]).
    pub fn floors(&self) -> &super::Floors {
        &self.floors
    }

    /// The key of vehicle `id`'s segments.
    pub fn key(&self, id: VehicleId) -> CacheKey {
        CacheKey::new(&self.prefix, id)
    }

    pub fn history_key(&self, query: &crate::domain::history::HistoryQuery) -> CacheKey {
        CacheKey::history(&self.prefix, query)
    }

    /// The key of vehicle `id`'s version floor.
    pub fn floor_key(&self, id: VehicleId) -> CacheKey {
        CacheKey::floor(&self.prefix, id)
    }

    /// A timeline page's cached answer and how much longer it may be served, read in one
    /// pipeline (GET and PTTL); `Stale` past this replica's TTL but within its stale-if-error
    /// window.
    pub async fn get(&self, key: &CacheKey) -> Result<Cached, CacheError> {
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "redis read",
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = "GET",
        );
        // The vehicle's floor comes in the same round trip (its key shares the page's slot):
        // a page read before a change the feed announced is refused here, by every replica,
        // one that started after the announcement included.
        let floor = key
            .vehicle()
            .and_then(|id| VehicleId::from_i64(id.into()).ok())
            .map(|id| self.floor_key(id));
        let floor_key = floor.as_ref().unwrap_or(key);
        let (value, pttl, floor): (Option<Vec<u8>>, i64, Option<Vec<u8>>) = otel::traced(
            span,
            self.connections.bounded(|mut conn| async move {
                Ok(redis::pipe()
                    .get(key.as_str())
                    .pttl(key.as_str())
                    .get(floor_key.as_str())
                    .query_async(&mut conn)
                    .await?)
            }),
        )
        .await?;
        let Some(value) = value else {
            return Ok(Cached::Absent);
        };
        // PTTL is negative when the key vanished between the two commands (-2) or has no
        // expiry (-1, which this service never writes): serve it, but let nobody keep it.
        let pttl = Duration::from_millis(u64::try_from(pttl).unwrap_or(0));
        let cached = self.interpret(Bytes::from(value), None, pttl)?;
        let floor: u64 = floor
            .filter(|_| !std::ptr::eq(floor_key, key))
            .and_then(|raw| std::str::from_utf8(&raw).ok()?.parse().ok())
            .unwrap_or(0);
        Ok(match cached {
            Cached::Fresh(answer, _) | Cached::Stale(answer) if answer.version < floor => {
                Cached::Absent
            }
            other => other,
        })
    }

    /// For each `(key, instant)`, the segment Redis holds under the vehicle's key that covers
    /// the instant, in one round trip: one `ZRANGE key at -inf BYSCORE REV LIMIT 0 1` per pair
    /// (the segment that starts latest at or before the instant), pipelined (in a cluster, one
    /// command per pair, all sent at once, since keys live on different nodes). Scores are
    /// doubles, exact for instants up to the year 2255; the member's own start and end, in
    /// whole microseconds, decide whether it covers the instant, so a rounded score can only
    /// make a miss, never a wrong answer. A value that is not an answer spoils only its pair.
    pub async fn get_many(
        &self,
        asks: &[(&CacheKey, i64)],
    ) -> Result<Vec<Result<Cached, Corrupt>>, CacheError> {
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "redis read",
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = "ZRANGE",
            db.operation.batch.size = asks.len(),
        );
        otel::traced(span, self.read_many(asks)).await
    }

    async fn read_many(
        &self,
        asks: &[(&CacheKey, i64)],
    ) -> Result<Vec<Result<Cached, Corrupt>>, CacheError> {
        let zrange = |key: &CacheKey, at_us: i64| {
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(key.as_str())
                .arg(at_us)
                .arg("-inf")
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(1);
            cmd
        };
        let replies: Vec<Vec<Vec<u8>>> = self
            .connections
            .bounded(|mut conn| async move {
                if self.mode() == RedisMode::Cluster {
                    let each = asks.iter().map(|&(key, at_us)| {
                        let mut conn = conn.clone();
                        let cmd = zrange(key, at_us);
                        async move { cmd.query_async::<Vec<Vec<u8>>>(&mut conn).await }
                    });
                    return Ok(futures_util::future::try_join_all(each).await?);
                }
                let mut pipe = redis::pipe();
                for &(key, at_us) in asks {
                    pipe.add_command(zrange(key, at_us));
                }
                Ok(pipe.query_async(&mut conn).await?)
            })
            .await?;
        Ok(asks
            .iter()
            .zip(replies)
            .map(|(&(_, at_us), members)| match members.into_iter().next() {
                Some(member) => self.interpret(Bytes::from(member), Some(at_us), self.ttl),
                None => Ok(Cached::Absent),
            })
            .collect())
    }

    /// What a cached value means now, for the instant `at_us` (a lookup's; `None` for a
    /// timeline page), with Redis keeping it for at most `kept` more.
    fn interpret(
        &self,
        value: Bytes,
        at_us: Option<i64>,
        kept: Duration,
    ) -> Result<Cached, Corrupt> {
        let answer = RenderedAnswer::decode(value)?;
        if at_us.is_some_and(|at_us| !answer.covers(at_us)) {
            return Ok(Cached::Absent);
        }
        let now = SystemTime::now();
        let Some(left) = time_left(answer.read_at_ms, self.ttl, now) else {
            // Stale only if past the TTL, not if its read time is implausibly far ahead.
            let age_ms = unix_ms(now).saturating_sub(answer.read_at_ms);
            let expired = age_ms >= i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
            let kept = time_left(answer.read_at_ms, self.keep, now).is_some();
            return Ok(if expired && kept {
                Cached::Stale(answer)
            } else {
                Cached::Absent
            });
        };
        Ok(Cached::Fresh(answer, kept.min(left)))
    }

    /// How long an answer read at `read_at_ms` is kept in Redis: what is left of its TTL and
    /// stale-if-error window, counted from the read; `None` once nothing is.
    fn keep_ms(&self, answer: &RenderedAnswer) -> Option<u64> {
        let left = time_left(answer.read_at_ms, self.keep, SystemTime::now())?;
        Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1))
    }

    /// Stores a timeline page's answer for what is left of its TTL and stale-if-error window
    /// (counted from when it was read), unless the change feed announced a later version of
    /// vehicle `id` than the page was read at.
    pub async fn put(
        &self,
        key: &CacheKey,
        id: VehicleId,
        answer: &RenderedAnswer,
    ) -> Result<(), CacheError> {
        let Some(keep_ms) = self.keep_ms(answer) else {
            return Ok(());
        };
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "redis write-back",
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = "SET",
        );
        let value = &answer.encode();
        let floor = &self.floor_key(id);
        otel::traced(
            span,
            self.connections.bounded(|mut conn| async move {
                WRITE_PAGE
                    .key(key.as_str())
                    .key(floor.as_str())
                    .arg(answer.version)
                    .arg(value)
                    .arg(keep_ms)
                    .invoke_async::<()>(&mut conn)
                    .await?;
                Ok(())
            }),
        )
        .await
    }

    /// Stores segments, each under its vehicle's key, in one round trip: per segment, the
    /// members that start inside it are removed (the same segment read before, segments a
    /// change has since merged or cut short, or a value that is not an answer), it is added,
    /// scored by its start, and the key is kept for the TTL and stale-if-error window from this
    /// read (each member's own read time says when it stops being served). In a cluster, one
    /// such pipeline per segment, all at once.
    pub async fn put_many(
        &self,
        entries: &[(&CacheKey, &RenderedAnswer)],
    ) -> Result<(), CacheError> {
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "redis write-back",
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = "ZADD",
            db.operation.batch.size = entries.len(),
        );
        otel::traced(span, self.write_many(entries)).await
    }

    async fn write_many(&self, entries: &[(&CacheKey, &RenderedAnswer)]) -> Result<(), CacheError> {
        let adds: Vec<Add<'_>> = entries
            .iter()
            .filter_map(|(key, answer)| {
                let start = if answer.start_us == super::entry::OPEN_START {
                    "-inf".to_owned()
                } else {
                    answer.start_us.to_string()
                };
                let end = if answer.end_us == super::entry::OPEN_END {
                    "+inf".to_owned()
                } else {
                    format!("({}", answer.end_us)
                };
                Some(Add {
                    key,
                    floor: key.floor_of_segments()?,
                    version: answer.version,
                    start,
                    end,
                    member: answer.encode(),
                    keep_ms: self.keep_ms(answer)?,
                })
            })
            .collect();
        if adds.is_empty() {
            return Ok(());
        }
        let invocation = |add: &Add<'_>| {
            let mut invocation = WRITE_SEGMENT.key(add.key.as_str());
            invocation
                .key(add.floor.as_str())
                .arg(add.version)
                .arg(&add.start)
                .arg(&add.end)
                .arg(&add.member)
                .arg(add.keep_ms);
            invocation
        };
        let adds = &adds;
        self.connections
            .bounded(|mut conn| async move {
                if self.mode() == RedisMode::Cluster || adds.len() == 1 {
                    // One script per segment, each sent to its key's node, all at once; the
                    // client loads the script where it is missing.
                    let each = adds.iter().map(|add| {
                        let mut conn = conn.clone();
                        async move { invocation(add).invoke_async::<()>(&mut conn).await }
                    });
                    futures_util::future::try_join_all(each).await?;
                    return Ok(());
                }
                let invocations: Vec<_> = adds.iter().map(invocation).collect();
                pipelined_scripts::<u8>(&mut conn, &WRITE_SEGMENT, &invocations).await?;
                Ok(())
            })
            .await
    }

    /// Carries out the change feed's announcements: for each vehicle and the version a change
    /// gave it, the floor rises and its segments go, in one round trip (in a cluster, one script
    /// per vehicle, all at once). Its timeline pages stay: each carries the version it was read
    /// at, and a replica that knows the floor refuses them. Returns how many were new (not
    /// carried out before).
    pub async fn invalidate(&self, changed: &[(VehicleId, u64)]) -> Result<usize, CacheError> {
        if changed.is_empty() {
            return Ok(0);
        }
        let span = tracing::trace_span!(
            target: otel::SPANS,
            "redis invalidate",
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = "EVALSHA",
            db.operation.batch.size = changed.len(),
        );
        let keep_ms = u64::try_from(self.keep.as_millis()).unwrap_or(u64::MAX);
        let keys: Vec<(CacheKey, CacheKey, u64)> = changed
            .iter()
            .map(|&(id, version)| (self.key(id), self.floor_key(id), version))
            .collect();
        let invocation = |(segments, floor, version): &(CacheKey, CacheKey, u64)| {
            let mut invocation = INVALIDATE.key(segments.as_str());
            invocation.key(floor.as_str()).arg(*version).arg(keep_ms);
            invocation
        };
        let keys = &keys;
        let done: Vec<u8> = otel::traced(
            span,
            self.connections.bounded(|mut conn| async move {
                if self.mode() == RedisMode::Cluster || keys.len() == 1 {
                    let each = keys.iter().map(|k| {
                        let mut conn = conn.clone();
                        async move { invocation(k).invoke_async::<u8>(&mut conn).await }
                    });
                    return Ok(futures_util::future::try_join_all(each).await?);
                }
                let invocations: Vec<_> = keys.iter().map(invocation).collect();
                Ok(pipelined_scripts(&mut conn, &INVALIDATE, &invocations).await?)
            }),
        )
        .await?;
        Ok(done.iter().filter(|&&d| d == 1).count())
    }

    /// Which topology this replica was configured for.
    pub fn mode(&self) -> RedisMode {
        self.connections.mode()
    }

    /// How many masters and replicas the topology has now, asked within `REDIS_TIMEOUT_MS`.
    /// For a scrape, not a lookup: it neither trips nor probes the breaker (while Redis is left
    /// alone it is not asked at all), and a failure here lets no connection go; lookups find
    /// out for themselves.
    pub async fn nodes(&self) -> Result<Nodes, CacheError> {
        self.connections.left_alone()?;
        self.connections
            .unguarded(|mut conn| async move { Ok(topology::nodes(self.mode(), &mut conn).await?) })
            .await
    }

    /// At start, for the log: whether Redis answers a PING within `REDIS_TIMEOUT_MS`. Like
    /// [`Self::nodes`], it leaves the breaker and the counters alone (lookups find out for
    /// themselves); the connection it makes stays with the thread that made it.
    pub async fn check(&self) -> Result<(), CacheError> {
        let result = self.connections.unguarded(ping).await;
        if result.as_ref().is_err_and(CacheError::is_unreachable) {
            self.connections.note_unreachable();
        }
        result
    }

    pub async fn ping(&self) -> Result<(), CacheError> {
        self.connections.bounded(ping).await
    }

    /// Counts a failed call (in the metrics too). Returns how many there have been when the
    /// caller should log this one, where it knows what it was doing; `None` for a call skipped
    /// while Redis is left alone, whose failure was logged when it happened.
    pub fn record_error(&self, operation: &'static str, error: &CacheError) -> Option<u64> {
        metrics::counter!(crate::metrics::REDIS_ERRORS, "operation" => operation, "kind" => error.kind())
            .increment(1);
        let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        (!matches!(error, CacheError::CoolingDown(_))).then_some(errors)
    }

    /// Takes `cost` tokens, and up to `want` in all, from `client`'s bucket of the fleet's
    /// quota (a GCRA: one token every `interval`, at most `burst` at once), by Redis's clock so
    /// that every replica keeps the same time. One script, one round trip, one key.
    pub async fn take_tokens(
        &self,
        client: &str,
        interval: Duration,
        burst: u32,
        cost: u32,
        want: u32,
    ) -> Result<Granted, CacheError> {
        let key = format!("{}:quota:v1:{client}", self.prefix);
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let reply: (u64, u64, u64, u64) = self
            .connections
            .bounded(|mut conn| {
                let key = &key;
                async move {
                    Ok(GCRA
                        .key(key)
                        .arg(interval_us)
                        .arg(burst)
                        .arg(cost)
                        .arg(want.max(cost))
                        .invoke_async(&mut conn)
                        .await?)
                }
            })
            .await?;
        let (taken, left, full_in_us, retry_in_us) = reply;
        Ok(Granted {
            taken: u32::try_from(taken).unwrap_or(u32::MAX),
            left,
            full_in: Duration::from_micros(full_in_us),
            retry_in: Duration::from_micros(retry_in_us),
        })
    }

    /// This replica's Redis connections, in use or idle, as scraped.
    pub fn pool_gauge(&self) -> crate::metrics::PoolGauge {
        self.connections.pool_gauge()
    }
}

/// One segment's write-back: its vehicle's key, the score range it replaces (its start,
/// inclusive, to its end, exclusive, as Redis spells them), its member and how long the key is
/// kept.
struct Add<'a> {
    key: &'a CacheKey,
    floor: CacheKey,
    version: u64,
    start: String,
    end: String,
    member: Vec<u8>,
    keep_ms: u64,
}

/// Runs `invocations` of `script` in one pipeline (EVALSHA each). Redis forgets scripts when it
/// restarts or fails over: on NOSCRIPT the script is loaded and the pipeline sent once more
/// (every invocation failed alike, so none was carried out).
async fn pipelined_scripts<T: redis::FromRedisValue>(
    conn: &mut Connection,
    script: &redis::Script,
    invocations: &[redis::ScriptInvocation<'_>],
) -> Result<Vec<T>, redis::RedisError> {
    let mut pipe = redis::pipe();
    for invocation in invocations {
        pipe.invoke_script(invocation);
    }
    match pipe.query_async::<Vec<T>>(conn).await {
        Err(error)
            if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            script.load_async(conn).await?;
            pipe.query_async(conn).await
        }
        other => other,
    }
}

/// One PING on `conn`: for `/readyz` and the start-up check.
async fn ping(mut conn: Connection) -> Result<(), CacheError> {
    redis::cmd("PING").query_async::<()>(&mut conn).await?;
    Ok(())
}
