//! `vless` (version 0, `decryption: "none"`): inbound with fallbacks, and outbound; TCP, UDP and Mux. The
//! header codec is in [`codec`]; this module is the tokio glue.

pub mod codec;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info};

use crate::config::{VlessInboundConfig, VlessOutboundConfig};
use crate::dispatch::Dispatcher;
use crate::mux::MUX_COOL_DOMAIN;
use crate::proxy::fallback::Fallbacks;
use crate::proxy::prefixed::Prefixed;
use crate::proxy::{BoxPacketConn, BoxStream, Inbound, Outbound, PacketConn, ProxyError, relay_packets};
use crate::session::{Address, Destination, Session, User};
use crate::transport::{Accepted, Dialer, StreamSettings};

/// Longest request header (255-byte addons, 255-byte domain).
const MAX_HEADER: usize = 1 + 16 + 1 + 255 + 1 + 2 + 1 + 1 + 255;
/// How long the server waits for the first 18 bytes before deciding on a fallback (4.34 decides on one
/// read, which misroutes a header split across segments).
const FIRST_WAIT: Duration = Duration::from_millis(100);
const DIAL_WAITS: [Duration; 4] =
    [Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(800), Duration::from_millis(1600)];

/// The vless inbound.
pub struct VlessInbound {
    tag: Option<Arc<str>>,
    users: HashMap<[u8; 16], User>,
    fallbacks: Option<Fallbacks>,
}

impl VlessInbound {
    /// Builds it for an inbound with this tag.
    pub fn new(tag: Option<String>, config: &VlessInboundConfig) -> Self {
        let users = config
            .clients
            .iter()
            .map(|c| (c.id.0, User { email: c.email.as_deref().map(Arc::from), level: c.level }))
            .collect();
        VlessInbound { tag: tag.map(Arc::from), users, fallbacks: Fallbacks::new(&config.fallbacks) }
    }
}

#[async_trait]
impl Inbound for VlessInbound {
    async fn accept(&self, conn: Accepted, dispatcher: &Arc<Dispatcher>) {
        let Accepted { mut stream, peer, local, .. } = conn;
        let policy = dispatcher.policy(0);
        let deadline = Instant::now() + policy.handshake;
        let mut buf = BytesMut::with_capacity(2048);
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        if self.fallbacks.is_some() && buf.len() < 18 {
            let short = (Instant::now() + FIRST_WAIT).min(deadline);
            while buf.len() < 18 {
                match timeout_at(short, stream.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => break,
                }
            }
        }
        let known = buf.len() >= 17 && buf[0] == 0 && self.users.contains_key(&buf[1..17]);
        if !known && (buf.len() >= 17 || buf[0] != 0 || self.fallbacks.is_some()) {
            match &self.fallbacks {
                Some(f) => f.serve(buf.to_vec(), stream, peer, local, &policy).await,
                None => info!(%peer, "vless: invalid request (version or user)"),
            }
            return;
        }
        let (req, used) = loop {
            match codec::decode_request(&buf) {
                Ok(Some(r)) => break r,
                Ok(None) if buf.len() < MAX_HEADER => {}
                Ok(None) => return,
                Err(e) => {
                    info!(%peer, "vless: invalid request: {e}");
                    return;
                }
            }
            match timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        let Some(user) = self.users.get(&req.id).cloned() else {
            info!(%peer, "vless: invalid user");
            return;
        };
        let target = match (req.cmd, req.target) {
            (codec::CMD_MUX, _) => Destination::tcp(Address::parse(MUX_COOL_DOMAIN), 0),
            (codec::CMD_TCP, Some((a, p))) => Destination::tcp(a, p),
            (codec::CMD_UDP, Some((a, p))) => {
                let rest = buf.split_off(used).freeze();
                let mut session = Session::new(self.tag.clone(), Some(peer), Destination::udp(a, p));
                session.user = Some(user.clone());
                let linger = dispatcher.policy(user.level).downlink_only;
                let upstream = match dispatcher.connect_packet(session).await {
                    Ok(u) => u,
                    Err(e) => {
                        info!(%peer, "vless: UDP flow refused: {e}");
                        return;
                    }
                };
                let client = VlessPackets::new(Box::new(Prefixed::new(rest, stream)), Some(vec![0, 0]), false, None);
                relay_packets(&client, upstream.as_ref(), linger).await;
                return;
            }
            _ => return,
        };
        let rest = buf.split_off(used).freeze();
        let mut session = Session::new(self.tag.clone(), Some(peer), target);
        session.user = Some(user);
        let server = HeaderOnFirstWrite::new(&[0, 0], Prefixed::new(rest, stream));
        dispatcher.dispatch(session, Box::new(server)).await;
    }
}

/// Writes `header` together with the first bytes written (the VLESS response is sent with the first
/// response data, never on its own; nothing at all if the upstream fails).
pub struct HeaderOnFirstWrite<S> {
    inner: S,
    header: Option<Vec<u8>>,
    pending: BytesMut,
}

impl<S> HeaderOnFirstWrite<S> {
    /// Wraps `inner`.
    pub fn new(header: &[u8], inner: S) -> Self {
        HeaderOnFirstWrite { inner, header: Some(header.to_vec()), pending: BytesMut::new() }
    }
}

impl<S: AsyncWrite + Unpin> HeaderOnFirstWrite<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderOnFirstWrite<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderOnFirstWrite<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(h) = self.header.take() {
            self.pending.extend_from_slice(&h);
            self.pending.extend_from_slice(buf);
            if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client side: strips the response header from the front of what the server sends.
struct StripResponse<S> {
    inner: S,
    head: Option<BytesMut>,
}

impl<S: AsyncRead + Unpin> AsyncRead for StripResponse<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while let Some(head) = &mut this.head {
            match codec::decode_response(head) {
                Ok(Some(n)) => {
                    head.advance(n);
                    if !head.is_empty() {
                        let k = head.len().min(buf.remaining());
                        buf.put_slice(&head[..k]);
                        head.advance(k);
                        if head.is_empty() {
                            this.head = None;
                        }
                        return Poll::Ready(Ok(()));
                    }
                    this.head = None;
                }
                Ok(None) => {
                    let mut tmp = [0u8; 512];
                    let mut rb = ReadBuf::new(&mut tmp);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    if rb.filled().is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    head.extend_from_slice(rb.filled());
                }
                Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StripResponse<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The vless outbound.
pub struct VlessOutbound {
    servers: Vec<(Address, u16, Vec<[u8; 16]>)>,
    dialer: Dialer,
    next: AtomicUsize,
}

impl VlessOutbound {
    /// Builds it from its settings, the outbound's `streamSettings` and `sendThrough`.
    pub fn new(config: &VlessOutboundConfig, stream: &StreamSettings, send_through: Option<std::net::IpAddr>) -> Self {
        let servers =
            config.servers.iter().map(|s| (s.address.clone(), s.port, s.users.iter().map(|u| u.0).collect())).collect();
        let dialer = Dialer::new(stream, send_through).with_retries(&DIAL_WAITS);
        VlessOutbound { servers, dialer, next: AtomicUsize::new(0) }
    }

    /// Dials the next server and sends the request header for `cmd` to the session's target, as one of
    /// that server's users picked at random (4.34).
    async fn open(&self, cmd: u8, session: &Session) -> Result<BoxStream, ProxyError> {
        let (address, port, ids) = &self.servers[self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len().max(1)];
        let mut b = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut b);
        let id = ids[u32::from_le_bytes(b) as usize % ids.len().max(1)];
        let mut stream = self.dialer.dial(address, *port).await?;
        let t = &session.target;
        let mut head = Vec::with_capacity(64);
        codec::encode_request(&mut head, &id, cmd, &t.address, t.port)
            .map_err(|e| ProxyError::Refused(format!("vless: {e}")))?;
        stream.write_all(&head).await?;
        Ok(stream)
    }
}

#[async_trait]
impl Outbound for VlessOutbound {
    /// Sends the request header at once (4.34 waits up to 100 ms to add the first payload; a 4.34
    /// server accepts either).
    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError> {
        let t = &session.target;
        let cmd = if t.address.domain() == Some(MUX_COOL_DOMAIN) { codec::CMD_MUX } else { codec::CMD_TCP };
        let stream = self.open(cmd, session).await?;
        debug!(target = %t, "vless: request sent");
        Ok(Box::new(StripResponse { inner: stream, head: Some(BytesMut::new()) }))
    }

