use std::process::{Command, Output};

use vehicle_state_test_support::app::{spawn_app, spawn_replica_without_postgres};
use vehicle_state_test_support::scratch::{Scratch, database_exists};
use vehicle_state_test_support::servers::{postgres_addr, redis_url};
use vehicle_state_test_support::settings::settings;

fn vehicle_state(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vehicle-state"))
        .args(args)
        .env_clear()
        // Commands that get as far as listening take a free port, never one in use here.
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("INGEST_BIND_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_malformed_setting_stops_the_server_with_one_line_naming_it() {
    // A bad origin is named, with the spelling that would have matched.
    let output = vehicle_state(
        &["serve"],
        &[(
            "CORS_ALLOWED_ORIGINS",
            "https://ok.example, HTTPS://Dashboard.example.com",
        )],
    );
    let line = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{line}");
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("`HTTPS://Dashboard.example.com` never matches: browsers send it as `https://dashboard.example.com`"),
        "{line}"
    );

    for (name, value) in [
        ("CACHE_TTL_SECS", "sixty"),
        ("CACHE_TTL_SECS", "0"),
        ("DATABASE_URL", "mysql://localhost/x"),
        ("REDIS_URL", "http://localhost"),
        ("BIND_ADDR", "localhost"),
        ("LOG_FORMAT", "xml"),
        ("DB_POOL_MAX_SIZE", "0"),
        ("REDIS_TIMEOUT_MS", "-5"),
        ("MIGRATE_ON_START", "perhaps"),
        ("REDIS_MODE", "sharded"),
        ("REDIS_CA_CERT", "/no/such/ca.pem"),
        ("REDIS_CLIENT_KEY", "/etc/hostname"),
        (
            "DATABASE_URL",
            "postgres://h/db?sslmode=verify-full&sslrootcert=/no/such/ca.pem",
        ),
        ("DATABASE_URL", "postgres://h/db?sslmode=sometimes"),
        ("CORS_ALLOWED_ORIGINS", "https://dashboard.example.com/"),
        ("CORS_ALLOWED_ORIGINS", "https://a.example,*"),
        ("CORS_MAX_AGE_SECS", "a day"),
        ("COMPRESSION", "maybe"),
        ("COMPRESSION_MIN_BYTES", "-1"),
        ("AUTH_JWKS_URL", "file:///etc/jwks.json"),
        ("AUTH_JWT_ALGORITHMS", "RS256,none"),
        ("AUTH_JWT_ALGORITHMS", "HS256"),
    ] {
        let output = vehicle_state(&["serve"], &[(name, value)]);

        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{name}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}={value}: {stderr}");
        assert!(
            stderr.starts_with("error:") && stderr.contains(name),
            "{name}={value}: {stderr}"
        );
        let flag = format!("--{}", name.to_lowercase().replace('_', "-"));
        assert!(
            stderr.contains(&format!("{name} / {flag}")),
            "the variable set, then its flag: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A setting that needs others names them.
    let output = vehicle_state(
        &["serve"],
        &[
            ("AUTH_JWKS_URL", "https://idp.example.com/jwks"),
            ("AUTH_ISSUER", "https://idp.example.com/"),
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output).trim_end(),
        "error: the following required arguments were not provided: AUTH_AUDIENCE / --auth-audience"
    );
    // Given as a flag: the flag first, then its variable.
    let output = vehicle_state(&["serve", "--cache-ttl-secs", "0"], &[]);
    assert_eq!(
        stderr(&output).trim_end(),
        "error: invalid value for --cache-ttl-secs / CACHE_TTL_SECS: 0 is not in 1..=86400"
    );
}

#[test]
fn a_redis_topology_that_cannot_work_stops_the_start_with_one_line_before_anything_is_touched() {
    let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let pem = std::env::temp_dir().join(format!("vs-test-{}.pem", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    .expect("write a PEM file");
    let pem = pem.display().to_string();
    let cases = [
        (
            vec![("REDIS_URL", "redis://:s3cret@a:6379,redis://b:6379")],
            "REDIS_MODE=standalone takes one",
        ),
        (
            vec![
                ("REDIS_URL", "redis://:s3cret@a:6379"),
                ("REDIS_CA_CERT", &pem),
            ],
            "use rediss:// URLs",
        ),
        (
            vec![
                ("REDIS_URL", "rediss://:s3cret@a:6379"),
                ("REDIS_CLIENT_CERT", &pem),
            ],
            "REDIS_CLIENT_CERT and REDIS_CLIENT_KEY go together",
        ),
        (
            vec![
                ("REDIS_MODE", "sentinel"),
                ("REDIS_URL", "redis://:s3cret@a:26379,rediss://b:26379"),
            ],
            "mix redis:// and rediss://",
        ),
    ];
    for (env, cause) in &cases {
        // A database nobody can reach: the Redis settings are refused before it is tried.
        let mut env = env.clone();
        env.push(("DATABASE_URL", "postgres://app@127.0.0.1:1/vs"));
        let output = vehicle_state(&["serve"], &env);

        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{env:?}: {stderr}");
        assert!(stderr.contains(cause), "{cause:?} in {stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
    // A file that is not PEM at all is refused when the setting is read.
    let output = vehicle_state(&["serve"], &[("REDIS_CA_CERT", not_pem)]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("not a PEM file"),
        "{}",
        stderr(&output)
    );
    let _ = std::fs::remove_file(&pem);
}

#[test]
fn a_refused_url_is_not_echoed_because_it_may_hold_a_password() {
    for (name, value) in [
        ("DATABASE_URL", "postgres://app:s3cret@db:notaport/vs"),
        ("REDIS_URL", "rediss://:s3cret@cache:notaport"),
    ] {
        let output = vehicle_state(&["serve"], &[(name, value)]);

        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(name), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

#[test]
fn an_unreachable_database_at_start_is_one_clear_line_and_exit_one() {
    let output = vehicle_state(
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://app:secret@127.0.0.1:1/vs"),
            ("DB_ACQUIRE_TIMEOUT_MS", "300"),
        ],
    );

    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "vehicle-state: cannot reach PostgreSQL at postgres://app@127.0.0.1:1/vs: connection refused: nothing listens on 127.0.0.1:1; is PostgreSQL running there?",
        "the cause, not the pool's time out"
    );
    assert!(
        !stderr.contains("secret"),
        "the password is never printed: {stderr}"
    );
}

#[test]
fn an_unknown_host_or_role_at_start_is_one_line_naming_the_cause_once() {
    let role_url = format!("postgres://no_such_role_vs@{}/vs", postgres_addr());
    let host_url = "postgres://app@no-such-host.invalid:5432/vs".to_owned();
    // (DATABASE_URL, MIGRATE_ON_START, the line, what it says once). Without migrations a host
    // that cannot be reached yet does not stop the start (it may be on its way), so that case
    // is `migrate`'s; a refused login stops both.
    let cases = [
        (
            &host_url,
            "true",
            format!(
                "vehicle-state: cannot reach PostgreSQL at {host_url}: no such host \"no-such-host.invalid\""
            ),
            "no such host",
        ),
        (
            &role_url,
            "true",
            format!(
                "vehicle-state: PostgreSQL at {role_url} refused the login: role \"no_such_role_vs\" does not exist"
            ),
            "does not exist",
        ),
        (
            &role_url,
            "false",
            format!(
                "vehicle-state: PostgreSQL at {role_url} refused the login: role \"no_such_role_vs\" does not exist"
            ),
            "does not exist",
        ),
    ];
    for (url, migrate_on_start, starts, once) in &cases {
        let output = vehicle_state(
            &["serve"],
            &[
                ("DATABASE_URL", url.as_str()),
                ("MIGRATE_ON_START", migrate_on_start),
            ],
        );

        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{url}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{url}: {stderr}");
        assert!(stderr.starts_with(starts.as_str()), "{url}: {stderr}");
        assert_eq!(stderr.matches(once).count(), 1, "said once: {stderr}");
        assert!(!stderr.contains(" at line "), "{stderr}");
        assert!(!stderr.contains("pool timed out"), "{stderr}");
    }
}

#[test]
fn a_dead_letter_subject_inside_the_events_subjects_stops_ingest_at_once() {
    let output = vehicle_state(
        &["ingest"],
        &[("INGEST_DEAD_LETTER_SUBJECT", "vehicles.dead-letter")],
    );

    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        stderr(&output).trim_end(),
        "vehicle-state: INGEST_DEAD_LETTER_SUBJECT (vehicles.dead-letter) is inside the events' subjects (vehicles.>): dead letters would be ingested again; choose a subject outside them"
    );
}

#[test]
fn openapi_prints_the_committed_document() {
    let output = vehicle_state(&["openapi"], &[]);

    assert!(output.status.success(), "{}", stderr(&output));
    let committed =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).expect("openapi.yaml");
    assert!(
        output.stdout == committed,
        "openapi.yaml differs from `vehicle-state openapi`"
    );
}

async fn counts(url: &str) -> (i64, i64, bool) {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .expect("connect");
    sqlx::query_as(
        r#"SELECT (SELECT count(*) FROM vehicles), (SELECT count(*) FROM "stateLogs"),
                  EXISTS (SELECT 1 FROM pg_indexes WHERE indexname = 'stateLogs_vehicleId_timestamp_idx')"#,
    )
    .fetch_one(&mut conn)
    .await
    .expect("counts")
}

#[tokio::test]
async fn migrate_creates_the_database_and_seed_twice_changes_nothing() {
    let scratch = Scratch::new();
    let env = [("DATABASE_URL", scratch.database_url.as_str())];

    let migrate = vehicle_state(&["migrate"], &env);
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    assert_eq!(counts(&scratch.database_url).await, (0, 0, true));
    let first = vehicle_state(&["seed", "sample"], &env);
    let second = vehicle_state(&["seed", "sample"], &env);

    assert!(first.status.success(), "{}", stderr(&first));
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(counts(&scratch.database_url).await, (3, 6, true));
}

#[tokio::test]
async fn migrate_logs_the_migrations_it_applied_and_no_postgres_notice() {
    let scratch = Scratch::new();
    let env = [
        ("DATABASE_URL", scratch.database_url.as_str()),
        ("LOG_FORMAT", "json"),
    ];

    let first = vehicle_state(&["migrate"], &env);
    let second = vehicle_state(&["migrate"], &env);

    let lines = |output: &Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    assert!(first.status.success() && second.status.success());
    let applied: Vec<_> = lines(&first)
        .into_iter()
        .filter(|l| l["message"] == "migration applied")
        .map(|l| l["description"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        applied,
        [
            "tables",
            "state logs lookup index",
            "vehicle versions",
            "fleet"
        ]
    );
    let again = lines(&second);
    assert!(
        again.iter().any(
            |l| l["message"] == "migrations are up to date: none pending" && l["migrations"] == 4
        ),
        "{again:?}"
    );
    assert!(!again.iter().any(|l| l["message"] == "migration applied"));
    for output in [&first, &second] {
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(!text.contains("already exists"), "{text}");
    }
}

#[tokio::test]
async fn migrate_adopts_existing_tables_and_keeps_their_rows() {
    let scratch = Scratch::with_empty_database().await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&scratch.database_url)
        .await
        .expect("connect");
    // The original data set's tables, as they exist before the service ever ran: no index.
    sqlx::raw_sql(
        r#"CREATE TABLE vehicles (id INTEGER PRIMARY KEY, make TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL);
           CREATE TABLE "stateLogs" ("vehicleId" INTEGER NOT NULL, state TEXT NOT NULL, "timestamp" TIMESTAMPTZ NOT NULL);
           INSERT INTO vehicles VALUES (10, 'SKODA', 'FABIA', 'quoted');
           INSERT INTO "stateLogs" VALUES (10, 'quoted', '2021-01-01 00:00:00+00');"#,
    )
    .execute(&mut conn)
    .await
    .expect("existing tables");

    let migrate = vehicle_state(
        &["migrate"],
        &[("DATABASE_URL", scratch.database_url.as_str())],
    );

    assert!(migrate.status.success(), "{}", stderr(&migrate));
    assert_eq!(counts(&scratch.database_url).await, (1, 1, true));
}

#[tokio::test]
async fn healthcheck_exits_zero_for_a_ready_server_and_one_otherwise() {
    let app = spawn_app().await;
    let addr = app.address.trim_start_matches("http://").to_owned();

    let ready =
        tokio::task::spawn_blocking(move || vehicle_state(&["healthcheck", "--addr", &addr], &[]))
            .await
            .expect("task");
    let cut_off = spawn_replica_without_postgres(&app).await;
    let addr = cut_off.address.trim_start_matches("http://").to_owned();
    let not_ready =
        tokio::task::spawn_blocking(move || vehicle_state(&["healthcheck", "--addr", &addr], &[]))
            .await
            .expect("task");
    let nothing = vehicle_state(&["healthcheck", "--healthcheck-addr", "127.0.0.1:1"], &[]);

    assert!(ready.status.success(), "{}", stderr(&ready));
    assert_eq!(not_ready.status.code(), Some(1));
    assert!(
        stderr(&not_ready).contains("/readyz answered 503"),
        "{}",
        stderr(&not_ready)
    );
    assert_eq!(nothing.status.code(), Some(1));
    assert!(
        stderr(&nothing).contains("cannot connect to 127.0.0.1:1"),
        "{}",
        stderr(&nothing)
    );
}

#[tokio::test]
async fn migrations_from_several_replicas_at_once_all_succeed() {
    let scratch = Scratch::new();
    let url = scratch.database_url.clone();

    let runs: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                vehicle_state(&["migrate"], &[("DATABASE_URL", url.as_str())])
            })
        })
        .collect();
    let outputs: Vec<Output> = runs
        .into_iter()
        .map(|r| r.join().expect("a migrate run"))
        .collect();

    for output in &outputs {
        assert!(output.status.success(), "{}", stderr(output));
    }
    assert_eq!(counts(&scratch.database_url).await, (0, 0, true));
}

