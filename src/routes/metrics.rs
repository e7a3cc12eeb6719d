use actix_web::http::header::{CacheControl, CacheDirective};
use actix_web::{HttpResponse, route, web};

use crate::context::AppContext;

/// Prometheus metrics of this replica.
///
/// In the text exposition format; `docs/operations.md` describes each series.
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Every series, in Prometheus text format 0.0.4.", body = String, content_type = "text/plain; version=0.0.4"),
))]
#[route("/metrics", method = "GET", method = "HEAD")]
pub async fn metrics(state: web::Data<AppContext>) -> HttpResponse {
    let service = &state.service;
    let redis = &service.redis;
    let nodes = match redis.nodes().await {
        Ok(nodes) => nodes,
        Err(error) => {
            // Counted (operation `topology`); logged at debug only, since a managed Redis that
            // refuses ROLE or CLUSTER NODES would otherwise warn at every scrape.
            if let Some(errors) = redis.record_error("topology", &error) {
                tracing::debug!(error = %crate::telemetry::chain(&error), errors, "metrics: cannot read the Redis topology");
            }
            crate::cache::topology::Nodes::default()
        }
    };
    let text = crate::metrics::render(
        crate::db::pool_gauge(service.db.pool()),
        redis.pool_gauge(),
        crate::metrics::RedisNodesGauge {
            mode: redis.mode().label(),
            masters: nodes.masters,
            replicas: nodes.replicas,
        },
    );
    HttpResponse::Ok()
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
