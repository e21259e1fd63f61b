//! `shadowsocks` (AEAD methods and `none`), TCP and UDP: the inbound and the outbound. The cipher and chunk
//! codec is in [`codec`]; this module is the tokio glue.

pub mod codec;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info};

use self::codec::{Decoder, Encoder, InPlace, MAX_PAYLOAD, Method};
use crate::config::{ShadowsocksClientConfig, ShadowsocksInboundConfig};
use crate::dispatch::Dispatcher;
use crate::proxy::prefixed::Prefixed;
use crate::proxy::udp::{FlowTable, ReplySink};
use crate::proxy::{BoxPacketConn, BoxStream, Inbound, Outbound, PacketConn, ProxyError, addr, relay};
use crate::session::{Address, Destination, Session, User};
use crate::transport::{Accepted, Dialer, StreamSettings};

/// Outbound dial schedule, as V2Ray's shadowsocks client: 5 attempts, backing off from 100 ms.
const DIAL_WAITS: [Duration; 4] =
    [Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(800)];
/// Longest address header (a 255-byte domain).
const MAX_HEADER: usize = 1 + 1 + 255 + 2;
/// A UDP flow ends after this long without a datagram either way (4.34: 4 s after the last reply).
const UDP_FLOW_IDLE: Duration = Duration::from_secs(4);
/// Most UDP flows one inbound keeps at once (the least recently active is closed first).
const MAX_UDP_FLOWS: usize = 1024;

/// A Shadowsocks TCP stream over `S`: reads decrypt, writes encrypt.
///
/// Reads go into one relay-sized buffer (from the relay's per-thread pool, held only while bytes are
/// buffered), and as many chunks as fit are opened per call straight into the caller's buffer (a
/// chunk that does not fit is opened in place and copied out in parts): one large socket read feeds
/// several 16 KiB chunks, with no allocation and no copy per chunk. Writes are sealed straight into
/// the stream's write buffer.
pub struct SsStream<S> {
    inner: S,
    dec: Decoder,
    /// Ciphertext read but not yet opened is `rbuf[rpos..rend]`; opened plaintext not yet handed out
    /// is `rbuf[ppos..pend]` (before `rpos`).
    rbuf: PoolBuf,
    rpos: usize,
    rend: usize,
    ppos: usize,
    pend: usize,
    eof: bool,
    enc: Encoder,
    /// Sealed bytes not yet written are `wbuf[wpos..wend]`. Allocated at the first write and kept
    /// initialized, so chunks are sealed straight into it.
    wbuf: Box<[u8]>,
    wpos: usize,
    wend: usize,
    raw_read: usize,
}

/// Plaintext taken per write: four full chunks (a 63 KiB relay write is one call).
const WRITE_TAKE: usize = 4 * MAX_PAYLOAD;
/// Room for [`WRITE_TAKE`] bytes sealed, with the largest salt before them.
const WBUF_LEN: usize = 32 + WRITE_TAKE + 4 * (2 + 2 * codec::TAG);

impl<S> SsStream<S> {
    /// Wraps `inner` for `method` with the master key.
    pub fn new(inner: S, method: Method, master: &[u8]) -> Self {
        SsStream {
            inner,
            dec: Decoder::new(method, master),
            rbuf: PoolBuf::default(),
            rpos: 0,
            rend: 0,
            ppos: 0,
            pend: 0,
            eof: false,
            enc: Encoder::new(method, master),
            wbuf: Box::default(),
            wpos: 0,
            wend: 0,
            raw_read: 0,
        }
    }

    /// Raw bytes read from the peer so far.
    pub fn raw_read(&self) -> usize {
        self.raw_read
    }

