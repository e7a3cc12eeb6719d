//! What most ingest tests start from: a nats-server of the test's own, a database of its own with
//! the schema and no rows, and a directory for the processes' logs; `publish` into its stream and
//! `ingest` from it, both the service's own binary.

use vehicle_state_test_support::process::nats::NatsServer;
use vehicle_state_test_support::process::{Replica, TempDir};
use vehicle_state_test_support::scratch::Scratch;

use crate::{migrated_database, publish};

/// The stream ingest reads unless a test names another (the service's default).
pub const STREAM: &str = "VEHICLE_EVENTS";

/// Everything is removed when dropped, the database first and the server last (fields drop in
/// order), as the tests' own variables were before.
pub struct Fixture {
    pub db: Scratch,
    pub dir: TempDir,
    pub nats: NatsServer,
    pub stream: &'static str,
}

impl Fixture {
    /// A server, a directory named after `what`, and a migrated database, for [`STREAM`].
    pub fn start(what: &str) -> Self {
        Self::with_stream(what, STREAM)
    }

    /// As [`Fixture::start`], for events in `stream`.
    pub fn with_stream(what: &str, stream: &'static str) -> Self {
        let nats = NatsServer::start();
        let dir = TempDir::new(what);
        let db = migrated_database();
        Self {
            db,
            dir,
            nats,
            stream,
        }
    }

    /// The URL of the test's database.
    pub fn database_url(&self) -> &str {
        &self.db.database_url
    }

    /// `publish synthetic` of `vehicles` vehicles into the stream.
    pub fn publish(&self, vehicles: u32, seed: u64, flags: &[&str]) {
        publish(&self.nats.url(), self.stream, vehicles, seed, flags);
    }

    /// An ingest process on the database and the stream, not started yet: set what the test
    /// needs, then [`Replica::start`].
    pub fn ingest(&self) -> Replica {
        Replica::ingest(
            &self.dir.0,
            &self.db.database_url,
            &self.nats.url(),
            self.stream,
        )
    }

    /// [`Fixture::ingest`], started.
    pub async fn start_ingest(&self) -> Replica {
        let mut ingest = self.ingest();
        ingest.start().await;
        ingest
    }

    /// A client of the test's own on the server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.nats.url()).await.expect("connect")
    }
}
