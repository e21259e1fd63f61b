//! The VMess client (outbound): dials a `vnext` server, sends the request header at once and returns
//! the body stream.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;

use super::body::{BodySecurity, ChunkDecoder, ChunkEncoder, OPT_CHUNK_MASKING, OPT_CHUNK_STREAM, OPT_GLOBAL_PADDING};
use super::header::{
    Command, HeaderError, MUX_DOMAIN, RequestHeader, ResponseDecoder, create_auth_id, encode_command, response_keys,
    seal_aead_header, seal_legacy_header,
};
use super::kdf;
use super::stream::VmessStream;
use super::unix_now;
use crate::config::{VmessOutboundConfig, VmessSecurity};
use crate::proxy::{BoxPacketConn, BoxStream, Outbound, PacketConn, ProxyError};
use crate::session::{Address, Destination, Network, Session};
use crate::transport::{Dialer, StreamSettings};

/// Shorter than V2Ray's 200..800 ms schedule: callers that keep a link up (the reverse bridge, mux pools)
/// have their own back-off, and a long inner retry would hide a server that is back.
const DIAL_WAITS: [Duration; 3] = [Duration::from_millis(50), Duration::from_millis(100), Duration::from_millis(200)];

/// A client identity prepared for sending requests.
#[derive(Clone)]
pub struct ClientUser {
    cmd_key: [u8; 16],
    /// Primary ID, then alter IDs (legacy authentication picks a random alter ID when there are any).
    alter_ids: Vec<[u8; 16]>,
    primary: [u8; 16],
    security: BodySecurity,
    options: u8,
    aead: bool,
}

/// Resolves `auto` as 4.34 does: AES-GCM where the CPU has AES instructions, else ChaCha20-Poly1305.
pub fn auto_security() -> BodySecurity {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("aes") {
            return BodySecurity::Aes128Gcm;
        }
        BodySecurity::Chacha20Poly1305
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("aes") {
            return BodySecurity::Aes128Gcm;
        }
        BodySecurity::Chacha20Poly1305
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        BodySecurity::Chacha20Poly1305
    }
}

impl ClientUser {
    /// Prepares a user: AEAD header iff `alter_id == 0`; options exactly as 4.34 sends them.
    pub fn new(id: &[u8; 16], alter_id: u16, security: VmessSecurity) -> Self {
        let (security, options) = match security {
            VmessSecurity::Aes128Gcm => (BodySecurity::Aes128Gcm, 0x0d),
            VmessSecurity::Chacha20Poly1305 => (BodySecurity::Chacha20Poly1305, 0x0d),
            VmessSecurity::Auto => (auto_security(), 0x0d),
            VmessSecurity::None => (BodySecurity::None, OPT_CHUNK_STREAM | OPT_CHUNK_MASKING),
            VmessSecurity::Zero => (BodySecurity::None, 0x00),
        };
        debug_assert!(options & OPT_GLOBAL_PADDING == 0 || options & OPT_CHUNK_MASKING != 0);
        ClientUser {
            cmd_key: kdf::cmd_key(id),
            alter_ids: kdf::alter_ids(id, alter_id),
            primary: *id,
            security,
            options,
            aead: alter_id == 0,
        }
    }

    /// Starts a session over `inner` to `target` at unix time `now`: the returned stream has the request
    /// header queued (flush it to send it at once).
    pub fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        inner: S,
        target: &Destination,
        now: i64,
    ) -> Result<VmessStream<S>, HeaderError> {
        let mut r = [0u8; 33 + 8 + 4 + 2];
        let _ = aws_lc_rs::rand::fill(&mut r);
        let mut body_key = [0u8; 16];
        body_key.copy_from_slice(&r[..16]);
        let mut body_iv = [0u8; 16];
        body_iv.copy_from_slice(&r[16..32]);
        let v = r[32];
        let command = match (target.network, &target.address) {
            (Network::Udp, _) => Command::Udp,
            (_, Address::Domain(d)) if d.as_ref() == MUX_DOMAIN => Command::Mux,
            _ => Command::Tcp,
        };
        let header = RequestHeader {
            version: 1,
            body_iv,
            body_key,
            v,
            options: self.options,
            security: self.security.wire(),
            command,
            port: target.port,
            address: target.address.clone(),
        };
        let mut cmd = Vec::with_capacity(128);
        encode_command(&header, r[45] % 16, &mut cmd)?;
        let mut wire = Vec::with_capacity(cmd.len() + 64);
        if self.aead {
            let mut rand4 = [0u8; 4];
            rand4.copy_from_slice(&r[41..45]);
            let mut nonce = [0u8; 8];
            nonce.copy_from_slice(&r[33..41]);
            let auth_id = create_auth_id(&self.cmd_key, now, rand4);
            seal_aead_header(&self.cmd_key, &auth_id, &nonce, &cmd, &mut wire);
        } else {
            // Go skews legacy timestamps by [-30, +29] s and authenticates with a random alter ID.
            let ts = (now + (r[46] % 60) as i64 - 30).max(0) as u64;
            let auth = if self.alter_ids.is_empty() {
                self.primary
            } else {
                self.alter_ids[u16::from_be_bytes([r[44], r[45]]) as usize % self.alter_ids.len()]
            };
            seal_legacy_header(&auth, &self.cmd_key, ts, &cmd, &mut wire);
        }
        let (resp_key, resp_iv) = response_keys(self.aead, &body_key, &body_iv);
        let udp = command == Command::Udp;
        Ok(VmessStream::client(
            inner,
            wire,
            ChunkEncoder::new(self.security, self.options, udp, &body_key, &body_iv),
            ChunkDecoder::new(self.security, self.options, udp, &resp_key, &resp_iv),
            ResponseDecoder::new(self.aead, resp_key, resp_iv, v),
        ))
    }
}

