//! Applying a batch to PostgreSQL, and what a failure says about its events.

use std::time::Instant;

use async_nats::jetstream;

use super::Ingestor;
use crate::db::{self, Applied, DbError};
use crate::domain::event::{Registration, StateChange};
use crate::metrics;
use crate::telemetry;

impl Ingestor {
    /// One transaction for the batch. A batch PostgreSQL refuses for its data (see
    /// [`refused_for_its_data`]) is applied again event by event, so one bad event is
    /// dead-lettered and the others still applied; any other failure fails the whole batch, to
    /// be delivered again.
    pub(super) async fn apply(
        &self,
        registrations: &[(jetstream::Message, Registration)],
        changes: &[(jetstream::Message, StateChange)],
    ) -> Result<db::BatchOutcome, DbError> {
        let regs: Vec<&Registration> = registrations.iter().map(|(_, r)| r).collect();
        let chgs: Vec<&StateChange> = changes.iter().map(|(_, c)| c).collect();
        let started = Instant::now();
        let result = db::apply_events(
            &self.pool,
            self.settings.database.response_timeout,
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
                        self.settings.database.response_timeout,
                        &[registration],
                        &[],
                    )
                    .await;
                    let (applied, vehicles) = one_outcome(one, true)?;
                    outcome.registrations.push(applied);
                    outcome.vehicles.extend(vehicles);
                }
                for change in &chgs {
                    let one = db::apply_events(
                        &self.pool,
                        self.settings.database.response_timeout,
                        &[],
                        &[change],
                    )
                    .await;
                    let (applied, vehicles) = one_outcome(one, false)?;
                    outcome.changes.push(applied);
                    outcome.vehicles.extend(vehicles);
                }
                // Each vehicle once, as the last of its events left it.
                outcome
                    .vehicles
                    .sort_by_key(|vehicle| (vehicle.id, std::cmp::Reverse(vehicle.version)));
                outcome.vehicles.dedup_by_key(|vehicle| vehicle.id);
                Ok(outcome)
            }
            Err(error) if refused_for_its_data(&error) => {
                // One event, failing on its own: it can never be applied.
                let reason = format!("PostgreSQL refused it: {}", telemetry::chain(&error));
                let failed = Applied::Refused(reason);
                Ok(db::BatchOutcome {
                    registrations: vec![failed.clone(); regs.len()],
                    changes: vec![failed; chgs.len()],
                    vehicles: Vec::new(),
                })
            }
            other => other,
        }
    }
}

/// The outcome of one event applied alone: a failure of its own data is a refusal; a lost
/// connection fails the whole batch (retried later).
fn one_outcome(
    result: Result<db::BatchOutcome, DbError>,
    registration: bool,
) -> Result<(Applied, Vec<db::VehicleNow>), DbError> {
    match result {
        Ok(mut outcome) => {
            let list = if registration {
                &mut outcome.registrations
            } else {
                &mut outcome.changes
            };
            Ok((list.pop().unwrap_or(Applied::Duplicate), outcome.vehicles))
        }
        Err(error) if refused_for_its_data(&error) => Ok((
            Applied::Refused(format!(
                "PostgreSQL refused it: {}",
                telemetry::chain(&error)
            )),
            Vec::new(),
        )),
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