    /// The underlying stream (for draining a failed handshake).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// A read buffer from the relay's pool, given back when dropped.
#[derive(Default)]
struct PoolBuf(Option<Box<[u8]>>);

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            relay::give_buf(b);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = out.filled().len();
        loop {
            if this.ppos < this.pend {
                let Some(buf) = this.rbuf.0.as_deref() else { return Poll::Ready(Ok(())) };
                let n = (this.pend - this.ppos).min(out.remaining());
                out.put_slice(&buf[this.ppos..this.ppos + n]);
                this.ppos += n;
                if out.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.rpos < this.rend {
                let Some(buf) = this.rbuf.0.as_deref_mut() else { return Poll::Ready(Ok(())) };
                // A chunk that fits into the caller's initialized room (the relay's buffer is all
                // initialized) is opened straight into it: no copy after it. Room that is not
                // initialized yet (`read_buf`) is not zeroed for this: the chunk is copied instead.
                let filled = out.filled().len();
                let room = &mut out.initialized_mut()[filled..];
                let step = this.dec.decode_to(&mut buf[this.rpos..this.rend], room);
                match step {
                    Ok(InPlace::Opened { used, n }) => {
                        out.advance(n);
                        this.rpos += used;
                        if out.remaining() == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    Ok(InPlace::Data { used, plain }) => {
                        (this.ppos, this.pend) = (this.rpos + plain.start, this.rpos + plain.end);
                        this.rpos += used;
                        continue;
                    }
                    Ok(InPlace::End { used }) => {
                        this.rpos += used;
                        this.eof = true;
                        continue;
                    }
                    Ok(InPlace::Need { used }) => this.rpos += used,
                    // Plaintext already handed out goes first; the error comes with the next call.
                    Err(_) if out.filled().len() > before => return Poll::Ready(Ok(())),
                    Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
                }
            }
            // Everything opened has been handed out: read more behind what is left of a chunk,
            // moving that to the front once less than half the buffer is free behind it.
            let buf = this.rbuf.0.get_or_insert_with(relay::take_buf);
            if this.rpos == this.rend {
                (this.rpos, this.rend) = (0, 0);
            } else if buf.len() - this.rend < buf.len() / 2 {
                buf.copy_within(this.rpos..this.rend, 0);
                (this.rend, this.rpos) = (this.rend - this.rpos, 0);
            }
            (this.ppos, this.pend) = (0, 0);
            let mut rb = ReadBuf::new(&mut buf[this.rend..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if this.rpos == this.rend
                        && let Some(b) = this.rbuf.0.take()
                    {
                        // Nothing buffered: hold no buffer while the peer is silent.
                        relay::give_buf(b);
                        (this.rpos, this.rend) = (0, 0);
                    }
                    return if out.filled().len() > before { Poll::Ready(Ok(())) } else { Poll::Pending };
                }
                Poll::Ready(Err(e)) if out.filled().len() == before => return Poll::Ready(Err(e)),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        if out.filled().len() > before {
                            // EOF is sticky: the next call sees it again.
                            return Poll::Ready(Ok(()));
                        }
                        if this.rpos < this.rend {
                            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                        }
                        this.eof = true;
                    }
                    this.rend += n;
                    this.raw_read += n;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> SsStream<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wend {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..self.wend]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        (self.wpos, self.wend) = (0, 0);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = buf.len().min(WRITE_TAKE);
        let this = &mut *self;
        if this.wbuf.is_empty() {
            this.wbuf = vec![0u8; WBUF_LEN].into_boxed_slice();
        }
        this.wend = this.enc.encode_into(&buf[..take], &mut this.wbuf).map_err(io::Error::other)?;
        // The bytes are accepted; what the socket does not take now goes out on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The shadowsocks inbound (one user, as in 4.34).
pub struct ShadowsocksInbound {
    tag: Option<Arc<str>>,
    method: Method,
    master: Arc<[u8]>,
    user: User,
    drain: (usize, usize),
    tcp: bool,
    udp: bool,
}

impl ShadowsocksInbound {
    /// Builds it for an inbound with this tag.
    pub fn new(tag: Option<String>, config: &ShadowsocksInboundConfig) -> Self {
        let master = codec::master_key(&config.password, config.method.key_len());
        let drain = codec::drain_params(&master);
        let user = User { email: config.email.as_deref().map(Arc::from), level: config.level };
        ShadowsocksInbound {
            tag: tag.map(Arc::from),
            method: config.method,
            master: Arc::from(master),
            user,
            drain,
            tcp: config.tcp,
            udp: config.udp,
        }
    }

    /// Serves the UDP socket: each valid datagram goes to the flow of its (client, destination); the
    /// rest are dropped silently (no reply tells a prober anything).
    async fn serve_datagrams(&self, socket: Arc<tokio::net::UdpSocket>, dispatcher: Arc<Dispatcher>) {
        let flows: Arc<FlowTable<(std::net::SocketAddr, Address, u16)>> = FlowTable::new(MAX_UDP_FLOWS, UDP_FLOW_IDLE);
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    debug!("shadowsocks udp: recv failed: {e}");
                    continue;
                }
            };
            let Some((address, port, data)) = open_datagram(self.method, &self.master, &buf[..n]) else {
                debug!(%from, "shadowsocks udp: dropping an invalid datagram");
                continue;
            };
            let (tag, user, socket) = (self.tag.clone(), self.user.clone(), socket.clone());
            let (method, master) = (self.method, self.master.clone());
            let key = (from, address.clone(), port);
            flows.deliver(key, data, &dispatcher, move || {
                let mut session = Session::new(tag, Some(from), Destination::udp(address.clone(), port));
                session.user = Some(user);
                let mut header = Vec::with_capacity(32);
                let _ = addr::encode(&mut header, &address, port);
                (session, SsReply { socket, to: from, method, master, header })
            });
        }
    }

    /// Reads and discards a key-dependent number of bytes (counting those already read) until EOF or
    /// the handshake deadline, then lets the caller close: where authentication failed stays hidden.
    async fn drain(&self, mut stream: BoxStream, already: usize, deadline: Instant) {
        let (base, jitter_max) = self.drain;
        let mut b = [0u8; 2];
        let _ = aws_lc_rs::rand::fill(&mut b);
        let left = (base + 16 + 38 + u16::from_le_bytes(b) as usize % jitter_max).saturating_sub(already);
        crate::proxy::discard(&mut stream, left, deadline).await;
    }
}

#[async_trait]
impl Inbound for ShadowsocksInbound {
    async fn accept(&self, conn: Accepted, dispatcher: &Arc<Dispatcher>) {
        let peer = conn.peer;
        let deadline = Instant::now() + dispatcher.policy(self.user.level).handshake;
        let mut ss = SsStream::new(conn.stream, self.method, &self.master);
        let mut head = BytesMut::with_capacity(512);
        let failure = loop {
            match addr::decode(&head, true) {
                Ok(Some((address, port, used))) => {
                    let rest = head.split_off(used).freeze();
                    let mut session = Session::new(self.tag.clone(), Some(peer), Destination::tcp(address, port));
                    session.user = Some(self.user.clone());
                    dispatcher.dispatch(session, Box::new(Prefixed::new(rest, ss))).await;
                    return;
                }
                Ok(None) if head.len() < MAX_HEADER => {}
                Ok(None) => break "address header too long".to_string(),
                Err(e) => break format!("failed to read address: {e}"),
            }
            match timeout_at(deadline, ss.read_buf(&mut head)).await {
                Ok(Ok(0)) => {
                    debug!(%peer, "shadowsocks: closed during the handshake");
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => break format!("failed to read address > {e}"),
                Err(_) => {
                    debug!(%peer, "shadowsocks: handshake timed out");
                    return;
                }
            }
        };
        info!(%peer, "shadowsocks: rejected: {failure}");
        let already = ss.raw_read();
        self.drain(ss.into_inner(), already, deadline).await;
    }

    fn tcp(&self) -> bool {
        self.tcp
    }

    fn udp(&self) -> bool {
        self.udp
    }

    async fn serve_udp(&self, socket: Arc<tokio::net::UdpSocket>, dispatcher: Arc<Dispatcher>) {
        self.serve_datagrams(socket, dispatcher).await
    }
}

/// Decrypts one datagram and splits its address header from the data; None for anything invalid.
pub fn open_datagram(method: Method, master: &[u8], packet: &[u8]) -> Option<(Address, u16, Bytes)> {
    let plain = codec::decode_packet(method, master, packet).ok()?;
    let (address, port, used) = addr::decode(&plain, true).ok()??;
    Some((address, port, plain.slice(used..)))
}

/// Seals `header ‖ data` as one datagram (any size: 4.34 panics past 2048 bytes, oxray does not).
pub fn seal_datagram(method: Method, master: &[u8], header: &[u8], data: &[u8]) -> BytesMut {
    let mut plain = Vec::with_capacity(header.len() + data.len());
    plain.extend_from_slice(header);
    plain.extend_from_slice(data);
    let mut out = BytesMut::with_capacity(plain.len() + 64);
    codec::encode_packet(method, master, &plain, &mut out);
    out
}

/// Replies of one inbound UDP flow: from the inbound's socket, headed by the destination as the client
/// wrote it (4.34).
struct SsReply {
    socket: Arc<tokio::net::UdpSocket>,
    to: std::net::SocketAddr,
    method: Method,
    master: Arc<[u8]>,
    header: Vec<u8>,
}

#[async_trait]
impl ReplySink for SsReply {
    async fn reply(&self, data: Bytes) -> io::Result<()> {
        let out = seal_datagram(self.method, &self.master, &self.header, &data);
        self.socket.send_to(&out, self.to).await.map(|_| ())
    }
}

/// The shadowsocks outbound.
pub struct ShadowsocksOutbound {
    servers: Vec<(crate::session::Address, u16, Method, Vec<u8>)>,
    dialer: Dialer,
    send_through: Option<std::net::IpAddr>,
    next: AtomicUsize,
}

impl ShadowsocksOutbound {
    /// Builds it from its settings, the outbound's `streamSettings` and `sendThrough`.
    pub fn new(
        config: &ShadowsocksClientConfig,
        stream: &StreamSettings,
        send_through: Option<std::net::IpAddr>,
    ) -> Self {
        let servers = config
            .servers
            .iter()
            .map(|s| (s.address.clone(), s.port, s.method, codec::master_key(&s.password, s.method.key_len())))
            .collect();
        let dialer = Dialer::new(stream, send_through).with_retries(&DIAL_WAITS);
        ShadowsocksOutbound { servers, dialer, send_through, next: AtomicUsize::new(0) }
    }
}

#[async_trait]
impl Outbound for ShadowsocksOutbound {
    /// Sends salt + the address header as a chunk of its own at once, as the 4.34 client does.
    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError> {
        let (address, port, method, master) =
            &self.servers[self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len().max(1)];
        let inner = self.dialer.dial(address, *port).await?;
        let mut ss = SsStream::new(inner, *method, master);
        let mut header = Vec::with_capacity(64);
        addr::encode(&mut header, &session.target.address, session.target.port)
            .map_err(|e| ProxyError::Refused(format!("shadowsocks: {e}")))?;
        ss.write_all(&header).await?;
        ss.flush().await?;
        Ok(Box::new(ss))
    }

