//! Three replicas behind nginx, configured as `docker-compose.yml` runs them: replicas die and
//! restart under load, and clients see no failure.

use std::time::{Duration, Instant};

use vehicle_state_test_support::load::{Load, mixed};
use vehicle_state_test_support::process::{
    Nginx, Replica, TempDir, bounded, client, one_at_a_time, sample_database,
};
use vehicle_state_test_support::scratch::Scratch;
use vehicle_state_test_support::servers::redis_url;

/// Fields drop in order: processes first, then their files, then the database and keys.
struct Fleet {
    replicas: Vec<Replica>,
    nginx: Nginx,
    _dir: TempDir,
    _scratch: Scratch,
}

async fn fleet(drain_secs: &str) -> Fleet {
    let scratch = sample_database();
    let dir = TempDir::new("fleet");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut replica =
            Replica::new(&dir.0, &scratch.database_url, &redis_url(), &scratch.prefix);
        replica.set("SHUTDOWN_DRAIN_SECS", drain_secs);
        replica.start().await;
        replica.wait_ready(Duration::from_secs(10)).await;
        replicas.push(replica);
    }
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
    let nginx = Nginx::start(&dir.0, &ports).await;
    Fleet {
        replicas,
        nginx,
        _dir: dir,
        _scratch: scratch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_under_load_fails_no_request() {
    let _serial = one_at_a_time().await;
    bounded(async {
        let mut fleet = fleet("0").await;
        let load = Load::start(&fleet.nginx.url(), 16, mixed());
        tokio::time::sleep(Duration::from_secs(1)).await;

        let killed_at = Instant::now();
        fleet.replicas[1].kill9();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = load.stop().await;

        eprintln!("{}", report.summary("kill -9 of one of three replicas"));
        report.assert_no_failures("kill -9");
        let after = report
            .samples
            .iter()
            .filter(|s| s.started > killed_at)
            .count();
        assert!(
            after > 100,
            "the load went on after the kill: {after} requests"
        );
        assert!(
            report.max() < Duration::from_secs(3),
            "no request hung on the dead replica: {:?}",
            report.max()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request() {
    let _serial = one_at_a_time().await;
    bounded(async {
        // A drain second, as under an orchestrator that polls /readyz, to see readiness fail first.
        let mut fleet = fleet("1").await;
        let load = Load::start(&fleet.nginx.url(), 16, mixed());
        tokio::time::sleep(Duration::from_millis(500)).await;

        let client = client();
        let mut stops = Vec::new();
        for replica in &mut fleet.replicas {
            replica.send_sigterm();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let readiness = client
                .get(format!("{}/readyz", replica.url()))
                .send()
                .await
                .expect("the stopping replica still answers /readyz while draining");
            let readiness = (
                readiness.status().as_u16(),
                readiness.text().await.unwrap_or_default(),
            );
            let exit = replica.wait_exit(Duration::from_secs(15)).await;
            replica.start().await;
            replica.wait_ready(Duration::from_secs(10)).await;
            stops.push((readiness, exit));
            // More than nginx's fail_timeout (1 s in deploy/nginx.conf), so the replica just
            // restarted is in rotation again before the next one stops.
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = load.stop().await;

        eprintln!("{}", report.summary("rolling restart of three replicas"));
        report.assert_no_failures("rolling restart");
        let retried = fleet
            .nginx
            .error_log()
            .lines()
            .filter(|l| l.contains("[error]"))
            .count();
        eprintln!("requests nginx retried on another replica: {retried}");
        for ((status, body), exit) in stops {
            assert_eq!(status, 503, "readiness fails first: {body}");
            assert!(body.contains("shutting_down"), "{body}");
            assert!(
                exit.is_some_and(|s| s.success()),
                "a stopped replica exits 0: {exit:?}"
            );
        }
        assert!(
            fleet
                .nginx
                .error_log()
                .lines()
                .all(|l| !l.contains("no live upstreams")),
            "{}",
            fleet.nginx.error_log()
        );
    })
    .await;
}
