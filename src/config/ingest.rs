//! What `ingest` reads: the connections it shares with the other commands, and its consumer.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::parse::{millis, parse_stream_name, parse_subject, secs};
use super::{ChangesSettings, DatabaseSettings, NatsSettings, StreamSettings, TraceSettings};

/// Everything `ingest` needs.
#[derive(Debug, Clone, Args)]
pub struct IngestSettings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub stream: StreamSettings,
    #[command(flatten)]
    pub changes: ChangesSettings,
    #[command(flatten)]
    pub traces: TraceSettings,

    /// The durable pull consumer every ingest process shares.
    #[arg(help_heading = "Ingest", long = "ingest-consumer", id = "INGEST_CONSUMER", env = "INGEST_CONSUMER", default_value = "vehicle-state-ingest", value_parser = parse_stream_name)]
    pub consumer: String,

    /// Subject that events which can never be applied are published on, with the reason; keep it
    /// outside the stream's subjects.
    #[arg(help_heading = "Ingest", long = "ingest-dead-letter-subject", id = "INGEST_DEAD_LETTER_SUBJECT", env = "INGEST_DEAD_LETTER_SUBJECT", default_value = "vehicle-state.dead-letter", value_parser = parse_subject)]
    pub dead_letter_subject: String,

    /// The JetStream stream that keeps dead letters, created on INGEST_DEAD_LETTER_SUBJECT when
    /// absent (as INGEST_CREATE_STREAM allows). A dead letter is acked only once a stream has
    /// stored it; while none takes its subject, the event stays in INGEST_STREAM.
    #[arg(help_heading = "Ingest", long = "ingest-dead-letter-stream", id = "INGEST_DEAD_LETTER_STREAM", env = "INGEST_DEAD_LETTER_STREAM", default_value = "VEHICLE_EVENTS_DEAD_LETTERS", value_parser = parse_stream_name)]
    pub dead_letter_stream: String,

    /// Most events applied in one transaction.
    #[arg(help_heading = "Ingest", long = "ingest-batch-max", id = "INGEST_BATCH_MAX", env = "INGEST_BATCH_MAX", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_max: u32,

    /// Seconds JetStream waits for an ack before delivering a message again (to this or another
    /// ingest process); a consumer created here gets it.
    #[arg(help_heading = "Ingest", long = "ingest-ack-wait-secs", id = "INGEST_ACK_WAIT_SECS", env = "INGEST_ACK_WAIT_SECS", default_value = "30", value_parser = secs(1..=3600))]
    pub ack_wait: Duration,

    /// Most messages delivered and not yet acked, across every ingest process (a consumer created
    /// here gets it).
    #[arg(help_heading = "Ingest", long = "ingest-max-ack-pending", id = "INGEST_MAX_ACK_PENDING", env = "INGEST_MAX_ACK_PENDING", default_value_t = 10_000, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub max_ack_pending: i64,

    /// How long a batch PostgreSQL could not take is left before it is delivered again (the NAK's
    /// delay); fetching pauses as long.
    #[arg(help_heading = "Ingest", long = "ingest-retry-delay-ms", id = "INGEST_RETRY_DELAY_MS", env = "INGEST_RETRY_DELAY_MS", default_value = "1000", value_parser = millis(1..=600_000))]
    pub retry_delay: Duration,

    /// Address of the ingest process's own /livez, /readyz and /metrics.
    #[arg(
        help_heading = "Ingest",
        long = "ingest-bind-addr",
        id = "INGEST_BIND_ADDR",
        env = "INGEST_BIND_ADDR",
        default_value = "0.0.0.0:8081"
    )]
    pub bind_addr: SocketAddr,

    /// Create the database if absent and apply pending migrations before ingesting.
    #[arg(help_heading = "Ingest", long, env = "MIGRATE_ON_START", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
}
