//! Credentials at the door (`AUTH_API_KEYS_FILE`): a request without a known one is a 401
//! problem with `WWW-Authenticate`, before it is counted against a quota or served. The health
//! routes, the documentation (Swagger UI, the OpenAPI document, the explore page) and CORS
//! preflights (answered further out) need none. The caller's name goes into the request's
//! extensions (for quotas) and its log line and trace (`caller`); the key never does.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{Error, HttpMessage as _, ResponseError as _};

use crate::auth::{Authenticator, Refusal};
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
                service,
                auth: auth.clone(),
            }),
            None => Err(()),
        })
    }
}

pub struct AuthService<S> {
    service: S,
    auth: Arc<Authenticator>,
}

impl<S, B> Service<ServiceRequest> for AuthService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = Authenticated<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if open(req.path()) {
            return Authenticated::Served {
                response: self.service.call(req),
            };
        }
        match self.auth.authenticate(req.headers()) {
            Ok(caller) => {
                tracing::Span::current().record("caller", &*caller.name);
                req.extensions_mut().insert(caller);
                Authenticated::Served {
                    response: self.service.call(req),
                }
            }
            Err(refusal) => {
                let problem = ApiError::Unauthorized {
                    presented: refusal == Refusal::Unknown,
                };
                Authenticated::Refused {
                    response: Some(req.into_response(problem.error_response())),
                }
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
    pub enum Authenticated<F> {
        Served { #[pin] response: F },
        Refused { response: Option<ServiceResponse> },
    }
}

impl<F, B> Future for Authenticated<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody + 'static,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthenticatedProj::Served { response } => response
                .poll(cx)
                .map(|res| res.map(ServiceResponse::map_into_left_body)),
            AuthenticatedProj::Refused { response } => Poll::Ready(match response.take() {
                Some(res) => Ok(res.map_into_right_body()),
                None => Err(actix_web::error::ErrorInternalServerError(
                    "a refusal was taken twice",
                )),
            }),
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
