//! NATS JetStream: connecting, the events' stream, the shared consumer, dead letters. No HTTP or
//! SQL here.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{ConnectErrorKind, HeaderMap};

use crate::config::{IngestSettings, NatsSettings, StreamSettings, StreamStorage};
use crate::domain::event::EventKind;

/// Headers of a dead letter: why, and where the event came from.
pub const REASON_HEADER: &str = "Vehicle-State-Reason";
pub const SUBJECT_HEADER: &str = "Vehicle-State-Subject";
pub const SEQUENCE_HEADER: &str = "Vehicle-State-Stream-Sequence";

/// Why a connection could not be made: a setting that cannot work (stop), or a server that
/// cannot be reached now (try again).
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error("{0}")]
    Setting(String),
    #[error("{0}")]
    Unreachable(String),
}

/// Connects, once. The client then reconnects by itself for as long as the process runs,
/// logging each disconnection and reconnection.
pub async fn connect(
    settings: &NatsSettings,
    name: &str,
) -> Result<async_nats::Client, ConnectFailure> {
    let mut options = match &settings.nats_creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| {
                ConnectFailure::Setting(format!(
                    "NATS_CREDS_FILE {}: not a credentials file: {e}",
                    path.display()
                ))
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    options = options
        .name(name)
        .connection_timeout(Duration::from_millis(settings.nats_connect_timeout_ms))
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connection (re)established"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting")
                }
                // The client was dropped: the process is ending.
                async_nats::Event::Closed => tracing::debug!("NATS connection closed"),
                other => tracing::warn!(event = %other, "NATS"),
            }
        });
    if let Some(ca) = &settings.nats_ca_cert {
        options = options
            .add_root_certificates(ca.path.clone())
            .require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&settings.nats_client_cert, &settings.nats_client_key) {
        options = options.add_client_certificate(cert.path.clone(), key.path.clone());
    }
    let urls = settings.nats_url.expose();
    options.connect(urls).await.map_err(|error| {
        // The URL may hold a password: name the error, never the URL.
        let cause = crate::telemetry::chain(&error).to_string();
        match error.kind() {
            ConnectErrorKind::ServerParse => {
                ConnectFailure::Setting(format!("NATS_URL is not a NATS URL or list: {cause}"))
            }
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                ConnectFailure::Setting(format!("NATS refused the credentials: {cause}"))
            }
            ConnectErrorKind::Tls => ConnectFailure::Setting(format!("NATS TLS failed: {cause}")),
            _ => ConnectFailure::Unreachable(format!("cannot reach NATS: {cause}")),
        }
    })
}

/// The subjects the stream takes: `<prefix>.>`.
pub fn stream_subjects(settings: &StreamSettings) -> String {
    format!("{}.>", settings.ingest_subject_prefix)
}

/// The subject events of `kind` are published on.
pub fn subject(settings: &StreamSettings, kind: EventKind) -> String {
    format!("{}.{}", settings.ingest_subject_prefix, kind.token())
}

/// The events' stream: found, or created as the settings say when absent and allowed.
pub async fn stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> anyhow::Result<stream::Stream> {
    let name = &settings.ingest_stream;
    if !settings.ingest_create_stream {
        return js.get_stream(name).await.with_context(|| {
            format!("stream {name} not found (INGEST_CREATE_STREAM=false: it must exist)")
        });
    }
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![stream_subjects(settings)],
        storage: match settings.ingest_stream_storage {
            StreamStorage::File => stream::StorageType::File,
            StreamStorage::Memory => stream::StorageType::Memory,
        },
        num_replicas: usize::from(settings.ingest_stream_replicas),
        duplicate_window: Duration::from_secs(settings.ingest_duplicate_window_secs),
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot find or create stream {name}"))
}

/// The durable pull consumer every ingest process shares, created when absent: explicit acks,
/// redelivered after INGEST_ACK_WAIT_SECS, never given up on (a message that cannot be applied
/// is dead-lettered and acked by the consumer, not dropped by the server).
pub async fn consumer(
    stream: &stream::Stream,
    settings: &IngestSettings,
) -> anyhow::Result<consumer::PullConsumer> {
    let name = &settings.ingest_consumer;
    stream
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some("vehicle-state ingest".to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(settings.ingest_ack_wait_secs),
                max_deliver: -1,
                max_ack_pending: settings.ingest_max_ack_pending,
                filter_subject: stream_subjects(&settings.stream),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot find or create consumer {name}"))
}

/// The headers of a dead letter.
pub fn dead_letter_headers(reason: &str, subject: &str, stream_sequence: Option<u64>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // Header values are one line: a reason never spans more.
    headers.insert(REASON_HEADER, one_line(reason).as_str());
    headers.insert(SUBJECT_HEADER, subject);
    if let Some(sequence) = stream_sequence {
        headers.insert(SEQUENCE_HEADER, sequence.to_string().as_str());
    }
    headers
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
