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

    /// The socket, for [`serve_carrier`].
    pub fn carrier(&self) -> Carrier {
        Carrier {
            #[cfg(unix)]
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.tcp),
            opts: self.stack.opts,
        }
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

/// Default per-attempt connect deadline. 4.34's system dialer waits 16 s; on a path that answers, the
/// SYN-ACK comes within one round trip, and a lost SYN is sent again after 1 s and 3 s, so 4 s covers
/// two lost SYNs. Past that the path is black-holed: a caller that retries (VMess: 4 attempts, ~16 s in
/// all, as long as 4.34's one attempt) sends its next SYN at most 2 s after the last, so a server that
/// comes back is reached within about 2 s instead of waiting out the kernel's 2-minute SYN retries.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// What a reverse bridge asks of the dials it makes for a tunnel (see [`dial_tunnel`]).
#[derive(Debug, Clone, Copy)]
pub struct TunnelDial {
    /// Per-attempt connect deadline of the tunnel's dials.
    pub connect_timeout: Duration,
}

tokio::task_local! {
    /// Set while a bridge dials a tunnel. The dial goes through the dispatcher and whatever outbound
    /// routing picks (VMess, possibly wrapped): a scope reaches that outbound's [`Dialer`] without every
    /// outbound knowing about tunnels.
    static TUNNEL_DIAL: TunnelDial;
}

/// Runs `fut` (a bridge's tunnel dial) so that every [`Dialer`] dial inside it, in this task, sets the
/// tunnel's socket options ([`SocketOpts::tunnel`]) and uses `dial`'s connect deadline.
pub async fn dial_tunnel<F: Future>(dial: TunnelDial, fut: F) -> F::Output {
    TUNNEL_DIAL.scope(dial, fut).await
}

/// The TCP socket an accepted connection arrived on, known to the task serving it (see
/// [`serve_carrier`]).
#[derive(Debug, Clone, Copy)]
pub struct Carrier {
    #[cfg(unix)]
    fd: std::os::fd::RawFd,
    opts: SocketOpts,
}

tokio::task_local! {
    /// Set while a task serves one accepted connection: the portal learns only deep inside the inbound
    /// (after VMess and routing) that the connection is a tunnel, and gives it the tunnel's options.
    static CARRIER: Carrier;
}

/// Runs `fut`, the serving of the connection `carrier` came from, with the carrier known to it.
pub async fn serve_carrier<F: Future>(carrier: Carrier, fut: F) -> F::Output {
    CARRIER.scope(carrier, fut).await
}

/// Gives the connection this task serves a reverse tunnel's socket options ([`SocketOpts::tunnel`], on
/// top of its inbound's). Call it while holding the connection's stream. Returns false outside
/// [`serve_carrier`] (a tunnel that arrived as a Mux sub-session, or a test's in-memory stream).
pub fn tune_carrier_as_tunnel() -> bool {
    CARRIER
        .try_with(|c| {
            #[cfg(unix)]
            {
                // SAFETY: `fd` is the socket of the connection this task is serving; the caller holds the
                // stream that owns it, so it is open and not yet reused. The borrow ends in this block.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(c.fd) };
                c.opts.tunnel().established_ref(&socket2::SockRef::from(&fd));
            }
            #[cfg(not(unix))]
            let _ = c;
        })
        .is_ok()
}

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
        let (opts, connect_timeout) = TUNNEL_DIAL
            .try_with(|t| (self.opts.tunnel(), t.connect_timeout))
            .unwrap_or((self.opts, self.connect_timeout));
        let mut last_err = None;
        for attempt in 0..=self.retry_waits.len() {
            if attempt > 0 {
                tokio::time::sleep(self.retry_waits[attempt - 1]).await;
            }
            match tcp::dial_once(addr, port, self.bind, self.family, &opts, connect_timeout).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockRef;

    #[tokio::test]
    async fn tunnel_dials_and_tunnel_carriers_get_the_tunnel_options() {
        let settings = StreamSettings::default();
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), &settings, false).unwrap();
        let addr = listener.local_addr().unwrap();
        let ip = Address::Ip(addr.ip());
        let dialer = Dialer::new(&settings, None);

        // An ordinary dial: keepalive only.
        let plain = dialer.dial_tcp(&ip, addr.port()).await.unwrap();
        let s = SockRef::from(&plain);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), sockopt::KEEPALIVE.idle);
        assert_eq!(s.tcp_user_timeout().unwrap(), None);
        let incoming = listener.accept().await.unwrap();
        // An accepted connection: keepalive, and the tunnel's options once a portal asks for them.
        let carrier = incoming.carrier();
        assert!(!tune_carrier_as_tunnel(), "outside serve_carrier there is no carrier");
        assert!(serve_carrier(carrier, async { tune_carrier_as_tunnel() }).await);
        let s = SockRef::from(&incoming.tcp);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(sockopt::TUNNEL_USER_TIMEOUT));
        assert_eq!(s.tcp_keepalive_time().unwrap(), sockopt::TUNNEL_KEEPALIVE.idle);

        // A dial inside a bridge's tunnel scope.
        let dial = TunnelDial { connect_timeout: Duration::from_secs(2) };
        let tunnel = dial_tunnel(dial, dialer.dial_tcp(&ip, addr.port())).await.unwrap();
        let s = SockRef::from(&tunnel);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(sockopt::TUNNEL_USER_TIMEOUT));
        assert_eq!(s.tcp_keepalive_time().unwrap(), sockopt::TUNNEL_KEEPALIVE.idle);
        assert_eq!(s.tcp_keepalive_interval().unwrap(), sockopt::TUNNEL_KEEPALIVE.interval);
        assert_eq!(s.tcp_keepalive_retries().unwrap(), sockopt::TUNNEL_KEEPALIVE.retries);
    }

    #[tokio::test]
    async fn a_black_holed_connect_gives_up_at_the_deadline() {
        // A full accept queue (backlog 0, one connection waiting): the kernel drops further SYNs.
        let hole = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        hole.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        hole.listen(0).unwrap();
        let addr = hole.local_addr().unwrap().as_socket().unwrap();
        let _filler = std::net::TcpStream::connect(addr).unwrap();
        let dialer = Dialer::new(&StreamSettings::default(), None).with_connect_timeout(Duration::from_millis(300));
        let start = std::time::Instant::now();
        let err = dialer.dial(&Address::Ip(addr.ip()), addr.port()).await.err().expect("a black hole connected");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }
}
