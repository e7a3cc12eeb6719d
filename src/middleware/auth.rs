//! Credentials at the door (`AUTH_API_KEYS_FILE`, `AUTH_JWKS_URL`): a request without a known
//! API key or a valid token is a 401 problem with `WWW-Authenticate`, before it is counted
//! against a quota or served. The health
//! routes, the documentation (Swagger UI, the OpenAPI document, the explore page) and CORS
//! preflights (answered further out) need none. The caller's name goes into the request's
//! extensions (for quotas) and its log line and trace (`caller`); the credential never does. A
//! token naming a key the replica has not fetched waits for one fetch of the provider's keys.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{Error, HttpMessage as _, ResponseError as _};

use crate::auth::{Authenticator, Caller, PendingCheck, Refusal, TokenRefusal, Verdict};
use crate::error::ApiError;

/// The middleware; `None` (with `Condition` off) when no credential is needed.
#[derive(Clone, Default)]
pub struct Authenticate(pub Option<Arc<Authenticator>>);

impl<S, B> Transform<S, ServiceRequest> for Authenticate
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = AuthService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(match &self.0 {
            Some(auth) => Ok(AuthService {
                service: Rc::new(service),
                auth: auth.clone(),
            }),
            None => Err(()),
        })
    }
}

pub struct AuthService<S> {
    service: Rc<S>,
    auth: Arc<Authenticator>,
}

impl<S, B> Service<ServiceRequest> for AuthService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = Authenticated<S>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if open(req.path()) {
            return Authenticated::Served {
                response: self.service.call(req),
            };
        }
        match self.auth.authenticate(req.headers()) {
            Verdict::Now(checked) => settle(&self.service, &self.auth, req, checked),
            Verdict::AfterFetch(check) => Authenticated::Checking {
                check,
                pending: Some((self.service.clone(), self.auth.clone(), req)),
            },
        }
    }
}

/// Serves `req` as its caller, or refuses it.
fn settle<S, B>(
    service: &Rc<S>,
    auth: &Authenticator,
    req: ServiceRequest,
    checked: Result<Caller, Refusal>,
) -> Authenticated<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    match checked {
        Ok(caller) => {
            tracing::Span::current().record("caller", &*caller.name);
            req.extensions_mut().insert(caller);
            Authenticated::Served {
                response: service.call(req),
            }
        }
        Err(refusal) => {
            let problem = match refusal {
                Refusal::Token(TokenRefusal::KeysUnavailable) => ApiError::KeysUnavailable {
                    retry_after_secs: auth.keys_retry_after_secs(),
                },
                refusal => ApiError::Unauthorized(refusal),
            };
            Authenticated::Refused {
                response: Some(req.into_response(problem.error_response())),
            }
        }
    }
}

/// Routes served without a credential.
fn open(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/swagger-ui" | "/explore")
        || path.starts_with("/swagger-ui/")
        || path.starts_with("/api-docs/")
        || path.starts_with("/explore/")
}

pin_project_lite::pin_project! {
    #[project = AuthenticatedProj]
    pub enum Authenticated<S>
    where
        S: Service<ServiceRequest>,
    {
        Served { #[pin] response: S::Future },
        Refused { response: Option<ServiceResponse> },
        // A token waiting for the provider's keys; then served or refused.
        Checking { check: PendingCheck, pending: Option<(Rc<S>, Arc<Authenticator>, ServiceRequest)> },
    }
}

impl<S, B> Future for Authenticated<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                AuthenticatedProj::Served { response } => {
                    return response
                        .poll(cx)
                        .map(|res| res.map(ServiceResponse::map_into_left_body));
                }
                AuthenticatedProj::Refused { response } => {
                    return Poll::Ready(match response.take() {
                        Some(res) => Ok(res.map_into_right_body()),
                        None => Err(actix_web::error::ErrorInternalServerError(
                            "a refusal was taken twice",
                        )),
                    });
                }
                AuthenticatedProj::Checking { check, pending } => {
                    let checked = std::task::ready!(check.as_mut().poll(cx));
                    let Some((service, auth, req)) = pending.take() else {
                        return Poll::Ready(Err(actix_web::error::ErrorInternalServerError(
                            "a request was authenticated twice",
                        )));
                    };
                    let next = settle(&service, &auth, req, checked);
                    self.set(next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::open;

    #[test]
    fn health_and_documentation_are_open_and_the_api_and_metrics_are_not() {
        for path in [
            "/livez",
            "/readyz",
            "/swagger-ui",
            "/swagger-ui/index.html",
            "/api-docs/openapi.json",
            "/explore",
            "/explore/explore.js",
        ] {
            assert!(open(path), "{path}");
        }
        for path in [
            "/vehicles/1/timestamp/now",
            "/vehicles/states",
            "/metrics",
            "/explorer",
            "/swagger-uix",
        ] {
            assert!(!open(path), "{path}");
        }
    }
}
