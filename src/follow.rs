//! A replica follows the change feed (`CACHE_INVALIDATION`, with `NATS_URL`): what it holds of
//! a vehicle that `ingest` announced changed is dropped at once, instead of being served until
//! its TTL.
//!
//! Two consumers of the change stream, for two jobs:
//! - **this replica's memory**: an ordered consumer of its own, from the moment it starts
//!   following (memory holds nothing older). Each announcement raises the vehicle's floor and
//!   drops its segments (`StateService::changed`); the floor also stops a read begun before
//!   the change from being kept, and makes Redis's older entries count as misses here.
//! - **Redis**: one durable consumer that every replica shares, so each announcement is carried
//!   out in Redis once, by whichever replica it is delivered to (`RedisCache::invalidate`),
//!   and acked only once Redis has done it.
//!
//! Nothing here is on the request path, and readiness does not depend on it: with NATS or the
//! stream gone, answers stay correct within `CACHE_TTL_SECS` as without a feed, and
//! `vehicle_state_feed_following` says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::web;
use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::StreamExt;

use crate::broker::{self, ConnectFailure};
use crate::config::FollowSettings;
use crate::context::AppContext;
use crate::domain::change::Versioned;
use crate::domain::{Timestamp, VehicleId};
use crate::metrics::{FEED_FOLLOWING, FEED_INVALIDATIONS, FEED_LAG};
use crate::service::changes::FeedEvent;
use crate::task::AbortOnDrop;
use crate::telemetry;

/// How long to wait before trying again when NATS, the stream or a consumer cannot be had.
const RETRY: Duration = Duration::from_secs(1);
/// Announcements carried out in Redis in one round trip at most.
const REDIS_BATCH_MAX: usize = 256;
/// How long the shared consumer waits for a replica's ack before giving the announcement to
/// another (a replica that stopped halfway).
const REDIS_ACK_WAIT: Duration = Duration::from_secs(10);
/// How often a pull request sees a heartbeat; one missed makes the client pull again at once.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long one pull request stays open on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// Starts following in the background, if configured to; the task ends when aborted (the
/// replica stopping) or when a setting cannot work (logged).
pub fn start(
    settings: &FollowSettings,
    state: web::Data<AppContext>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !settings.on() {
        return None;
    }
    if !settings.invalidation {
        tracing::info!(
            "CACHE_INVALIDATION=false: the change feed is followed for streams of changes only; answers are served until CACHE_TTL_SECS"
        );
    }
    ::metrics::gauge!(FEED_FOLLOWING).set(0.0);
    let settings = settings.clone();
    Some(tokio::spawn(async move {
        if let Err(error) = follow(settings, state).await {
            tracing::error!(error = %format!("{error:#}"), "the change feed cannot be followed; answers are served until CACHE_TTL_SECS");
        }
    }))
}

