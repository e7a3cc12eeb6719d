//! A client's TCP stream as the dispatcher sees it: read through the connection's [`Gate`], and
//! written with a deadline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Gate;

/// Bytes read from the socket at a time: a request head of a front end, with room to spare.
/// A longer head (up to actix-http's 128 KiB) takes several reads.
const READ_CHUNK: usize = 8 * 1024;

/// The stream of one connection.
pub struct Metered<S> {
    io: S,
    gate: Rc<Gate>,
    /// What was read from the socket: `chunk[at..filled]` is not yet passed to the dispatcher.
    chunk: Box<[u8; READ_CHUNK]>,
    at: usize,
    filled: usize,
    /// `HTTP_SEND_TIMEOUT_MS`.
    send_timeout: Duration,
    /// Set while a write makes no progress: when it fires, the connection is dropped.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Metered<S> {
    pub fn new(io: S, send_timeout: Duration) -> Self {
        Self {
            io,
            gate: Rc::new(Gate::default()),
            chunk: Box::new([0; READ_CHUNK]),
            at: 0,
            filled: 0,
            send_timeout,
            stalled: None,
        }
    }

    pub(super) fn gate(&self) -> Rc<Gate> {
        self.gate.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.gate.shut() {
            // Nothing is read from the socket meanwhile: the client's data waits in the
            // kernel, and TCP's own window holds it back.
            this.gate.wait(cx.waker());
            return Poll::Pending;
        }
        if this.at == this.filled {
            let mut chunk = ReadBuf::new(&mut this.chunk[..]);
            let read = Pin::new(&mut this.io).poll_read(cx, &mut chunk);
            let filled = chunk.filled().len();
            match read {
                // The end of the stream.
                Poll::Ready(Ok(())) if filled == 0 => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => (this.at, this.filled) = (0, filled),
                other => return other,
            }
        }
        let available = &this.chunk[this.at..this.filled];
        let passed = this
            .gate
            .pass(&available[..available.len().min(buf.remaining())]);
        if passed == 0 {
            this.gate.wait(cx.waker());
            return Poll::Pending;
        }
        buf.put_slice(&available[..passed]);
        this.at += passed;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => {
                let send_timeout = this.send_timeout;
                let stalled = this
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
                if stalled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing for HTTP_SEND_TIMEOUT_MS; connection dropped",
                    )));
                }
                Poll::Pending
            }
            ready => {
                this.stalled = None;
                ready
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
