//! `vehicle-state ingest`: events from the JetStream consumer into PostgreSQL, in batches, acked
//! only once committed. Any number of these processes share the consumer; the HTTP replicas stay
//! read-only.

mod http;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant as Clock};

use anyhow::Context as _;
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;
use sqlx::PgPool;
use tracing::Instrument;

use crate::broker::{self, ConnectFailure};
use crate::config::IngestSettings;
use crate::db::{self, Applied, DbError};
use crate::domain::event::{Event, EventKind, Registration, Rejection, StateChange};
use crate::listener::Reserved;
use crate::metrics::{self, IngestResult};
use crate::telemetry::{self, ShutdownSignals, otel};

/// How long to wait before asking again when NATS cannot be reached or the stream cannot be set
/// up at start.
const SETUP_RETRY: Duration = Duration::from_secs(1);
/// How often the consumer's pull stream sends heartbeats; a missed one (or a pull that no server
/// answers) makes ingest send a new pull request at once rather than wait for the old one to
/// expire.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Messages asked for per pull, in batches of INGEST_BATCH_MAX: the client asks again when half
/// are taken, so a full batch is buffered while the previous one commits.
const PULL_BATCHES: usize = 4;
/// How long one pull request stays open on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// What the health endpoints read: the pool, and, once set up, the connection and consumer.
pub struct Ingestor {
    pool: PgPool,
    nats: OnceLock<async_nats::Client>,
    /// JetStream on that connection: dead letters are stored through it.
    js: OnceLock<jetstream::Context>,
    consumer: OnceLock<PullConsumer>,
    settings: IngestSettings,
}

/// Runs until SIGTERM or Ctrl-C: then stops fetching, finishes and acks the batch in hand, and
/// returns.
pub async fn run(settings: IngestSettings) -> anyhow::Result<()> {
    broker::check_dead_letter_subject(&settings).map_err(anyhow::Error::msg)?;
    let mut signals = ShutdownSignals::listen().context("cannot listen for SIGTERM and Ctrl-C")?;
    // A taken health port fails the start before the database is created or migrated; it is
    // listened on once that is done (see `listener`).
    let port = Reserved::bind(settings.ingest_bind_addr, "INGEST_BIND_ADDR")?;
    if settings.migrate_on_start {
        db::prepare(&settings.database, None).await?;
    } else {
        // Unreachable: the pool connects when it can; batches wait and are NAKed meanwhile.
        let _reachable = db::check_connection(&settings.database).await?;
    }
    let ingestor = Arc::new(Ingestor {
        pool: db::connect(&settings.database),
        nats: OnceLock::new(),
        js: OnceLock::new(),
        consumer: OnceLock::new(),
        settings,
    });
    let server = http::serve(ingestor.clone(), port)?;
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);

    let result = tokio::select! {
        biased;
        () = signals.recv() => Ok(()),
        set_up = ingestor.set_up() => match set_up {
            Ok(()) => ingestor.consume(&mut signals).await,
            Err(error) => Err(error),
        },
    };
    server_handle.stop(true).await;
    if let Err(error) = server_task.await {
        tracing::warn!(%error, "the health server did not stop cleanly");
    }
    if let Some(client) = ingestor.nats.get()
        && let Err(error) = client.flush().await
    {
        tracing::warn!(error = %telemetry::chain(&error), "could not flush the last acks to NATS; those events will be delivered again and found duplicate");
    }
    result
}

/// The events of one delivery, sorted by what becomes of them.
#[derive(Default)]
struct Sorted {
    registrations: Vec<(jetstream::Message, Registration)>,
    changes: Vec<(jetstream::Message, StateChange)>,
    rejected: Vec<(jetstream::Message, Option<EventKind>, Rejection)>,
}

