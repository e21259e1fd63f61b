//! `http`: the HTTP proxy inbound (CONNECT and plain forwarding) and the CONNECT outbound. The message
//! rules are in [`codec`]; this module is the tokio glue.

pub mod codec;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info};

use self::codec::{Body, Chunked, HttpError, RequestHead, Target};
use crate::config::{HttpInboundConfig, LevelPolicy, ProxyClientConfig, ProxyServer};
use crate::dispatch::Dispatcher;
use crate::proxy::prefixed::{Prefixed, ReadError, read_until};
use crate::proxy::{AsyncStream, BoxStream, Inbound, Outbound, ProxyError};
use crate::session::{Address, Destination, Session, User};
use crate::transport::{Accepted, Dialer, StreamSettings};

/// Buffer between the inbound and the dispatched upstream flow of one forwarded request.
const PIPE: usize = 64 * 1024;
/// Outbound dial schedule, as V2Ray's http client: 5 attempts, backing off from 100 ms.
const DIAL_WAITS: [Duration; 4] =
    [Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(800)];

/// The http inbound.
pub struct HttpInbound {
    tag: Option<Arc<str>>,
    config: HttpInboundConfig,
    /// base64("user:pass") → user.
    credentials: HashMap<String, String>,
}

impl HttpInbound {
    /// Builds it for an inbound with this tag.
    pub fn new(tag: Option<String>, config: HttpInboundConfig) -> Self {
        let credentials = config
            .accounts
            .iter()
            .map(|a| (codec::base64(format!("{}:{}", a.user, a.pass).as_bytes()), a.user.clone()))
            .collect();
        HttpInbound { tag: tag.map(Arc::from), config, credentials }
    }

    fn adjust(&self) -> impl FnOnce(&mut LevelPolicy) + use<> {
        let timeout = self.config.timeout.filter(|_| self.config.user_level == 0);
        move |p: &mut LevelPolicy| {
            if let Some(t) = timeout {
                p.conn_idle = t;
            }
        }
    }

