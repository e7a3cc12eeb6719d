//! `vehicle-state publish synthetic`: the histories of `seed synthetic` as events on the stream,
//! for demos, tests and the ingest benchmark. Applying them gives the tables `seed synthetic`
//! loads with the same seed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::broker::{self, ConnectFailure};
use crate::config::{PublishSettings, SyntheticSettings};
use crate::db::{SyntheticHistory, generate};
use crate::domain::Timestamp;
use crate::domain::event::EventKind;
use crate::telemetry::otel;

/// The pause before sending again what JetStream did not acknowledge, doubled each time up to
/// [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// One event to publish, by reference into the histories: a registration (`change` is `None`)
/// or the `change`-th state change of the vehicle; `copy` 1 is a duplicate under a new eventId.
#[derive(Debug, Clone, Copy)]
struct EventRef {
    vehicle: u32,
    change: Option<u8>,
    copy: u8,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegisteredJson<'a> {
    event_id: &'a str,
    vehicle_id: u32,
    make: &'a str,
    model: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateChangedJson<'a> {
    event_id: &'a str,
    vehicle_id: u32,
    state: &'a str,
    timestamp: String,
}

pub async fn synthetic(settings: PublishSettings) -> anyhow::Result<()> {
    let client = broker::connect(&settings.nats, "vehicle-state publish")
        .await
        .map_err(|failure| match failure {
            ConnectFailure::Setting(m) | ConnectFailure::Unreachable(m) => anyhow::anyhow!(m),
        })?;
    let js = jetstream::new(client.clone());
    broker::stream(&js, &settings.stream).await?;

    let histories: Vec<SyntheticHistory> = generate(SyntheticSettings {
        vehicles: settings.vehicles,
        random_seed: settings.random_seed,
        replace: false,
    })
    .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(settings.random_seed ^ 0x0050_5542_4c49_5348); // "PUBLISH": its own stream of randomness
    let mut events = Vec::new();
    for history in &histories {
        let changes = (0..history.changes.len()).map(|i| u8::try_from(i).ok());
        for change in std::iter::once(None).chain(changes.flatten().map(Some)) {
            let event = EventRef {
                vehicle: history.id,
                change,
                copy: 0,
            };
            events.push(event);
            if settings.duplicates > 0.0 && rng.random_bool(settings.duplicates) {
                events.push(EventRef { copy: 1, ..event });
            }
        }
    }
    if settings.shuffle {
        events.shuffle(&mut rng);
    }
    let duplicates = events.iter().filter(|e| e.copy > 0).count();

    let registered = broker::subject(&settings.stream, EventKind::Registered);
    let state_changed = broker::subject(&settings.stream, EventKind::StateChanged);
    let in_flight = usize::try_from(settings.in_flight).unwrap_or(1);
    let started = Instant::now();
    // One trace for the run; each event's own span is its child, and its context goes in the
    // event's headers (`traceparent`), so the ingest batch that applies it links to it.
    let run = tracing::trace_span!(
        target: otel::SPANS,
        "publish synthetic",
        vehicle_state.events = events.len(),
    );
    let retry_for = settings.retry_for;
    let resend = |event: EventRef| message(event, &histories, &registered, &state_changed);
    // In order of sending; `None`: not sent (the connection refused it), to be sent again.
    let mut pending: VecDeque<(Option<PublishAckFuture>, EventRef)> =
        VecDeque::with_capacity(in_flight);
    for event in &events {
        if pending.len() >= in_flight {
            confirm(&js, &mut pending, &resend, retry_for).await?;
        }
        let Some((subject, mut publish)) = message(*event, &histories, &registered, &state_changed)
        else {
            continue;
        };
        if otel::on() {
            let span = tracing::trace_span!(
                target: otel::SPANS,
                parent: &run,
                "publish",
                otel.kind = "producer",
                messaging.system = "nats",
                messaging.operation.type = "send",
                messaging.destination.name = subject,
            );
            // Added to the message's headers, not in their place: `Nats-Msg-Id` stays.
            for (name, value) in otel::context_headers(&span) {
                publish = publish.header(name.as_str(), value.as_str());
            }
        }
        let ack = js.send_publish(subject.to_owned(), publish).await.ok();
        pending.push_back((ack, *event));
    }
    while !pending.is_empty() {
        confirm(&js, &mut pending, &resend, retry_for).await?;
    }
    let took = started.elapsed();
    tracing::info!(
        events = events.len(),
        duplicates,
        vehicles = settings.vehicles,
        seconds = format!("{:.2}", took.as_secs_f64()),
        per_second = format!("{:.0}", events.len() as f64 / took.as_secs_f64().max(1e-9)),
        "published"
    );
    Ok(())
}

