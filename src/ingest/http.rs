//! The ingest process's own endpoints: `/livez`, `/readyz`, `/metrics`, on INGEST_BIND_ADDR.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use serde::Serialize;

use super::Ingestor;
use crate::listener::Reserved;
use crate::metrics::{self, ConsumerGauge};

/// How long `/readyz` and `/metrics` wait for PostgreSQL or NATS before calling them down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    postgres: &'static str,
    nats: &'static str,
}

/// Listens on the port reserved at start and returns the server to run.
pub fn serve(ingestor: Arc<Ingestor>, port: Reserved) -> anyhow::Result<Server> {
    let addr = port.local_addr();
    // Installs the recorder before anything is counted.
    metrics::handle();
    metrics::IngestResult::register_at_zero();
    crate::telemetry::otel::register_at_zero();
    let data = web::Data::from(ingestor);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/livez", web::get().to(livez))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics_text))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(port.listen()?)
    .with_context(|| format!("cannot serve on {addr} (INGEST_BIND_ADDR)"))?;
    tracing::info!(%addr, "ingest health and metrics listening");
    Ok(server.run())
}

async fn livez() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}

/// Ready when PostgreSQL answers and the consumer is set up on a live NATS connection: then
/// events are being applied. While either is down, nothing is acked, and this says 503.
async fn readyz(ingestor: web::Data<Ingestor>) -> HttpResponse {
    let postgres = tokio::time::timeout(CHECK_TIMEOUT, crate::db::ping(&ingestor.pool)).await;
    let postgres_up = matches!(postgres, Ok(Ok(())));
    let nats_up = ingestor.consumer.get().is_some()
        && ingestor.nats.get().is_some_and(|client| {
            client.connection_state() == async_nats::connection::State::Connected
        });
    let word = |up: bool| if up { "up" } else { "down" };
    let ready = postgres_up && nats_up;
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        postgres: word(postgres_up),
        nats: word(nats_up),
    };
    let mut response = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .json(body)
}

async fn metrics_text(ingestor: web::Data<Ingestor>) -> HttpResponse {
    let consumer = match ingestor.consumer.get() {
        Some(consumer) => match tokio::time::timeout(CHECK_TIMEOUT, consumer.get_info()).await {
            Ok(Ok(info)) => Some(ConsumerGauge {
                pending: info.num_pending,
                ack_pending: info.num_ack_pending,
            }),
            _ => None,
        },
        None => None,
    };
    let text = metrics::render_ingest(crate::db::pool_gauge(&ingestor.pool), consumer);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
