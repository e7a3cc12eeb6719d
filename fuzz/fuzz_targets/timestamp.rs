//! `Timestamp::parse`: the lookup's `ts`, the timeline's `from` and `to`, a batch item's and an
//! event's `timestamp`. Any text is an instant or a reason; an instant is one of the documented
//! spellings and survives every way the service writes it back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vehicle_state::domain::Timestamp;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    match Timestamp::parse(&raw) {
        Ok(instant) => {
            // A query string's value parses as the path's does when it is well formed.
            assert_eq!(Timestamp::parse_query_value(&raw), Ok(instant), "{raw:?}");
            // The spelling answers show parses back to the same instant: a cache key is stable.
            let shown = instant.to_string();
            assert_eq!(
                Timestamp::parse(&shown),
                Ok(instant),
                "{raw:?} is shown as {shown:?}"
            );
            // As the cache entries and events carry it.
            assert_eq!(
                Timestamp::from_unix_micros(instant.unix_micros()),
                Some(instant)
            );
            let json = serde_json::to_string(&instant).expect("an instant serialises");
            assert_eq!(
                serde_json::from_str::<Timestamp>(&json).ok(),
                Some(instant),
                "{json}"
            );
            // Epoch seconds are exactly that many seconds.
            if let Ok(seconds) = raw.parse::<i64>() {
                assert_eq!(instant.unix_micros(), seconds * 1_000_000, "{raw:?}");
            }
        }
        Err(reason) => {
            // The 400's detail: why, and the forms that would do.
            let detail = reason.to_string();
            assert!(detail.contains("Accepted forms"), "{raw:?}: {detail:?}");
            // From a query string: refused too, with a reason of its own only when a space
            // stood where the offset's `+` was.
            assert!(Timestamp::parse_query_value(&raw).is_err(), "{raw:?}");
        }
    }
});
