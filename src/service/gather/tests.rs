//! Which failures the misses queued behind a batch need not wait out again.

use super::*;

use std::borrow::Cow;

use sqlx::error::{DatabaseError, ErrorKind};

/// An error PostgreSQL sent, with its SQLSTATE.
#[derive(Debug)]
struct Sent(&'static str);

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SQLSTATE {}", self.0)
    }
}

impl std::error::Error for Sent {}

impl DatabaseError for Sent {
    fn message(&self) -> &str {
        "sent by the test"
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.0))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// A lookup that failed with `error`, classified as the pool's errors are.
fn failed_with(error: sqlx::Error) -> LookupError {
    LookupError::Db(DbError::from(error))
}

fn sent(sqlstate: &'static str) -> LookupError {
    failed_with(sqlx::Error::Database(Box::new(Sent(sqlstate))))
}

#[test]
fn postgresql_known_down_or_not_reached_is_an_outage() {
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    for (what, error) in [
        ("known down", LookupError::Db(DbError::Down)),
        (
            "no connection within the acquire timeout",
            failed_with(sqlx::Error::PoolTimedOut),
        ),
        ("connection refused", failed_with(sqlx::Error::Io(refused))),
        ("connection failure (08006)", sent("08006")),
        ("server shutting down (57P01)", sent("57P01")),
        ("too many connections (53300)", sent("53300")),
    ] {
        assert!(is_outage(&error), "{what}: {error:?}");
    }
}

#[test]
fn a_failure_of_one_statement_on_a_server_that_answers_is_no_outage() {
    for (what, error) in [
        ("statement timeout (57014)", sent("57014")),
        ("serialization failure (40001)", sent("40001")),
        ("deadlock (40P01)", sent("40P01")),
        (
            "a row it cannot read",
            failed_with(sqlx::Error::RowNotFound),
        ),
        ("unique violation (23505)", sent("23505")),
    ] {
        assert!(!is_outage(&error), "{what}: {error:?}");
    }
}

#[test]
fn a_statement_timeout_may_be_retried_but_is_no_outage() {
    // The client gets a 503 for it, yet the misses queued behind it still ask PostgreSQL:
    // one slow lookup says nothing about the next.
    let timed_out = sent("57014");

    assert!(matches!(&timed_out, LookupError::Db(db) if db.is_unavailable()));
    assert!(!is_outage(&timed_out));
}

#[test]
fn a_shed_lookup_is_no_outage() {
    assert!(!is_outage(&LookupError::Overloaded(1)));
}
