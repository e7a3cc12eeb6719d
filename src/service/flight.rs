//! One fetch per key however many requests miss it at once (single flight), kept apart from the
//! memory cache so that what a fetch brings is kept in memory only when it is worth it (see
//! [`super::StateService`]): memory's own single flight (moka's entry API) would insert every
//! answer, and an insert is the largest part of a miss after its round trips.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::cache::CacheKey;

/// The fetches in flight, by key.
pub struct Flights<T> {
    fetching: Mutex<HashMap<CacheKey, watch::Receiver<Option<T>>>>,
}

/// What a request that missed memory does.
pub enum Joined<T> {
    /// Nobody fetches this key: this request does, and lands the result for the others.
    Lead(Landing<T>),
    /// Another request fetches it: its result, when it lands.
    Follow(watch::Receiver<Option<T>>),
}

/// The leader's side of a flight. Dropped without landing (its task panicked, or the runtime
/// stopped), the followers see the flight end without a result.
pub struct Landing<T> {
    flights: Arc<Flights<T>>,
    key: CacheKey,
    result: watch::Sender<Option<T>>,
}

impl<T: Clone> Flights<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            fetching: Mutex::new(HashMap::new()),
        })
    }

    /// Joins the flight of `key`, or starts it.
    pub fn join(self: &Arc<Self>, key: &CacheKey) -> Joined<T> {
        let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(landing) = fetching.get(key) {
            return Joined::Follow(landing.clone());
        }
        let (result, landing) = watch::channel(None);
        fetching.insert(key.clone(), landing);
        Joined::Lead(Landing {
            flights: self.clone(),
            key: key.clone(),
            result,
        })
    }

    /// Fetches in flight.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl<T> Landing<T> {
    /// Hands `result` to every follower (those that join until the flight is gone get it too).
    pub fn land(self, result: T) {
        self.result.send_replace(Some(result));
    }
}

impl<T> Drop for Landing<T> {
    fn drop(&mut self) {
        let mut fetching = self
            .flights
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Only this flight's: the key is removed nowhere else, so it is this one.
        fetching.remove(&self.key);
    }
}

/// A follower's wait: the leader's result, or `None` if its flight ended without one.
pub async fn followed<T: Clone>(mut landing: watch::Receiver<Option<T>>) -> Option<T> {
    landing
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|result| result.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::VehicleId;

    fn key(n: i32) -> CacheKey {
        CacheKey::new("test", VehicleId::parse(&n.to_string()).expect("an id"))
    }

    /// Two requests for key 1: the first leads, the second follows.
    fn lead_and_follow(
        flights: &Arc<Flights<u32>>,
    ) -> (Landing<u32>, watch::Receiver<Option<u32>>) {
        let Joined::Lead(lead) = flights.join(&key(1)) else {
            panic!("the first leads");
        };
        let Joined::Follow(follower) = flights.join(&key(1)) else {
            panic!("the second follows");
        };
        (lead, follower)
    }

    #[tokio::test]
    async fn the_first_leads_the_others_follow_and_all_get_its_result() {
        let flights = Flights::<u32>::new();
        let (lead, early) = lead_and_follow(&flights);
        assert!(
            matches!(flights.join(&key(2)), Joined::Lead(_)),
            "another key leads"
        );

        lead.land(7);

        assert_eq!(followed(early).await, Some(7));
        assert_eq!(flights.len(), 0, "landed and gone");
        assert!(
            matches!(flights.join(&key(1)), Joined::Lead(_)),
            "a new flight"
        );
    }

    #[tokio::test]
    async fn a_flight_dropped_without_landing_ends_for_its_followers() {
        let flights = Flights::<u32>::new();
        let (lead, follower) = lead_and_follow(&flights);

        drop(lead);

        assert_eq!(followed(follower).await, None);
        assert_eq!(flights.len(), 0);
    }
}
