//! Tracing off: without `OTEL_*` no connection is ever made (not even to the OTLP default,
//! `localhost:4318`), and `OTEL_SDK_DISABLED=true` wins over an endpoint; log lines carry no
//! trace ids then.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::time::Duration;

use vehicle_state_test_support::process::{
    Replica, TempDir, bounded, client, one_at_a_time, sample_database,
};
use vehicle_state_test_support::servers::redis_url;

use crate::collector::{Collector, Mode};
use crate::{log_events, new_ids, traced_replica, traceparent};

/// Listeners on the OTLP/HTTP default port, on both loopback addresses (`localhost` may be
/// either), that accept nothing by themselves: a connection attempt stays queued until read.
fn default_port_listeners() -> Vec<TcpListener> {
    let mut listeners = Vec::new();
    for addr in ["127.0.0.1:4318", "[::1]:4318"] {
        match TcpListener::bind(addr) {
            Ok(listener) => {
                listener.set_nonblocking(true).expect("non-blocking");
                listeners.push(listener);
            }
            // No IPv6 loopback here: then `localhost` cannot be it either.
            Err(e) if addr.starts_with('[') && e.kind() == ErrorKind::AddrNotAvailable => {}
            Err(e) => {
                panic!("this test needs {addr} free, to see that nothing connects to it: {e}")
            }
        }
    }
    listeners
}

fn connections(listeners: &[TcpListener]) -> usize {
    let mut count = 0;
    for listener in listeners {
        loop {
            match listener.accept() {
                Ok(_) => count += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
    count
}

/// Some traced-looking lookups (with a `traceparent`), then SIGTERM: a process that exported
/// anything would flush it as it stops.
async fn lookups_then_stop(replica: &mut Replica) {
    replica.start().await;
    let client = client();
    for i in 0..20 {
        let (trace, parent) = new_ids();
        let reply = client
            .get(format!(
                "{}/vehicles/3/timestamp/{}",
                replica.url(),
                1_662_976_800 + i % 5
            ))
            .header("traceparent", traceparent(&trace, &parent))
            .send()
            .await
            .expect("a lookup");
        assert_eq!(reply.status(), 200);
    }
    replica.send_sigterm();
    let status = replica.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otel_settings_no_connection_is_attempted_and_logs_have_no_trace_ids() {
    let _turn = one_at_a_time().await;
    bounded(async {
        let listeners = default_port_listeners();
        let dir = TempDir::new("traces-off");
        let db = sample_database();
        let mut plain = Replica::new(&dir.0, &db.database_url, &redis_url(), &db.prefix);
        plain.set("RUST_LOG", "info");
        lookups_then_stop(&mut plain).await;
        assert_eq!(
            connections(&listeners),
            0,
            "a connection to the OTLP default port"
        );
        let events = log_events(&plain);
        let completed: Vec<_> = events
            .iter()
            .filter(|e| {
                e["message"] == "request completed" && e["route"] == "/vehicles/{id}/timestamp/{ts}"
            })
            .collect();
        assert_eq!(completed.len(), 20);
        assert!(
            completed.iter().all(|e| e.get("trace_id").is_none()),
            "{completed:?}"
        );

        // The same listeners do see an exporter that is pointed at them: the check above can fail.
        let mut pointed = Replica::new(&dir.0, &db.database_url, &redis_url(), &db.prefix);
        pointed
            .set("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
            .set("OTEL_EXPORTER_OTLP_TIMEOUT", "500");
        lookups_then_stop(&mut pointed).await;
        assert!(connections(&listeners) > 0, "the exporter never connected");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_disabled_wins_over_an_endpoint() {
    let _turn = one_at_a_time().await;
    bounded(async {
        let collector = Collector::start(Mode::Accept);
        let dir = TempDir::new("traces-disabled");
        let db = sample_database();
        let mut replica = traced_replica(&dir.0, &db, &collector);
        replica.set("OTEL_SDK_DISABLED", "true");
        lookups_then_stop(&mut replica).await;
        assert_eq!(collector.posts(), 0, "spans were exported");

        // Not disabled, the same run is exported: the check above can fail.
        let mut enabled = traced_replica(&dir.0, &db, &collector);
        lookups_then_stop(&mut enabled).await;
        assert!(collector.posts() > 0, "nothing exported");
    })
    .await;
}
