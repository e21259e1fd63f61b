//! Transports under the protocols. `streamSettings` builds a [`Listener`] and a [`Dialer`]; both yield
//! [`BoxStream`]s, so protocol code never knows which transport it runs on.
//!
//! A listener's `accept` only takes the TCP connection (cheap, cancel-safe); the transport's own
//! handshake (TLS, WebSocket upgrade, http header) runs in [`Incoming::handshake`], in the connection's
//! task under the caller's deadline, never in the accept loop.

pub mod header;
pub mod http_head;
pub mod prefixed;
pub mod proxy_protocol;
pub mod settings;
pub mod sockopt;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::debug;

pub use settings::{
    CertUsage, HttpHeaderSettings, Security, StreamSettings, TcpSettings, TlsCertificate, TlsSettings, TransportKind,
    WsSettings,
};
pub use sockopt::{Keepalive, SocketOpts, Tproxy};
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
    tls: Option<tls::TlsServer>,
    network: TransportKind,
    http_header: Option<HttpHeaderSettings>,
    proxy_protocol: bool,
    /// The local address of every accepted connection when the listener has one (a specific IP and no
    /// redirect or TPROXY): one `getsockname` fewer per connection.
    fixed_local: Option<SocketAddr>,
}

/// Go's HTTP server bounds the TLS handshake and the upgrade request of a WebSocket listener by its
/// `ReadHeaderTimeout`.
const WS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);
/// gorilla's client `HandshakeTimeout` (TLS and upgrade; the TCP connect has its own deadline).
const WS_DIAL_TIMEOUT: Duration = Duration::from_secs(8);

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
        let websocket = matches!(settings.network, TransportKind::Ws(_));
        let tls = match &settings.security {
            Security::None => None,
            Security::Tls(t) => Some(tls::TlsServer::new(t, websocket)?),
        };
        let tcp = socket.listen(1024)?;
        let transparent = settings.sockopt.tproxy != sockopt::Tproxy::Off;
        let fixed_local = tcp.local_addr().ok().filter(|a| !a.ip().is_unspecified() && !original_dst && !transparent);
        let stack = ServerStack {
            fixed_local,
            opts: settings.sockopt,
            original_dst,
            tls,
            network: settings.network.clone(),
            http_header: settings.tcp.http_header.clone(),
            proxy_protocol: settings.accept_proxy_protocol(),
        };
        Ok(Listener { tcp, stack: Arc::new(stack) })
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
        // Boxed: the TLS, WebSocket, http-header and PROXY-protocol states are kilobytes, and inline
        // they would size the task of every accepted connection for its whole life.
        Box::pin(self.run_handshake()).await
    }

    async fn run_handshake(self) -> io::Result<Accepted> {
        let Incoming { tcp, peer, stack } = self;
        stack.opts.accepted(&tcp);
        let local = match stack.fixed_local {
            Some(a) => a,
            None => tcp.local_addr()?,
        };
        let original_dst = match (stack.original_dst, stack.opts.tproxy) {
            (false, _) => None,
            // TPROXY keeps the original target as the accepted socket's own address.
            (true, sockopt::Tproxy::Tproxy) => Some(local),
            (true, _) => tcp::original_dst(&tcp),
        };
        let mut peer = peer;
        // PROXY protocol comes before TLS (4.34's listener wraps the raw socket).
        let tcp: BoxStream = if stack.proxy_protocol {
            let mut tcp = tcp;
            let (src, rest) = proxy_protocol::read(&mut tcp).await?;
            if let Some(src) = src {
                peer = src;
            }
            Box::new(prefixed::Prefixed::new(rest, tcp))
        } else {
            Box::new(tcp)
        };
        let stream: BoxStream = match &stack.network {
            TransportKind::Tcp => {
                let s: BoxStream = match &stack.tls {
                    Some(t) => Box::new(t.accept(tcp).await?),
                    None => tcp,
                };
                match &stack.http_header {
                    Some(h) => Box::new(header::server_accept(s, h).await?),
                    None => s,
                }
            }
            TransportKind::Ws(w) => {
                let upgrade = async {
                    let s: BoxStream = match &stack.tls {
                        Some(t) => Box::new(t.accept(tcp).await?),
                        None => tcp,
                    };
                    ws::server_handshake(s, &w.path).await
                };
                let (s, forwarded) = tokio::time::timeout(WS_HANDSHAKE_TIMEOUT, upgrade)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "websocket handshake timed out"))??;
                // 4.34 takes the first X-Forwarded-For entry as the source, with port 0.
                if let Some(ip) = forwarded {
                    peer = SocketAddr::new(ip, 0);
                }
                Box::new(s)
            }
        };
        Ok(Accepted { stream, peer, local, original_dst })
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
    tls: Option<tls::TlsClient>,
    network: TransportKind,
    http_header: Option<Arc<HttpHeaderSettings>>,
    bind: Option<IpAddr>,
    family: Resolve,
    connect_timeout: Duration,
    retry_waits: &'static [Duration],
}

