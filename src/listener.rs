//! A port taken at start, before anything else is touched, and listened on only when the server
//! is about to accept.
//!
//! Binding early makes a port in use fail the start at once, before a database is created or
//! migrated. Listening early would be worse than not binding early: while start-up runs
//! (migrations, a seed, a slow PostgreSQL), connections would be accepted into the backlog and
//! hang, where a balancer (nginx in compose) expects them refused so it can try the next
//! replica at once. So the socket is bound without `listen`, which fails on a port another
//! process listens on and refuses connections, and `listen` comes just before the server runs.
//! (A second process binding the same port meanwhile, with `SO_REUSEADDR` too, is not kept out;
//! then `listen` fails instead, as late as binding used to.)

use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

/// Connections the kernel queues before they are accepted: actix-web's own default.
const BACKLOG: i32 = 1024;

/// A bound socket, not yet listening.
pub struct Reserved {
    socket: Socket,
    addr: SocketAddr,
    /// The setting that named the address, for messages.
    setting: &'static str,
}

impl Reserved {
    /// Binds `addr` (port 0 picks a free one), as `std`'s and actix's own binds do (with
    /// `SO_REUSEADDR`, so a restart never waits for the last run's closed connections).
    pub fn bind(addr: SocketAddr, setting: &'static str) -> anyhow::Result<Self> {
        let (socket, addr) =
            bound(addr).with_context(|| format!("cannot listen on {addr} ({setting})"))?;
        Ok(Self {
            socket,
            addr,
            setting,
        })
    }

    /// The address bound: with port 0, the port picked.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening: from now on connections are queued for the server.
    pub fn listen(self) -> anyhow::Result<TcpListener> {
        let Self {
            socket,
            addr,
            setting,
        } = self;
        socket
            .listen(BACKLOG)
            .with_context(|| format!("cannot listen on {addr} ({setting})"))?;
        Ok(socket.into())
    }
}

/// A TCP socket bound to `addr`, and the address it got.
fn bound(addr: SocketAddr) -> std::io::Result<(Socket, SocketAddr)> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an IP address"))?;
    Ok((socket, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_port_refuses_connections_until_it_listens() {
        let reserved = Reserved::bind("127.0.0.1:0".parse().expect("an address"), "BIND_ADDR")
            .expect("a free port");
        let addr = reserved.local_addr();

        let while_reserved = std::net::TcpStream::connect(addr);
        let listener = reserved.listen().expect("listen");
        let once_listening = std::net::TcpStream::connect(addr);

        assert_ne!(addr.port(), 0);
        assert_eq!(
            while_reserved.map(drop).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused)
        );
        assert!(once_listening.is_ok());
        drop(listener);
    }

    #[test]
    fn a_port_another_process_listens_on_is_refused_with_the_setting_named() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = taken.local_addr().expect("its address");

        let error = Reserved::bind(addr, "BIND_ADDR").err().expect("refused");

        let message = format!("{error:#}");
        assert!(
            message.starts_with(&format!("cannot listen on {addr} (BIND_ADDR): ")),
            "{message}"
        );
        assert!(message.contains("in use"), "{message}");
    }
}
