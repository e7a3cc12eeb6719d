//! NATS JetStream: connecting, the events' stream, the shared consumer, dead letters. No HTTP or
//! SQL here.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{ConnectErrorKind, HeaderMap};

use crate::config::{ChangesSettings, IngestSettings, NatsSettings, StreamSettings, StreamStorage};
use crate::domain::event::EventKind;

/// Headers of a dead letter: why, and where the event came from.
pub const REASON_HEADER: &str = "Vehicle-State-Reason";
pub const SUBJECT_HEADER: &str = "Vehicle-State-Subject";
pub const SEQUENCE_HEADER: &str = "Vehicle-State-Stream-Sequence";
/// Set on a dead letter sent without the event's payload, because the payload and the headers
/// together were more than the server takes in a message: the payload's size in bytes. The event
/// itself stays in its stream, at `Vehicle-State-Stream-Sequence`.
pub const PAYLOAD_OMITTED_HEADER: &str = "Vehicle-State-Payload-Omitted";
/// The most bytes of a reason a dead letter carries (and its log line shows): a reason may quote
/// the event, whose size the publisher chose.
pub const REASON_MAX_BYTES: usize = 512;

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
    let mut options = match &settings.creds_file {
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
        .connection_timeout(settings.connect_timeout)
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
    if let Some(ca) = &settings.ca_cert {
        options = options
            .add_root_certificates(ca.path.clone())
            .require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&settings.client_cert, &settings.client_key) {
        options = options.add_client_certificate(cert.path.clone(), key.path.clone());
    }
    let urls = &settings.urls();
    options.connect(urls.addrs()).await.map_err(|error| {
        // The URL may hold a password: name its servers, never the whole URL.
        let cause = crate::telemetry::chain(&error).to_string();
        let servers = urls.servers();
        match error.kind() {
            ConnectErrorKind::ServerParse => {
                ConnectFailure::Setting(format!("NATS_URL is not a NATS URL or list: {cause}"))
            }
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                ConnectFailure::Setting(format!(
                    "NATS at {servers} refused the credentials: {cause}"
                ))
            }
            ConnectErrorKind::Tls => {
                ConnectFailure::Setting(format!("NATS at {servers}: TLS failed: {cause}"))
            }
            kind => ConnectFailure::Unreachable(format!(
                "cannot reach NATS at {servers}: {}",
                unreachable(kind, &error)
            )),
        }
    })
}

/// Why NATS could not be reached, in a phrase: async-nats says "IO error: Connection refused
/// (os error 111)".
fn unreachable(kind: ConnectErrorKind, error: &async_nats::ConnectError) -> String {
    use std::error::Error as _;
    let io = error
        .source()
        .and_then(|source| source.downcast_ref::<std::io::Error>());
    match (kind, io.map(std::io::Error::kind)) {
        (_, Some(std::io::ErrorKind::ConnectionRefused)) => {
            "connection refused: is nats-server running there?".to_owned()
        }
        (ConnectErrorKind::TimedOut, _) | (_, Some(std::io::ErrorKind::TimedOut)) => {
            "timed out (NATS_CONNECT_TIMEOUT_MS)".to_owned()
        }
        (ConnectErrorKind::Dns, _) => {
            format!(
                "cannot resolve the host ({})",
                crate::telemetry::chain(error)
            )
        }
        _ => crate::telemetry::chain(error).to_string(),
    }
}

/// The subjects the stream takes: `<prefix>.>`.
pub fn stream_subjects(settings: &StreamSettings) -> String {
    format!("{}.>", settings.subject_prefix)
}

/// The subject events of `kind` are published on.
pub fn subject(settings: &StreamSettings, kind: EventKind) -> String {
    format!("{}.{}", settings.subject_prefix, kind.token())
}

/// The events' stream: found, or created as the settings say when absent and allowed.
pub async fn stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> anyhow::Result<stream::Stream> {
    let name = &settings.name;
    if !settings.create {
        return js.get_stream(name).await.with_context(|| {
            format!("stream {name} not found (INGEST_CREATE_STREAM=false: it must exist)")
        });
    }
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![stream_subjects(settings)],
        storage: storage(settings),
        num_replicas: usize::from(settings.replicas),
        duplicate_window: settings.duplicate_window,
        max_age: settings.max_age,
        max_bytes: settings.max_bytes,
        ..Default::default()
    };
    limited(js, config).await
}