/// Waits for JetStream's acknowledgement of the oldest publish in flight. When none comes (no
/// stream leader during an election, a lost connection), every publish in flight is sent again
/// (same message ids) after a pause, and the oldest awaited again, until `retry_for` has passed
/// since the first failure. Sending them all again at once matters: each acknowledgement's own
/// timeout starts only when it is awaited, so waiting out the lost ones one by one would cost a
/// timeout each.
async fn confirm<'a>(
    js: &jetstream::Context,
    pending: &mut VecDeque<(Option<PublishAckFuture>, EventRef)>,
    resend: &impl Fn(EventRef) -> Option<(&'a str, PublishMessage)>,
    retry_for: Duration,
) -> anyhow::Result<()> {
    let mut failing_since = None;
    let mut pause = FIRST_PAUSE;
    loop {
        let Some((ack, _)) = pending.front_mut() else {
            return Ok(());
        };
        let error = match ack.take() {
            Some(ack) => match ack.await {
                Ok(_) => {
                    pending.pop_front();
                    return Ok(());
                }
                Err(error) => anyhow::Error::from(error),
            },
            None => anyhow::anyhow!("the connection did not take the publish"),
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= retry_for {
            return Err(error).context(format!(
                "JetStream did not acknowledge a publish within {} s (PUBLISH_RETRY_SECS)",
                retry_for.as_secs()
            ));
        }
        tracing::warn!(
            error = %crate::telemetry::chain(error.as_ref()),
            in_flight = pending.len(),
            "publish not acknowledged; sending what is in flight again"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
        // Only events whose message was made are in flight, so `resend` makes each again.
        for (ack, event) in pending.iter_mut() {
            *ack = match resend(*event) {
                Some((subject, publish)) => js.send_publish(subject.to_owned(), publish).await.ok(),
                None => None,
            };
        }
    }
}

/// The subject and message of one event: its JSON, with its eventId as `Nats-Msg-Id` too.
/// `None` only for a reference outside the histories, which `synthetic` never makes.
fn message<'a>(
    event: EventRef,
    histories: &[SyntheticHistory],
    registered: &'a str,
    state_changed: &'a str,
) -> Option<(&'a str, PublishMessage)> {
    // Ids run from 1, one history per id, in order.
    let history = histories.get(usize::try_from(event.vehicle.checked_sub(1)?).ok()?)?;
    let suffix = if event.copy > 0 { "-again" } else { "" };
    let (subject, event_id, payload) = match event.change {
        None => {
            let event_id = format!("synthetic-{}-registered{suffix}", history.id);
            let json = RegisteredJson {
                event_id: &event_id,
                vehicle_id: history.id,
                make: history.make,
                model: history.model,
            };
            (registered, event_id.clone(), serde_json::to_vec(&json))
        }
        Some(i) => {
            let &(state, secs) = history.changes.get(usize::from(i))?;
            let event_id = format!("synthetic-{}-{i}{suffix}", history.id);
            let timestamp = Timestamp::from_unix_micros(secs.saturating_mul(1_000_000))
                .map_or_else(|| secs.to_string(), |at| at.to_string());
            let json = StateChangedJson {
                event_id: &event_id,
                vehicle_id: history.id,
                state,
                timestamp,
            };
            (state_changed, event_id.clone(), serde_json::to_vec(&json))
        }
    };
    // A struct of strings and integers always serialises.
    let payload = payload.unwrap_or_default();
    Some((
        subject,
        PublishMessage::build()
            .payload(payload.into())
            .message_id(event_id),
    ))
}
