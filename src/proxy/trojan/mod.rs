//! `trojan`: inbound with fallbacks and outbound, TCP and UDP. The header codec is in [`codec`]; this module is
//! the tokio glue.

pub mod codec;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::io;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info};

use crate::config::{TrojanInboundConfig, TrojanOutboundConfig};
use crate::dispatch::Dispatcher;
use crate::proxy::fallback::Fallbacks;
use crate::proxy::prefixed::Prefixed;
use crate::proxy::udp::{FlowTable, ReplySink};
use crate::proxy::{BoxPacketConn, BoxStream, Inbound, Outbound, PacketConn, ProxyError};
use crate::session::{Address, Destination, Session, User};
use crate::transport::{Accepted, Dialer, StreamSettings};

/// Longest request header (a 255-byte domain).
const MAX_HEADER: usize = codec::HASH_LEN + 2 + 1 + 1 + 1 + 255 + 2 + 2;
/// How long the server waits for the first 58 bytes before deciding on a fallback (4.34 decides on
/// one read).
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// A UDP flow ends after this long without a datagram either way (4.34: 4 s after the last reply).
const UDP_FLOW_IDLE: Duration = Duration::from_secs(4);
/// Most UDP flows (destinations) one Trojan connection keeps at once.
const MAX_UDP_FLOWS: usize = 256;
const DIAL_WAITS: [Duration; 4] =
    [Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(800)];

/// The trojan inbound.
pub struct TrojanInbound {
    tag: Option<Arc<str>>,
    users: HashMap<[u8; codec::HASH_LEN], User>,
    fallbacks: Option<Fallbacks>,
}

impl TrojanInbound {
    /// Builds it for an inbound with this tag.
    pub fn new(tag: Option<String>, config: &TrojanInboundConfig) -> Self {
        let users = config
            .clients
            .iter()
            .map(|c| {
                (codec::password_hash(&c.password), User { email: c.email.as_deref().map(Arc::from), level: c.level })
            })
            .collect();
        TrojanInbound { tag: tag.map(Arc::from), users, fallbacks: Fallbacks::new(&config.fallbacks) }
    }
}

