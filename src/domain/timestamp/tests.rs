use super::*;
use proptest::prelude::*;

use super::parse::ACCEPTED_FORMS;

fn utc(raw: &str) -> String {
    Timestamp::parse(raw)
        .map(|i| i.to_string())
        .unwrap_or_else(|e| format!("error: {e:?}"))
}

#[test]
fn every_accepted_form_gives_the_same_utc_instant() {
    let cases = [
        ("2022-09-12T10:00:00Z", "2022-09-12T10:00:00Z"),
        ("2022-09-12t10:00:00z", "2022-09-12T10:00:00Z"),
        ("2022-09-12T10:00:00+00:00", "2022-09-12T10:00:00Z"),
        ("2022-09-12T15:00:00+05:00", "2022-09-12T10:00:00Z"),
        ("2022-09-12T05:00:00-05:00", "2022-09-12T10:00:00Z"),
        ("2022-09-12T10:00:00.5Z", "2022-09-12T10:00:00.500Z"),
        ("2022-09-12T10:00:00.123456Z", "2022-09-12T10:00:00.123456Z"),
        (
            "2022-09-12T10:00:00.1234567Z",
            "2022-09-12T10:00:00.123456Z",
        ),
        (
            "2022-09-12T10:00:00.999999999Z",
            "2022-09-12T10:00:00.999999Z",
        ),
        ("2022-09-12 10:00:00Z", "2022-09-12T10:00:00Z"),
        ("2022-09-12 10:00:00+00", "2022-09-12T10:00:00Z"),
        ("2022-09-12 15:00:00+05", "2022-09-12T10:00:00Z"),
        ("2022-09-12 15:30:00+05:30", "2022-09-12T10:00:00Z"),
        ("2022-09-12 15:30:00+0530", "2022-09-12T10:00:00Z"),
        ("2022-09-12 07:00:00-03", "2022-09-12T10:00:00Z"),
        ("2022-09-12 10:00:00.25+00", "2022-09-12T10:00:00.250Z"),
        ("2022-09-12T15:00:00+05", "2022-09-12T10:00:00Z"),
        ("1662976800", "2022-09-12T10:00:00Z"),
        ("0", "1970-01-01T00:00:00Z"),
        ("-86400", "1969-12-31T00:00:00Z"),
        ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
        ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"),
    ];
    for (raw, expected) in cases {
        assert_eq!(utc(raw), expected, "{raw:?}");
    }
}

#[test]
fn rejected_input_gets_the_reason_that_helps_most() {
    use TimestampError::*;
    let cases = [
        ("2022-09-12", MissingOffset),
        ("2022-09-12T10:00:00", MissingOffset),
        ("2022-09-12 10:00:00", MissingOffset),
        ("2022-09-12 10:00:00.5", MissingOffset),
        ("2022-02-30T10:00:00Z", ImpossibleDate),
        ("2022-13-01 10:00:00+00", ImpossibleDate),
        ("2022-09-12T25:00:00Z", ImpossibleDate),
        ("2023-02-29", ImpossibleDate),
        ("99999999999999999999", OutOfRange),
        ("-99999999999", OutOfRange),
        ("253402300800", OutOfRange),
        ("", Unrecognised),
        ("now", Unrecognised),
        ("yesterday", Unrecognised),
        ("2022-09-12T10:00:00ZZ", Unrecognised),
        (" 2022-09-12T10:00:00Z", Unrecognised),
        ("2022-09-12T10:00:00Z ", Unrecognised),
        ("1662976800.5", Unrecognised),
        ("+1662976800", Unrecognised),
        ("-", Unrecognised),
        ("12/09/2022", Unrecognised),
        ("2022-09-12T10:00:00+5", Unrecognised),
        ("2022-09-12 10:00:00 +00", Unrecognised),
        ("2022-09-12  10:00:00+00", Unrecognised),
        ("2022-09-12\t10:00:00+00", Unrecognised),
        ("2022-09-12T10:00:00\u{a0}Z", Unrecognised),
    ];
    for (raw, expected) in cases {
        assert_eq!(Timestamp::parse(raw), Err(expected), "{raw:?}");
    }
    assert_eq!(Timestamp::parse(&"1".repeat(65)), Err(Unrecognised));
}

#[test]
fn an_offset_with_a_dangling_colon_is_refused_not_read_as_whole_hours() {
    // Found by fuzz/fuzz_targets/instant.rs: chrono's `%#z` took `-05:` as `-05:00`.
    for raw in [
        "2022-09-12T05:00:00-05:",
        "2022-09-12 05:00:00-05:",
        "2022-09-12T05:00:00.5+05:",
    ] {
        assert_eq!(
            Timestamp::parse(raw),
            Err(TimestampError::Unrecognised),
            "{raw:?}"
        );
    }
}

