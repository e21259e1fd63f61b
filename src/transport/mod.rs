//! Transports under the protocols. `streamSettings` builds a [`Listener`] and a [`Dialer`]; both yield
//! [`BoxStream`]s, so protocol code never knows which transport it runs on.
//!
//! A listener's `accept` only takes the TCP connection (cheap, cancel-safe); the transport's own
//! handshake (TLS, WebSocket upgrade, http header) runs in [`Incoming::handshake`], in the connection's
//! task under the caller's deadline, never in the accept loop.

pub mod settings;
pub mod sockopt;
pub mod tcp;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::debug;

pub use settings::{Security, StreamSettings, TransportKind};
pub use sockopt::{Keepalive, SocketOpts};
pub use tcp::Resolve;

use crate::proxy::BoxStream;
use crate::session::Address;

/// A connection as an inbound receives it: the stream after the transport's handshake, and where it
/// came from.
pub struct Accepted {
    /// The byte stream the protocol speaks over.
    pub stream: BoxStream,
    /// Source address (the TCP peer; the forwarded source once PROXY protocol or X-Forwarded-For apply).
    pub peer: SocketAddr,
    /// The local address the connection arrived on.
    pub local: SocketAddr,
    /// The original destination of a redirected connection (SO_ORIGINAL_DST), when the listener was
    /// asked for it.
    pub original_dst: Option<SocketAddr>,
}

/// What an accepted connection goes through before the protocol sees it.
#[derive(Debug)]
struct ServerStack {
    opts: SocketOpts,
    original_dst: bool,
}

/// A bound listener of one inbound port.
pub struct Listener {
    tcp: TcpListener,
    stack: Arc<ServerStack>,
}

impl Listener {
    /// Binds `addr` with `settings`' socket options. `original_dst` asks for SO_ORIGINAL_DST on each
    /// accepted connection (dokodemo-door `followRedirect`).
    pub fn bind(addr: SocketAddr, settings: &StreamSettings, original_dst: bool) -> io::Result<Listener> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // As Go's listener: a restarted oxray can bind while old connections sit in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        settings.sockopt.before_listen(&socket);
        socket.bind(addr)?;
        let tcp = socket.listen(1024)?;
        Ok(Listener { tcp, stack: Arc::new(ServerStack { opts: settings.sockopt, original_dst }) })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Takes the next TCP connection. Cancel-safe; does no transport handshake.
    pub async fn accept(&self) -> io::Result<Incoming> {
        let (tcp, peer) = self.tcp.accept().await?;
        Ok(Incoming { tcp, peer, stack: self.stack.clone() })
    }
}

/// A TCP connection taken by a [`Listener`], before its transport handshake.
pub struct Incoming {
    tcp: TcpStream,
    peer: SocketAddr,
    stack: Arc<ServerStack>,
}

impl Incoming {
    /// The TCP peer.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Runs the transport's server handshake. Callers bound it with a deadline.
    pub async fn handshake(self) -> io::Result<Accepted> {
        let Incoming { tcp, peer, stack } = self;
        stack.opts.established(&tcp);
        let local = tcp.local_addr()?;
        let original_dst = if stack.original_dst { tcp::original_dst(&tcp) } else { None };
        Ok(Accepted { stream: Box::new(tcp), peer, local, original_dst })
    }
}

/// Default per-attempt connect deadline (4.34's system dialer uses 16 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(16);

/// Dials streams for one outbound: its `streamSettings`, `sendThrough` and address family.
#[derive(Debug, Clone)]
pub struct Dialer {
    opts: SocketOpts,
    bind: Option<IpAddr>,
    family: Resolve,
    connect_timeout: Duration,
    retry_waits: &'static [Duration],
}

impl Dialer {
    /// A dialer for `settings`, binding `bind` (`sendThrough`) when set; one attempt per dial.
    pub fn new(settings: &StreamSettings, bind: Option<IpAddr>) -> Self {
        Dialer {
            opts: settings.sockopt,
            bind,
            family: Resolve::Any,
            connect_timeout: CONNECT_TIMEOUT,
            retry_waits: &[],
        }
    }

    /// Resolves domains to this family only.
    pub fn with_family(mut self, family: Resolve) -> Self {
        self.family = family;
        self
    }

    /// Pauses before the 2nd, 3rd... attempt of a dial (empty: one attempt).
    pub fn with_retries(mut self, waits: &'static [Duration]) -> Self {
        self.retry_waits = waits;
        self
    }

    /// Deadline of each connect attempt.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The address family domains are resolved to.
    pub fn family(&self) -> Resolve {
        self.family
    }

    /// Connects to `addr:port` and runs the transport's client handshake.
    pub async fn dial(&self, addr: &Address, port: u16) -> io::Result<BoxStream> {
        let tcp = self.dial_tcp(addr, port).await?;
        Ok(Box::new(tcp))
    }

    /// The TCP connection under a dial, with the socket options set.
    async fn dial_tcp(&self, addr: &Address, port: u16) -> io::Result<TcpStream> {
        let mut last_err = None;
        for attempt in 0..=self.retry_waits.len() {
            if attempt > 0 {
                tokio::time::sleep(self.retry_waits[attempt - 1]).await;
            }
            match tcp::dial_once(addr, port, self.bind, self.family, &self.opts, self.connect_timeout).await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    debug!(%addr, port, attempt, "dial failed: {e}");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("dial failed")))
    }
}
