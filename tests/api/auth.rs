//! Who may read (`AUTH_API_KEYS_FILE`): a file of names and SHA-256 digests; keys sent as
//! `Authorization: Bearer` or `X-API-Key`; 401 with `WWW-Authenticate` otherwise; health and
//! documentation open; the file read again when it changes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vehicle_state::config::ServeSettings;
use vehicle_state_test_support::app::{TestApp, spawn_app_with};

const LOOKUP: &str = "/vehicles/3/timestamp/2022-09-12T10:00:00Z";
/// A key and its name.
const DASHBOARD: (&str, &str) = ("dashboard-key", "dashboard");

/// A key file of the test's own, removed when dropped.
struct KeyFile(PathBuf);

impl KeyFile {
    fn with(lines: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vs-auth-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let file = Self(dir.join("api-keys"));
        file.write(lines);
        file
    }

    fn write(&self, lines: &str) {
        // Written aside and renamed, as an operator's tool would, so a reader never sees half.
        let aside = self.0.with_extension("new");
        std::fs::write(&aside, lines).expect("write the keys");
        std::fs::rename(&aside, &self.0).expect("rename the keys");
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn sha256_hex(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn with_keys(file: &KeyFile) -> impl FnOnce(&mut ServeSettings) {
    let path = file.0.clone();
    move |s| {
        s.auth.api_keys_file = Some(path);
        s.auth.api_keys_check_interval = Duration::from_millis(100);
    }
}

async fn lookup_with(
    app: &TestApp,
    headers: &[(&str, &str)],
) -> vehicle_state_test_support::http::Reply {
    app.get_with(LOOKUP, headers).await
}

#[tokio::test]
async fn a_request_without_a_known_key_is_refused_with_401_and_a_known_one_is_served() {
    let file = KeyFile::with(&format!(
        "# who may read\ndashboard {}\n",
        sha256_hex(DASHBOARD.0)
    ));
    let app = spawn_app_with(with_keys(&file)).await;
    let bearer = format!("Bearer {}", DASHBOARD.0);

    let missing = lookup_with(&app, &[]).await;
    let unknown = lookup_with(&app, &[("authorization", "Bearer not-a-key")]).await;
    let digest = lookup_with(&app, &[("x-api-key", &sha256_hex(DASHBOARD.0))]).await;
    let basic = lookup_with(&app, &[("authorization", "Basic ZGFzaGJvYXJkOmtleQ==")]).await;
    let by_bearer = lookup_with(&app, &[("authorization", &bearer)]).await;
    let by_header = lookup_with(&app, &[("x-api-key", DASHBOARD.0)]).await;

    let detail = missing.assert_problem(401, "/problems/unauthorized");
    assert!(
        detail.contains("send an API key as `Authorization: Bearer KEY`"),
        "{detail}"
    );
    assert_eq!(
        missing.header("www-authenticate"),
        r#"Bearer realm="vehicle-state""#
    );
    assert_eq!(missing.header("cache-control"), "no-store");
    for refused in [&unknown, &digest] {
        let detail = refused.assert_problem(401, "/problems/unauthorized");
        assert!(detail.contains("is not one this service knows"), "{detail}");
        assert_eq!(
            refused.header("www-authenticate"),
            r#"Bearer realm="vehicle-state", error="invalid_token""#
        );
    }
    // Another scheme is no credential of this service's.
    basic.assert_problem(401, "/problems/unauthorized");
    assert_eq!(
        basic.header("www-authenticate"),
        r#"Bearer realm="vehicle-state""#
    );
    for served in [&by_bearer, &by_header] {
        assert_eq!(served.status, 200, "{}", served.body);
        assert!(
            served
                .header("cache-control")
                .starts_with("private, max-age="),
            "an answer given to a caller is not for shared caches: {}",
            served.header("cache-control")
        );
    }
}

#[tokio::test]
async fn health_and_documentation_need_no_key_and_metrics_on_the_public_port_does() {
    let file = KeyFile::with(&format!("dashboard {}\n", sha256_hex(DASHBOARD.0)));
    let app = spawn_app_with(with_keys(&file)).await;

    for open in [
        "/livez",
        "/readyz",
        "/swagger-ui/",
        "/api-docs/openapi.json",
        "/explore/",
    ] {
        let reply = app.get(open).await;
        assert_eq!(reply.status, 200, "{open}: {}", reply.body);
    }
    let metrics = app.get("/metrics").await;
    metrics.assert_problem(401, "/problems/unauthorized");
    let with_key = app
        .get_with("/metrics", &[("x-api-key", DASHBOARD.0)])
        .await;
    assert_eq!(with_key.status, 200);
}

#[tokio::test]
async fn the_key_file_is_read_again_when_it_changes_and_a_broken_one_keeps_the_keys_in_force() {
    let file = KeyFile::with(&format!("dashboard {}\n", sha256_hex(DASHBOARD.0)));
    let app = spawn_app_with(with_keys(&file)).await;
    let reports = ("reports-key", "reports");

    file.write(&format!(
        "{} {}\n# dashboard revoked\n",
        reports.1,
        sha256_hex(reports.0)
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut new_key = lookup_with(&app, &[("x-api-key", reports.0)]).await;
    while new_key.status != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        new_key = lookup_with(&app, &[("x-api-key", reports.0)]).await;
    }
    let revoked = lookup_with(&app, &[("x-api-key", DASHBOARD.0)]).await;
    file.write("this line is not a key\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after_broken = lookup_with(&app, &[("x-api-key", reports.0)]).await;

    assert_eq!(new_key.status, 200, "a key added to the file is taken");
    revoked.assert_problem(401, "/problems/unauthorized");
    assert_eq!(
        after_broken.status, 200,
        "a file that cannot be read keeps the keys read before"
    );
}

#[tokio::test]
async fn a_key_file_that_cannot_be_read_stops_the_start_naming_the_line() {
    let file = KeyFile::with("dashboard not-hex\n");
    let mut settings = vehicle_state_test_support::settings::settings(
        "postgres://postgres@127.0.0.1:1/none",
        "redis://127.0.0.1:1",
        "auth-start",
    );
    with_keys(&file)(&mut settings);

    let error = vehicle_state::startup::Application::build(settings)
        .await
        .err()
        .expect("refused");

    let message = format!("{error:#}");
    assert!(
        message.contains("(AUTH_API_KEYS_FILE): line 1: `not-hex` is not a SHA-256 in hex"),
        "{message}"
    );
}

#[tokio::test]
async fn quotas_count_an_authenticated_caller_by_its_key_s_name() {
    let file = KeyFile::with(&format!("dashboard {}\n", sha256_hex(DASHBOARD.0)));
    let app = spawn_app_with(|s| {
        with_keys(&file)(s);
        s.quota.rps = Some(0.01);
        s.quota.burst = Some(2);
    })
    .await;

    let mut statuses = Vec::new();
    // The same caller from "two addresses" (X-Forwarded-For is not believed here anyway): one
    // budget, its key's.
    for forwarded in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let reply = lookup_with(
            &app,
            &[("x-api-key", DASHBOARD.0), ("x-forwarded-for", forwarded)],
        )
        .await;
        statuses.push(reply.status);
    }

    assert_eq!(statuses, [200, 200, 429]);
}
