//! Settling a batch: ack what was committed (or found already stored), dead-letter what can
//! never be applied, NAK the rest for later. An event is never acked unless applied or kept.

use async_nats::jetstream::{self, AckKind, context::PublishErrorKind};
use tracing::Instrument;

use super::Ingestor;
use super::announce::Left;
use super::batch::Sorted;
use crate::broker;
use crate::db::Applied;
use crate::domain::event::{EventKind, Rejection};
use crate::metrics::IngestResult;
use crate::telemetry::{self, otel};

impl Ingestor {
    /// Applies the batch, then acks what was committed (or found already stored), dead-letters
    /// what can never be applied, and NAKs the rest for later.
    pub(super) async fn process(&self, sorted: Sorted) {
        let Sorted {
            registrations,
            changes,
            mut rejected,
        } = sorted;
        if !registrations.is_empty() || !changes.is_empty() {
            match self.apply(&registrations, &changes).await {
                Ok(outcome) => {
                    let left = Left::new(&outcome.vehicles);
                    // Committed (now or before): acked once announced.
                    let mut committed = Vec::with_capacity(registrations.len() + changes.len());
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
                            applied => committed.push((
                                message,
                                EventKind::Registered,
                                applied,
                                left.of_registration(&registration),
                            )),
                        }
                    }
                    for ((message, change), applied) in changes.into_iter().zip(outcome.changes) {
                        match applied {
                            Applied::Refused(reason) => rejected.push((
                                message,
                                Some(EventKind::StateChanged),
                                Rejection(reason),
                            )),
                            applied => committed.push((
                                message,
                                EventKind::StateChanged,
                                applied,
                                left.of_change(&change),
                            )),
                        }
                    }
                    let announcements: Vec<_> =
                        committed.iter().map(|(_, _, _, a)| a.clone()).collect();
                    let stored = self.announce(&announcements).await;
                    let delay = self.settings.retry_delay;
                    let mut unannounced = 0;
                    for ((message, kind, applied, _), stored) in committed.into_iter().zip(stored) {
                        // Counted as what the commit made of it, announced or not: an event
                        // delivered again after a failed announcement is then a duplicate.
                        if stored {
                            self.ack(&message, kind, &applied).await;
                        } else {
                            unannounced += 1;
                            count(kind, &applied);
                            if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
                                tracing::warn!(error = %telemetry::chain(&*error), "NAK not sent; the event comes back after INGEST_ACK_WAIT_SECS");
                            }
                        }
                    }
                    if unannounced > 0 {
                        tracing::warn!(
                            events = unannounced,
                            retry_in_ms = delay.as_millis(),
                            "committed, but not announced on the change feed; delivered again to be announced"
                        );
                        tokio::time::sleep(delay).await;
                    }
                }
                Err(error) => {
                    let delay = self.settings.retry_delay;
                    tracing::warn!(
                        error = %telemetry::chain(&error),
                        events = registrations.len() + changes.len(),
                        retry_in_ms = delay.as_millis(),
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
                messaging.destination.name = self.settings.dead_letter_subject.as_str(),
            );
            self.dead_letter(message, kind, rejection)
                .instrument(span)
                .await;
        }
    }

    async fn ack(&self, message: &jetstream::Message, kind: EventKind, applied: &Applied) {
        if !count(kind, applied) {
            // Routed to dead letters by the caller; never acked as applied.
            return;
        }
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
        let subject = self.settings.dead_letter_subject.as_str();
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
                let delay = self.settings.retry_delay;
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

/// Counts a committed event as applied or duplicate; `false` for one that was not committed.
fn count(kind: EventKind, applied: &Applied) -> bool {
    let result = match applied {
        Applied::New => IngestResult::Applied,
        Applied::Duplicate => IngestResult::Duplicate,
        Applied::Contradicts { .. } | Applied::Refused(_) => return false,
    };
    result.count(kind);
    true
}