impl Ingestor {
    /// Connects to NATS and finds (or creates) the stream and consumer, retrying while NATS
    /// cannot be reached; a setting that cannot work is an error at once.
    async fn set_up(&self) -> anyhow::Result<()> {
        let client = loop {
            match broker::connect(&self.settings.nats, "vehicle-state ingest").await {
                Ok(client) => break client,
                Err(ConnectFailure::Setting(message)) => anyhow::bail!(message),
                Err(ConnectFailure::Unreachable(message)) => {
                    tracing::warn!("{message}; trying again in {}s", SETUP_RETRY.as_secs());
                    tokio::time::sleep(SETUP_RETRY).await;
                }
            }
        };
        let js = jetstream::new(client.clone());
        let (consumer, dead_letters) = loop {
            let found = match broker::stream(&js, &self.settings.stream).await {
                Ok(stream) => broker::consumer(&stream, &self.settings).await,
                Err(error) => Err(error),
            };
            let found = match found {
                Ok(consumer) => broker::dead_letter_stream(&js, &self.settings)
                    .await
                    .map(|dead_letters| (consumer, dead_letters)),
                Err(error) => Err(error),
            };
            match found {
                Ok(found) => break found,
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "JetStream is not ready; trying again in {}s", SETUP_RETRY.as_secs());
                    tokio::time::sleep(SETUP_RETRY).await;
                }
            }
        };
        let dead_letter_subject = &self.settings.ingest_dead_letter_subject;
        match &dead_letters {
            Some(dead_letter_stream) => tracing::info!(
                stream = %self.settings.stream.ingest_stream,
                consumer = %self.settings.ingest_consumer,
                batch_max = self.settings.ingest_batch_max,
                %dead_letter_subject,
                %dead_letter_stream,
                "ingesting"
            ),
            None => tracing::warn!(
                stream = %self.settings.stream.ingest_stream,
                consumer = %self.settings.ingest_consumer,
                batch_max = self.settings.ingest_batch_max,
                %dead_letter_subject,
                "ingesting, but no stream stores dead letters (INGEST_CREATE_STREAM=false): an event that can never be applied stays unacked until one does"
            ),
        }
        let _ = self.js.set(js);
        let _ = self.nats.set(client);
        let _ = self.consumer.set(consumer);
        Ok(())
    }

    /// Fetches and applies batches until a signal. A batch is what has arrived, up to
    /// INGEST_BATCH_MAX: no timer, so a lone event is applied at once.
    async fn consume(&self, signals: &mut ShutdownSignals) -> anyhow::Result<()> {
        let consumer = self.consumer.get().context("consume before set_up")?;
        let batch_max = usize::try_from(self.settings.ingest_batch_max).unwrap_or(1);
        'pull: loop {
            let messages = tokio::select! {
                biased;
                () = signals.recv() => return Ok(()),
                messages = consumer
                    .stream()
                    .max_messages_per_batch(batch_max.saturating_mul(PULL_BATCHES))
                    .heartbeat(HEARTBEAT)
                    .expires(PULL_EXPIRES)
                    .messages() => messages,
            };
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(error = %telemetry::chain(&error), "cannot pull from the consumer; trying again");
                    tokio::time::sleep(SETUP_RETRY).await;
                    continue 'pull;
                }
            };
            loop {
                let first = tokio::select! {
                    biased;
                    () = signals.recv() => return Ok(()),
                    first = messages.next() => first,
                };
                let Some(first) = first else {
                    tracing::warn!("the consumer's message stream ended; pulling again");
                    continue 'pull;
                };
                let chunk = ready_batch(&mut messages, first, batch_max).await;
                let mut sorted = Sorted::default();
                let mut pull_again = false;
                for item in chunk {
                    match item {
                        Ok(message) => self.sort(message, &mut sorted),
                        Err(error) => {
                            tracing::warn!(error = %telemetry::chain(&error), "pulling messages");
                            // The pull request is gone with the server that held it (a leader
                            // that died, a node restarted): async-nats would ask again only when
                            // it expires (PULL_EXPIRES), so ingest would stand still that long.
                            pull_again |= matches!(
                                error.kind(),
                                MessagesErrorKind::MissingHeartbeat
                                    | MessagesErrorKind::NoResponders
                            );
                        }
                    }
                }
                // Signals wait until the batch in hand is applied and acked.
                let span = batch_span(&sorted);
                self.process(sorted).instrument(span).await;
                if pull_again {
                    continue 'pull;
                }
            }
        }
    }

    fn sort(&self, message: jetstream::Message, sorted: &mut Sorted) {
        let prefix = &self.settings.stream.ingest_subject_prefix;
        let Some(kind) = EventKind::of_subject(prefix, message.subject.as_str()) else {
            let reason = Rejection(format!(
                "subject {} is neither {prefix}.registered nor {prefix}.state_changed",
                message.subject
            ));
            sorted.rejected.push((message, None, reason));
            return;
        };
        match Event::parse(kind, &message.payload) {
            Ok(Event::Registered(registration)) => {
                sorted.registrations.push((message, registration))
            }
            Ok(Event::StateChanged(change)) => sorted.changes.push((message, change)),
            Err(rejection) => sorted.rejected.push((message, Some(kind), rejection)),
        }
    }

    /// Applies the batch, then acks what was committed (or found already stored), dead-letters
    /// what can never be applied, and NAKs the rest for later.
    async fn process(&self, sorted: Sorted) {
        let Sorted {
            registrations,
            changes,
            mut rejected,
        } = sorted;
        if !registrations.is_empty() || !changes.is_empty() {
            match self.apply(&registrations, &changes).await {
                Ok(outcome) => {
                    for ((message, registration), applied) in
                        registrations.into_iter().zip(outcome.registrations)
                    {
                        match applied {
                            Applied::Contradicts { make, model } => rejected.push((
                                message,
                                Some(EventKind::Registered),
                                Rejection(format!(
                                    "vehicle {} is already registered as {make} {model}",
                                    registration.vehicle
                                )),
                            )),
                            Applied::Refused(reason) => rejected.push((
                                message,
                                Some(EventKind::Registered),
                                Rejection(reason),
                            )),
                            applied => self.ack(&message, EventKind::Registered, &applied).await,
                        }
                    }
                    for ((message, _), applied) in changes.into_iter().zip(outcome.changes) {
                        match applied {
                            Applied::Refused(reason) => rejected.push((
                                message,
                                Some(EventKind::StateChanged),
                                Rejection(reason),
                            )),
                            applied => self.ack(&message, EventKind::StateChanged, &applied).await,
                        }
                    }
                }
                Err(error) => {
                    let delay = Duration::from_millis(self.settings.ingest_retry_delay_ms);
                    tracing::warn!(
                        error = %telemetry::chain(&error),
                        events = registrations.len() + changes.len(),
                        retry_in_ms = self.settings.ingest_retry_delay_ms,
                        "PostgreSQL cannot take the batch; nothing acked, delivering it again later"
                    );
                    let messages = registrations
                        .iter()
                        .map(|(m, _)| (m, EventKind::Registered))
                        .chain(changes.iter().map(|(m, _)| (m, EventKind::StateChanged)));
                    for (message, kind) in messages {
                        IngestResult::Retried.count(kind);
                        if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
                            tracing::warn!(error = %telemetry::chain(&*error), "NAK not sent; the event comes back after INGEST_ACK_WAIT_SECS");
                        }
                    }
                    // Pause fetching too, rather than spin on a database that is down.
                    tokio::time::sleep(delay).await;
                }
            }
        }
        for (message, kind, rejection) in rejected {
            let span = tracing::trace_span!(
                target: otel::SPANS,
                "dead-letter publish",
                otel.kind = "producer",
                messaging.system = "nats",
                messaging.operation.type = "send",
                messaging.destination.name = self.settings.ingest_dead_letter_subject.as_str(),
            );
            self.dead_letter(message, kind, rejection)
                .instrument(span)
                .await;
        }
    }

    /// One transaction for the batch. A batch PostgreSQL refuses for its data (see
    /// [`refused_for_its_data`]) is applied again event by event, so one bad event is
    /// dead-lettered and the others still applied; any other failure fails the whole batch, to
    /// be delivered again.
    async fn apply(
        &self,
        registrations: &[(jetstream::Message, Registration)],
        changes: &[(jetstream::Message, StateChange)],
    ) -> Result<db::BatchOutcome, DbError> {
        let regs: Vec<&Registration> = registrations.iter().map(|(_, r)| r).collect();
        let chgs: Vec<&StateChange> = changes.iter().map(|(_, c)| c).collect();
        let started = Clock::now();
        let result = db::apply_events(
            &self.pool,
            self.settings.database.response_timeout(),
            &regs,
            &chgs,
        )
        .await;
        metrics::record_ingest_batch(regs.len() + chgs.len(), started.elapsed());
        match result {
            Err(error) if refused_for_its_data(&error) && regs.len() + chgs.len() > 1 => {
                tracing::warn!(error = %telemetry::chain(&error), "a batch failed on its data; applying its events one by one");
                let mut outcome = db::BatchOutcome::default();
                for registration in &regs {
                    let one = db::apply_events(
                        &self.pool,
                        self.settings.database.response_timeout(),
                        &[registration],
                        &[],
                    )
                    .await;
                    outcome.registrations.push(one_outcome(one, true)?);
                }
                for change in &chgs {
                    let one = db::apply_events(
                        &self.pool,
                        self.settings.database.response_timeout(),
                        &[],
                        &[change],
                    )
                    .await;
                    outcome.changes.push(one_outcome(one, false)?);
                }
                Ok(outcome)
            }
            Err(error) if refused_for_its_data(&error) => {
                // One event, failing on its own: it can never be applied.
                let reason = format!("PostgreSQL refused it: {}", telemetry::chain(&error));
                let failed = Applied::Refused(reason);
                Ok(db::BatchOutcome {
                    registrations: vec![failed.clone(); regs.len()],
                    changes: vec![failed; chgs.len()],
                })
            }
            other => other,
        }
    }

    async fn ack(&self, message: &jetstream::Message, kind: EventKind, applied: &Applied) {
        let result = match applied {
            Applied::New => IngestResult::Applied,
            Applied::Duplicate => IngestResult::Duplicate,
            Applied::Contradicts { .. } | Applied::Refused(_) => {
                // Routed to dead letters by the caller; never acked as applied.
                return;
            }
        };
        result.count(kind);
        if let Err(error) = message.ack().await {
            tracing::warn!(error = %telemetry::chain(&*error), "ack not sent; the event comes back after INGEST_ACK_WAIT_SECS and is found duplicate");
        }
    }

    /// Stores the event in the dead-letter stream, with its reason, then acks it. A payload too
    /// large to go with the headers is left out (the event stays in its stream, at the sequence
    /// the dead letter names). If no stream confirms it stored the dead letter, the event is
    /// NAKed instead and tried again: an event is never acked unless applied or kept.
    async fn dead_letter(
        &self,
        message: jetstream::Message,
        kind: Option<EventKind>,
        rejection: Rejection,
    ) {
        let Some(js) = self.js.get() else {
            return;
        };
        let sequence = message.info().ok().map(|info| info.stream_sequence);
        let mut headers =
            broker::dead_letter_headers(&rejection.0, message.subject.as_str(), sequence);
        if otel::on() {
            // Whoever reads the dead letters can follow it back to this batch.
            otel::inject_nats(&tracing::Span::current(), &mut headers);
        }
        let subject = self.settings.ingest_dead_letter_subject.as_str();
        let mut stored = broker::store(js, subject, headers.clone(), message.payload.clone()).await;
        if let Err(error) = &stored
            && error.kind() == PublishErrorKind::MaxPayloadExceeded
        {
            let size = message.payload.len().to_string();
            headers.insert(broker::PAYLOAD_OMITTED_HEADER, size.as_str());
            stored = broker::store(js, subject, headers, bytes::Bytes::new()).await;
        }
        match stored {
            Ok(ack) => {
                tracing::warn!(
                    subject = %message.subject,
                    stream_sequence = sequence,
                    reason = %broker::capped(rejection.0),
                    dead_letter_stream = %ack.stream,
                    "event dead-lettered"
                );
                IngestResult::DeadLettered.count_of(kind);
                if let Err(error) = message.ack().await {
                    tracing::warn!(error = %telemetry::chain(&*error), "ack of a dead letter not sent; it will be dead-lettered again");
                }
            }
            Err(error) => {
                let delay = Duration::from_millis(self.settings.ingest_retry_delay_ms);
                if error.kind() == PublishErrorKind::StreamNotFound {
                    tracing::warn!(
                        dead_letter_subject = subject,
                        stream_sequence = sequence,
                        "no stream stores dead letters; the event stays unacked and is tried again"
                    );
                } else {
                    tracing::warn!(error = %telemetry::chain(&error), stream_sequence = sequence, "dead letter not stored; the event stays unacked and is tried again");
                }
                IngestResult::Retried.count_of(kind);
                if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(error = %telemetry::chain(&*error), "NAK not sent; the event comes back after INGEST_ACK_WAIT_SECS");
                }
            }
        }
    }
}

