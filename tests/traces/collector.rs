//! An OTLP/HTTP receiver of the tests' own: `POST /v1/traces` decoded as the official
//! `ExportTraceServiceRequest` protobuf (the `opentelemetry-proto` crate's messages), what every
//! collector takes on port 4318. It can also hang or refuse, as a collector on a bad day does.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// What the receiver does with an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Decodes and keeps the spans, answers 200.
    Accept = 0,
    /// Never answers (a collector stuck on its own back end).
    Hang = 1,
    /// Answers 401, as to a wrong API key.
    Refuse = 2,
}

/// A span as exported, with the `service.name` of the process that sent it.
#[derive(Clone, Debug)]
pub struct Exported {
    pub service: String,
    pub span: Span,
}

impl Exported {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    pub fn name(&self) -> &str {
        &self.span.name
    }
    /// An attribute's value as text (strings as they are, numbers and booleans printed).
    pub fn attr(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
    /// The (trace id, span id) of each link.
    pub fn links(&self) -> Vec<(String, String)> {
        self.span
            .links
            .iter()
            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
            .collect()
    }
    pub fn event_names(&self) -> Vec<&str> {
        self.span.events.iter().map(|e| e.name.as_str()).collect()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(text(value))
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

struct Shared {
    spans: Mutex<Vec<Exported>>,
    mode: AtomicU8,
    posts: AtomicUsize,
}

pub struct Collector {
    pub port: u16,
    shared: Arc<Shared>,
    handle: actix_web::dev::ServerHandle,
}

impl Collector {
    /// Starts on a free loopback port (inside the test's Tokio runtime).
    pub fn start(mode: Mode) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("an address").port();
        let shared = Arc::new(Shared {
            spans: Mutex::new(Vec::new()),
            mode: AtomicU8::new(mode as u8),
            posts: AtomicUsize::new(0),
        });
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .route("/v1/traces", web::post().to(receive))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            port,
            shared,
            handle,
        }
    }

    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Exports received so far, whatever the mode answered.
    pub fn posts(&self) -> usize {
        self.shared.posts.load(Ordering::Relaxed)
    }

    pub fn spans(&self) -> Vec<Exported> {
        self.shared
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Polls until `done` holds of the spans received, for at most `within`; returns them.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Exported]) -> bool,
    ) -> Vec<Exported> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                let names: Vec<_> = spans
                    .iter()
                    .map(|s| format!("{} {} {}", s.service, s.name(), s.trace_id()))
                    .collect();
                panic!("the collector never saw {what}; it has: {names:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        // Nobody awaits it: the runtime ends with the test.
        drop(tokio::spawn(async move { handle.stop(false).await }));
    }
}

async fn receive(shared: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    shared.posts.fetch_add(1, Ordering::Relaxed);
    match shared.mode.load(Ordering::Relaxed) {
        m if m == Mode::Hang as u8 => std::future::pending().await,
        m if m == Mode::Refuse as u8 => {
            return HttpResponse::Unauthorized().body("unknown API key");
        }
        _ => {}
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return HttpResponse::BadRequest().body(format!("not OTLP protobuf: {e}")),
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| attribute(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Exported {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    shared
        .spans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(received);
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}