impl Dialer {
    /// A dialer for `settings`, binding `bind` (`sendThrough`) when set; one attempt per dial.
    pub fn new(settings: &StreamSettings, bind: Option<IpAddr>) -> Self {
        let websocket = matches!(settings.network, TransportKind::Ws(_));
        Dialer {
            opts: settings.sockopt,
            tls: match &settings.security {
                Security::None => None,
                Security::Tls(t) => Some(tls::TlsClient::new(t, websocket)),
            },
            network: settings.network.clone(),
            http_header: settings.tcp.http_header.clone().map(Arc::new),
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
        match &self.network {
            TransportKind::Tcp => {
                let s: BoxStream = match &self.tls {
                    Some(t) => Box::new(NoHalfClose(t.connect(tcp, addr).await?)),
                    None => Box::new(tcp),
                };
                Ok(match &self.http_header {
                    Some(h) => Box::new(header::client(s, h)),
                    None => s,
                })
            }
            TransportKind::Ws(w) => {
                let upgrade = async {
                    let s: BoxStream = match &self.tls {
                        Some(t) => Box::new(t.connect(tcp, addr).await?),
                        None => Box::new(tcp),
                    };
                    let host = ws_host(addr, port, self.tls.is_some());
                    ws::client_handshake(s, &ws_request_uri(&w.path), &host, &w.headers).await
                };
                let s = tokio::time::timeout(WS_DIAL_TIMEOUT, upgrade)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "websocket handshake timed out"))??;
                Ok(Box::new(NoHalfClose(s)))
            }
        }
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

/// A dialed TLS or WebSocket stream whose half-close only flushes. V2Ray never half-closes these: a
/// close frame or close_notify sent after the protocol's own end marker sits unread in a 4.34 server,
/// whose close then resets the connection and destroys the response still in flight. The protocols
/// on top (VMess, Mux) mark their own ends; the connection closes when it is dropped.
struct NoHalfClose<S>(S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for NoHalfClose<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for NoHalfClose<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
}

/// The default `Host` of a WebSocket request: `addr:port`, without the port for ws:80 and wss:443.
fn ws_host(addr: &Address, port: u16, tls: bool) -> String {
    let host = match addr {
        Address::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        other => other.to_string(),
    };
    if (port == 80 && !tls) || (port == 443 && tls) { host } else { format!("{host}:{port}") }
}

/// The request URI for a configured path: the path as Go's `URL.EscapedPath` gives it, the query as
/// written, no fragment. The config loader has checked the escapes.
fn ws_request_uri(path: &str) -> String {
    let path = path.split('#').next().unwrap_or("");
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut uri = http_head::escaped_path(p).unwrap_or_else(|| p.to_string());
    if let Some(q) = q {
        uri.push('?');
        uri.push_str(q);
    }
    uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_request_targets() {
        assert_eq!(ws_request_uri("/a b/%41?ed=2048&x=1#frag"), "/a%20b/A?ed=2048&x=1");
        assert_eq!(ws_host(&Address::parse("example.com"), 443, true), "example.com");
        assert_eq!(ws_host(&Address::parse("example.com"), 443, false), "example.com:443");
        assert_eq!(ws_host(&Address::parse("::1"), 80, false), "[::1]");
        assert_eq!(ws_host(&Address::parse("127.0.0.1"), 8080, true), "127.0.0.1:8080");
    }
}

#[cfg(test)]
mod stack_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn tls_pair() -> (TlsSettings, TlsSettings) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["example.com".to_string()]).unwrap().self_signed(&key).unwrap();
        let server = TlsSettings {
            certificates: vec![TlsCertificate {
                certificate: cert.pem().into_bytes(),
                key: Some(key.serialize_pem().into_bytes()),
                usage: CertUsage::Encipherment,
            }],
            ..Default::default()
        };
        let client = TlsSettings { allow_insecure: true, ..Default::default() };
        (server, client)
    }

    /// Each stack carries bytes both ways; the server's half-close reaches the client.
    #[tokio::test]
    async fn stacks_half_close() {
        let (st, ct) = tls_pair();
        let ws = TransportKind::Ws(WsSettings { path: "/ray".into(), ..Default::default() });
        let header = TcpSettings { http_header: Some(header::defaults()), accept_proxy_protocol: false };
        let cases = [
            (TransportKind::Tcp, false, TcpSettings::default()),
            (TransportKind::Tcp, true, TcpSettings::default()),
            (ws.clone(), false, TcpSettings::default()),
            (ws.clone(), true, TcpSettings::default()),
            (TransportKind::Tcp, false, header.clone()),
            (TransportKind::Tcp, true, header),
        ];
        for (network, tls, tcp) in cases {
            let what = format!("{network:?} tls={tls} header={}", tcp.http_header.is_some());
            let mk = |t: &TlsSettings| StreamSettings {
                network: network.clone(),
                security: if tls { Security::Tls(t.clone()) } else { Security::None },
                tcp: tcp.clone(),
                sockopt: SocketOpts::default(),
            };
            let l = Listener::bind("127.0.0.1:0".parse().unwrap(), &mk(&st), false).unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let conn = l.accept().await.unwrap().handshake().await.unwrap();
                let mut s = conn.stream;
                let mut got = vec![0u8; 100_000];
                s.read_exact(&mut got).await.unwrap();
                s.write_all(&got).await.unwrap();
                s.write_all(b"!").await.unwrap();
                s.shutdown().await.unwrap();
            });
            let d = Dialer::new(&mk(&ct), None);
            let mut c = d.dial(&Address::parse("127.0.0.1"), addr.port()).await.unwrap();
            let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
            c.write_all(&data).await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut back)).await.expect(&what).expect(&what);
            assert_eq!(back.len(), data.len() + 1, "{what}");
            server.await.unwrap();
        }
    }
}

