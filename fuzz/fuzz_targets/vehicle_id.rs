//! `VehicleId::parse` (the path's `id`) and `VehicleId::from_i64` (a batch item's or an event's
//! JSON integer). One vehicle has one spelling, so one URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vehicle_state::domain::VehicleId;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    match VehicleId::parse(&raw) {
        Ok(id) => {
            assert_eq!(
                id.to_string(),
                raw,
                "accepted, but not the one spelling of its id"
            );
            assert!(id.get() >= 1, "{raw:?}");
            assert_eq!(VehicleId::from_i64(i64::from(id.get())), Ok(id));
        }
        Err(reason) => assert!(!reason.to_string().is_empty(), "{raw:?}: no reason"),
    }

    // The first eight bytes as the integer a JSON body carries.
    if let Some(bytes) = data.first_chunk::<8>() {
        let n = i64::from_le_bytes(*bytes);
        let in_range = (1..=i64::from(VehicleId::MAX)).contains(&n);
        match VehicleId::from_i64(n) {
            Ok(id) => {
                assert!(in_range, "{n} accepted");
                assert_eq!(i64::from(id.get()), n);
                assert_eq!(VehicleId::parse(&n.to_string()), Ok(id));
            }
            Err(reason) => {
                assert!(!in_range, "{n} refused");
                assert!(!reason.to_string().is_empty(), "{n}: no reason");
            }
        }
    }
});
