//! The VMess server (inbound): authenticates the request header, then dispatches the body stream.
//! Every refused request is drained silently (Go's `drainConnection`), so a probe cannot tell a wrong
//! key from a slow server.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info};

use super::body::{BodySecurity, ChunkDecoder, ChunkEncoder};
use super::header::{Command, HeaderError, Progress, ServerHandshake, encode_response, response_keys};
use super::outbound::PacketStream;
use super::stream::VmessStream;
use super::unix_now;
use super::validator::Validator;
use crate::config::VmessInboundConfig;
use crate::dispatch::Dispatcher;
use crate::proxy::{BoxStream, Inbound, relay_packets};
use crate::session::{Destination, Session};
use crate::transport::Accepted;

/// Largest request header accepted (AEAD length is a u16).
const MAX_HEADER: usize = 16 + 18 + 8 + 65535 + 16;

/// Why an inbound could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VmessError {
    /// No `clients`.
    #[error("vmess inbound has no clients")]
    NoClients,
}

/// The VMess inbound.
pub struct VmessInbound {
    tag: Option<Arc<str>>,
    validator: Arc<Validator>,
    disable_insecure: bool,
}

impl VmessInbound {
    /// Builds it for an inbound with this tag.
    pub fn new(tag: Option<String>, cfg: VmessInboundConfig) -> Result<Self, VmessError> {
        if cfg.clients.is_empty() {
            return Err(VmessError::NoClients);
        }
        let validator = Arc::new(Validator::new(&cfg));
        validator.maintain();
        Ok(VmessInbound { tag: tag.map(Arc::from), validator, disable_insecure: cfg.disable_insecure_encryption })
    }

    /// Go's drain size: a per-user-set base (from the behaviour seed) + 16 + 38 + a small random part.
    fn drain_size(&self) -> usize {
        let seed = self.validator.behavior_seed();
        let base = (seed % 3266) as usize;
        let rand_max = ((seed >> 32) % 64 + 1) as usize;
        let mut b = [0u8; 2];
        let _ = aws_lc_rs::rand::fill(&mut b);
        base + 16 + 38 + u16::from_be_bytes(b) as usize % rand_max
    }

    /// Reads and discards up to the drain size (counting what was already read), until EOF or the
    /// handshake deadline, then lets the caller close.
    async fn drain(&self, stream: &mut BoxStream, already: usize, deadline: Instant) {
        crate::proxy::discard(stream, self.drain_size().saturating_sub(already), deadline).await;
    }
}

#[async_trait]
impl Inbound for VmessInbound {
    async fn accept(&self, conn: Accepted, dispatcher: &Arc<Dispatcher>) {
        let Accepted { mut stream, peer, .. } = conn;
        let deadline = Instant::now() + dispatcher.policy(0).handshake;
        let mut buf: Vec<u8> = Vec::with_capacity(512);
        let mut hs = ServerHandshake::new(&self.validator, unix_now());
        let outcome = loop {
            match hs.step(&buf) {
                Ok(Progress::Need(n)) => {
                    if n > MAX_HEADER {
                        break Err(HeaderError::Truncated);
                    }
                    let room = (n - buf.len().min(n)).max(4096).min(MAX_HEADER - buf.len());
                    let at = buf.len();
                    buf.resize(at + room, 0);
                    let r = timeout_at(deadline, stream.read(&mut buf[at..])).await;
                    match r {
                        Ok(Ok(k)) if k > 0 => buf.truncate(at + k),
                        Ok(Ok(_)) => {
                            debug!(%peer, "vmess: connection closed during the handshake");
                            return;
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, "vmess: read failed during the handshake: {e}");
                            return;
                        }
                        Err(_) => {
                            info!(%peer, "vmess: handshake timed out");
                            return;
                        }
                    }
                }
                Ok(Progress::Done(req, used)) => break Ok((req, used)),
                Err(e) => break Err(e),
            }
        };
        let (req, used) = match outcome {
            Ok(r) => r,
            Err(e) => {
                info!(%peer, "vmess: invalid request: {e}");
                self.drain(&mut stream, buf.len(), deadline).await;
                return;
            }
        };
        let h = &req.header;
        let Some(security) = h.body_security() else {
            // Legacy CFB bodies are not implemented: refuse like any bad request, not by closing at once.
            info!(%peer, "vmess: unsupported body security");
            self.drain(&mut stream, buf.len(), deadline).await;
            return;
        };
        if self.disable_insecure && security == BodySecurity::None {
            info!(%peer, "vmess: client is using insecure encryption");
            self.drain(&mut stream, buf.len(), deadline).await;
            return;
        }
        let (resp_key, resp_iv) = response_keys(req.aead, &h.body_key, &h.body_iv);
        let mut response = Vec::with_capacity(64);
        encode_response(req.aead, &resp_key, &resp_iv, h.v, &mut response);
        let udp = h.command == Command::Udp;
        let target =
            if udp { Destination::udp(h.address.clone(), h.port) } else { Destination::tcp(h.address.clone(), h.port) };
        let mut server_stream = VmessStream::server(
            stream,
            &buf[used..],
            ChunkDecoder::new(security, h.options, udp, &h.body_key, &h.body_iv),
            ChunkEncoder::new(security, h.options, udp, &resp_key, &resp_iv),
            response,
        );
        let user = self.validator.user(req.user).clone();
        let level = user.level;
        let mut session = Session::new(self.tag.clone(), Some(peer), target);
        session.user = Some(user);
        // Any connection may turn out to be a carrier (a reverse tunnel, a Mux connection): its chunk
        // counts are there for whoever runs Mux over it.
        let wear = crate::session::Wear::new();
        server_stream.set_wear(wear.clone());
        session.wear = Some(wear);
        if udp {
            let policy = dispatcher.policy(level);
            match dispatcher.connect_packet(session).await {
                Ok(conn) => {
                    let client = PacketStream::new(server_stream);
                    relay_packets(&client, conn.as_ref(), policy.downlink_only).await;
                    client.close().await;
                }
                Err(e) => info!(%peer, "vmess: UDP session refused: {e}"),
            }
            return;
        }
        dispatcher.dispatch(session, Box::new(server_stream)).await;
    }
}
