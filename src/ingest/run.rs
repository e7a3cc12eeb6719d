//! The run loop: set up, pull, hand each batch on, and stop on a signal with the batch in hand
//! finished.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use futures_util::StreamExt;
use tracing::Instrument;

use super::batch::{Sorted, ready_batch};
use super::{Ingestor, http};
use crate::broker::{self, ConnectFailure};
use crate::config::IngestSettings;
use crate::db;
use crate::listener::Reserved;
use crate::telemetry::{self, ShutdownSignals};

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

/// Runs until SIGTERM or Ctrl-C: then stops fetching, finishes and acks the batch in hand, and
/// returns.
pub async fn run(settings: IngestSettings) -> anyhow::Result<()> {
    broker::check_dead_letter_subject(&settings).map_err(anyhow::Error::msg)?;
    let mut signals = ShutdownSignals::listen().context("cannot listen for SIGTERM and Ctrl-C")?;
    // A taken health port fails the start before the database is created or migrated; it is
    // listened on once that is done (see `listener`).
    let port = Reserved::bind(settings.bind_addr, "INGEST_BIND_ADDR")?;
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
            // Nothing is acked before it is announced: the change stream comes first.
            let found = match found {
                Ok(found) => broker::change_stream(&js, &self.settings)
                    .await
                    .map(|_| found),
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
        let dead_letter_subject = &self.settings.dead_letter_subject;
        match &dead_letters {
            Some(dead_letter_stream) => tracing::info!(
                stream = %self.settings.stream.name,
                changes = %self.settings.changes.stream,
                consumer = %self.settings.consumer,
                batch_max = self.settings.batch_max,
                %dead_letter_subject,
                %dead_letter_stream,
                "ingesting"
            ),
            None => tracing::warn!(
                stream = %self.settings.stream.name,
                consumer = %self.settings.consumer,
                batch_max = self.settings.batch_max,
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
        let batch_max = usize::try_from(self.settings.batch_max).unwrap_or(1);
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
                let prefix = &self.settings.stream.subject_prefix;
                let (sorted, pull_again) = Sorted::of(prefix, chunk);
                // Signals wait until the batch in hand is applied and acked.
                let span = sorted.span();
                self.process(sorted).instrument(span).await;
                if pull_again {
                    continue 'pull;
                }
            }
        }
    }
}