    /// Serves one client connection: requests until it closes, a CONNECT takes it over.
    pub async fn serve<S: AsyncStream>(&self, mut stream: S, peer: SocketAddr, dispatcher: &Arc<Dispatcher>) {
        let policy = dispatcher.policy(self.config.user_level);
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            // Re-armed per request: it is also the idle limit of a kept-alive connection (and what
            // `Keep-Alive: timeout=` advertises).
            let deadline = Instant::now() + policy.handshake;
            let req = match read_until(&mut stream, &mut buf, codec::MAX_HEAD, deadline, codec::decode_request).await {
                Ok(r) => r,
                Err(ReadError::Eof) => return,
                Err(e) => {
                    debug!(%peer, "http: no request: {e}");
                    return;
                }
            };
            let user = match self.authorize(&req) {
                Ok(u) => u,
                Err(()) => {
                    let _ = stream.write_all(codec::RESP_407).await;
                    info!(%peer, "http: proxy authentication failed");
                    return;
                }
            };
            let target = match codec::target(&req) {
                Ok(t) => t,
                Err(e) => {
                    info!(%peer, "http: {e}");
                    let _ = stream.write_all(codec::RESP_400).await;
                    return;
                }
            };
            let (host, port, authority, path) = match target {
                Target::Connect(host, port) => {
                    if stream.write_all(codec::RESP_CONNECTED).await.is_err() {
                        return;
                    }
                    let session = self.session(peer, host, port, user);
                    let rest = buf.split().freeze();
                    dispatcher.dispatch_with(session, Box::new(Prefixed::new(rest, stream)), self.adjust()).await;
                    return;
                }
                Target::Forward { host, port, authority, path } => (host, port, authority, path),
                Target::Origin if self.config.allow_transparent => {
                    let Some(h) = codec::header(&req.headers, "host").map(str::to_string) else {
                        let _ = stream.write_all(codec::RESP_400).await;
                        return;
                    };
                    match codec::split_authority(&h, 80) {
                        Ok((host, port)) => (host, port, h, req.target.clone()),
                        Err(_) => {
                            let _ = stream.write_all(codec::RESP_400).await;
                            return;
                        }
                    }
                }
                Target::Origin => {
                    let _ = stream.write_all(codec::RESP_400).await;
                    return;
                }
            };
            let session = self.session(peer, host, port, user);
            match self.forward(&mut stream, &mut buf, &req, &authority, &path, session, dispatcher, &policy).await {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    debug!(%peer, "http: forwarding ended: {e}");
                    return;
                }
            }
        }
    }

    fn authorize(&self, req: &RequestHead) -> Result<Option<String>, ()> {
        if self.credentials.is_empty() {
            return Ok(None);
        }
        let given = codec::header(&req.headers, "proxy-authorization").and_then(|v| v.strip_prefix("Basic "));
        match given.and_then(|g| self.credentials.get(g.trim())) {
            Some(user) => Ok(Some(user.clone())),
            None => Err(()),
        }
    }

    fn session(&self, peer: SocketAddr, host: Address, port: u16, user: Option<String>) -> Session {
        let mut s = Session::new(self.tag.clone(), Some(peer), Destination::tcp(host, port));
        if user.is_some() || self.config.user_level != 0 {
            s.user = Some(User { email: user.map(|u| Arc::from(u.as_str())), level: self.config.user_level });
        }
        s
    }

    /// One plain request on a new upstream flow; returns whether the client connection is kept.
    #[allow(clippy::too_many_arguments)]
    async fn forward<S: AsyncStream>(
        &self,
        stream: &mut S,
        buf: &mut BytesMut,
        req: &RequestHead,
        authority: &str,
        path: &str,
        session: Session,
        dispatcher: &Arc<Dispatcher>,
        policy: &LevelPolicy,
    ) -> Result<bool, ForwardError> {
        let body = codec::request_body(req)?;
        let (mut ours, theirs) = tokio::io::duplex(PIPE);
        let flow = dispatcher.dispatch_with(session, Box::new(theirs), self.adjust());
        let idle = policy.conn_idle;
        let keep_secs = policy.handshake.as_secs().max(1);
        let exchange = async move {
            let mut head = Vec::with_capacity(1024);
            codec::rewrite_request(req, authority, path, body, &mut head);
            let sent = async {
                ours.write_all(&head).await?;
                copy_body(stream, buf, &mut ours, body, idle).await
            };
            if let Err(e) = sent.await {
                // The upstream flow was refused or died before taking the request.
                debug!("http: request not delivered upstream: {e}");
                stream.write_all(codec::RESP_503).await?;
                return Ok(false);
            }
            let mut rbuf = BytesMut::with_capacity(4096);
            let deadline = Instant::now() + idle;
            let resp = match read_until(&mut ours, &mut rbuf, codec::MAX_HEAD, deadline, codec::decode_response).await {
                Ok(r) => r,
                Err(e) => {
                    debug!("http: no response from upstream: {e}");
                    stream.write_all(codec::RESP_503).await?;
                    return Ok(false);
                }
            };
            let rbody = codec::response_body(&req.method, &resp)?;
            let keep = codec::client_keep_alive(req) && rbody != Body::UntilClose;
            head.clear();
            codec::rewrite_response(&resp, rbody, keep.then_some(keep_secs), &mut head);
            stream.write_all(&head).await?;
            copy_body(&mut ours, &mut rbuf, stream, rbody, idle).await?;
            stream.flush().await?;
            Ok::<bool, ForwardError>(keep)
        };
        let (_, r) = tokio::join!(flow, exchange);
        r
    }
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("{0}")]
    Http(#[from] HttpError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Copies one body from `pre` (bytes already read) then `from` to `to`, as framed by `body`; leaves
/// any bytes past the body in `pre`.
async fn copy_body<R, W>(
    from: &mut R,
    pre: &mut BytesMut,
    to: &mut W,
    body: Body,
    idle: Duration,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "body stalled");
    let mut chunk = vec![0u8; 16 * 1024];
    match body {
        Body::Empty => Ok(()),
        Body::Length(mut left) => {
            let take = (pre.len() as u64).min(left) as usize;
            to.write_all(&pre[..take]).await?;
            pre.advance(take);
            left -= take as u64;
            while left > 0 {
                let want = (chunk.len() as u64).min(left) as usize;
                let n = tokio::time::timeout(idle, from.read(&mut chunk[..want])).await.map_err(|_| timed_out())??;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                to.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
            Ok(())
        }
        Body::Chunked => {
            let mut scanner = Chunked::default();
            loop {
                if !pre.is_empty() {
                    let end = scanner.feed(pre).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                    let n = end.unwrap_or(pre.len());
                    to.write_all(&pre[..n]).await?;
                    pre.advance(n);
                    if end.is_some() {
                        return Ok(());
                    }
                }
                let n = tokio::time::timeout(idle, from.read(&mut chunk)).await.map_err(|_| timed_out())??;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                pre.extend_from_slice(&chunk[..n]);
            }
        }
        Body::UntilClose => {
            to.write_all(pre).await?;
            pre.clear();
            loop {
                let n = tokio::time::timeout(idle, from.read(&mut chunk)).await.map_err(|_| timed_out())??;
                if n == 0 {
                    return Ok(());
                }
                to.write_all(&chunk[..n]).await?;
            }
        }
    }
}

#[async_trait]
impl Inbound for HttpInbound {
    async fn accept(&self, conn: Accepted, dispatcher: &Arc<Dispatcher>) {
        self.serve(conn.stream, conn.peer, dispatcher).await
    }
}

/// The http outbound: a CONNECT tunnel through an HTTP proxy.
pub struct HttpOutbound {
    servers: Vec<ProxyServer>,
    dialer: Dialer,
    next: AtomicUsize,
}

impl HttpOutbound {
    /// Builds it from its settings, the outbound's `streamSettings` and `sendThrough`.
    pub fn new(config: ProxyClientConfig, stream: &StreamSettings, send_through: Option<IpAddr>) -> Self {
        let dialer = Dialer::new(stream, send_through).with_retries(&DIAL_WAITS);
        HttpOutbound { servers: config.servers, dialer, next: AtomicUsize::new(0) }
    }
}

#[async_trait]
impl Outbound for HttpOutbound {
    /// Sends CONNECT at once (4.34 waits for the client's first bytes, which hangs server-first
    /// protocols) and keeps any bytes the proxy sent right after its 200 (4.34 loses them).
    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError> {
        let server = &self.servers[self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len().max(1)];
        let mut stream = self.dialer.dial(&server.address, server.port).await?;
        let t = &session.target;
        let authority = format!("{}:{}", t.address, t.port);
        let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if !server.users.is_empty() {
            let mut b = [0u8; 4];
            let _ = aws_lc_rs::rand::fill(&mut b);
            let u = &server.users[u32::from_le_bytes(b) as usize % server.users.len()];
            let cred = codec::base64(format!("{}:{}", u.user, u.pass).as_bytes());
            head.push_str(&format!("Proxy-Authorization: Basic {cred}\r\n"));
        }
        head.push_str("Proxy-Connection: Keep-Alive\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let deadline = Instant::now() + session.policy.handshake;
        let resp = read_until(&mut stream, &mut buf, codec::MAX_HEAD, deadline, codec::decode_response).await.map_err(
            |e| match e {
                ReadError::Io(e) => ProxyError::Io(e),
                e => ProxyError::Refused(format!("http proxy: {e}")),
            },
        )?;
        if resp.status != 200 {
            return Err(ProxyError::Refused(format!(
                "Proxy responded with non 200 code: {} {}",
                resp.status, resp.reason
            )));
        }
        Ok(Box::new(Prefixed::new(buf.freeze(), stream)))
    }
}