#[test]
fn every_rejection_names_the_accepted_forms() {
    for e in [
        TimestampError::MissingOffset,
        TimestampError::ImpossibleDate,
        TimestampError::OutOfRange,
        TimestampError::Unrecognised,
    ] {
        assert!(e.to_string().ends_with(ACCEPTED_FORMS), "{e}");
    }
}

#[test]
fn serde_round_trips_through_the_rfc3339_spelling() {
    let instant = Timestamp::parse("2022-09-12 15:30:00.123+05:30").expect("valid");
    let json = serde_json::to_string(&instant).expect("serialises");
    assert_eq!(json, "\"2022-09-12T10:00:00.123Z\"");
    assert_eq!(
        serde_json::from_str::<Timestamp>(&json).expect("parses"),
        instant
    );
}

#[test]
fn a_plus_that_arrived_as_a_space_in_a_query_string_is_named() {
    for (raw, plus_as_space) in [
        ("2022-09-12T12:00:00 02:00", true),
        ("2022-09-12 12:00:00 02", true),
        ("2022-09-12 12:00:00 0530", true),
        ("2022-09-12 12:00:00", false),
        ("2022-09-12T12:00:00 xx", false),
        ("yesterday", false),
    ] {
        let error = Timestamp::parse_query_value(raw).expect_err(raw);
        assert_eq!(
            matches!(error, TimestampError::PlusSentAsSpace),
            plus_as_space,
            "{raw}: {error}"
        );
    }
    assert_eq!(
        Timestamp::parse_query_value("2022-09-12T12:00:00+02:00"),
        Timestamp::parse("2022-09-12T10:00:00Z")
    );
}

proptest! {
    #[test]
    fn any_string_parses_within_range_or_gives_a_reason(raw in "\\PC{0,80}|[0-9T:+ .Z-]{0,40}") {
        match Timestamp::parse(&raw) {
            Ok(instant) => prop_assert!(
                (Timestamp::MIN_MICROS..=Timestamp::MAX_MICROS).contains(&instant.unix_micros())
            ),
            // The 400's detail: a reason and the accepted forms, never empty.
            Err(reason) => prop_assert!(reason.to_string().contains("Accepted forms")),
        }
    }

    #[test]
    fn every_spelling_of_an_instant_round_trips(
        micros in Timestamp::MIN_MICROS..=Timestamp::MAX_MICROS,
        offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59),
    ) {
        let instant = Timestamp::from_unix_micros(micros).expect("in range");
        let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).expect("valid offset");
        let local = instant.as_datetime().with_timezone(&offset);
        // Offsets can push the local year out of four digits at the very ends of the range.
        prop_assume!((1..=9999).contains(&chrono::Datelike::year(&local)));
        let rfc3339 = local.to_rfc3339_opts(SecondsFormat::Micros, false);
        prop_assert_eq!(Timestamp::parse(&rfc3339), Ok(instant));
        let pg = local.format("%Y-%m-%d %H:%M:%S%.6f%z").to_string();
        prop_assert_eq!(Timestamp::parse(&pg), Ok(instant));
        prop_assert_eq!(Timestamp::parse(&instant.to_string()), Ok(instant));
        let whole_seconds = micros.div_euclid(1_000_000);
        prop_assert_eq!(
            Timestamp::parse(&whole_seconds.to_string()).map(Timestamp::unix_micros),
            Ok(whole_seconds * 1_000_000)
        );
    }
}

#[test]
fn now_is_the_servers_clock_in_whole_microseconds_and_other_words_are_refused() {
    let before = chrono::Utc::now().timestamp_micros();
    let (now, asked_now) = Timestamp::parse_or_now("now").expect("now is an instant");
    let after = chrono::Utc::now().timestamp_micros();

    assert!(asked_now);
    assert!((before..=after).contains(&now.unix_micros()), "{now}");
    assert_eq!(
        Timestamp::parse_or_now("2022-09-12T10:00:00Z"),
        Timestamp::parse("2022-09-12T10:00:00Z").map(|at| (at, false))
    );
    for word in ["NOW", "Now", "now ", "today", "latest", ""] {
        assert_eq!(
            Timestamp::parse_or_now(word),
            Err(TimestampError::Unrecognised),
            "{word:?}"
        );
    }
}

proptest! {
    #[test]
    fn the_fast_writer_writes_what_display_does(micros in -62_135_596_800_000_000_i64..=253_402_300_799_999_999, round in 0usize..3) {
        // Whole seconds and whole milliseconds too, which have shorter fractions.
        let micros = match round {
            0 => micros - micros.rem_euclid(1_000_000),
            1 => micros - micros.rem_euclid(1_000),
            _ => micros,
        };
        let at = Timestamp::from_unix_micros(micros).expect("in range");
        let mut written = Vec::new();
        at.write_rfc3339(&mut written);
        prop_assert_eq!(String::from_utf8(written).expect("ASCII"), at.to_string());
    }
}
