//! Quotas at the door: each request takes one token of its client's budget ([`Quota`]) before
//! anything else is done for it; a batch takes one more per further lookup in its handler. Over
//! budget: a 429 problem with `Retry-After`. Every answer says where the client stands, in the
//! IETF's `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers).
//! Health routes and `/metrics` are not counted: probes and scrapers must never be turned away.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{Error, HttpMessage as _, ResponseError as _};
use futures_util::future::LocalBoxFuture;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::quota::{ClientId, Quota, Verdict};

/// The middleware; `None` (with `Condition` off) when quotas are off.
#[derive(Clone, Default)]
pub struct Quotas(pub Option<Arc<Quota>>);

/// Put in a request's extensions once it is charged: who it counts against, for a handler that
/// charges more (a batch).
#[derive(Debug, Clone)]
pub struct Charged(pub ClientId);

/// Put in a response's extensions by a handler that charged more: what the client was told
/// last, for the `RateLimit` field.
#[derive(Debug, Clone, Copy)]
pub struct LastVerdict(pub Verdict);

impl<S, B> Transform<S, ServiceRequest> for Quotas
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = QuotaService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(match &self.0 {
            Some(quota) => Ok(QuotaService {
                service: Rc::new(service),
                quota: quota.clone(),
            }),
            None => Err(()),
        })
    }
}

pub struct QuotaService<S> {
    service: Rc<S>,
    quota: Arc<Quota>,
}

impl<S, B> Service<ServiceRequest> for QuotaService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = Counted<S::Future, B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if exempt(req.path()) {
            return Counted::Uncounted {
                response: self.service.call(req),
            };
        }
        // An authenticated caller counts by its name, wherever it calls from.
        let caller = req.extensions().get::<Caller>().map(|caller| {
            if caller.by_token {
                ClientId::Subject(caller.name.clone())
            } else {
                ClientId::Key(caller.name.clone())
            }
        });
        let Some(client) = caller.or_else(|| ClientId::of(&req, self.quota.trusted())) else {
            return Counted::Uncounted {
                response: self.service.call(req),
            };
        };
        // Almost always decided here, from this replica's lease, with no future boxed; Redis
        // is asked (boxed) about once per lease.
        match self.quota.take_held(&client, 1) {
            Ok(verdict) => admit(&self.service, &self.quota, req, client, verdict),
            Err(lease) => {
                let service = self.service.clone();
                let quota = self.quota.clone();
                Counted::Asking {
                    asking: Box::pin(async move {
                        let verdict = quota.take_from_redis(&client, 1, &lease).await;
                        admit(&service, &quota, req, client, verdict).await
                    }),
                }
            }
        }
    }
}

/// Serves `req` if `verdict` allows it, else refuses it with a 429.
fn admit<S, B>(
    service: &Rc<S>,
    quota: &Arc<Quota>,
    req: ServiceRequest,
    client: ClientId,
    verdict: Verdict,
) -> Counted<S::Future, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    if !verdict.allowed {
        let mut res = refusal(quota, &verdict);
        add_fields(res.headers_mut(), quota, &verdict);
        return Counted::Refused {
            response: Some(req.into_response(res).map_into_right_body()),
        };
    }
    req.extensions_mut().insert(Charged(client));
    Counted::Served {
        response: service.call(req),
        quota: quota.clone(),
        verdict,
    }
}

/// The answer of a counted request, with the `RateLimit` fields of what the client was told
/// last (a batch's handler charges more, and says so in the response's extensions).
fn served<B: MessageBody + 'static>(
    mut res: ServiceResponse<B>,
    quota: &Quota,
    verdict: Verdict,
) -> ServiceResponse<EitherBody<B>> {
    let verdict = res
        .response()
        .extensions()
        .get::<LastVerdict>()
        .map_or(verdict, |last| last.0);
    add_fields(res.headers_mut(), quota, &verdict);
    res.map_into_left_body()
}

type Asking<B> = LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<B>>, Error>>;

pin_project_lite::pin_project! {
    #[project = CountedProj]
    pub enum Counted<F, B> {
        // A health route or /metrics, or a request whose client cannot be told.
        Uncounted { #[pin] response: F },
        Served { #[pin] response: F, quota: Arc<Quota>, verdict: Verdict },
        Refused { response: Option<ServiceResponse<EitherBody<B>>> },
        // Redis asked first (the rare path, boxed).
        Asking { asking: Asking<B> },
    }
}

impl<F, B> Future for Counted<F, B>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody + 'static,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CountedProj::Uncounted { response } => response
                .poll(cx)
                .map(|res| res.map(ServiceResponse::map_into_left_body)),
            CountedProj::Served {
                response,
                quota,
                verdict,
            } => response
                .poll(cx)
                .map(|res| res.map(|res| served(res, quota, *verdict))),
            CountedProj::Refused { response } => Poll::Ready(response.take().ok_or_else(|| {
                actix_web::error::ErrorInternalServerError("a refusal was taken twice")
            })),
            CountedProj::Asking { asking } => asking.as_mut().poll(cx),
        }
    }
}

/// Routes that are never counted.
fn exempt(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/metrics")
}

/// The 429 of a request over its client's budget.
pub fn refusal(quota: &Quota, verdict: &Verdict) -> actix_web::HttpResponse {
    let rate = quota.rate();
    ApiError::RateLimited {
        rps: rate.per_second,
        burst: rate.burst,
        retry_after_secs: whole_secs(verdict.retry_after).max(1),
    }
    .error_response()
}

/// `RateLimit-Policy` and `RateLimit`: the bucket's size over its window, and what is left of
/// it with the seconds until it is full again.
pub fn add_fields(headers: &mut HeaderMap, quota: &Quota, verdict: &Verdict) {
    headers.insert(
        HeaderName::from_static("ratelimit-policy"),
        quota.policy().clone(),
    );
    // Written once into the buffer the header keeps (no copy into a second one).
    let mut field = Vec::with_capacity(40);
    field.extend_from_slice(b"\"default\";r=");
    field.extend_from_slice(itoa::Buffer::new().format(verdict.remaining).as_bytes());
    field.extend_from_slice(b";t=");
    field.extend_from_slice(
        itoa::Buffer::new()
            .format(whole_secs(verdict.reset))
            .as_bytes(),
    );
    if let Ok(value) = HeaderValue::from_maybe_shared(actix_web::web::Bytes::from(field)) {
        headers.insert(HeaderName::from_static("ratelimit"), value);
    }
}

/// Seconds, rounded up: a client told to wait never comes back too early.
fn whole_secs(duration: std::time::Duration) -> u32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_rounded_up_and_health_is_never_counted() {
        use std::time::Duration;
        assert_eq!(whole_secs(Duration::ZERO), 0);
        assert_eq!(whole_secs(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs(Duration::from_millis(1000)), 1);
        assert_eq!(whole_secs(Duration::from_millis(1001)), 2);
        for path in ["/livez", "/readyz", "/metrics"] {
            assert!(exempt(path));
        }
        assert!(!exempt("/vehicles/1/timestamp/now"));
    }
}
