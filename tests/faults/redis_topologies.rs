//! Redis as teams deploy it: over TLS with a private CA and client certificates, as a Redis
//! Cluster, and behind Sentinel; replicas of the real binary share answers through each, and
//! a failover under load fails no request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vehicle_state_test_support::load;
use vehicle_state_test_support::load::{Load, mixed};
use vehicle_state_test_support::pki::Pki;
use vehicle_state_test_support::process::redis::{MASTER_SET, RedisCluster, RedisServer, Sentinel};
use vehicle_state_test_support::process::{
    Replica, TempDir, bounded, client, one_at_a_time, sample_database,
};
use vehicle_state_test_support::scratch::Scratch;

/// A replica of the binary on `scratch`'s database, reaching Redis as `redis` says.
async fn replica(dir: &TempDir, scratch: &Scratch, redis: &[(&str, &str)]) -> Replica {
    let url = redis
        .iter()
        .find(|(k, _)| *k == "REDIS_URL")
        .map_or("", |(_, v)| *v);
    let mut replica = Replica::new(&dir.0, &scratch.database_url, url, &scratch.prefix);
    for (name, value) in redis {
        replica.set(name, value);
    }
    replica.set("REDIS_TIMEOUT_MS", "200");
    replica.start().await;
    replica
}

/// The TLS settings of a replica for `pki`'s CA and client certificate.
fn tls_settings(pki: &Pki) -> [(&'static str, String); 3] {
    [
        ("REDIS_CA_CERT", pki.ca.display().to_string()),
        ("REDIS_CLIENT_CERT", pki.client_cert.display().to_string()),
        ("REDIS_CLIENT_KEY", pki.client_key.display().to_string()),
    ]
}

/// Status and `X-Cache` of one lookup.
async fn lookup(replica: &Replica, path: &str) -> (u16, String) {
    let response = client()
        .get(format!("{}{path}", replica.url()))
        .send()
        .await
        .expect("an answer");
    let x_cache = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (response.status().as_u16(), x_cache)
}

/// Distinct uncached lookups: each of a vehicle of its own (none of which exists), as an
/// instant of a vehicle already asked would be answered by the segment cached for it.
fn paths(n: u64) -> Vec<String> {
    (0..n)
        .map(|i| format!("/vehicles/{}/timestamp/1662976800", 1_000 + i))
        .collect()
}

/// Asks every path of `paths` on `first`, then on `second`: misses, then hits through Redis.
async fn assert_answers_are_shared(first: &Replica, second: &Replica, paths: &[String]) {
    for path in paths {
        assert_eq!(
            lookup(first, path).await,
            (404, "MISS".to_owned()),
            "{path}"
        );
    }
    for path in paths {
        assert_eq!(
            lookup(second, path).await,
            (404, "HIT".to_owned()),
            "{path}: the other replica's answer, through Redis"
        );
    }
}

/// The replica's `vehicle_state_redis_nodes` series: (mode, role) → count.
async fn nodes_seen(replica: &Replica) -> HashMap<(String, String), f64> {
    let text = client()
        .get(format!("{}/metrics", replica.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter_map(|l| l.strip_prefix("vehicle_state_redis_nodes{mode=\""))
        .filter_map(|rest| {
            let (mode, rest) = rest.split_once("\",role=\"")?;
            let (role, value) = rest.split_once("\"} ")?;
            Some(((mode.to_owned(), role.to_owned()), value.parse().ok()?))
        })
        .collect()
}

/// [`nodes_seen`], asked until it is `expected` or `within` has passed; the last seen.
async fn nodes_seen_within(
    replica: &Replica,
    within: Duration,
    expected: &HashMap<(String, String), f64>,
) -> HashMap<(String, String), f64> {
    let deadline = Instant::now() + within;
    let mut ask = 0;
    loop {
        // A trickle of lookups, as a replica in service always has: Redis left alone after a
        // failure is tried again by a lookup, never by a scrape, so with no traffic at all a
        // breaker that opened during the failover would stay open and report no nodes. Each of
        // a vehicle not asked before, so it reaches Redis rather than the memory cache.
        ask += 1;
        let _answer = client()
            .get(format!(
                "{}/vehicles/{}/timestamp/1700000000",
                replica.url(),
                1_000_000 + ask
            ))
            .send()
            .await;
        let seen = nodes_seen(replica).await;
        if &seen == expected || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn nodes(mode: &str, masters: f64, replicas: f64) -> HashMap<(String, String), f64> {
    HashMap::from([
        ((mode.to_owned(), "master".to_owned()), masters),
        ((mode.to_owned(), "replica".to_owned()), replicas),
    ])
}

/// Polls `probe` every 20 ms for at most `within`; how long until it held.
async fn time_until<F: Future<Output = bool>>(
    within: Duration,
    mut probe: impl FnMut() -> F,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if probe().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_answers_through_a_redis_that_takes_only_mutual_tls() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let dir = TempDir::new("redis-tls");
        let pki = Pki::new(&dir.0.join("pki"), &["127.0.0.1", "localhost"]);
        let redis = RedisServer::start_with(Some(&pki), &[]).await;
        let scratch = sample_database();
        let url = redis.url();
        let tls = tls_settings(&pki);
        let mut settings: Vec<(&str, &str)> = vec![("REDIS_URL", &url)];
        settings.extend(tls.iter().map(|(k, v)| (*k, v.as_str())));
        let first = replica(&dir, &scratch, &settings).await;
        let second = replica(&dir, &scratch, &settings).await;
        // Without a client certificate the server refuses the handshake: answers still come,
        // from PostgreSQL.
        let no_client_cert = replica(&dir, &scratch, &settings[..2]).await;

        assert_answers_are_shared(&first, &second, &paths(5)).await;
        assert_eq!(redis.dbsize().await, 5);
        assert_eq!(nodes_seen(&first).await, nodes("standalone", 1.0, 0.0));
        let path = "/vehicles/2/timestamp/2022-09-12T10:00:00Z";
        assert_eq!(
            lookup(&no_client_cert, path).await,
            (200, "MISS".to_owned())
        );
        assert_eq!(
            no_client_cert.log_lines_with("cache read failed"),
            1,
            "the refusal is logged: {}",
            no_client_cert.log_tail()
        );
        assert_eq!(redis.dbsize().await, 5, "it wrote nothing");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_spreads_the_keys_and_a_master_failover_under_load_fails_no_request() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let cluster = RedisCluster::start(3, 1, None).await;
        let scratch = sample_database();
        let dir = TempDir::new("redis-cluster");
        let url = cluster.url();
        let settings = [("REDIS_URL", url.as_str()), ("REDIS_MODE", "cluster")];
        let first = replica(&dir, &scratch, &settings).await;
        let second = replica(&dir, &scratch, &settings).await;

        assert_answers_are_shared(&first, &second, &paths(30)).await;
        let masters = cluster.masters().await;
        let mut holding = 0;
        for master in &masters {
            if master.dbsize().await > 0 {
                holding += 1;
            }
        }
        assert!(holding >= 2, "keys on {holding} of 3 masters");
        assert_eq!(nodes_seen(&first).await, nodes("cluster", 3.0, 3.0));

        // A replica takes over its master, first as an operator would (CLUSTER FAILOVER), then
        // because its master was killed, while both replicas of the service are loaded.
        let loads = [
            Load::start(&first.url(), 4, mixed()),
            Load::start(&second.url(), 4, mixed()),
        ];
        tokio::time::sleep(Duration::from_secs(1)).await;
        let planned = take_over(&cluster, masters[0].port, |replica| async move {
            let _: () = replica.query(redis::cmd("CLUSTER").arg("FAILOVER")).await;
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let victim = masters[1].port;
        let crash = take_over(&cluster, victim, |_| async {
            let master = cluster.nodes.iter().find(|n| n.port == victim);
            master.expect("the master").kill();
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let [a, b] = loads;
        let (a, b) = (a.stop().await, b.stop().await);

        eprintln!("{}", a.summary("cluster failovers, replica 1"));
        eprintln!("{}", b.summary("cluster failovers, replica 2"));
        eprintln!("CLUSTER FAILOVER: {planned}");
        eprintln!("master killed: {crash}");
        a.assert_no_failures("cluster failovers");
        b.assert_no_failures("cluster failovers");
        cluster.wait_until_healthy(3, 2).await;
        // Right after a failover the replica may still be leaving Redis alone (its retry
        // interval), and reports no nodes until it asks again.
        assert_eq!(
            nodes_seen_within(&first, Duration::from_secs(5), &nodes("cluster", 3.0, 2.0)).await,
            nodes("cluster", 3.0, 2.0)
        );
    })
    .await;
}

/// What a failover took: until the replica was master, and until the service wrote to it.
struct Takeover {
    took_over: Duration,
    cached_again: Duration,
}

impl std::fmt::Display for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the replica was master {:.0} ms after, and new answers were cached on it {:.0} ms after that",
            self.took_over.as_secs_f64() * 1000.0,
            self.cached_again.as_secs_f64() * 1000.0
        )
    }
}

/// Makes the replica of the master on `master_port` take over by `cause`, and waits until it
/// is master and the service has cached new answers on it (each within 10 s, or the test fails).
async fn take_over<'a, F: Future<Output = ()>>(
    cluster: &'a RedisCluster,
    master_port: u16,
    cause: impl FnOnce(&'a RedisServer) -> F,
) -> Takeover {
    let mut replica = None;
    for node in &cluster.nodes {
        if node.port == master_port {
            continue;
        }
        let info: String = node.query(redis::cmd("INFO").arg("replication")).await;
        if info.contains(&format!("master_port:{master_port}")) {
            replica = Some(node);
        }
    }
    let replica = replica.expect("the master has a replica");
    cause(replica).await;
    let took_over = time_until(Duration::from_secs(10), || async {
        replica.try_role().await.as_deref() == Some("master")
    })
    .await
    .expect("the replica took over");
    let keys = replica.dbsize().await;
    let cached_again = time_until(Duration::from_secs(10), || async {
        replica.dbsize().await > keys
    })
    .await
    .expect("the service cached answers on the new master by itself");
    Takeover {
        took_over,
        cached_again,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_the_master_killed_under_load_fails_no_request_and_caching_resumes() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let mut set = Sentinel::start(None).await;
        let scratch = sample_database();
        let dir = TempDir::new("redis-sentinel");
        let url = set.url();
        let settings = [
            ("REDIS_URL", url.as_str()),
            ("REDIS_MODE", "sentinel"),
            ("REDIS_SENTINEL_MASTER", MASTER_SET),
        ];
        let first = replica(&dir, &scratch, &settings).await;
        let second = replica(&dir, &scratch, &settings).await;
        assert_answers_are_shared(&first, &second, &paths(3)).await;
        assert_eq!(set.master.dbsize().await, 3);
        assert_eq!(nodes_seen(&first).await, nodes("sentinel", 1.0, 1.0));

        let load = Load::start(&first.url(), 8, mixed());
        tokio::time::sleep(Duration::from_secs(1)).await;
        set.master.stop();
        let killed_at = Instant::now();
        let promoted = time_until(Duration::from_secs(20), || async {
            set.replica.try_role().await.as_deref() == Some("master")
        })
        .await;
        let keys_at_promotion = set.replica.dbsize().await;
        let resumed = time_until(Duration::from_secs(10), || async {
            set.replica.dbsize().await > keys_at_promotion
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = load.stop().await;

        eprintln!("{}", report.summary("sentinel: master killed"));
        eprintln!(
            "the replica was promoted {} after the kill; answers cached on it {} after the promotion; {} since the kill",
            load::figure_or_never(promoted),
            load::figure_or_never(resumed),
            load::figure(killed_at.elapsed())
        );
        report.assert_no_failures("sentinel failover");
        assert!(promoted.is_some(), "the sentinel promoted the replica");
        assert!(
            resumed.is_some_and(|t| t < Duration::from_secs(10)),
            "cached on the new master within 10 s of the promotion: {resumed:?}"
        );
        // Right after a failover the replica may still be leaving Redis alone (its retry
        // interval), and reports no nodes until it asks again.
        assert_eq!(
            nodes_seen_within(&first, Duration::from_secs(5), &nodes("sentinel", 1.0, 0.0)).await,
            nodes("sentinel", 1.0, 0.0)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_and_a_sentinel_set_over_mutual_tls_share_answers_too() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let dir = TempDir::new("redis-tls-modes");
        let pki = Pki::new(&dir.0.join("pki"), &["127.0.0.1", "localhost"]);
        let tls = tls_settings(&pki);
        let scratch = sample_database();

        let cluster = RedisCluster::start(3, 0, Some(&pki)).await;
        let url = cluster.url();
        let mut settings: Vec<(&str, &str)> = vec![("REDIS_URL", &url), ("REDIS_MODE", "cluster")];
        settings.extend(tls.iter().map(|(k, v)| (*k, v.as_str())));
        let first = replica(&dir, &scratch, &settings).await;
        let second = replica(&dir, &scratch, &settings).await;
        assert_answers_are_shared(&first, &second, &paths(10)).await;
        assert_eq!(nodes_seen(&first).await, nodes("cluster", 3.0, 0.0));
        drop((first, second, cluster));

        let set = Sentinel::start(Some(&pki)).await;
        let url = set.url();
        let prefix = format!("vs-test-{}", uuid::Uuid::new_v4().simple());
        let mut settings: Vec<(&str, &str)> = vec![
            ("REDIS_URL", &url),
            ("REDIS_MODE", "sentinel"),
            ("REDIS_SENTINEL_MASTER", MASTER_SET),
            ("CACHE_KEY_PREFIX", &prefix),
        ];
        settings.extend(tls.iter().map(|(k, v)| (*k, v.as_str())));
        let first = replica(&dir, &scratch, &settings).await;
        let second = replica(&dir, &scratch, &settings).await;
        assert_answers_are_shared(&first, &second, &paths(3)).await;
        assert_eq!(set.master.dbsize().await, 3);
        assert_eq!(nodes_seen(&first).await, nodes("sentinel", 1.0, 1.0));
    })
    .await;
}