/// The span of one ingest batch (a trace of its own: it serves many publishers), linked to the
/// trace context each event carried in its headers (`traceparent`, as `publish` sets it).
/// `Span::none()` when tracing is off.
fn batch_span(sorted: &Sorted) -> tracing::Span {
    if !otel::on() {
        return tracing::Span::none();
    }
    let events = sorted.registrations.len() + sorted.changes.len() + sorted.rejected.len();
    let span = tracing::trace_span!(
        target: otel::SPANS,
        parent: None,
        "ingest batch",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.batch.message_count = events,
    );
    let messages = sorted
        .registrations
        .iter()
        .map(|(m, _)| m)
        .chain(sorted.changes.iter().map(|(m, _)| m))
        .chain(sorted.rejected.iter().map(|(m, _, _)| m));
    for headers in messages.filter_map(|m| m.headers.as_ref()) {
        otel::link_to_nats(&span, headers);
    }
    span
}

/// `first`, and whatever else has already arrived, up to `max`. No timer: the client hands over
/// buffered messages a few at a time (it asks the server for more as it goes), so this gives it
/// a turn of the scheduler when it has none ready, and stops at the first turn that brings none.
async fn ready_batch<S, T>(messages: &mut S, first: T, max: usize) -> Vec<T>
where
    S: futures_util::Stream<Item = T> + Unpin,
{
    let mut batch = vec![first];
    let mut yielded = false;
    while batch.len() < max {
        match futures_util::FutureExt::now_or_never(messages.next()) {
            Some(Some(item)) => {
                batch.push(item);
                yielded = false;
            }
            Some(None) => break,
            None if yielded => break,
            None => {
                tokio::task::yield_now().await;
                yielded = true;
            }
        }
    }
    batch
}

