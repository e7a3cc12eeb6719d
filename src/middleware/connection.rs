//! What one connection may cost: bounds that actix-http's HTTP/1 dispatcher does not set.
//!
//! - **Responses queued for a client that does not read.** The dispatcher reads pipelined
//!   requests and writes their answers into a buffer that grows as long as the client sends and
//!   never reads (100 such connections took a replica to 1.23 GB). Like nginx's
//!   `keepalive_requests`, a connection here answers at most `HTTP_MAX_REQUESTS_PER_CONNECTION`
//!   requests and `HTTP_MAX_RESPONSE_BYTES_PER_CONNECTION` bytes of bodies; the answer that
//!   reaches either says `Connection: close`. A request that comes after it (a client
//!   pipelining past the close, which RFC 9112 §9.6 says the server must not answer) is not
//!   processed: the connection is dropped at once. So what is queued for one connection is at
//!   most the byte budget plus one answer.
//! - **A body that is not read to its end.** The dispatcher drains a chunked body the handler
//!   did not read for as long as the client sends it (a GET with an endless chunked body, or a
//!   batch answered 408, was held for minutes while gigabytes were discarded). Here the request's
//!   body is held until the answer is written: unread, the dispatcher closes the connection
//!   after the answer, within `HTTP_CLIENT_DISCONNECT_TIMEOUT_MS`; a body that was read to its
//!   end leaves the connection as it was.
//!
//! A request without a body (every GET a front end sends) costs one counter update here: the
//! budget is kept per connection, in the connection's own data ([`on_connect`]).

use std::cell::{Cell, RefCell};
use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::HttpMessage as _;
use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Extensions, Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::error::PayloadError;
use actix_web::http::ConnectionType;
use actix_web::http::header;
use actix_web::web::Bytes;
use futures_util::Stream;

/// The bounds of one connection (`HTTP_MAX_REQUESTS_PER_CONNECTION`,
/// `HTTP_MAX_RESPONSE_BYTES_PER_CONNECTION`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_requests: u32,
    pub max_response_bytes: u64,
}

/// What a connection has used so far: put in its data when it opens.
#[derive(Debug, Default)]
pub struct Budget {
    requests: Cell<u32>,
    response_bytes: Cell<u64>,
    /// An answer said `Connection: close`: nothing more is answered here.
    closed: Cell<bool>,
}

/// `HttpServer::on_connect`: every connection starts with a fresh budget.
pub fn on_connect(_: &dyn std::any::Any, data: &mut Extensions) {
    data.insert(Rc::new(Budget::default()));
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
        let budget = req.conn_data::<Rc<Budget>>().cloned();
        if let Some(budget) = &budget {
            if budget.closed.get() {
                tracing::warn!(
                    peer = %req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default(),
                    "a request arrived after Connection: close (pipelined past it); the connection is dropped"
                );
                return Limited::Refused {
                    response: Some(req.into_response(actix_web::HttpResponse::Ok().finish())),
                };
            }
            budget.requests.set(budget.requests.get().saturating_add(1));
        }
        let payload = has_body(&req).then(|| {
            let held = Rc::new(Held {
                payload: RefCell::new(req.take_payload()),
                ended: Cell::new(false),
            });
            let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
                Box::pin(HeldStream(held.clone()));
            req.set_payload(Payload::from(stream));
            held
        });
        Limited::Called {
            response: self.service.call(req),
            budget,
            payload,
            limits: self.limits,
        }
    }
}

/// A request with a body: a length above zero, or chunked.
fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

/// The request's body, shared by the handler (which reads it) and the answer (which holds it
/// until written, so the dispatcher sees whether it was read to its end).
struct Held {
    payload: RefCell<Payload>,
    ended: Cell<bool>,
}

struct HeldStream(Rc<Held>);

impl Stream for HeldStream {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let held = &self.0;
        let polled = Pin::new(&mut *held.payload.borrow_mut()).poll_next(cx);
        if matches!(polled, Poll::Ready(None)) {
            held.ended.set(true);
        }
        polled
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, then the budget's verdict on it.
    #[project = LimitedProj]
    pub enum Limited<F> {
        Called {
            #[pin]
            response: F,
            budget: Option<Rc<Budget>>,
            payload: Option<Rc<Held>>,
            limits: ConnectionLimits,
        },
        Refused { response: Option<ServiceResponse> },
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
                Some(response) => Ok(response.map_body(|_, _| Guarded::Dropped)),
                None => Err(actix_web::error::ErrorInternalServerError(Dropped)),
            }),
            LimitedProj::Called {
                response,
                budget,
                payload,
                limits,
            } => {
                let mut res = match response.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(res) => res?,
                };
                let unread = payload.take().filter(|held| !held.ended.get());
                let mut close = unread.is_some();
                if let Some(budget) = budget.as_ref() {
                    let body = match res.response().body().size() {
                        BodySize::Sized(len) => len,
                        _ => 0,
                    };
                    let bytes = budget.response_bytes.get().saturating_add(body);
                    budget.response_bytes.set(bytes);
                    close |= budget.requests.get() >= limits.max_requests
                        || bytes >= limits.max_response_bytes;
                    if close {
                        budget.closed.set(true);
                    }
                }
                if close {
                    res.response_mut()
                        .head_mut()
                        .set_connection_type(ConnectionType::Close);
                }
                Poll::Ready(Ok(res.map_body(|_, body| match unread {
                    Some(held) => Guarded::Holding { body, _held: held },
                    None => Guarded::Plain { body },
                })))
            }
        }
    }
}

/// Why a connection was dropped: the dispatcher logs the body's error as it closes.
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped: the client sent a request after Connection: close")
    }
}

impl StdError for Dropped {}

pin_project_lite::pin_project! {
    /// An answer's body: as it is, holding the unread request body until it is written, or
    /// none at all, failing so that the dispatcher drops the connection.
    #[project = GuardedProj]
    pub enum Guarded<B> {
        Plain { #[pin] body: B },
        // `_held` is never read: it is kept alive until the answer is written.
        Holding { #[pin] body: B, _held: Rc<Held> },
        Dropped,
    }
}

impl<B: MessageBody> MessageBody for Guarded<B> {
    type Error = Box<dyn StdError>;

    fn size(&self) -> BodySize {
        match self {
            Guarded::Plain { body } | Guarded::Holding { body, .. } => body.size(),
            Guarded::Dropped => BodySize::Stream,
        }
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        match self.project() {
            GuardedProj::Plain { body } | GuardedProj::Holding { body, .. } => {
                body.poll_next(cx).map_err(Into::into)
            }
            GuardedProj::Dropped => Poll::Ready(Some(Err(Box::new(Dropped)))),
        }
    }

    fn try_into_bytes(self) -> Result<Bytes, Self> {
        match self {
            // Turned into bytes, the answer would no longer hold the unread body.
            Guarded::Plain { body } => body
                .try_into_bytes()
                .map_err(|body| Guarded::Plain { body }),
            other => Err(other),
        }
    }
}