    /// One VLESS connection per UDP flow (command 2, destination fixed by the request, 4.34).
    async fn connect_packet(&self, session: &Session) -> Result<BoxPacketConn, ProxyError> {
        let stream = self.open(codec::CMD_UDP, session).await?;
        Ok(Box::new(VlessPackets::new(stream, None, true, Some(session.policy.conn_idle))))
    }
}

/// Datagrams as VLESS UDP frames (`length ‖ payload`) over one stream, for either side.
struct VlessPackets {
    reader: tokio::sync::Mutex<(ReadHalf<BoxStream>, BytesMut, bool)>,
    /// The write half and what goes out with the first frame (the server's `00 00`).
    writer: tokio::sync::Mutex<(WriteHalf<BoxStream>, Option<Vec<u8>>)>,
    idle: Option<Duration>,
}

impl VlessPackets {
    /// `strip_response`: the client side skips the server's response header first.
    fn new(stream: BoxStream, prefix: Option<Vec<u8>>, strip_response: bool, idle: Option<Duration>) -> Self {
        let (r, w) = tokio::io::split(stream);
        VlessPackets {
            reader: tokio::sync::Mutex::new((r, BytesMut::with_capacity(4096), strip_response)),
            writer: tokio::sync::Mutex::new((w, prefix)),
            idle,
        }
    }
}

#[async_trait]
impl PacketConn for VlessPackets {
    async fn send(&self, packet: Bytes) -> io::Result<()> {
        if packet.is_empty() {
            return Ok(());
        }
        let mut w = self.writer.lock().await;
        let mut out = w.1.take().unwrap_or_default();
        codec::encode_udp_frame(&mut out, &packet)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "datagram over 65535 bytes"))?;
        w.0.write_all(&out).await
    }

    async fn recv(&self) -> io::Result<Option<Bytes>> {
        let mut g = self.reader.lock().await;
        let (r, buf, strip) = &mut *g;
        loop {
            if *strip {
                match codec::decode_response(buf) {
                    Ok(Some(n)) => {
                        buf.advance(n);
                        *strip = false;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            } else if let Some((range, used)) = codec::decode_udp_frame(buf) {
                let data = Bytes::copy_from_slice(&buf[range]);
                buf.advance(used);
                if data.is_empty() {
                    continue;
                }
                return Ok(Some(data));
            }
            let n = match self.idle {
                Some(d) => match tokio::time::timeout(d, r.read_buf(buf)).await {
                    Ok(n) => n?,
                    Err(_) => return Ok(None),
                },
                None => r.read_buf(buf).await?,
            };
            if n == 0 {
                return Ok(None);
            }
        }
    }
}
