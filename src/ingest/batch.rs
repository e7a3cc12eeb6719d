//! What one batch is: the messages that have already arrived (no timer), sorted into
//! registrations, state changes and events that can never be applied.

use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::{self, consumer::pull::MessagesError};
use futures_util::StreamExt;

use crate::domain::event::{Event, EventKind, Registration, Rejection, StateChange};
use crate::telemetry::{self, otel};

/// What sorting needs of a delivered message: a trait, so the sorting is tested without a broker.
pub(super) trait Delivered {
    fn subject(&self) -> &str;
    fn payload(&self) -> &[u8];
}

impl Delivered for jetstream::Message {
    fn subject(&self) -> &str {
        self.subject.as_str()
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// The events of one delivery, sorted by what becomes of them, each list in the order the events
/// arrived.
pub(super) struct Sorted<M = jetstream::Message> {
    pub(super) registrations: Vec<(M, Registration)>,
    pub(super) changes: Vec<(M, StateChange)>,
    pub(super) rejected: Vec<(M, Option<EventKind>, Rejection)>,
}

impl<M> Default for Sorted<M> {
    fn default() -> Self {
        Self {
            registrations: Vec::new(),
            changes: Vec::new(),
            rejected: Vec::new(),
        }
    }
}

impl<M: Delivered> Sorted<M> {
    /// The messages of `chunk` sorted, and whether the pull must be asked again at once: the
    /// errors among them are logged and otherwise dropped (they carry no event).
    pub(super) fn of(prefix: &str, chunk: Vec<Result<M, MessagesError>>) -> (Self, bool) {
        let mut sorted = Self::default();
        let mut pull_again = false;
        for item in chunk {
            match item {
                Ok(message) => sorted.sort(prefix, message),
                Err(error) => {
                    tracing::warn!(error = %telemetry::chain(&error), "pulling messages");
                    // The pull request is gone with the server that held it (a leader that died,
                    // a node restarted): async-nats would ask again only when it expires
                    // (PULL_EXPIRES), so ingest would stand still that long.
                    pull_again |= matches!(
                        error.kind(),
                        MessagesErrorKind::MissingHeartbeat | MessagesErrorKind::NoResponders
                    );
                }
            }
        }
        (sorted, pull_again)
    }

    fn sort(&mut self, prefix: &str, message: M) {
        let Some(kind) = EventKind::of_subject(prefix, message.subject()) else {
            let reason = Rejection(format!(
                "subject {} is neither {prefix}.registered nor {prefix}.state_changed",
                message.subject()
            ));
            self.rejected.push((message, None, reason));
            return;
        };
        match Event::parse(kind, message.payload()) {
            Ok(Event::Registered(registration)) => self.registrations.push((message, registration)),
            Ok(Event::StateChanged(change)) => self.changes.push((message, change)),
            Err(rejection) => self.rejected.push((message, Some(kind), rejection)),
        }
    }
}

impl Sorted {
    /// The span of one ingest batch (a trace of its own: it serves many publishers), linked to
    /// the trace context each event carried in its headers (`traceparent`, as `publish` sets
    /// it). `Span::none()` when tracing is off.
    pub(super) fn span(&self) -> tracing::Span {
        if !otel::on() {
            return tracing::Span::none();
        }
        let events = self.registrations.len() + self.changes.len() + self.rejected.len();
        let span = tracing::trace_span!(
            target: otel::SPANS,
            parent: None,
            "ingest batch",
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.batch.message_count = events,
        );
        let messages = self
            .registrations
            .iter()
            .map(|(m, _)| m)
            .chain(self.changes.iter().map(|(m, _)| m))
            .chain(self.rejected.iter().map(|(m, _, _)| m));
        for headers in messages.filter_map(|m| m.headers.as_ref()) {
            otel::link_to_nats(&span, headers);
        }
        span
    }
}

/// `first`, and whatever else has already arrived, up to `max`. No timer: the client hands over
/// buffered messages a few at a time (it asks the server for more as it goes), so this gives it
/// a turn of the scheduler when it has none ready, and stops at the first turn that brings none.
pub(super) async fn ready_batch<S, T>(messages: &mut S, first: T, max: usize) -> Vec<T>
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

#[cfg(test)]
mod tests;
