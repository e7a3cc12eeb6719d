use vehicle_state::service::CacheStatus;
use vehicle_state_test_support::app::spawn_app;

#[tokio::test]
async fn the_committed_openapi_yaml_is_the_document_the_code_describes() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("openapi.yaml");

    let generated = vehicle_state::openapi::yaml().expect("the document renders");

    assert!(
        committed == generated,
        "openapi.yaml is out of date: run `cargo run -- openapi > openapi.yaml` and commit it"
    );
}

#[tokio::test]
async fn the_served_document_is_the_committed_one() {
    let app = spawn_app().await;

    let reply = app.get("/api-docs/openapi.json").await;

    assert_eq!(reply.status, 200);
    let served = reply.json();
    let expected = serde_json::to_value(vehicle_state::openapi::spec()).expect("JSON");
    assert_eq!(served, expected);
    assert_eq!(
        served["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
}

#[tokio::test]
async fn every_documented_path_is_served_and_the_problem_schema_is_documented() {
    let app = spawn_app().await;
    let spec = serde_json::to_value(vehicle_state::openapi::spec()).expect("JSON");
    let paths: Vec<String> = spec["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();

    assert_eq!(
        paths,
        [
            "/changes",
            "/fleet/states",
            "/fleet/states/series",
            "/fleet/vehicles",
            "/livez",
            "/metrics",
            "/readyz",
            "/vehicles/states",
            "/vehicles/{id}/changes",
            "/vehicles/{id}/history",
            "/vehicles/{id}/timestamp/{ts}"
        ]
    );
    for path in paths {
        let mut concrete = path.replace("{id}", "3").replace("{ts}", "1662976800");
        if path == "/fleet/states/series" {
            // Its required parameters.
            concrete.push_str("?from=2022-09-10T00:00:00Z&to=2022-09-13T00:00:00Z&every=P1D");
        }
        if path == "/fleet/vehicles" {
            concrete.push_str("?state=selling");
        }
        if path.ends_with("/changes") {
            // Served, and this replica follows no change feed (no NATS_URL): it says so.
            let reply = app.get(&format!("{concrete}?ids=3")).await;
            assert_eq!(reply.status, 503, "{path}: {}", reply.body);
            assert_eq!(reply.json()["type"], "/problems/feed-unavailable");
            continue;
        }
        let methods: Vec<&String> = spec["paths"][&path]
            .as_object()
            .expect("operations")
            .keys()
            .collect();
        for method in methods {
            let reply = match method.as_str() {
                "get" => app.get(&concrete).await,
                "post" => {
                    app.batch(serde_json::json!([{"id": 3, "timestamp": "1662976800"}]))
                        .await
                }
                other => panic!("{path}: an operation the test does not know: {other}"),
            };
            assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
        }
    }
    let problem = &spec["components"]["schemas"]["Problem"]["properties"];
    for field in ["type", "title", "status", "detail"] {
        assert!(
            problem.get(field).is_some(),
            "Problem.{field} is documented"
        );
    }
    let bad_request =
        &spec["paths"]["/vehicles/{id}/timestamp/{ts}"]["get"]["responses"]["400"]["content"];
    assert!(
        bad_request.get("application/problem+json").is_some(),
        "{bad_request}"
    );
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = spawn_app().await;

    let redirect = app.get("/swagger-ui").await;
    let page = app.get("/swagger-ui/").await;
    let script = app.get("/swagger-ui/swagger-ui-bundle.js").await;
    let config = app.get("/swagger-ui/swagger-initializer.js").await;

    assert!((300..400).contains(&redirect.status), "{}", redirect.status);
    assert_eq!(redirect.header("location"), "/swagger-ui/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("swagger-ui"), "{}", page.body);
    assert_eq!(script.status, 200);
    assert!(
        script.body.len() > 100_000,
        "the bundle itself, not a link to a CDN"
    );
    assert!(
        config.body.contains("/api-docs/openapi.json"),
        "{}",
        config.body
    );
}

#[tokio::test]
async fn each_problem_response_shows_problems_of_its_own_status_only() {
    let spec = serde_json::to_value(vehicle_state::openapi::spec()).expect("JSON");
    let mut shown = 0;

    for (path, operations) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            for (status, response) in operation["responses"].as_object().expect("responses") {
                let Some(content) = response["content"].get("application/problem+json") else {
                    continue;
                };
                let examples = content["examples"].as_object();
                assert!(
                    examples.is_some_and(|e| !e.is_empty()),
                    "{method} {path} {status} shows no problem"
                );
                // Every problem type the response's description names is shown, and no other.
                let described: std::collections::BTreeSet<&str> = response["description"]
                    .as_str()
                    .unwrap_or_default()
                    .split('`')
                    .filter_map(|word| word.strip_prefix("/problems/"))
                    .collect();
                let shown_here: std::collections::BTreeSet<&str> = examples
                    .into_iter()
                    .flatten()
                    .map(|(name, _)| name.as_str())
                    .collect();
                assert_eq!(shown_here, described, "{method} {path} {status}");
                for (name, example) in examples.into_iter().flatten() {
                    let problem = &example["value"];
                    assert_eq!(
                        problem["status"].to_string(),
                        *status,
                        "{method} {path} {name}"
                    );
                    assert_eq!(
                        problem["type"],
                        format!("/problems/{name}"),
                        "{method} {path}"
                    );
                    assert!(
                        problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
                        "{problem}"
                    );
                    shown += 1;
                }
            }
        }
    }

    assert!(shown >= 15, "{shown}");
    assert!(
        spec["components"]["schemas"]["Problem"]
            .get("example")
            .is_none(),
        "no schema-wide example to show under every status"
    );
}

/// Swagger UI shows a summary as plain text (the description as Markdown), and checks a
/// parameter's `pattern` before sending: an instant's pattern would keep the explorer from ever
/// seeing the service's own 400, whose `detail` says what is wrong and what is accepted.
#[tokio::test]
async fn summaries_are_plain_text_and_instants_are_checked_by_the_service_alone() {
    let spec = serde_json::to_value(vehicle_state::openapi::spec()).expect("JSON");
    let mut instants = 0;

    for (path, operations) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            let summary = operation["summary"].as_str().unwrap_or_default();
            assert!(!summary.is_empty(), "{method} {path} has a summary");
            assert!(
                !summary.contains('`') && !summary.contains('\n'),
                "{method} {path}: {summary:?}"
            );
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if ["ts", "from", "to", "at"].contains(&parameter["name"].as_str().unwrap_or("")) {
                    instants += 1;
                    assert!(parameter["schema"].get("pattern").is_none(), "{parameter}");
                    let description = parameter["description"].as_str().unwrap_or_default();
                    assert!(description.contains("Swagger UI encodes it"), "{parameter}");
                }
            }
        }
    }
    assert_eq!(
        instants, 7,
        "ts; from and to of the timeline and of the series; at of the counts and of the list"
    );
}

/// What `X-Cache` (and a batch item's `cache`) can say is what the document says it can: the
/// service's own list held against the pattern of the batch item's `cache` (a test here, not in
/// `service`, which sits below `openapi`).
#[test]
fn every_cache_status_the_service_sends_is_one_the_document_allows() {
    let spec = serde_json::to_value(vehicle_state::openapi::spec()).expect("the spec serialises");
    let pattern = spec["components"]["schemas"]["BatchResult"]["properties"]["cache"]["pattern"]
        .as_str()
        .expect("the batch item's cache has a pattern");
    let documented = regex::Regex::new(pattern).expect("the pattern is a regex");

    for status in [CacheStatus::Hit, CacheStatus::Miss, CacheStatus::Stale] {
        assert!(
            documented.is_match(status.as_str()),
            "{} against {pattern}",
            status.as_str()
        );
    }
    assert!(
        !documented.is_match("COALESCED"),
        "the pattern admits anything: {pattern}"
    );
}
