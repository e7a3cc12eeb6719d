//! What the integration-test binaries under `tests/` share. Each suite is a binary of its own
//! (`tests/api`, `tests/faults`, ...); this crate is their common ground, so none includes
//! another's files.
//!
//! - [`servers`]: which PostgreSQL and Redis the tests use; [`scratch`]: the database and cache
//!   namespace each test owns; [`app`]: the service started in the test's process on them, and
//!   [`settings`], [`http`] to drive it.
//! - [`process`]: real processes (the service's binary as replicas and ingest, nginx, private
//!   PostgreSQL, Redis and NATS servers), stopped when dropped.
//! - [`chaos`], [`netns`], [`load`], [`pki`], [`oidc`]: faults on a connection and on a network
//!   link, closed-loop load and what it measured, test certificates, and an identity provider's
//!   keys, key set and tokens.

pub mod app;
pub mod chaos;
pub mod http;
pub mod load;
pub mod netns;
pub mod oidc;
pub mod pki;
pub mod process;
pub mod scratch;
pub mod servers;
pub mod settings;