#[cfg(test)]
mod liveness_tests {
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
    async fn accepted_connections_know_their_local_address() {
        // A specific IP: the listener's own address, without asking the kernel per connection.
        let settings = StreamSettings::default();
        let fixed = Listener::bind("127.0.0.1:0".parse().unwrap(), &settings, false).unwrap();
        let at = fixed.local_addr().unwrap();
        assert_eq!(fixed.stack.fixed_local, Some(at));
        let _c = tokio::net::TcpStream::connect(at).await.unwrap();
        assert_eq!(fixed.accept().await.unwrap().handshake().await.unwrap().local, at);
        // A wildcard listener asks: the address the client reached, not 0.0.0.0.
        let any = Listener::bind("0.0.0.0:0".parse().unwrap(), &settings, false).unwrap();
        assert_eq!(any.stack.fixed_local, None);
        let port = any.local_addr().unwrap().port();
        let target: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
        let _c = tokio::net::TcpStream::connect(target).await.unwrap();
        assert_eq!(any.accept().await.unwrap().handshake().await.unwrap().local, target);
        // Redirected connections ask too (their local address is what the redirect left).
        let redirected = Listener::bind("127.0.0.1:0".parse().unwrap(), &settings, true).unwrap();
        assert_eq!(redirected.stack.fixed_local, None);
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
