//! `trojan`: inbound with fallbacks and outbound, TCP. The header codec is in [`codec`]; this module is
//! the tokio glue.

pub mod codec;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};
use tracing::info;

use crate::config::{TrojanInboundConfig, TrojanOutboundConfig};
use crate::dispatch::Dispatcher;
use crate::proxy::fallback::Fallbacks;
use crate::proxy::prefixed::Prefixed;
use crate::proxy::{BoxStream, Inbound, Outbound, ProxyError};
use crate::session::{Address, Destination, Session, User};
use crate::transport::{Accepted, Dialer, StreamSettings};

/// Longest request header (a 255-byte domain).
const MAX_HEADER: usize = codec::HASH_LEN + 2 + 1 + 1 + 1 + 255 + 2 + 2;
/// How long the server waits for the first 58 bytes before deciding on a fallback (4.34 decides on
/// one read).
const FIRST_WAIT: Duration = Duration::from_millis(100);
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
            info!(%peer, "trojan: UDP (command 3) is not supported yet by oxray");
            return;
        }
        let rest = buf.split_off(used).freeze();
        let mut session = Session::new(self.tag.clone(), Some(peer), Destination::tcp(req.target.0, req.target.1));
        session.user = Some(user);
        dispatcher.dispatch(session, Box::new(Prefixed::new(rest, stream))).await;
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

#[async_trait]
impl Outbound for TrojanOutbound {
    /// Sends the header at once (4.34 sends it only with the first payload, which hangs
    /// server-speaks-first protocols).
    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError> {
        let (address, port, hash) =
            &self.servers[self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len().max(1)];
        let mut stream = self.dialer.dial(address, *port).await?;
        let mut head = Vec::with_capacity(128);
        codec::encode_request(&mut head, hash, codec::CMD_CONNECT, &session.target.address, session.target.port)
            .map_err(|e| ProxyError::Refused(format!("trojan: {e}")))?;
        stream.write_all(&head).await?;
        Ok(stream)
    }
}