    /// One UDP socket per flow, to the server's address and port (stream settings do not apply, 4.34).
    async fn connect_packet(&self, session: &Session) -> Result<BoxPacketConn, ProxyError> {
        let (address, port, method, master) =
            &self.servers[self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len().max(1)];
        let server = *crate::transport::tcp::resolve(address, *port, crate::transport::Resolve::Any)
            .await?
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no server address"))?;
        let bind = self.send_through.unwrap_or(if server.is_ipv4() {
            std::net::IpAddr::from([0, 0, 0, 0])
        } else {
            std::net::IpAddr::from([0u16; 8])
        });
        let socket = tokio::net::UdpSocket::bind((bind, 0)).await?;
        socket.connect(server).await?;
        let mut header = Vec::with_capacity(32);
        addr::encode(&mut header, &session.target.address, session.target.port)
            .map_err(|e| ProxyError::Refused(format!("shadowsocks: {e}")))?;
        Ok(Box::new(SsUdp {
            socket,
            method: *method,
            master: master.clone(),
            header,
            idle: session.policy.conn_idle,
            buf: tokio::sync::Mutex::new(vec![0u8; 65536].into_boxed_slice()),
        }))
    }
}

/// A UDP flow through a Shadowsocks server.
struct SsUdp {
    socket: tokio::net::UdpSocket,
    method: Method,
    master: Vec<u8>,
    header: Vec<u8>,
    idle: Duration,
    buf: tokio::sync::Mutex<Box<[u8]>>,
}

#[async_trait]
impl PacketConn for SsUdp {
    async fn send(&self, packet: Bytes) -> io::Result<()> {
        let out = seal_datagram(self.method, &self.master, &self.header, &packet);
        self.socket.send(&out).await.map(|_| ())
    }

