//! The timeline's cursor (`after`, `next`). Text is a cursor only if it is the one spelling
//! this service writes; every cursor a page writes, whatever its state's text, parses back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vehicle_state::domain::Timestamp;
use vehicle_state::domain::history::{Cursor, Position, rank};

/// The instants the service takes: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;
/// The longest state whose cursor must parse (see `Cursor::MAX_LEN`).
const MAX_STATE_BYTES: usize = 2000;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    match Cursor::parse(&raw) {
        Ok(cursor) => {
            assert_eq!(
                cursor.encode(),
                raw,
                "accepted, but not the spelling it is written as"
            );
            assert_eq!(cursor.0.rank, rank(&cursor.0.state), "{raw:?}");
        }
        Err(reason) => assert!(!reason.to_string().is_empty(), "{raw:?}: no reason"),
    }

    // The first eight bytes as an instant, the rest as a state's text, as `page` writes them.
    let Some((micros, state)) = data.split_first_chunk::<8>() else {
        return;
    };
    let micros = MIN_MICROS + i64::from_le_bytes(*micros).rem_euclid(MAX_MICROS - MIN_MICROS + 1);
    let at = Timestamp::from_unix_micros(micros).expect("folded into the range");
    let state = String::from_utf8_lossy(state).into_owned();
    let written = Cursor(Position {
        at,
        rank: rank(&state),
        state,
    });
    let text = written.encode();
    match Cursor::parse(&text) {
        Ok(parsed) => assert_eq!(parsed, written, "{text}"),
        Err(_) => assert!(
            written.0.state.len() > MAX_STATE_BYTES,
            "a cursor the service wrote is refused: {text}"
        ),
    }
});
