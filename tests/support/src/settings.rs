//! The settings a test's in-process replica starts from.

use vehicle_state::config::{
    CacheSettings, CompressionSettings, CorsSettings, DatabaseSettings, Dataset, HttpSettings,
    RedisMode, RedisSettings, ServeSettings, TraceSettings,
};

/// Settings as `serve` would read them, every field explicit so the environment of the test run
/// cannot change them.
pub fn settings(database_url: &str, redis_url: &str, prefix: &str) -> ServeSettings {
    ServeSettings {
        database: DatabaseSettings {
            database_url: database_url
                .parse()
                .unwrap_or_else(|e| panic!("{database_url}: {e}")),
            db_pool_max_size: 5,
            db_acquire_timeout_ms: 1000,
            db_statement_timeout_ms: 2000,
            db_response_timeout_ms: 3000,
            db_max_lifetime_secs: 300,
        },
        redis: RedisSettings {
            redis_url: redis_url
                .parse()
                .unwrap_or_else(|e| panic!("{redis_url}: {e}")),
            redis_mode: RedisMode::Standalone,
            redis_sentinel_master: "mymaster".to_owned(),
            redis_sentinel_password: None,
            redis_ca_cert: None,
            redis_client_cert: None,
            redis_client_key: None,
            redis_pool_max_size: 4,
            redis_timeout_ms: 200,
            redis_retry_interval_ms: 250,
        },
        cache: CacheSettings {
            cache_ttl_secs: 60,
            local_cache_max_bytes: 8 * 1024 * 1024,
            stale_if_error_secs: 0,
            cache_key_prefix: prefix.to_owned(),
        },
        http: HttpSettings {
            bind_addr: "127.0.0.1:0".parse().expect("a literal address"),
            metrics_bind_addr: None,
            http_workers: Some(1),
            shutdown_drain_secs: 0,
            shutdown_timeout_secs: 5,
            retry_after_secs: 5,
            lookup_concurrency_limit: 256,
            overload_retry_after_secs: 1,
            lookup_batch_max: 100,
            lookup_batches_in_flight: 4,
            batch_max_lookups: 100,
            batch_max_body_bytes: 64 * 1024,
            http_client_request_timeout_ms: 5000,
            http_keep_alive_secs: 5,
            http_max_connections: 25_000,
        },
        cors: CorsSettings {
            cors_allowed_origins: None,
            cors_max_age_secs: 3600,
        },
        compression: CompressionSettings {
            compression: true,
            compression_min_bytes: 1024,
        },
        traces: TraceSettings::default(),
        db_probe_interval_ms: 50,
        migrate_on_start: true,
        seed: Some(Dataset::Sample),
    }
}