/// The stream `config` names, created when absent; one that exists gets the limits (age and
/// bytes) the settings give now, so a changed setting takes effect at the next start.
async fn limited(
    js: &jetstream::Context,
    config: stream::Config,
) -> anyhow::Result<stream::Stream> {
    let name = config.name.clone();
    let mut stream = js
        .get_or_create_stream(config.clone())
        .await
        .with_context(|| format!("cannot find or create stream {name}"))?;
    let held = stream
        .info()
        .await
        .with_context(|| format!("cannot read stream {name}'s configuration"))?
        .config
        .clone();
    if held.max_age != config.max_age || held.max_bytes != config.max_bytes {
        // Said loudly: a tighter limit drops what the stream held beyond it.
        tracing::warn!(
            stream = %name,
            max_age_secs = config.max_age.as_secs(),
            max_bytes = config.max_bytes,
            held_max_age_secs = held.max_age.as_secs(),
            held_max_bytes = held.max_bytes,
            "the stream's limits differ from the settings; applying the settings (messages beyond them are dropped)"
        );
        js.update_stream(stream::Config {
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            ..held
        })
        .await
        .with_context(|| format!("cannot update stream {name}'s limits"))?;
        stream = js.get_stream(&name).await?;
    }
    Ok(stream)
}

/// The subjects of the change stream: `<prefix>.>`.
pub fn change_subjects(changes: &ChangesSettings) -> String {
    format!("{}.>", changes.subject_prefix)
}

/// The subject vehicle `id`'s changes are announced on, under `CHANGES_SUBJECT_PREFIX`.
pub fn change_subject(prefix: &str, id: i32) -> String {
    let mut digits = itoa::Buffer::new();
    let mut subject = String::with_capacity(prefix.len() + 12);
    subject.push_str(prefix);
    subject.push('.');
    subject.push_str(digits.format(id));
    subject
}

/// The change stream, as `ingest` keeps it: found, or created (when INGEST_CREATE_STREAM
/// allows) with the events' stream's replicas and storage, the change feed's limits, and the
/// same duplicate window (an announcement made again within it is dropped by its id).
pub async fn change_stream(
    js: &jetstream::Context,
    settings: &IngestSettings,
) -> anyhow::Result<stream::Stream> {
    let changes = &settings.changes;
    let name = &changes.stream;
    if !settings.stream.create {
        return js.get_stream(name).await.with_context(|| {
            format!("stream {name} not found (INGEST_CREATE_STREAM=false: it must exist)")
        });
    }
    let config = stream::Config {
        name: name.clone(),
        description: Some("vehicle-state: each committed change, per vehicle".to_owned()),
        subjects: vec![change_subjects(changes)],
        storage: storage(&settings.stream),
        num_replicas: usize::from(settings.stream.replicas),
        duplicate_window: settings.stream.duplicate_window,
        max_age: changes.max_age,
        max_bytes: changes.max_bytes,
        ..Default::default()
    };
    limited(js, config).await
}

fn storage(settings: &StreamSettings) -> stream::StorageType {
    match settings.storage {
        StreamStorage::File => stream::StorageType::File,
        StreamStorage::Memory => stream::StorageType::Memory,
    }
}

/// The durable pull consumer every ingest process shares, created when absent: explicit acks,
/// redelivered after INGEST_ACK_WAIT_SECS, never given up on (a message that cannot be applied
/// is dead-lettered and acked by the consumer, not dropped by the server).
pub async fn consumer(
    stream: &stream::Stream,
    settings: &IngestSettings,
) -> anyhow::Result<consumer::PullConsumer> {
    let name = &settings.consumer;
    stream
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                description: Some("vehicle-state ingest".to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: -1,
                max_ack_pending: settings.max_ack_pending,
                filter_subject: stream_subjects(&settings.stream),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot find or create consumer {name}"))
}

/// The stream that keeps dead letters: whichever already stores INGEST_DEAD_LETTER_SUBJECT, or
/// INGEST_DEAD_LETTER_STREAM, created on that subject when absent and allowed. Without
/// INGEST_CREATE_STREAM nothing is created: a dead letter is acked only once some stream has
/// stored it. Returns the stream's name, if known.
pub async fn dead_letter_stream(
    js: &jetstream::Context,
    settings: &IngestSettings,
) -> anyhow::Result<Option<String>> {
    let subject = &settings.dead_letter_subject;
    match js.stream_by_subject(subject.as_str()).await {
        Ok(name) => return Ok(Some(name)),
        Err(error) if error.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| {
                format!("cannot ask which stream stores dead letters ({subject})")
            });
        }
    }
    if !settings.stream.create {
        return Ok(None);
    }
    let name = &settings.dead_letter_stream;
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: storage(&settings.stream),
        num_replicas: usize::from(settings.stream.replicas),
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot find or create stream {name} for dead letters ({subject})"))?;
    Ok(Some(name.clone()))
}

