//! The payload of a NATS message, as ingest reads it (`Event::parse`, for each subject kind).
//! An event is in range and survives being written back as the documented JSON; anything else
//! is refused with a reason that goes with its dead letter as one line of at most 512 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use vehicle_state::broker::{REASON_HEADER, REASON_MAX_BYTES, dead_letter_headers};
use vehicle_state::domain::event::{Event, EventKind, MAX_NAME_LEN};

fuzz_target!(|data: &[u8]| {
    for kind in EventKind::ALL {
        match Event::parse(kind, data) {
            Ok(event) => written_back(kind, &event),
            Err(rejection) => {
                assert!(!rejection.0.is_empty(), "{kind:?}: no reason");
                let subject = format!("vehicles.{}", kind.token());
                let headers = dead_letter_headers(&rejection.0, &subject, Some(1));
                let reason = headers
                    .get(REASON_HEADER)
                    .map(|value| value.to_string())
                    .expect("a dead letter carries its reason");
                assert!(!reason.is_empty(), "{rejection}");
                assert!(reason.len() <= REASON_MAX_BYTES, "{} bytes", reason.len());
                assert!(!reason.chars().any(char::is_control), "{reason:?}");
            }
        }
    }
});

/// The event, published again as the README's event contract shows it, is the same event.
fn written_back(kind: EventKind, event: &Event) {
    let payloads = match event {
        Event::Registered(registration) => {
            for name in [&registration.make, &registration.model] {
                assert!(!name.trim().is_empty(), "{event:?}");
                assert!(name.chars().count() <= MAX_NAME_LEN, "{event:?}");
                assert!(!name.contains('\0'), "{event:?}");
            }
            vec![json!({
                "eventId": "fuzz-1",
                "vehicleId": registration.vehicle.get(),
                "make": registration.make,
                "model": registration.model,
            })]
        }
        Event::StateChanged(change) => {
            let mut payloads = vec![json!({
                "eventId": "fuzz-1",
                "vehicleId": change.vehicle.get(),
                "state": change.state.as_str(),
                "timestamp": change.at.to_string(),
            })];
            let micros = change.at.unix_micros();
            if micros % 1_000_000 == 0 {
                payloads.push(json!({
                    "eventId": "fuzz-1",
                    "vehicleId": change.vehicle.get(),
                    "state": change.state.as_str(),
                    "timestamp": micros / 1_000_000,
                }));
            }
            payloads
        }
    };
    assert!(event.vehicle().get() >= 1, "{event:?}");
    for payload in payloads {
        let payload = payload.to_string();
        assert_eq!(
            Event::parse(kind, payload.as_bytes()).as_ref(),
            Ok(event),
            "{payload}"
        );
    }
}