struct Server {
    address: Address,
    port: u16,
    users: Vec<ClientUser>,
}

/// The VMess outbound.
pub struct VmessOutbound {
    servers: Vec<Server>,
    next: AtomicUsize,
    dialer: Dialer,
}

impl VmessOutbound {
    /// Builds it from validated settings (at least one server, each with at least one user).
    pub fn new(cfg: VmessOutboundConfig, stream: &StreamSettings, send_through: Option<IpAddr>) -> Self {
        let servers = cfg
            .servers
            .into_iter()
            .map(|s| Server {
                address: s.address,
                port: s.port,
                users: s.users.iter().map(|u| ClientUser::new(&u.id.0, u.alter_id, u.security)).collect(),
            })
            .collect();
        VmessOutbound {
            servers,
            next: AtomicUsize::new(0),
            dialer: Dialer::new(stream, send_through).with_retries(&DIAL_WAITS),
        }
    }
}

fn random_index(n: usize) -> usize {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u32::from_be_bytes(b) as usize % n.max(1)
}

impl VmessOutbound {
    /// Dials the next server and sends the request header for `target` at once.
    async fn open(&self, target: &Destination) -> Result<VmessStream<BoxStream>, ProxyError> {
        if self.servers.is_empty() {
            return Err(ProxyError::Refused("vmess: no server configured".into()));
        }
        // Round-robin servers and a random user of the server, as V2Ray's picker does.
        let server = &self.servers[self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len()];
        let Some(user) = server.users.get(random_index(server.users.len())) else {
            return Err(ProxyError::Refused("vmess: server has no user".into()));
        };
        let inner = self.dialer.dial(&server.address, server.port).await?;
        let mut stream =
            user.handshake(inner, target, unix_now()).map_err(|e| ProxyError::Refused(format!("vmess: {e}")))?;
        // The request header goes out now, with no payload: the reverse bridge deadlocks otherwise.
        stream.flush().await?;
        Ok(stream)
    }
}

#[async_trait]
impl Outbound for VmessOutbound {
    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError> {
        let mut stream = self.open(&session.target).await?;
        if let Some(wear) = &session.wear {
            // A carrier: the Mux connection above retires it before a nonce counter runs out.
            stream.set_wear(wear.clone());
        }
        Ok(Box::new(stream))
    }

    async fn connect_packet(&self, session: &Session) -> Result<BoxPacketConn, ProxyError> {
        let target = Destination::udp(session.target.address.clone(), session.target.port);
        let stream = self.open(&target).await?;
        Ok(Box::new(PacketStream::new(stream)))
    }
}

/// Largest datagram carried (Go drops packets whose chunk would exceed its 2048-byte buffer; oxray
/// carries up to one chunk).
const MAX_DATAGRAM: usize = super::body::MAX_CHUNK_PAYLOAD;

/// A VMess UDP session (command 2): one chunk per datagram, in both directions.
pub struct PacketStream<S> {
    reader: Mutex<(ReadHalf<VmessStream<S>>, Vec<u8>)>,
    writer: Mutex<WriteHalf<VmessStream<S>>>,
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> PacketStream<S> {
    /// Wraps a stream whose codecs use packet framing. A read with a buffer of a whole chunk returns
    /// exactly one chunk, and a write of at most one chunk's payload is sealed as one chunk.
    pub fn new(stream: VmessStream<S>) -> Self {
        let (r, w) = tokio::io::split(stream);
        PacketStream { reader: Mutex::new((r, vec![0u8; 65536])), writer: Mutex::new(w) }
    }

    /// Sends the end chunk and half-closes.
    pub async fn close(&self) {
        let _ = self.writer.lock().await.shutdown().await;
    }
}

#[async_trait]
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> PacketConn for PacketStream<S> {
    async fn send(&self, packet: Bytes) -> std::io::Result<()> {
        if packet.len() > MAX_DATAGRAM || packet.is_empty() {
            // An empty chunk would end the stream; oversized ones Go drops too.
            return Ok(());
        }
        let mut w = self.writer.lock().await;
        w.write_all(&packet).await?;
        w.flush().await
    }

    async fn recv(&self) -> std::io::Result<Option<Bytes>> {
        let mut guard = self.reader.lock().await;
        let (r, buf) = &mut *guard;
        let n = r.read(buf).await?;
        Ok((n > 0).then(|| Bytes::copy_from_slice(&buf[..n])))
    }
}
