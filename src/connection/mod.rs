//! What one client connection may cost the replica, whatever the client sends: bounds that
//! actix-http's HTTP/1 dispatcher does not set, held by the connection's stream ([`Metered`])
//! and a middleware ([`ConnectionLimits`]) that share one [`Gate`] per connection.
//!
//! - **One request at a time.** The dispatcher decodes every request head in its 128 KiB read
//!   buffer at once, and each decoded head costs about 6.6 KB (a header map with room for 16
//!   headers): 100 connections pipelining GETs and never reading the answers held 170,000 heads,
//!   1.1 GB. The stream passes the dispatcher one request head, then the request's body
//!   (`Content-Length` bytes), then nothing until the request is answered. Requests are still
//!   answered in order on a keep-alive connection, as before: the dispatcher runs one at a time
//!   anyway; what it can no longer do is read ahead of its answers.
//! - **Answers a client does not read.** A write that makes no progress for `HTTP_SEND_TIMEOUT_MS`
//!   drops the connection (nginx's `send_timeout`), so a client that never reads holds neither
//!   memory nor a connection for long.
//! - **A body of unknown length.** A chunked body (`Transfer-Encoding`) is refused with 411 and
//!   the connection closed without reading it: it is the one body whose end the stream cannot see
//!   without parsing it, and no client of this API needs it (every body is a small JSON object).
//!   A `Content-Length` body not read to its end (a 408, a GET that takes none) closes the
//!   connection, as actix-http does by itself.
//! - **Requests and bytes per connection.** As nginx's `keepalive_requests`, the answer that
//!   reaches `HTTP_MAX_REQUESTS_PER_CONNECTION` requests or
//!   `HTTP_MAX_RESPONSE_BYTES_PER_CONNECTION` bytes of bodies says `Connection: close`.
//!
//! So one connection holds at most one request head (actix-http refuses one over 128 KiB with
//! 431), its body (`BATCH_MAX_BODY_BYTES`), the stream's 8 KiB read chunk, and the answers its
//! client has not read: the dispatcher stops taking answers past its 32 KiB write buffer, and
//! the stream reads nothing more meanwhile, so that is one answer more (docs/deployment.md,
//! *Memory*).

mod limits;
mod stream;

use std::cell::Cell;
use std::rc::Rc;
use std::task::Waker;

pub use limits::{ConnectionLimits, Guarded, LimitConnection};
pub use stream::Metered;

/// One connection's state, shared by its stream (which passes bytes to the dispatcher) and the
/// middleware (which sees each request start and end). Single-threaded: a connection lives on
/// one worker.
#[derive(Default)]
pub struct Gate {
    phase: Cell<Phase>,
    /// The task that found the gate closed, woken when it opens.
    reader: Cell<Option<Waker>>,
    requests: Cell<u32>,
    response_bytes: Cell<u64>,
}

/// Where a connection is in its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Bytes pass until a request head has ended.
    Head(Scan),
    /// A head was passed: nothing more until the dispatcher starts its request.
    Passed,
    /// The request's body: this many bytes (never 0: then it is `Answering`) still pass.
    Body(u64),
    /// The request is being answered: nothing passes until it is.
    Answering,
    /// The answer closes the connection: nothing passes again.
    Closing,
}

impl Default for Phase {
    fn default() -> Self {
        Phase::Head(Scan::default())
    }
}

/// Where the scan of a request head is: the end is its first empty line (RFC 9112 §2.1), with
/// `\r\n` or a bare `\n` ending lines; empty lines before the request line are skipped
/// (§2.2), as the dispatcher skips them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Scan {
    /// A byte of the request line has been seen.
    started: bool,
    /// The bytes since the last line's start: 0 (some text), 1 (`\n`), 2 (`\n\r`).
    after_newline: u8,
}

impl Gate {
    /// How many of `bytes` may pass to the dispatcher now (a prefix), the phase moved past them.
    fn pass(&self, bytes: &[u8]) -> usize {
        match self.phase.get() {
            Phase::Head(mut scan) => {
                for (i, &byte) in bytes.iter().enumerate() {
                    if scan.ends_with(byte) {
                        self.phase.set(Phase::Passed);
                        return i + 1;
                    }
                }
                self.phase.set(Phase::Head(scan));
                bytes.len()
            }
            Phase::Body(left) => {
                let passed = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                let left = left - passed as u64;
                self.phase.set(if left == 0 {
                    Phase::Answering
                } else {
                    Phase::Body(left)
                });
                passed
            }
            Phase::Passed | Phase::Answering | Phase::Closing => 0,
        }
    }