async fn follow(settings: FollowSettings, state: web::Data<AppContext>) -> anyhow::Result<()> {
    let client = loop {
        match broker::connect(&settings.nats, "vehicle-state serve").await {
            Ok(client) => break client,
            Err(ConnectFailure::Setting(message)) => anyhow::bail!(message),
            Err(ConnectFailure::Unreachable(message)) => {
                tracing::warn!(
                    "{message}; following the change feed from when it can be reached (trying every {}s)",
                    RETRY.as_secs()
                );
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    // Following means connected, with the consumer in place: checked every second, since a
    // consumer waiting on a lost connection says nothing until the connection is back.
    // Across a lost connection (a NATS restart above all) the client's ordered consumer can
    // wait a long time to make itself again: once the connection is back, the follower makes a
    // new one at once, from the announcement after the last it handled.
    let live = Arc::new(AtomicBool::new(false));
    let reconnected = Arc::new(tokio::sync::Notify::new());
    let _watch = AbortOnDrop(tokio::spawn({
        let (client, live, reconnected) = (client.clone(), live.clone(), reconnected.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            let mut was_connected = true;
            loop {
                every.tick().await;
                let connected =
                    client.connection_state() == async_nats::connection::State::Connected;
                if connected && !was_connected {
                    live.store(false, Ordering::Release);
                    reconnected.notify_one();
                }
                was_connected = connected;
                let following = connected && live.load(Ordering::Acquire);
                ::metrics::gauge!(FEED_FOLLOWING).set(if following { 1.0 } else { 0.0 });
            }
        }
    }));
    let js = jetstream::new(client);
    let name = &settings.changes.stream;
    let stream = loop {
        match js.get_stream(name).await {
            Ok(stream) => break stream,
            Err(error) => {
                tracing::warn!(error = %telemetry::chain(&error), stream = %name, "the change stream is not there yet (ingest creates it); trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let subjects = broker::change_subjects(&settings.changes);
    // Where the stream is now: this replica holds nothing older, and follows from the next one.
    let last = loop {
        match stream.get_info().await {
            Ok(info) => break info.state.last_sequence,
            Err(error) => {
                tracing::warn!(error = %telemetry::chain(&error), "cannot read the change stream's position; trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    state.changes.hub.set_stream(stream.clone(), last);
    let _redis = settings.invalidation.then(|| {
        AbortOnDrop(tokio::spawn(redis_follower(
            stream.clone(),
            settings.consumer.clone(),
            subjects.clone(),
            state.clone(),
        )))
    });
    memory_follower(
        stream,
        subjects,
        state,
        settings.invalidation,
        live,
        reconnected,
    )
    .await;
    Ok(())
}

/// This replica's own ordered consumer, from now on: each announcement drops the vehicle here
/// (with `invalidate`), then goes to the streams watching it. Runs until aborted; a consumer
/// that fails is made again, from the announcement after the last one handled, so a stream
/// misses nothing while NATS was away (within the stream's limits).
async fn memory_follower(
    stream: jetstream::stream::Stream,
    subjects: String,
    state: web::Data<AppContext>,
    invalidate: bool,
    live: Arc<AtomicBool>,
    reconnected: Arc<tokio::sync::Notify>,
) {
    let hub = &state.changes.hub;
    loop {
        // From the announcement after the last one handled (or, at first, after where the stream
        // stood when found): nothing published meanwhile is missed.
        let deliver_policy = consumer::DeliverPolicy::ByStartSequence {
            start_sequence: hub.position() + 1,
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                filter_subject: subjects.clone(),
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(consumer) => consumer.messages().await.map_err(anyhow::Error::from),
            Err(error) => Err(anyhow::Error::from(error)),
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                live.store(false, Ordering::Release);
                tracing::warn!(error = %format!("{error:#}"), "cannot follow the change stream; trying again");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        live.store(true, Ordering::Release);
        // Said at once (the check every second says it again, and notices a lost connection).
        ::metrics::gauge!(FEED_FOLLOWING).set(1.0);
        tracing::info!(stream = %stream.cached_info().config.name, "following the change feed");
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                () = reconnected.notified() => {
                    tracing::info!("NATS is back; following the change feed again from where this replica was");
                    break;
                }
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(error = %telemetry::chain(&error), "the change feed's consumer failed; following it again");
                    break;
                }
                None => break,
            };
            let info = match message.info() {
                Ok(info) => info,
                Err(error) => {
                    tracing::warn!(error = %error, subject = %message.subject, "a message of the change feed without JetStream's metadata; passed over");
                    continue;
                }
            };
            let (sequence, published_ns) =
                (info.stream_sequence, info.published.unix_timestamp_nanos());
            let Some((id, version, at)) = versioned(&message) else {
                continue;
            };
            if invalidate && state.service.changed(id, version).await {
                ::metrics::counter!(FEED_INVALIDATIONS, "tier" => "memory").increment(1);
            }
            if invalidate && let Some(at) = at {
                state.service.fleet.changed_at(at);
            }
            hub.dispatch(FeedEvent {
                sequence,
                vehicle: id.get(),
                payload: message.payload.clone(),
            });
            let now_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128);
            let lag = Duration::from_nanos(u64::try_from(now_ns - published_ns).unwrap_or(0));
            ::metrics::histogram!(FEED_LAG).record(lag);
        }
        live.store(false, Ordering::Release);
        tokio::time::sleep(RETRY).await;
    }
}

/// The durable consumer every replica shares: each announcement, delivered to one replica,
/// is carried out in Redis, then acked; one Redis could not take is given back for later.
async fn redis_follower(
    stream: jetstream::stream::Stream,
    name: String,
    subjects: String,
    state: web::Data<AppContext>,
) {
    let redis = state.service.redis.clone();
    let keep = redis.keep();
    loop {
        let consumer = stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(
                        "vehicle-state replicas: changes carried out in Redis".to_owned(),
                    ),
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: REDIS_ACK_WAIT,
                    max_deliver: -1,
                    filter_subject: subjects.clone(),
                    ..Default::default()
                },
            )
            .await;
        let messages = match consumer {
            Ok(consumer) => consumer
                .stream()
                .max_messages_per_batch(REDIS_BATCH_MAX)
                .heartbeat(HEARTBEAT)
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(anyhow::Error::from),
            Err(error) => Err(anyhow::Error::from(error)),
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), consumer = %name, "cannot take the change feed's Redis work; trying again");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        'pull: loop {
            let Some(first) = messages.next().await else {
                break 'pull;
            };
            let mut batch = vec![first];
            while batch.len() < REDIS_BATCH_MAX {
                match futures_util::FutureExt::now_or_never(messages.next()) {
                    Some(Some(next)) => batch.push(next),
                    _ => break,
                }
            }
            let mut taken = Vec::with_capacity(batch.len());
            for message in batch {
                match message {
                    Ok(message) => taken.push(message),
                    Err(error) => {
                        tracing::warn!(error = %telemetry::chain(&error), "the change feed's Redis consumer failed; pulling again");
                        break 'pull;
                    }
                }
            }
            let now = SystemTime::now();
            // An announcement older than the TTL and stale-if-error window needs nothing of
            // Redis: whatever it held of the vehicle from before the change has expired.
            let changed: Vec<(VehicleId, u64)> = taken
                .iter()
                .filter(|message| {
                    // Without JetStream's metadata (never seen): carried out, to be safe.
                    message.info().map_or(true, |info| {
                        let published = UNIX_EPOCH
                            + Duration::from_nanos(
                                u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
                            );
                        now.duration_since(published).unwrap_or_default() < keep
                    })
                })
                .filter_map(versioned)
                .map(|(id, version, _)| (id, version))
                .collect();
            match redis.invalidate(&changed).await {
                Ok(done) => {
                    ::metrics::counter!(FEED_INVALIDATIONS, "tier" => "redis")
                        .increment(done as u64);
                    for message in &taken {
                        if let Err(error) = message.ack().await {
                            tracing::warn!(error = %telemetry::chain(&*error), "ack to the change feed not sent; another replica carries it out again (harmless)");
                        }
                    }
                }
                Err(error) => {
                    if let Some(errors) = redis.record_error("invalidate", &error) {
                        tracing::warn!(error = %telemetry::chain(&error), vehicles = changed.len(), errors, "changed vehicles not dropped from Redis; trying again (their entries expire within CACHE_TTL_SECS meanwhile)");
                    }
                    for message in &taken {
                        if let Err(error) = message.ack_with(AckKind::Nak(Some(RETRY))).await {
                            tracing::warn!(error = %telemetry::chain(&*error), "NAK to the change feed not sent; it comes back after its ack wait");
                        }
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The vehicle and version an announcement names; one that is not an announcement is logged
/// and passed over (acked with the rest: no replica could do more with it).
fn versioned(message: &jetstream::Message) -> Option<(VehicleId, u64, Option<Timestamp>)> {
    let parsed = serde_json::from_slice::<Versioned>(&message.payload)
        .ok()
        .and_then(|v| {
            let at = v.change.and_then(|c| c.timestamp);
            Some((
                VehicleId::from_i64(v.vehicle_id.into()).ok()?,
                v.version,
                at,
            ))
        });
    if parsed.is_none() {
        tracing::warn!(subject = %message.subject, bytes = message.payload.len(), "not an announcement on the change feed; passed over");
    }
    parsed
}
