//! What JetStream says about the cluster's stream and ingest's consumer: who leads them, their
//! replicas and messages.

use std::time::{Duration, Instant};

use async_nats::jetstream;

use vehicle_state_test_support::process::nats::{self, NatsCluster};

use super::{CONSUMER, STREAM};

/// The leaders of the stream and of ingest's consumer, once both have one (and neither is `not`,
/// a server just killed).
pub async fn wait_for_leaders(js: &jetstream::Context, not: Option<&str>) -> (String, String) {
    loop {
        if let (Some(stream), Some(consumer)) = nats::leaders(js, STREAM, CONSUMER).await
            && Some(stream.as_str()) != not
            && Some(consumer.as_str()) != not
        {
            return (stream, consumer);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes one server lead both the stream and ingest's consumer, so that killing it takes both
/// leaders (JetStream places them independently); returns its name.
pub async fn lead_stream_and_consumer(js: &jetstream::Context) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (stream, consumer) = wait_for_leaders(js, None).await;
        if stream == consumer {
            return stream;
        }
        let moved = nats::move_consumer_leader(js, STREAM, CONSUMER, &stream).await;
        assert!(
            Instant::now() < deadline,
            "the consumer's leader did not move from {consumer} to {stream}: {moved:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the stream has a leader and both its other replicas are online and current.
pub async fn wait_until_replicas_current(js: &jetstream::Context) {
    loop {
        if let Ok(stream) = js.get_stream(STREAM).await
            && let Some(cluster) = &stream.cached_info().cluster
            && cluster.leader.is_some()
            && cluster.replicas.len() == 2
            && cluster.replicas.iter().all(|r| r.current && !r.offline)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream's replicas and messages.
pub async fn stream_state(js: &jetstream::Context) -> (usize, u64) {
    loop {
        if let Ok(stream) = js.get_stream(STREAM).await {
            let info = stream.cached_info();
            return (info.config.num_replicas, info.state.messages);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream's leader, once it has one.
pub async fn wait_for_leaders_of_stream(js: &jetstream::Context) -> (String, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = js.get_stream(STREAM).await
            && let Ok(info) = stream.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return (leader, info.state.messages);
        }
        assert!(Instant::now() < deadline, "the stream has no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test's own JetStream context on the cluster, asking with a short timeout.
pub async fn jetstream_of(cluster: &NatsCluster) -> jetstream::Context {
    let client = async_nats::connect(cluster.nodes.iter().map(|n| n.url()).collect::<Vec<_>>())
        .await
        .expect("connect to the cluster");
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client)
}
