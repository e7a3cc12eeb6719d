//! The change feed: after a batch commits, each event it stored (or found stored already) is
//! announced on `<CHANGES_SUBJECT_PREFIX>.<vehicle>` before the event is acked. An event is
//! acked only once its announcement is stored, so nothing committed goes unannounced: an event
//! whose announcement failed is delivered again, found duplicate, and announced again. Its
//! message id is the change's own, so the stream drops a second announcement made within its
//! duplicate window; past it, a watcher may see one twice (at least once), with the same
//! version.

use std::collections::HashMap;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;

use super::Ingestor;
use crate::broker;
use crate::db::VehicleNow;
use crate::domain::change::{Announcement, Change};
use crate::domain::event::{Registration, StateChange};
use crate::domain::{Timestamp, Vehicle};
use crate::metrics;
use crate::telemetry;

/// Each vehicle of a committed batch, as it left it, by id.
pub(super) struct Left<'a>(HashMap<i32, &'a VehicleNow>);

impl<'a> Left<'a> {
    pub(super) fn new(vehicles: &'a [VehicleNow]) -> Self {
        Self(
            vehicles
                .iter()
                .map(|vehicle| (vehicle.id, vehicle))
                .collect(),
        )
    }

    fn announcement(&self, id: i32, change: Change) -> Announcement {
        let now = self.0.get(&id);
        Announcement {
            vehicle_id: id,
            version: now.map_or(0, |now| now.version),
            change,
            vehicle: now
                .and_then(|now| now.vehicle.as_ref())
                .map(|(make, model)| Vehicle {
                    id,
                    make: make.clone(),
                    model: model.clone(),
                }),
            state: now
                .and_then(|now| now.state.as_ref())
                .map(|(s, _)| s.clone()),
            state_since: now
                .and_then(|now| now.state.as_ref())
                .and_then(|(_, since)| since.and_then(Timestamp::from_unix_micros)),
        }
    }

    pub(super) fn of_change(&self, change: &StateChange) -> Announcement {
        self.announcement(
            change.vehicle.get(),
            Change::StateChanged {
                state: change.state.as_str().to_owned(),
                timestamp: change.at,
            },
        )
    }

    pub(super) fn of_registration(&self, registration: &Registration) -> Announcement {
        self.announcement(
            registration.vehicle.get(),
            Change::Registered {
                make: registration.make.clone(),
                model: registration.model.clone(),
            },
        )
    }
}

impl Ingestor {
    /// Sends every announcement at once, then waits for the stream to store each: whether each
    /// was stored (a duplicate of one stored before counts). One failure fails only its own.
    pub(super) async fn announce(&self, announcements: &[Announcement]) -> Vec<bool> {
        let Some(js) = self.js.get() else {
            return vec![false; announcements.len()];
        };
        let mut sent: Vec<Option<PublishAckFuture>> = Vec::with_capacity(announcements.len());
        for announcement in announcements {
            let subject = broker::change_subject(
                &self.settings.changes.subject_prefix,
                announcement.vehicle_id,
            );
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                announcement.message_id().as_str(),
            );
            // Strings, integers and instants: it always serialises.
            let payload = serde_json::to_vec(announcement).unwrap_or_default();
            match js
                .publish_with_headers(subject, headers, payload.into())
                .await
            {
                Ok(ack) => sent.push(Some(ack)),
                Err(error) => {
                    tracing::warn!(error = %telemetry::chain(&error), vehicle = announcement.vehicle_id, "announcement not sent; its event stays unacked and is delivered again");
                    sent.push(None);
                }
            }
        }
        let acks = sent.into_iter().map(|ack| async move {
            match ack?.await {
                Ok(ack) => {
                    metrics::count_announcement(if ack.duplicate { "duplicate" } else { "stored" });
                    Some(())
                }
                Err(error) => {
                    tracing::warn!(error = %telemetry::chain(&error), "announcement not stored; its event stays unacked and is delivered again");
                    None
                }
            }
        });
        futures_util::future::join_all(acks)
            .await
            .into_iter()
            .map(|stored| {
                if stored.is_none() {
                    metrics::count_announcement("failed");
                }
                stored.is_some()
            })
            .collect()
    }
}
