//! What `publish synthetic` reads.

use std::time::Duration;

use clap::Args;

use super::parse::{parse_fraction, secs};
use super::{NatsSettings, StreamSettings, TraceSettings};

/// What `publish synthetic` sends.
#[derive(Debug, Clone, Args)]
pub struct PublishSettings {
    #[command(flatten)]
    pub nats: NatsSettings,
    #[command(flatten)]
    pub stream: StreamSettings,
    #[command(flatten)]
    pub traces: TraceSettings,

    /// How many vehicles (ids 1 to N): one registration each, and each of its state changes.
    #[arg(help_heading = "Publish", long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub vehicles: u32,

    /// Seed of the generator: the same seed gives the histories of `seed synthetic --random-seed S`
    /// (`--seed` still works: its former name).
    #[arg(help_heading = "Publish", long, alias = "seed", default_value_t = 1)]
    pub random_seed: u64,

    /// Publish the events in a random order (the same for the same seed), registrations included.
    #[arg(help_heading = "Publish", long)]
    pub shuffle: bool,

    /// Also publish this fraction of the events a second time, each under a new eventId (so
    /// JetStream's duplicate window does not drop it and the consumer must).
    #[arg(help_heading = "Publish", long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub duplicates: f64,

    /// Most publishes awaiting JetStream's acknowledgement at once.
    #[arg(help_heading = "Publish", long = "publish-in-flight", id = "PUBLISH_IN_FLIGHT", env = "PUBLISH_IN_FLIGHT", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub in_flight: u32,

    /// How long an event JetStream has not acknowledged is sent again (under the same
    /// Nats-Msg-Id, so one that did land is not stored twice) before publish gives up: a
    /// clustered stream has no leader for the 4 to 10 s of an election.
    #[arg(help_heading = "Publish", long = "publish-retry-secs", id = "PUBLISH_RETRY_SECS", env = "PUBLISH_RETRY_SECS", default_value = "30", value_parser = secs(1..=3600))]
    pub retry_for: Duration,
}