/// What the change stream holds after `after`, for watchers that reconnect: announcements of
/// `subjects` with stream sequences from `after + 1` to `until`, in order, read by an ephemeral
/// consumer of their own (no acks, gone when done). `None` when more than `max` are there, or
/// when the stream no longer holds everything after `after` (its limits dropped some).
pub async fn replay(
    stream: &stream::Stream,
    subjects: Vec<String>,
    after: u64,
    until: u64,
    max: usize,
) -> anyhow::Result<Option<Vec<(u64, bytes::Bytes)>>> {
    let info = stream
        .get_info()
        .await
        .context("cannot read the change stream's state")?;
    // Older than the stream keeps, or an id it never gave (the stream was made anew, or the id
    // is made up): what came between cannot be told.
    if after.saturating_add(1) < info.state.first_sequence || after > info.state.last_sequence {
        return Ok(None);
    }
    let found = Vec::new();
    if after >= until {
        return Ok(Some(found));
    }
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ack_policy: consumer::AckPolicy::None,
            filter_subjects: subjects,
            inactive_threshold: std::time::Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("cannot read the change stream")?;
    let name = consumer.cached_info().name.clone();
    let found = read_replay(&consumer, found, until, max).await;
    // Gone at once rather than after its inactive threshold: a storm of reconnections would
    // otherwise leave as many consumers on the server.
    if let Err(error) = stream.delete_consumer(&name).await {
        tracing::debug!(error = %error, consumer = %name, "a replay's consumer was not deleted; it goes by itself within 30 s");
    }
    found
}

async fn read_replay(
    consumer: &consumer::Consumer<consumer::pull::Config>,
    mut found: Vec<(u64, bytes::Bytes)>,
    until: u64,
    max: usize,
) -> anyhow::Result<Option<Vec<(u64, bytes::Bytes)>>> {
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(256)
            .messages()
            .await
            .context("cannot read the change stream")?;
        let mut got = 0;
        while let Some(message) = futures_util::StreamExt::next(&mut batch).await {
            let message = message.map_err(|e| anyhow::anyhow!(e))?;
            got += 1;
            let sequence = message
                .info()
                .map_err(|e| anyhow::anyhow!(e))?
                .stream_sequence;
            if sequence > until {
                return Ok(Some(found));
            }
            if found.len() == max {
                return Ok(None);
            }
            found.push((sequence, message.payload.clone()));
        }
        if got == 0 {
            return Ok(Some(found));
        }
    }
}

/// A dead-letter subject, or the change feed's, inside the events' stream would be ingested
/// again; dead letters inside the change feed would be taken for changes: settings that cannot
/// work.
pub fn check_dead_letter_subject(settings: &IngestSettings) -> Result<(), String> {
    let subject = &settings.dead_letter_subject;
    let prefix = &settings.stream.subject_prefix;
    let changes = &settings.changes.subject_prefix;
    let inside = |subject: &str, prefix: &str| {
        subject == prefix
            || subject
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    if inside(subject, prefix) {
        return Err(format!(
            "INGEST_DEAD_LETTER_SUBJECT ({subject}) is inside the events' subjects \
             ({}): dead letters would be ingested again; choose a subject outside them",
            stream_subjects(&settings.stream)
        ));
    }
    if inside(changes, prefix) || inside(prefix, changes) {
        return Err(format!(
            "CHANGES_SUBJECT_PREFIX ({changes}) and INGEST_SUBJECT_PREFIX ({prefix}) overlap: \
             announcements would be ingested as events; choose prefixes apart"
        ));
    }
    if inside(subject, changes) {
        return Err(format!(
            "INGEST_DEAD_LETTER_SUBJECT ({subject}) is inside the change feed's subjects \
             ({}): choose a subject outside them",
            change_subjects(&settings.changes)
        ));
    }
    Ok(())
}

/// Publishes to JetStream and waits for a stream to confirm it stored the message.
pub async fn store(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    js.publish_with_headers(subject.to_owned(), headers, payload)
        .await?
        .await
}

/// The headers of a dead letter; the reason is one line of at most [`REASON_MAX_BYTES`].
pub fn dead_letter_headers(reason: &str, subject: &str, stream_sequence: Option<u64>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // Header values are one line: a reason never spans more.
    headers.insert(REASON_HEADER, capped(one_line(reason)).as_str());
    headers.insert(SUBJECT_HEADER, subject);
    if let Some(sequence) = stream_sequence {
        headers.insert(SEQUENCE_HEADER, sequence.to_string().as_str());
    }
    headers
}

/// `text`, cut at [`REASON_MAX_BYTES`] (on a character boundary, marked with an ellipsis).
pub fn capped(mut text: String) -> String {
    if text.len() > REASON_MAX_BYTES {
        let mut end = REASON_MAX_BYTES - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_one_line_of_at_most_its_cap_cut_on_a_character() {
        let long = format!("a\nb{}", "é".repeat(REASON_MAX_BYTES));
        let headers = dead_letter_headers(&long, "vehicles.state_changed", Some(7));
        let reason = headers.get(REASON_HEADER).map(|v| v.to_string());

        let reason = reason.expect("a reason header");
        assert!(reason.len() <= REASON_MAX_BYTES, "{} bytes", reason.len());
        assert!(reason.starts_with("a b\u{e9}"), "{reason}");
        assert!(reason.ends_with('…'), "{reason}");
        assert_eq!(capped("short".to_owned()), "short");
        assert_eq!(
            headers.get(SEQUENCE_HEADER).map(|v| v.to_string()),
            Some("7".to_owned())
        );
    }
}