#[tokio::test]
async fn serve_leaves_the_schema_alone_when_migrate_on_start_is_off() {
    let scratch = Scratch::with_empty_database().await;
    let mut settings = settings(&scratch.database_url, &redis_url(), &scratch.prefix);
    settings.migrate_on_start = false;
    settings.seed = None;

    let app = vehicle_state::startup::Application::build(settings)
        .await
        .expect("starts without migrating");

    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&scratch.database_url)
        .await
        .expect("connect");
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&mut conn)
            .await
            .expect("count");
    assert_eq!(tables, 0, "no migration ran");
    app.run_until_stopped(async {})
        .await
        .expect("stops cleanly");
}

async fn fingerprint(url: &str) -> (i64, i64, String) {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .expect("connect");
    sqlx::query_as(
        r#"SELECT (SELECT count(*) FROM vehicles), (SELECT count(*) FROM "stateLogs"),
                  (SELECT md5(string_agg(concat_ws(',', "vehicleId", state, "timestamp"), ';' ORDER BY "vehicleId", "timestamp", state)) FROM "stateLogs")"#,
    )
    .fetch_one(&mut conn)
    .await
    .expect("fingerprint")
}

#[tokio::test]
async fn seed_synthetic_loads_the_same_data_for_the_same_seed_and_refuses_a_full_database() {
    let scratch = Scratch::new();
    let env = [("DATABASE_URL", scratch.database_url.as_str())];

    let first = vehicle_state(
        &[
            "seed",
            "synthetic",
            "--vehicles",
            "3000",
            "--random-seed",
            "42",
        ],
        &env,
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let loaded = fingerprint(&scratch.database_url).await;
    let refused = vehicle_state(
        &["seed", "synthetic", "--vehicles", "3000", "--seed", "42"],
        &env,
    );
    let unchanged = fingerprint(&scratch.database_url).await;
    let replaced = vehicle_state(
        &[
            "seed",
            "synthetic",
            "--vehicles",
            "3000",
            "--seed", // the former name of --random-seed: the same data
            "42",
            "--replace",
        ],
        &env,
    );
    let again = fingerprint(&scratch.database_url).await;
    let other = vehicle_state(
        &[
            "seed",
            "synthetic",
            "--vehicles",
            "3000",
            "--random-seed",
            "43",
            "--replace",
        ],
        &env,
    );
    let other_seed = fingerprint(&scratch.database_url).await;

    assert_eq!(loaded.0, 3000);
    assert!(
        (6000..=9600).contains(&loaded.1),
        "{} state changes",
        loaded.1
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("--replace"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(unchanged, loaded);
    assert!(replaced.status.success(), "{}", stderr(&replaced));
    assert_eq!(again, loaded, "the same seed gives the same data");
    assert!(other.status.success(), "{}", stderr(&other));
    assert_ne!(other_seed.2, loaded.2, "another seed gives other data");
}

#[test]
fn a_dot_env_file_in_the_working_directory_is_read_and_the_environment_wins() {
    let dir = std::env::temp_dir().join(format!("vs-dotenv-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a directory");
    std::fs::write(dir.join(".env"), "CACHE_TTL_SECS=0\n").expect("write .env");
    let run = |env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_vehicle-state"))
            .arg("serve")
            .current_dir(&dir)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("the binary runs")
    };

    // From the file: CACHE_TTL_SECS=0 is refused, naming it.
    let from_file = run(&[]);
    // The environment's valid value wins over the file's: the start then gets past the settings
    // and fails on the unreachable database instead (exit 1, not 2).
    let overridden = run(&[
        ("CACHE_TTL_SECS", "30"),
        ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
    ]);
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(from_file.status.code(), Some(2));
    assert!(
        stderr(&from_file).contains("CACHE_TTL_SECS"),
        "{}",
        stderr(&from_file)
    );
    assert_eq!(overridden.status.code(), Some(1), "{}", stderr(&overridden));
    assert!(stderr(&overridden).contains("cannot reach PostgreSQL"));
}

#[tokio::test]
async fn a_taken_port_stops_the_start_with_one_line_before_the_database_is_touched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address").to_string();
    // (command, the variable that names its port)
    for (command, variable) in [("serve", "BIND_ADDR"), ("ingest", "INGEST_BIND_ADDR")] {
        let scratch = Scratch::new();

        let output = vehicle_state(
            &[command],
            &[
                ("DATABASE_URL", scratch.database_url.as_str()),
                (variable, addr.as_str()),
            ],
        );

        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{command}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "vehicle-state: cannot listen on {addr} ({variable}): "
            )) && stderr.contains("in use"),
            "{command}: {stderr}"
        );
        assert!(
            !database_exists(&scratch.database).await,
            "{command}: the database was created before the port was tried"
        );
    }
}

