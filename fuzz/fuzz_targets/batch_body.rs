//! The body of `POST /vehicles/states`, through the code the handler runs
//! (`routes::parse::batch_body`: serde_path_to_error, the size check, each item's id and
//! instant). A body is refused with a 400 that says where it is wrong, or is 1 to `max` items,
//! each a lookup or a 400 of its own; the lookups, written back canonically, are the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use vehicle_state::error::ProblemType;
use vehicle_state::routes::parse::batch_body;

/// `BATCH_MAX_LOOKUPS`' default.
const MAX_LOOKUPS: usize = 100;

fuzz_target!(|data: &[u8]| {
    let items = match batch_body(data, MAX_LOOKUPS) {
        Ok(items) => items,
        Err(refused) => {
            let problem = refused.problem();
            assert_eq!(problem.status, 400, "{problem:?}");
            match problem.kind {
                // `detail` says where the body is wrong: the body as a whole, the path of a
                // field (`lookups[2].id`, `[0]` in a body that is an array), or the name of a
                // field it should not have; never a bare `?`.
                ProblemType::InvalidBody => {
                    let detail = &problem.detail;
                    assert!(
                        detail.starts_with("the body: ")
                            || detail.starts_with("lookups")
                            || detail.starts_with('[')
                            || detail.contains("unknown field `"),
                        "{problem:?}"
                    );
                }
                ProblemType::InvalidBatchSize => assert!(!problem.detail.is_empty()),
                _ => panic!("a body refused with {problem:?}"),
            }
            return;
        }
    };
    assert!(
        (1..=MAX_LOOKUPS).contains(&items.len()),
        "{} items",
        items.len()
    );

    let mut lookups = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(lookup) => lookups.push(lookup),
            Err(refused) => {
                let problem = refused.problem();
                assert_eq!(problem.status, 400, "{problem:?}");
                assert!(
                    matches!(
                        problem.kind,
                        ProblemType::InvalidVehicleId | ProblemType::InvalidTimestamp
                    ),
                    "an item refused with {problem:?}"
                );
                assert!(!problem.detail.is_empty(), "{problem:?}");
            }
        }
    }
    if lookups.is_empty() {
        return;
    }
    let canonical = json!({
        "lookups": lookups
            .iter()
            .map(|(id, at)| json!({"id": id.get(), "timestamp": at.to_string()}))
            .collect::<Vec<_>>(),
    })
    .to_string();
    let again: Vec<_> = batch_body(canonical.as_bytes(), MAX_LOOKUPS)
        .expect("the canonical body is accepted")
        .into_iter()
        .map(|item| item.expect("each canonical item is accepted"))
        .collect();
    assert_eq!(again, lookups, "{canonical}");
});