    /// The reply's address header is parsed and discarded (4.34); invalid datagrams are skipped.
    async fn recv(&self) -> io::Result<Option<Bytes>> {
        let mut buf = self.buf.lock().await;
        loop {
            let n = match tokio::time::timeout(self.idle, self.socket.recv(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => return Ok(None),
            };
            match open_datagram(self.method, &self.master, &buf[..n]) {
                Some((_, _, data)) => return Ok(Some(data)),
                None => debug!("shadowsocks udp: dropping an invalid reply"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Writes `data` through an encrypting stream in `write_sizes` pieces and reads it back through a
    /// decrypting one into `read_size` buffers over a pipe of `pipe` bytes.
    /// `uninit`: read with `read_buf` into fresh room (not initialized: chunks are copied, not opened into it).
    fn roundtrip(
        method: Method,
        data: &[u8],
        write_size: usize,
        read_size: usize,
        pipe: usize,
        uninit: bool,
    ) -> io::Result<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let master = codec::master_key("pw", method.key_len());
            let (a, b) = tokio::io::duplex(pipe);
            let mut w = SsStream::new(a, method, &master);
            let mut r = SsStream::new(b, method, &master);
            let data = data.to_vec();
            let writer = tokio::spawn(async move {
                for piece in data.chunks(write_size) {
                    w.write_all(piece).await?;
                }
                w.shutdown().await?;
                Ok::<_, io::Error>(w)
            });
            let mut got = Vec::new();
            let mut buf = vec![0u8; read_size];
            loop {
                let n = if uninit {
                    let mut fresh = BytesMut::with_capacity(read_size);
                    let n = r.read_buf(&mut fresh).await?;
                    got.extend_from_slice(&fresh);
                    n
                } else {
                    let n = r.read(&mut buf).await?;
                    got.extend_from_slice(&buf[..n]);
                    n
                };
                if n == 0 {
                    break;
                }
            }
            writer.await.map_err(io::Error::other)??;
            Ok(got)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn stream_roundtrip_any_sizes(
            data in proptest::collection::vec(any::<u8>(), 0..200_000),
            write_size in 1usize..100_000,
            read_size in 1usize..100_000,
            pipe in 1usize..70_000,
            pick in 0..4u8,
            uninit: bool,
        ) {
            let m = [Method::Aes128Gcm, Method::Aes256Gcm, Method::Chacha20Poly1305, Method::None][pick as usize];
            prop_assert_eq!(roundtrip(m, &data, write_size, read_size, pipe, uninit).unwrap(), data);
        }
    }

    #[tokio::test]
    async fn truncated_chunk_is_an_error_and_data_before_it_arrives() {
        let master = codec::master_key("pw", 16);
        let mut wire = BytesMut::new();
        let mut enc = Encoder::new(Method::Aes128Gcm, &master);
        enc.encode(b"first", &mut wire);
        enc.encode(&[7u8; 1000], &mut wire);
        wire.truncate(wire.len() - 10);
        let mut r = SsStream::new(&wire[..], Method::Aes128Gcm, &master);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got, b"first");
    }

    #[tokio::test]
    async fn tampered_chunk_after_good_ones_fails_after_them() {
        let master = codec::master_key("pw", 16);
        let mut wire = BytesMut::new();
        let mut enc = Encoder::new(Method::Aes128Gcm, &master);
        enc.encode(b"good", &mut wire);
        enc.encode(b"evil", &mut wire);
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let mut r = SsStream::new(&wire[..], Method::Aes128Gcm, &master);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(got, b"good");
    }
}