    /// Whether nothing may pass until the middleware moves the phase on.
    fn shut(&self) -> bool {
        matches!(
            self.phase.get(),
            Phase::Passed | Phase::Answering | Phase::Closing
        )
    }

    /// The task to wake when the gate opens.
    fn wait(&self, waker: &Waker) {
        self.reader.set(Some(waker.clone()));
    }

    fn set(&self, phase: Phase) {
        self.phase.set(phase);
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }

    /// The dispatcher started a request whose body is `body` bytes long.
    fn started(&self, body: u64) {
        self.set(if body == 0 {
            Phase::Answering
        } else {
            Phase::Body(body)
        });
    }

    /// The request was answered: the next head may come, unless part of the body was never read
    /// (the dispatcher then closes the connection) or `close` is set.
    fn answered(&self, close: bool) {
        let unread = matches!(self.phase.get(), Phase::Body(_));
        self.set(if close || unread {
            Phase::Closing
        } else {
            Phase::Head(Scan::default())
        });
    }
}

impl Scan {
    /// Takes `byte`; true when it ends the head.
    fn ends_with(&mut self, byte: u8) -> bool {
        match byte {
            b'\n' if self.started && self.after_newline > 0 => return true,
            b'\n' => self.after_newline = 1,
            b'\r' if self.after_newline == 1 => self.after_newline = 2,
            b'\r' => {}
            _ => {
                self.started = true;
                self.after_newline = 0;
            }
        }
        false
    }
}

/// `HttpServiceBuilder::on_connect_ext`: the connection's gate, for the middleware to find in
/// the connection's data.
pub fn on_connect<S>(io: &Metered<S>, data: &mut actix_web::dev::Extensions) {
    data.insert(io.gate());
}

/// The gate of a request's connection.
fn gate_of(req: &actix_web::dev::ServiceRequest) -> Option<Rc<Gate>> {
    req.conn_data::<Rc<Gate>>().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(gate: &Gate, bytes: &[u8]) -> usize {
        gate.pass(bytes)
    }

    #[test]
    fn a_head_passes_up_to_its_empty_line_and_nothing_after_until_its_request_starts() {
        let gate = Gate::default();
        let two = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n";

        let first = passed(&gate, two);

        assert_eq!(&two[..first], b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(passed(&gate, &two[first..]), 0);
        gate.started(0);
        assert_eq!(passed(&gate, &two[first..]), 0, "answering");
        gate.answered(false);
        assert_eq!(passed(&gate, &two[first..]), two.len() - first);
    }

    #[test]
    fn a_head_split_across_reads_bare_newlines_and_leading_empty_lines_are_understood() {
        for (chunks, head_len) in [
            (&[&b"GET / HTTP/1.1\r"[..], b"\n", b"\r", b"\nGET"][..], 18),
            (&[&b"GET / HTTP/1.1\nhost: x\n\nGET"[..]][..], 24),
            (&[&b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"[..]][..], 22),
        ] {
            let gate = Gate::default();
            let mut total = 0;
            for chunk in chunks {
                total += passed(&gate, chunk);
            }
            assert_eq!(total, head_len, "{chunks:?}");
            assert_eq!(gate.phase.get(), Phase::Passed);
        }
    }

    #[test]
    fn exactly_a_body_s_length_passes_then_nothing_until_it_is_answered() {
        let gate = Gate::default();
        passed(&gate, b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n");
        gate.started(5);

        assert_eq!(passed(&gate, b"abc"), 3);
        assert_eq!(passed(&gate, b"defGET"), 2);
        assert_eq!(passed(&gate, b"GET"), 0);
        gate.answered(false);
        assert_eq!(passed(&gate, b"GET"), 3);
    }

    #[test]
    fn a_body_left_unread_or_an_answer_that_closes_lets_nothing_more_pass() {
        let gate = Gate::default();
        passed(&gate, b"POST / HTTP/1.1\r\n\r\n");
        gate.started(10);
        passed(&gate, b"abc");
        gate.answered(false);
        assert_eq!(passed(&gate, b"defghij"), 0);

        let gate = Gate::default();
        passed(&gate, b"GET / HTTP/1.1\r\n\r\n");
        gate.started(0);
        gate.answered(true);
        assert_eq!(passed(&gate, b"GET"), 0);
        assert!(gate.shut());
    }
}
