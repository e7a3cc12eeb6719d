//! PostgreSQL as teams deploy it: over TLS with the certificate checked (a server that accepts
//! only `hostssl`), and through a streaming standby. Servers of the test's own: a cluster with
//! TLS on and a test CA, and a primary with a standby made by `pg_basebackup -R`.

use std::time::{Duration, Instant};

use vehicle_state_test_support::load;
use vehicle_state_test_support::load::{Load, mixed};
use vehicle_state_test_support::pki::Pki;
use vehicle_state_test_support::process::{
    PgServer, Replica, TempDir, bounded, client, execute, one_at_a_time, run_binary,
    run_binary_failing, wait_until_ok,
};
use vehicle_state_test_support::servers::redis_url;

/// A cluster with TLS on, whose certificate names `localhost` only, and whose `pg_hba.conf`
/// admits TLS connections alone (as managed PostgreSQL with TLS enforced does).
fn tls_only_server(pki: &Pki) -> PgServer {
    let server = PgServer::init();
    let cert = server.install(&pki.server_cert);
    let key = server.install(&pki.server_key);
    let ca = server.install(&pki.ca);
    server.configure(&format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
        cert.display(),
        key.display(),
        ca.display()
    ));
    // The database `mtls` takes only a client certificate signed by the CA, naming the role.
    server.hba(
        "hostssl mtls all 127.0.0.1/32 cert\nhostssl mtls all ::1/128 cert\n\
         hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
    );
    server.resume();
    server
}

