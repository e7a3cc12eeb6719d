//! `vehicle-state ingest`: events from the JetStream consumer into PostgreSQL, in batches, acked
//! only once committed. Any number of these processes share the consumer; the HTTP replicas stay
//! read-only.
//!
//! One batch goes through, in order: `run` (pulling, and stopping on a signal), `batch` (what
//! one batch holds, sorted), `apply` (one transaction in PostgreSQL), `announce` (each
//! committed change on the change feed) and `settle` (ack, NAK or dead letter).

mod announce;
mod apply;
mod batch;
mod http;
mod run;
mod settle;

use std::sync::OnceLock;

use async_nats::jetstream::{self, consumer::PullConsumer};
use sqlx::PgPool;

use crate::config::IngestSettings;

pub use run::run;

/// What the health endpoints read: the pool, and, once set up, the connection and consumer.
pub struct Ingestor {
    pool: PgPool,
    nats: OnceLock<async_nats::Client>,
    /// JetStream on that connection: dead letters are stored through it.
    js: OnceLock<jetstream::Context>,
    consumer: OnceLock<PullConsumer>,
    settings: IngestSettings,
}