#[async_trait]
impl Inbound for TrojanInbound {
    async fn accept(&self, conn: Accepted, dispatcher: &Arc<Dispatcher>) {
        let Accepted { mut stream, peer, local, .. } = conn;
        let policy = dispatcher.policy(0);
        let deadline = Instant::now() + policy.handshake;
        let mut buf = BytesMut::with_capacity(2048);
        match timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        let short = (Instant::now() + FIRST_WAIT).min(deadline);
        while buf.len() < codec::HASH_LEN + 2 {
            match timeout_at(short, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        let user = if codec::looks_like_trojan(&buf) { self.users.get(&buf[..codec::HASH_LEN]).cloned() } else { None };
        let Some(user) = user else {
            match &self.fallbacks {
                Some(f) => f.serve(buf.to_vec(), stream, peer, local, &policy).await,
                None => info!(%peer, "trojan: not trojan protocol or not a valid user"),
            }
            return;
        };
        let (req, used) = loop {
            match codec::decode_request(&buf) {
                Ok(Some(r)) => break r,
                Ok(None) if buf.len() < MAX_HEADER => {}
                Ok(None) => return,
                Err(e) => {
                    info!(%peer, "trojan: bad address: {e}");
                    return;
                }
            }
            match timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        if req.cmd == codec::CMD_UDP {
            let rest = buf.split_off(used);
            self.serve_udp_conn(rest, stream, peer, user, dispatcher).await;
            return;
        }
        let rest = buf.split_off(used).freeze();
        let mut session = Session::new(self.tag.clone(), Some(peer), Destination::tcp(req.target.0, req.target.1));
        session.user = Some(user);
        dispatcher.dispatch(session, Box::new(Prefixed::new(rest, stream))).await;
    }
}

impl TrojanInbound {
    /// A UDP connection (command 3): every frame goes to the flow of its own destination; replies are
    /// framed with the destination as the client wrote it. Ends when the client closes, on a bad frame,
    /// or after the level's `connIdle` with nothing read and no flow open.
    async fn serve_udp_conn(
        &self,
        mut buf: BytesMut,
        stream: BoxStream,
        peer: std::net::SocketAddr,
        user: User,
        dispatcher: &Arc<Dispatcher>,
    ) {
        let idle = dispatcher.policy(user.level).conn_idle;
        let (mut r, w) = tokio::io::split(stream);
        let writer = Arc::new(tokio::sync::Mutex::new(w));
        let flows: Arc<FlowTable<(Address, u16)>> = FlowTable::new(MAX_UDP_FLOWS, UDP_FLOW_IDLE);
        loop {
            match codec::decode_udp_frame(&buf) {
                Ok(Some(f)) => {
                    let data = Bytes::copy_from_slice(&buf[f.payload.clone()]);
                    buf.advance(f.used);
                    let (tag, user, writer) = (self.tag.clone(), user.clone(), writer.clone());
                    let target = f.target.clone();
                    flows.deliver(f.target, data, dispatcher, move || {
                        let mut session = Session::new(tag, Some(peer), Destination::udp(target.0.clone(), target.1));
                        session.user = Some(user);
                        (session, TrojanReply { writer, target })
                    });
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    info!(%peer, "trojan: bad UDP frame: {e}");
                    return;
                }
            }
            match tokio::time::timeout(idle, r.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) if flows.is_empty() => return,
                Err(_) => {}
            }
        }
    }
}

/// Replies of one destination of a Trojan UDP connection.
struct TrojanReply {
    writer: Arc<tokio::sync::Mutex<WriteHalf<BoxStream>>>,
    target: (Address, u16),
}

#[async_trait]
impl ReplySink for TrojanReply {
    async fn reply(&self, data: Bytes) -> io::Result<()> {
        let mut out = Vec::with_capacity(data.len() + 300);
        codec::encode_udp_frames(&mut out, &self.target.0, self.target.1, &data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.writer.lock().await.write_all(&out).await
    }
}

/// The trojan outbound.
pub struct TrojanOutbound {
    servers: Vec<(Address, u16, [u8; codec::HASH_LEN])>,
    dialer: Dialer,
    next: AtomicUsize,
}

impl TrojanOutbound {
    /// Builds it from its settings, the outbound's `streamSettings` and `sendThrough`.
    pub fn new(config: &TrojanOutboundConfig, stream: &StreamSettings, send_through: Option<std::net::IpAddr>) -> Self {
        let servers =
            config.servers.iter().map(|s| (s.address.clone(), s.port, codec::password_hash(&s.password))).collect();
        let dialer = Dialer::new(stream, send_through).with_retries(&DIAL_WAITS);
        TrojanOutbound { servers, dialer, next: AtomicUsize::new(0) }
    }
}

impl TrojanOutbound {
    /// Dials the next server and sends the request header for `cmd` to the session's target.
    async fn open(&self, cmd: u8, session: &Session) -> Result<BoxStream, ProxyError> {
        let (address, port, hash) =
            &self.servers[self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len().max(1)];
        let mut stream = self.dialer.dial(address, *port).await?;
        let t = &session.target;
        let mut head = Vec::with_capacity(128);
        codec::encode_request(&mut head, hash, cmd, &t.address, t.port)
            .map_err(|e| ProxyError::Refused(format!("trojan: {e}")))?;
        stream.write_all(&head).await?;
        Ok(stream)
    }
}

#[async_trait]
impl Outbound for TrojanOutbound {
    /// Sends the header at once (4.34 sends it only with the first payload, which hangs
    /// server-speaks-first protocols).
    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError> {
        self.open(codec::CMD_CONNECT, session).await
    }

    /// One Trojan connection (command 3) per flow; every frame carries the flow's destination.
    async fn connect_packet(&self, session: &Session) -> Result<BoxPacketConn, ProxyError> {
        let stream = self.open(codec::CMD_UDP, session).await?;
        let t = &session.target;
        let (r, w) = tokio::io::split(stream);
        Ok(Box::new(TrojanPackets {
            reader: tokio::sync::Mutex::new((r, BytesMut::with_capacity(4096))),
            writer: tokio::sync::Mutex::new(w),
            target: (t.address.clone(), t.port),
            idle: session.policy.conn_idle,
        }))
    }
}

/// A UDP flow through a Trojan server.
struct TrojanPackets {
    reader: tokio::sync::Mutex<(ReadHalf<BoxStream>, BytesMut)>,
    writer: tokio::sync::Mutex<WriteHalf<BoxStream>>,
    target: (Address, u16),
    idle: Duration,
}

#[async_trait]
impl PacketConn for TrojanPackets {
    async fn send(&self, packet: Bytes) -> io::Result<()> {
        let mut out = Vec::with_capacity(packet.len() + 300);
        codec::encode_udp_frames(&mut out, &self.target.0, self.target.1, &packet)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.writer.lock().await.write_all(&out).await
    }

    /// The frame's address is parsed and discarded.
    async fn recv(&self) -> io::Result<Option<Bytes>> {
        let mut g = self.reader.lock().await;
        let (r, buf) = &mut *g;
        loop {
            match codec::decode_udp_frame(buf) {
                Ok(Some(f)) => {
                    let data = Bytes::copy_from_slice(&buf[f.payload.clone()]);
                    buf.advance(f.used);
                    return Ok(Some(data));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            match tokio::time::timeout(self.idle, r.read_buf(buf)).await {
                Ok(Ok(0)) | Err(_) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    debug!("trojan udp: read failed: {e}");
                    return Err(e);
                }
            }
        }
    }
}
