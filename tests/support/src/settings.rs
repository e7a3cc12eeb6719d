//! The settings a test's in-process replica starts from.

use vehicle_state::config::ServeSettings;

/// Settings as `serve` reads them from its documented defaults (clap's, the environment of the
/// test run ignored), with what a test replica needs different: its own database, Redis and key
/// prefix, a port of its own, one worker, the sample data, and bounds short enough for tests.
pub fn settings(database_url: &str, redis_url: &str, prefix: &str) -> ServeSettings {
    let args = [
        "vehicle-state",
        "--database-url",
        database_url,
        "--redis-url",
        redis_url,
        "--cache-key-prefix",
        prefix,
        "--bind-addr",
        "127.0.0.1:0",
        "--http-workers",
        "1",
        "--db-pool-max-size",
        "5",
        "--db-acquire-timeout-ms",
        "1000",
        "--redis-pool-max-size",
        "4",
        "--redis-timeout-ms",
        "200",
        "--redis-retry-interval-ms",
        "250",
        "--local-cache-max-bytes",
        "8388608",
        "--shutdown-timeout-secs",
        "5",
        "--seed",
        "sample",
    ];
    ServeSettings::from_args(args).unwrap_or_else(|e| panic!("{e}"))
}
