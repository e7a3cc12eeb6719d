//! The middleware that counts and times every request, by the route template it matched.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};
use std::time::Instant;

use actix_web::HttpRequest;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use super::http::RequestSeries;
use super::{read, write};

/// Counts every request and times it, labelled by the route template it matched.
pub async fn record_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let response = next.call(req).await?;
    let route = route_of(response.request());
    let status = response.status().as_u16();
    RequestSeries::with(route, status, |series| {
        series.duration.record(started.elapsed());
        series.requests.increment(1);
    });
    Ok(response)
}

/// The route template a request matched (`unmatched` when none), as a label. A named resource
/// (every route of ours: actix names each after its handler) is looked up once and then served
/// from a table, so a request neither walks the resource map nor allocates for its label.
pub fn route_of(req: &HttpRequest) -> &'static str {
    static TEMPLATES: LazyLock<RwLock<HashMap<String, &'static str>>> =
        LazyLock::new(Default::default);
    let Some(name) = req.match_name() else {
        return req.match_pattern().map_or("unmatched", intern);
    };
    if let Some(template) = read(&TEMPLATES).get(name) {
        return template;
    }
    let template = req.match_pattern().map_or("unmatched", intern);
    write(&TEMPLATES).insert(name.to_owned(), template);
    template
}

/// One `&'static str` per distinct route template. Templates come from the routes the app
/// registers, never from a request's path, so this holds a handful of strings for the life of
/// the process.
fn intern(template: String) -> &'static str {
    static INTERNED: LazyLock<RwLock<Vec<&'static str>>> = LazyLock::new(Default::default);
    if let Some(known) = read(&INTERNED).iter().find(|t| **t == template) {
        return known;
    }
    let mut interned = write(&INTERNED);
    if let Some(known) = interned.iter().find(|t| **t == template) {
        return known;
    }
    let leaked: &'static str = Box::leak(template.into_boxed_str());
    interned.push(leaked);
    leaked
}
