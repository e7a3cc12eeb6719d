//! The query string of `GET /vehicles/{id}/history`, through the code the handler runs
//! (`routes::parse::history_query`): `from`, `to`, `limit`, `after`. A query is refused with a
//! 400 that says why, or is a window that starts before it ends, a limit in range and a cursor
//! this service wrote; written back canonically, it is the same query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use url::form_urlencoded;
use vehicle_state::domain::VehicleId;
use vehicle_state::domain::history::MAX_LIMIT;
use vehicle_state::error::ProblemType;
use vehicle_state::routes::parse::history_query;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let id = VehicleId::from_i64(3).expect("3 is an id");
    let query = match history_query(id, &raw) {
        Ok(query) => query,
        Err(refused) => {
            let problem = refused.problem();
            assert_eq!(problem.status, 400, "{raw:?}: {problem:?}");
            assert!(
                matches!(
                    problem.kind,
                    ProblemType::InvalidTimestamp | ProblemType::InvalidQuery
                ),
                "{raw:?}: {problem:?}"
            );
            assert!(!problem.detail.is_empty(), "{raw:?}");
            return;
        }
    };
    assert_eq!(query.id, id);
    assert!((1..=MAX_LIMIT).contains(&query.limit), "{raw:?}: {query:?}");
    if let (Some(from), Some(to)) = (query.from, query.to) {
        assert!(from <= to, "{raw:?}: {query:?}");
    }
    // An accepted cursor is the very text it re-encodes to.
    if let Some(cursor) = &query.after {
        let given = form_urlencoded::parse(raw.as_bytes())
            .find(|(name, _)| name == "after")
            .map(|(_, value)| value.into_owned());
        assert_eq!(given, Some(cursor.encode()), "{raw:?}");
    }

    let mut canonical = form_urlencoded::Serializer::new(String::new());
    if let Some(from) = query.from {
        canonical.append_pair("from", &from.to_string());
    }
    if let Some(to) = query.to {
        canonical.append_pair("to", &to.to_string());
    }
    canonical.append_pair("limit", &query.limit.to_string());
    if let Some(cursor) = &query.after {
        canonical.append_pair("after", &cursor.encode());
    }
    let canonical = canonical.finish();
    assert_eq!(
        history_query(id, &canonical).ok().as_ref(),
        Some(&query),
        "{raw:?} written back as {canonical:?}"
    );
});