/// After a write to `"stateLogs"` by anything but ingest, `rebuild-fleet` makes the fleet's sums
/// exact again, and says how many rows it wrote.
#[tokio::test]
async fn rebuild_fleet_makes_the_sums_exact_again_after_a_write_not_by_ingest() {
    let scratch = Scratch::new();
    let env = [
        ("DATABASE_URL", scratch.database_url.as_str()),
        ("LOG_FORMAT", "json"),
    ];
    let seeded = vehicle_state(&["seed", "sample"], &env);
    assert!(seeded.status.success(), "{}", stderr(&seeded));
    let pool = sqlx::PgPool::connect(&scratch.database_url)
        .await
        .expect("connect");
    let exact = || async {
        sqlx::query_scalar::<_, bool>("SELECT exact FROM fleet_status")
            .fetch_one(&pool)
            .await
            .expect("the status")
    };
    assert!(exact().await, "seed builds the sums");
    sqlx::query(r#"INSERT INTO "stateLogs" VALUES (9, 'sold', '2022-09-13T00:00:00Z')"#)
        .execute(&pool)
        .await
        .expect("a row");
    assert!(!exact().await);

    let rebuilt = vehicle_state(&["rebuild-fleet"], &env);

    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    assert!(exact().await);
    let said = String::from_utf8_lossy(&rebuilt.stdout).into_owned();
    assert!(said.contains("fleet's sums built anew"), "{said}");
    let sold: i64 = sqlx::query_scalar(
        "SELECT sum(delta)::int8 FROM fleet_sums WHERE level = 5 AND state = 'sold'",
    )
    .fetch_one(&pool)
    .await
    .expect("the sums");
    assert_eq!(sold, 2, "vehicle 3 and vehicle 9 are sold by now");
}
