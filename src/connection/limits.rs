//! The middleware half of a connection's bounds: it tells the [`Gate`] when a request starts
//! (and how long its body is) and when it is answered, refuses a chunked body, and closes a
//! connection that has answered its share.

use std::error::Error as StdError;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::ConnectionType;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpMessage as _, ResponseError as _};

use super::{Gate, gate_of};
use crate::error::ApiError;

/// `HTTP_MAX_REQUESTS_PER_CONNECTION` and `HTTP_MAX_RESPONSE_BYTES_PER_CONNECTION`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_requests: u32,
    pub max_response_bytes: u64,
}

impl<S, B> Transform<S, ServiceRequest> for ConnectionLimits
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<Guarded<B>>;
    type Error = actix_web::Error;
    type Transform = LimitConnection<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(LimitConnection {
            service,
            limits: *self,
        }))
    }
}

pub struct LimitConnection<S> {
    service: S,
    limits: ConnectionLimits,
}

impl<S, B> Service<ServiceRequest> for LimitConnection<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<Guarded<B>>;
    type Error = actix_web::Error;
    type Future = Limited<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        // Without a gate (a connection not made by `startup`, as in unit tests) nothing is bounded.
        let gate = gate_of(&req);
        if let Some(gate) = &gate {
            gate.requests.set(gate.requests.get().saturating_add(1));
            if req.headers().contains_key(header::TRANSFER_ENCODING) {
                // Held until the answer is written: the dispatcher then sees a body neither read
                // nor dropped, and closes the connection instead of draining it.
                let payload = req.take_payload();
                gate.answered(true);
                let mut response = ApiError::LengthRequired.error_response();
                response
                    .head_mut()
                    .set_connection_type(ConnectionType::Close);
                return Limited::Refused {
                    response: Some((req.into_response(response), payload)),
                };
            }
            gate.started(content_length(&req));
        }
        Limited::Called {
            response: self.service.call(req),
            gate,
            limits: self.limits,
        }
    }
}

/// The request's `Content-Length` (the dispatcher has refused one that is not a number).
fn content_length(req: &ServiceRequest) -> u64 {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pin_project_lite::pin_project! {
    /// The inner service's answer, then the connection's verdict on it.
    #[project = LimitedProj]
    pub enum Limited<F> {
        Called {
            #[pin]
            response: F,
            gate: Option<Rc<Gate>>,
            limits: ConnectionLimits,
        },
        Refused { response: Option<(ServiceResponse, Payload)> },
    }
}

impl<F, B> Future for Limited<F>
where
    F: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    B: MessageBody + 'static,
{
    type Output = Result<ServiceResponse<Guarded<B>>, actix_web::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitedProj::Refused { response } => Poll::Ready(match response.take() {
                Some((response, payload)) => Ok(response.map_body(|_, body| Guarded::Refused {
                    body,
                    _payload: payload,
                })),
                // Polled again after it was ready: never, by the Future contract.
                None => Err(actix_web::error::ErrorInternalServerError(
                    "a refused request's answer was taken twice",
                )),
            }),
            LimitedProj::Called {
                response,
                gate,
                limits,
            } => {
                let mut res = match response.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(res) => res?,
                };
                if let Some(gate) = gate.as_ref() {
                    let body = match res.response().body().size() {
                        BodySize::Sized(len) => len,
                        _ => 0,
                    };
                    let bytes = gate.response_bytes.get().saturating_add(body);
                    gate.response_bytes.set(bytes);
                    let close = gate.requests.get() >= limits.max_requests
                        || bytes >= limits.max_response_bytes;
                    if close {
                        res.response_mut()
                            .head_mut()
                            .set_connection_type(ConnectionType::Close);
                    }
                    gate.answered(close);
                }
                Poll::Ready(Ok(res.map_body(|_, body| Guarded::Plain { body })))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An answer's body: as the routes made it, or a refusal that holds the request's unread
    /// body until it is written (`_payload` is never read: it is kept alive).
    #[project = GuardedProj]
    pub enum Guarded<B> {
        Plain { #[pin] body: B },
        Refused { #[pin] body: BoxBody, _payload: Payload },
    }
}

impl<B: MessageBody> MessageBody for Guarded<B> {
    type Error = Box<dyn StdError>;

    fn size(&self) -> BodySize {
        match self {
            Guarded::Plain { body } => body.size(),
            Guarded::Refused { body, .. } => body.size(),
        }
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        match self.project() {
            GuardedProj::Plain { body } => body.poll_next(cx).map_err(Into::into),
            GuardedProj::Refused { body, .. } => body.poll_next(cx).map_err(Into::into),
        }
    }

    fn try_into_bytes(self) -> Result<Bytes, Self> {
        match self {
            Guarded::Plain { body } => body
                .try_into_bytes()
                .map_err(|body| Guarded::Plain { body }),
            // Turned into bytes, the refusal would no longer hold the unread body.
            refused => Err(refused),
        }
    }
}
