//! Protocol handlers: the inbound/outbound traits, the stream type they exchange, and the relay.

pub mod addr;
pub mod aead;
pub mod blackhole;
pub mod dns;
pub mod dokodemo;
pub mod fallback;
pub mod freedom;
pub mod http;
pub mod muxed;
pub mod prefixed;
pub mod shadowsocks;
pub mod sniff;
pub mod socks;
pub mod trojan;
pub mod udp;
pub mod vless;
pub mod vmess;

mod relay;

use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::session::Session;

pub use relay::{RelayStats, relay, relay_packets, relay_session, release_idle_buffers};

/// A bidirectional byte stream; `poll_shutdown` is a half-close (EOF to the peer, reading goes on).
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The concrete stream, for the few places that do better knowing it (see [`concrete`]).
    fn as_any(&self) -> &dyn std::any::Any;
}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The stream behind any number of boxes, to downcast.
pub fn concrete(s: &dyn AsyncStream) -> &dyn std::any::Any {
    let any = s.as_any();
    match any.downcast_ref::<BoxStream>() {
        Some(inner) => concrete(&**inner),
        None => any,
    }
}

/// The stream type handed between inbounds, the dispatcher and outbounds.
pub type BoxStream = Box<dyn AsyncStream>;

/// A datagram flow to one destination (UDP sessions of Mux.Cool).
#[async_trait]
pub trait PacketConn: Send + Sync {
    /// Sends one datagram to the flow's destination.
    async fn send(&self, packet: Bytes) -> io::Result<()>;
    /// Receives one datagram from the destination; None when the flow has ended.
    async fn recv(&self) -> io::Result<Option<Bytes>>;
}

/// Reads and throws away up to `n` bytes, until EOF, an error or `deadline`: how a server that refuses
/// a prober keeps it from learning where the handshake failed.
pub(crate) async fn discard<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    mut n: usize,
    deadline: tokio::time::Instant,
) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 1024];
    while n > 0 {
        let want = n.min(sink.len());
        match tokio::time::timeout_at(deadline, stream.read(&mut sink[..want])).await {
            Ok(Ok(k)) if k > 0 => n -= k,
            _ => break,
        }
    }
}

/// Boxed [`PacketConn`].
pub type BoxPacketConn = Box<dyn PacketConn>;

/// Why an outbound could not carry a flow.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A socket operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The outbound cannot carry this kind of flow.
    #[error("{0} is not supported by this outbound")]
    Unsupported(&'static str),
    /// The flow was refused on purpose (blackhole, no tunnel available...).
    #[error("{0}")]
    Refused(String),
}

/// An outbound handler: carries flows to their targets.
#[async_trait]
pub trait Outbound: Send + Sync + 'static {
    /// Opens a stream to `session.target`.
    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError>;

    /// Takes an inbound stream and carries it to its target until both directions end.
    /// Default: `connect`, then relay both directions with half-close and the session's timeouts.
    async fn handle(&self, session: Session, stream: BoxStream) -> Result<RelayStats, ProxyError> {
        let upstream = self.connect(&session).await?;
        Ok(relay_session(stream, upstream, &session).await?)
    }

    /// Opens a datagram flow to `session.target`.
    async fn connect_packet(&self, _session: &Session) -> Result<BoxPacketConn, ProxyError> {
        Err(ProxyError::Unsupported("udp"))
    }
}

/// An inbound handler: turns one accepted connection into a routed flow.
#[async_trait]
pub trait Inbound: Send + Sync + 'static {
    /// Runs the protocol's handshake on `conn` (already through its transport) and dispatches the flow;
    /// returns when it has ended.
    async fn accept(&self, conn: crate::transport::Accepted, dispatcher: &std::sync::Arc<crate::dispatch::Dispatcher>);

    /// Whether the listener should look up each connection's original destination (SO_ORIGINAL_DST).
    fn wants_original_dst(&self) -> bool {
        false
    }

    /// True when this inbound also listens on UDP on its ports (socks with `udp`).
    fn udp(&self) -> bool {
        false
    }

    /// False when this inbound listens on UDP only (dokodemo-door or shadowsocks with `network: "udp"`).
    fn tcp(&self) -> bool {
        true
    }

    /// Opens the inbound's UDP socket on `addr` (dokodemo-door's `followRedirect` sets options here).
    fn bind_udp(&self, addr: std::net::SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let s = std::net::UdpSocket::bind(addr)?;
        s.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(s)
    }

    /// Serves datagrams on the inbound's UDP socket (bound to the same address and port as its TCP
    /// listener) until the task is dropped. Called only when [`Inbound::udp`] is true.
    async fn serve_udp(
        &self,
        _socket: std::sync::Arc<tokio::net::UdpSocket>,
        _dispatcher: std::sync::Arc<crate::dispatch::Dispatcher>,
    ) {
    }
}
