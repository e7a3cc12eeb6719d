//! Per-client quotas (`RATE_LIMIT_RPS`, `RATE_LIMIT_BURST`): one budget per client for every
//! replica together, kept in the tests' real Redis; clients told apart by address, through a
//! trusted proxy's `X-Forwarded-For` here since every test client is on loopback.

use vehicle_state::config::{ServeSettings, TrustedProxies};
use vehicle_state_test_support::app::{TestApp, spawn_app_with, spawn_replica};
use vehicle_state_test_support::http::Reply;

const LOOKUP: &str = "/vehicles/3/timestamp/2022-09-12T10:00:00Z";

/// A quota of `burst` requests at once, refilled so slowly (one every 100 s) that no token
/// comes back while a test runs; loopback is a trusted proxy.
fn quota(burst: u32) -> impl FnOnce(&mut ServeSettings) {
    move |s| {
        s.quota.rps = Some(0.01);
        s.quota.burst = Some(burst);
        s.quota.trusted_proxies = TrustedProxies(vec!["127.0.0.1/32".parse().expect("a block")]);
    }
}

async fn lookup_as(app: &TestApp, client: &str) -> Reply {
    app.get_with(LOOKUP, &[("x-forwarded-for", client)]).await
}

#[tokio::test]
async fn a_client_over_its_budget_gets_429_with_retry_after_while_another_client_is_served() {
    let app = spawn_app_with(quota(3)).await;

    let mut within = Vec::new();
    for _ in 0..3 {
        within.push(lookup_as(&app, "198.51.100.1").await);
    }
    let over = lookup_as(&app, "198.51.100.1").await;
    let other = lookup_as(&app, "198.51.100.2").await;
    let health = app
        .get_with("/livez", &[("x-forwarded-for", "198.51.100.1")])
        .await;

    for (n, reply) in within.iter().enumerate() {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("ratelimit-policy"), "\"default\";q=3;w=300");
        assert_eq!(
            reply.header("ratelimit"),
            format!("\"default\";r={};t={}", 2 - n, 100 * (n + 1)),
        );
    }
    let detail = over.assert_problem(429, "/problems/rate-limited");
    assert!(
        detail.contains("this client has used its quota (0.01 requests a second, bursts of 3"),
        "{detail}"
    );
    let retry_after: u64 = over.header("retry-after").parse().expect("seconds");
    assert!((99..=100).contains(&retry_after), "{retry_after}");
    assert_eq!(over.header("cache-control"), "no-store");
    assert_eq!(over.header("ratelimit-policy"), "\"default\";q=3;w=300");
    assert!(
        over.header("ratelimit").starts_with("\"default\";r=0;t="),
        "{}",
        over.header("ratelimit")
    );
    assert_eq!(other.status, 200, "another client has its own budget");
    assert_eq!(other.header("ratelimit"), "\"default\";r=2;t=100");
    assert_eq!(health.status, 200, "health routes are never counted");
    assert_eq!(health.header("ratelimit"), "");
}

#[tokio::test]
async fn a_batch_counts_one_token_per_lookup() {
    let app = spawn_app_with(quota(6)).await;
    let lookups = |n: usize| {
        let items: Vec<_> = (0..n)
            .map(|_| serde_json::json!({"id": 3, "timestamp": "2022-09-12T10:00:00Z"}))
            .collect();
        serde_json::json!({ "lookups": items }).to_string()
    };
    let headers = [
        ("content-type", "application/json"),
        ("x-forwarded-for", "198.51.100.7"),
    ];

    let four = app
        .post_with("/vehicles/states", &headers, lookups(4))
        .await;
    let three = app
        .post_with("/vehicles/states", &headers, lookups(3))
        .await;
    let one = app
        .post_with("/vehicles/states", &headers, lookups(1))
        .await;

    assert_eq!(four.status, 200, "{}", four.body);
    assert_eq!(four.header("ratelimit"), "\"default\";r=2;t=400");
    // Its first lookup's token was taken at the door; the other two were not there.
    three.assert_problem(429, "/problems/rate-limited");
    assert_eq!(three.header("ratelimit"), "\"default\";r=1;t=500");
    assert_eq!(
        one.status, 200,
        "the refused lookups took nothing: {}",
        one.body
    );
    assert_eq!(one.header("ratelimit"), "\"default\";r=0;t=600");
}

#[tokio::test]
async fn two_replicas_share_one_budget_per_client() {
    let first = spawn_app_with(quota(4)).await;
    let second = spawn_replica(&first, |_| {}).await;

    let mut statuses = Vec::new();
    for n in 0..8 {
        let replica = if n % 2 == 0 { &first } else { &second };
        statuses.push(lookup_as(replica, "198.51.100.9").await.status);
    }

    assert_eq!(statuses, [200, 200, 200, 200, 429, 429, 429, 429]);
}

#[tokio::test]
async fn without_redis_each_replica_keeps_the_budget_alone() {
    // Nothing listens on port 1: every quota decision is this replica's own.
    let app = spawn_app_with(|s| {
        quota(2)(s);
        s.redis.url = "redis://127.0.0.1:1".parse().expect("a URL");
    })
    .await;

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(lookup_as(&app, "198.51.100.3").await.status);
    }
    let other = lookup_as(&app, "198.51.100.4").await;

    assert_eq!(
        statuses,
        [200, 200, 429],
        "neither everything let through nor refused"
    );
    assert_eq!(other.status, 200);
}

#[tokio::test]
async fn an_address_a_client_writes_itself_is_not_believed_from_an_untrusted_peer() {
    // No trusted proxy: loopback is the client, whatever X-Forwarded-For says.
    let app = spawn_app_with(|s| {
        quota(2)(s);
        s.quota.trusted_proxies = TrustedProxies::default();
    })
    .await;

    let first = lookup_as(&app, "198.51.100.20").await;
    let second = lookup_as(&app, "198.51.100.21").await;
    let third = lookup_as(&app, "198.51.100.22").await;

    assert_eq!([first.status, second.status, third.status], [200, 200, 429]);
}