/// Starts `serve` (with `MIGRATE_ON_START=false`, so only the start-up check connects) and
/// returns its exit code and the one line it printed.
fn serve_fails(database_url: &str) -> (Option<i32>, String) {
    let (code, stderr) = run_binary_failing(
        &["serve"],
        &[
            ("DATABASE_URL", database_url),
            ("REDIS_URL", &redis_url()),
            ("MIGRATE_ON_START", "false"),
            ("BIND_ADDR", "127.0.0.1:0"),
        ],
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    (code, lines[0].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_verify_full_answers_and_a_setting_that_cannot_work_stops_the_start_with_its_cause()
 {
    let _serial = one_at_a_time().await;
    bounded(async {
        let dir = TempDir::new("pg-tls");
        let pki = Pki::new(&dir.0.join("pki"), &["localhost"]);
        let server = tls_only_server(&pki);
        let ca = pki.ca.display().to_string();
        let url = |host: &str, query: &str| {
            format!(
                "postgres://postgres:s3cret@{host}:{}/vehicle_state?{query}",
                server.port
            )
        };
        let verify_full = url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        );

        // Migrations and seeding go over TLS too.
        run_binary(&["seed", "sample"], &[("DATABASE_URL", &verify_full)]);
        let mut replica = Replica::new(
            &dir.0,
            &verify_full,
            &redis_url(),
            &format!("vs-test-{}", uuid::Uuid::new_v4().simple()),
        );
        replica.start().await;
        replica.wait_ready(Duration::from_secs(10)).await;
        let answer = client()
            .get(format!(
                "{}/vehicles/3/timestamp/2022-09-12T10:00:00Z",
                replica.url()
            ))
            .send()
            .await
            .expect("an answer");
        let status = answer.status();
        let body: serde_json::Value = answer.json().await.expect("JSON");
        // The server's own view: every connection of the service is encrypted.
        let plain_url = format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
            server.port
        );
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&plain_url)
            .await
            .expect("connect over TLS");
        let (sessions, encrypted): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'vehicle-state'",
        )
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_ssl");

        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "selling");
        assert!(sessions >= 1, "the service holds a connection");
        assert_eq!(encrypted, sessions, "all of them over TLS");

        // What cannot work stops the start: exit 1, one line naming the cause, never the
        // password.
        let cases = [
            (
                url("localhost", "sslmode=disable"),
                "refuses connections without TLS",
            ),
            (
                url(
                    "localhost",
                    &format!("sslmode=verify-full&sslrootcert={}", pki.other_ca.display()),
                ),
                "certificate is not trusted",
            ),
            (
                url(
                    "127.0.0.1",
                    &format!("sslmode=verify-full&sslrootcert={ca}"),
                ),
                "not valid for the host name \"127.0.0.1\"",
            ),
        ];
        for (database_url, cause) in &cases {
            let (code, line) = serve_fails(database_url);
            eprintln!("start-up line: {line}");
            assert_eq!(code, Some(1), "{line}");
            assert!(line.contains(cause), "{cause:?} in {line}");
            assert!(
                line.contains(&format!("localhost:{}", server.port))
                    || line.contains(&format!("127.0.0.1:{}", server.port)),
                "names the server: {line}"
            );
            assert!(!line.contains("s3cret"), "no password: {line}");
        }
        // `migrate` says the same.
        let (code, line) = run_binary_failing(&["migrate"], &[("DATABASE_URL", &cases[0].0)]);
        assert_eq!(code, Some(1), "{line}");
        assert!(line.contains("refuses connections without TLS"), "{line}");
        // A client certificate (sslcert, sslkey) where the server requires one.
        let mtls = |query: &str| {
            format!(
                "postgres://postgres@localhost:{}/mtls?sslmode=verify-full&sslrootcert={ca}{query}",
                server.port
            )
        };
        run_binary(
            &["migrate"],
            &[(
                "DATABASE_URL",
                &mtls(&format!(
                    "&sslcert={}&sslkey={}",
                    pki.client_cert.display(),
                    pki.client_key.display()
                )),
            )],
        );
        let (code, line) = serve_fails(&mtls(""));
        eprintln!("start-up line: {line}");
        assert_eq!(code, Some(1), "{line}");
        assert!(
            line.contains("refused the login: connection requires a valid client certificate (give a client certificate"),
            "{line}"
        );
        // verify-ca checks the CA but not the name: 127.0.0.1 is fine then.
        let verify_ca = url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"));
        run_binary(&["migrate"], &[("DATABASE_URL", &verify_ca)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_against_a_server_without_tls_stops_the_start_with_its_cause() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let server = PgServer::start();
        let url = format!(
            "postgres://postgres:s3cret@127.0.0.1:{}/postgres?sslmode=require",
            server.port
        );
        let (code, line) = serve_fails(&url);
        eprintln!("start-up line: {line}");
        assert_eq!(code, Some(1), "{line}");
        assert!(line.contains("does not offer TLS"), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
        // A server that is merely down is not a setting: the replica starts, not ready.
        let dir = TempDir::new("pg-down");
        server.stop();
        let mut replica = Replica::new(
            &dir.0,
            &url.replace("sslmode=require", "sslmode=prefer"),
            &redis_url(),
            "vs-test-pg-down",
        );
        replica.start().await;
        let ready = client()
            .get(format!("{}/readyz", replica.url()))
            .send()
            .await
            .expect("an answer");
        assert_eq!(ready.status(), 503);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_standby_serves_what_the_primary_wrote_and_a_restart_of_it_heals_by_itself() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let primary = PgServer::start();
        let on_primary = primary.url("vehicle_state");
        // Migrations run against the primary, as the Kubernetes Job does.
        run_binary(&["seed", "sample"], &[("DATABASE_URL", &on_primary)]);
        let standby = PgServer::standby_of(&primary);
        let on_standby = standby.url("vehicle_state");
        let dir = TempDir::new("pg-standby");
        let mut replica = Replica::new(
            &dir.0,
            &on_standby,
            &redis_url(),
            &format!("vs-test-{}", uuid::Uuid::new_v4().simple()),
        );
        replica.set("DB_ACQUIRE_TIMEOUT_MS", "500");
        replica.start().await;
        replica.wait_ready(Duration::from_secs(10)).await;
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&on_standby)
            .await
            .expect("connect to the standby");
        let (in_recovery,): (bool,) = sqlx::query_as("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await
            .expect("ask the standby");
        assert!(in_recovery, "the replica reads from a standby");

        // A change written on the primary, then asked of a vehicle the replica has not asked
        // about (an answer it had cached would hold for the whole segment, for its TTL). Before
        // it, the standby says vehicle 1 was never sold.
        let (sold_before,): (i64,) = sqlx::query_as(
            r#"SELECT count(*) FROM "stateLogs" WHERE "vehicleId" = 1 AND state = 'sold'"#,
        )
        .fetch_one(&mut conn)
        .await
        .expect("ask the standby");
        execute(
            &on_primary,
            &[r#"INSERT INTO "stateLogs" ("vehicleId", state, "timestamp") VALUES (1, 'sold', '2029-06-01T00:00:00Z')"#],
        )
        .await;
        let written = Instant::now();
        let later = "/vehicles/1/timestamp/2029-06-02T00:00:00Z";
        let mut replicated_after = None;
        while written.elapsed() < Duration::from_secs(10) {
            let (state,): (Option<String>,) = sqlx::query_as(
                r#"SELECT max(state) FROM "stateLogs" WHERE "vehicleId" = 1 AND "timestamp" = '2029-06-01T00:00:00Z'"#,
            )
            .fetch_one(&mut conn)
            .await
            .expect("ask the standby");
            if state.is_some() {
                replicated_after = Some(written.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = client()
            .get(format!("{}{later}", replica.url()))
            .send()
            .await
            .expect("an answer");
        assert_eq!(after.status(), 200);
        let after: serde_json::Value = after.json().await.expect("JSON");
        eprintln!(
            "replicated to the standby after {}",
            load::figure_or_never(replicated_after)
        );
        assert_eq!(sold_before, 0, "vehicle 1 was not sold before");
        assert!(replicated_after.is_some(), "the row reached the standby");
        assert_eq!(after["state"], "sold", "answered from the standby: {after}");
        drop(conn);

        // The standby restarts under load: cached answers stay 200, uncached ones are 503 with
        // Retry-After while it is down, and the replica recovers by itself.
        let load = Load::start(&replica.url(), 8, mixed());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopped_at = Instant::now();
        tokio::task::block_in_place(|| standby.stop());
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(|| standby.resume());
        let resumed_at = Instant::now();
        let ready = wait_until_ok(&format!("{}/readyz", replica.url()), Duration::from_secs(10)).await;
        let ready_after = resumed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let report = load.stop().await;

        eprintln!("{}", report.summary("standby restarted (2 s down)"));
        eprintln!(
            "ready again {} after the standby was",
            load::figure(ready_after)
        );
        assert!(ready, "ready again by itself");
        let during: Vec<_> = report
            .samples
            .iter()
            .filter(|s| s.started > stopped_at && s.started < resumed_at)
            .collect();
        let cached = |s: &&&load::Sample| s.path.ends_with("2022-09-12T10:00:00Z");
        assert!(during.iter().filter(cached).count() > 10, "cached answers were asked meanwhile");
        for sample in during.iter().filter(cached) {
            assert_eq!(sample.outcome, Ok(200), "cached answers stay 200: {sample:?}");
        }
        let unavailable: Vec<_> = report
            .samples
            .iter()
            .filter(|s| s.outcome == Ok(503))
            .collect();
        assert!(!unavailable.is_empty(), "uncached lookups met the outage");
        for sample in &unavailable {
            assert_eq!(
                sample.problem_type.as_deref(),
                Some("/problems/database-unavailable"),
                "{sample:?}"
            );
            assert_eq!(sample.retry_after.as_deref(), Some("5"), "{sample:?}");
        }
        assert!(
            report.samples.iter().all(|s| matches!(s.outcome, Ok(200 | 404 | 503))),
            "nothing but answers (200, or 404 for the vehicles that do not exist) and 503"
        );
        let last = report
            .samples
            .iter()
            .filter(|s| s.started > resumed_at + ready_after)
            .collect::<Vec<_>>();
        assert!(!last.is_empty() && last.iter().all(|s| matches!(s.outcome, Ok(200 | 404))), "every lookup answered once it was back");
    })
    .await;
}