/// The outcome of one event applied alone: a failure of its own data is a refusal; a lost
/// connection fails the whole batch (retried later).
fn one_outcome(
    result: Result<db::BatchOutcome, DbError>,
    registration: bool,
) -> Result<Applied, DbError> {
    match result {
        Ok(mut outcome) => {
            let list = if registration {
                &mut outcome.registrations
            } else {
                &mut outcome.changes
            };
            Ok(list.pop().unwrap_or(Applied::Duplicate))
        }
        Err(error) if refused_for_its_data(&error) => Ok(Applied::Refused(format!(
            "PostgreSQL refused it: {}",
            telemetry::chain(&error)
        ))),
        Err(error) => Err(error),
    }
}

/// Whether PostgreSQL refused a statement for the events' own data: SQLSTATE class 22 (a data
/// exception, such as a value out of range or a byte the encoding cannot hold) or 23 (a
/// constraint violated). Only those can single out an event that will never be applied. Any
/// other failure is the database's, not the event's: a standby that cannot write (25006), a
/// full disk (53100), a lock not granted (55P03), a missing table or privilege (42P01, 42501),
/// an internal error. Dead-lettering valid events for it would lose them, so the batch is
/// delivered again until the database can take it.
fn refused_for_its_data(error: &DbError) -> bool {
    matches!(
        error,
        DbError::Query(sqlx::Error::Database(e))
            if e.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
    )
}
