//! `socks`: the SOCKS4/4a/5 inbound (CONNECT, UDP ASSOCIATE) and the SOCKS5 outbound (TCP, UDP).
//! The message codec is in [`codec`]; this module is the tokio glue.

pub mod codec;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info};

use self::codec::{Hello, SocksError};
use crate::config::{LevelPolicy, ProxyClientConfig, ProxyServer, SocksInboundConfig};
use crate::dispatch::Dispatcher;
use crate::proxy::prefixed::{Prefixed, ReadError, read_until};
use crate::proxy::{BoxPacketConn, BoxStream, Inbound, Outbound, PacketConn, ProxyError};
use crate::session::{Address, Destination, Session, User};
use crate::transport::{Accepted, Dialer, Resolve, StreamSettings, tcp};

/// Largest handshake message read (a SOCKS4a request with two 2048-byte fields, with room).
const MAX_HANDSHAKE: usize = 4200;
/// A UDP flow ends after this long without a datagram either way (4.34: 4 s after the last reply).
const UDP_FLOW_IDLE: Duration = Duration::from_secs(4);
/// Most UDP flows one inbound keeps at once; datagrams that would open more are dropped.
const MAX_UDP_FLOWS: usize = 1024;
/// Datagrams queued per flow while its outbound is being opened.
const FLOW_QUEUE: usize = 64;
/// Outbound dial schedule, as V2Ray's socks client: 5 attempts, backing off from 100 ms.
const DIAL_WAITS: [Duration; 4] =
    [Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(800)];

/// Client IPs holding a live UDP ASSOCIATE on one inbound, with how many.
type Associations = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The socks inbound.
pub struct SocksInbound {
    tag: Option<Arc<str>>,
    config: SocksInboundConfig,
    listen: IpAddr,
    accounts: HashMap<Bytes, Bytes>,
    associations: Associations,
}

impl SocksInbound {
    /// Builds it for an inbound with this tag, listening on `listen` (the BND address of replies).
    pub fn new(tag: Option<String>, listen: IpAddr, config: SocksInboundConfig) -> Self {
        let accounts = config
            .accounts
            .iter()
            .map(|a| (Bytes::from(a.user.clone().into_bytes()), Bytes::from(a.pass.clone().into_bytes())))
            .collect();
        SocksInbound { tag: tag.map(Arc::from), config, listen, accounts, associations: Arc::default() }
    }

    /// Runs one TCP connection: handshake, then CONNECT relay or a UDP association.
    pub async fn serve<S>(&self, mut stream: S, peer: SocketAddr, local: SocketAddr, dispatcher: &Arc<Dispatcher>)
    where
        S: crate::proxy::AsyncStream,
    {
        let deadline = Instant::now() + dispatcher.policy(self.config.user_level).handshake;
        match self.handshake(&mut stream, peer, local, deadline).await {
            Ok(Some((step, rest))) => match step {
                Step::Connect { target, user } => {
                    let mut session = Session::new(self.tag.clone(), Some(peer), Destination::tcp(target.0, target.1));
                    session.user = user;
                    let timeout = self.config.timeout.filter(|_| self.config.user_level == 0);
                    dispatcher
                        .dispatch_with(session, Box::new(Prefixed::new(rest, stream)), move |p: &mut LevelPolicy| {
                            if let Some(t) = timeout {
                                p.conn_idle = t;
                            }
                        })
                        .await;
                }
                Step::Associate => self.hold_association(stream, peer).await,
            },
            Ok(None) => {}
            Err(e) => info!(%peer, "socks: handshake failed: {e}"),
        }
    }

    fn user(&self, name: Option<Bytes>) -> Option<User> {
        match name {
            Some(n) => Some(User {
                email: Some(Arc::from(String::from_utf8_lossy(&n).as_ref())),
                level: self.config.user_level,
            }),
            None if self.config.user_level != 0 => Some(User { email: None, level: self.config.user_level }),
            None => None,
        }
    }

    /// The handshake; `Ok(None)` when a refusal reply was sent and the connection should close.
    async fn handshake<S: crate::proxy::AsyncStream>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
        local: SocketAddr,
        deadline: Instant,
    ) -> Result<Option<(Step, BytesMut)>, ReadError<SocksError>> {
        let mut buf = BytesMut::with_capacity(512);
        let hello = read_until(stream, &mut buf, MAX_HANDSHAKE, deadline, codec::decode_hello).await?;
        let methods = match hello {
            Hello::V4 { cmd, address, port } => {
                let granted = !self.config.password && cmd == codec::CMD_CONNECT;
                stream.write_all(&codec::reply4(granted)).await.map_err(ReadError::Io)?;
                if !granted {
                    debug!(%peer, cmd, "socks4: refused");
                    return Ok(None);
                }
                return Ok(Some((Step::Connect { target: (address, port), user: self.user(None) }, buf)));
            }
            Hello::V5 { methods } => methods,
        };
        let want = if self.config.password { codec::METHOD_PASSWORD } else { codec::METHOD_NONE };
        if !methods.contains(&want) {
            stream.write_all(&[codec::V5, codec::METHOD_REFUSED]).await.map_err(ReadError::Io)?;
            debug!(%peer, "socks: no acceptable auth method");
            return Ok(None);
        }
        stream.write_all(&[codec::V5, want]).await.map_err(ReadError::Io)?;
        let mut user = None;
        if self.config.password {
            let (name, pass) = read_until(stream, &mut buf, MAX_HANDSHAKE, deadline, codec::decode_userpass).await?;
            if self.accounts.get(&name) != Some(&pass) {
                stream.write_all(&[1, 0xff]).await.map_err(ReadError::Io)?;
                info!(%peer, "socks: invalid username or password");
                return Ok(None);
            }
            stream.write_all(&[1, 0]).await.map_err(ReadError::Io)?;
            user = Some(name);
        }
        let req = read_until(stream, &mut buf, MAX_HANDSHAKE, deadline, codec::decode_request).await?;
        let Some(target) = req.target.filter(|_| req.cmd != codec::CMD_UDP || self.config.udp) else {
            stream.write_all(&codec::REPLY_NOT_SUPPORTED).await.map_err(ReadError::Io)?;
            debug!(%peer, cmd = req.cmd, "socks: command not supported");
            return Ok(None);
        };
        let mut reply = Vec::with_capacity(32);
        if req.cmd == codec::CMD_UDP {
            let bind = codec::udp_reply_addr(self.config.ip.as_ref(), peer, self.listen);
            codec::reply5(&mut reply, 0, &bind, local.port());
            stream.write_all(&reply).await.map_err(ReadError::Io)?;
            return Ok(Some((Step::Associate, buf)));
        }
        // 4.34 answers success before dialling; the connection just closes if the target fails.
        codec::reply5(&mut reply, 0, &Address::Ip(self.listen), local.port());
        stream.write_all(&reply).await.map_err(ReadError::Io)?;
        Ok(Some((Step::Connect { target, user: self.user(user) }, buf)))
    }

    /// Keeps the association alive while the TCP connection is open (its bytes are discarded).
    async fn hold_association<S: crate::proxy::AsyncStream>(&self, mut stream: S, peer: SocketAddr) {
        let _guard = AssociationGuard::new(self.associations.clone(), peer.ip());
        debug!(%peer, "socks: UDP association open");
        let mut sink = [0u8; 512];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        debug!(%peer, "socks: UDP association closed");
    }

    /// Serves the inbound's UDP socket: datagrams from clients holding an association, one outbound
    /// flow per (client, destination).
    pub async fn serve_udp(&self, socket: Arc<UdpSocket>, dispatcher: Arc<Dispatcher>) {
        let flows: Arc<Mutex<HashMap<FlowKey, mpsc::Sender<Bytes>>>> = Arc::default();
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors surface here on Linux; they concern one peer, not the socket.
                    debug!("socks udp: recv failed: {e}");
                    continue;
                }
            };
            let held = self.associations.lock().map(|m| m.contains_key(&from.ip())).unwrap_or(false);
            if !held {
                debug!(%from, "socks udp: datagram from a client without a UDP ASSOCIATE; dropped");
                continue;
            }
            let Some((address, port, data)) = codec::decode_udp(&buf[..n]) else {
                debug!(%from, "socks udp: invalid datagram dropped");
                continue;
            };
            let key = FlowKey { client: from, address, port };
            let data = Bytes::copy_from_slice(data);
            let mut map = match flows.lock() {
                Ok(m) => m,
                Err(_) => return,
            };
            if let Some(tx) = map.get(&key) {
                if tx.try_send(data).is_err() {
                    debug!(%from, "socks udp: flow queue full; datagram dropped");
                }
                continue;
            }
            if map.len() >= MAX_UDP_FLOWS {
                debug!(%from, "socks udp: too many flows; datagram dropped");
                continue;
            }
            let (tx, rx) = mpsc::channel(FLOW_QUEUE);
            let _ = tx.try_send(data);
            map.insert(key.clone(), tx);
            drop(map);
            let mut session =
                Session::new(self.tag.clone(), Some(from), Destination::udp(key.address.clone(), key.port));
            session.user = self.user(None);
            tokio::spawn(run_flow(key, rx, session, socket.clone(), dispatcher.clone(), flows.clone()));
        }
    }
}

enum Step {
    Connect { target: (Address, u16), user: Option<User> },
    Associate,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct FlowKey {
    client: SocketAddr,
    address: Address,
    port: u16,
}

struct AssociationGuard {
    map: Associations,
    ip: IpAddr,
}

impl AssociationGuard {
    fn new(map: Associations, ip: IpAddr) -> Self {
        if let Ok(mut m) = map.lock() {
            *m.entry(ip).or_insert(0) += 1;
        }
        AssociationGuard { map, ip }
    }
}

impl Drop for AssociationGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock()
            && let Some(n) = m.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// One UDP flow: opens the outbound, then copies both ways until idle; replies carry the destination
/// exactly as the client wrote it (as 4.34).
async fn run_flow(
    key: FlowKey,
    mut rx: mpsc::Receiver<Bytes>,
    session: Session,
    socket: Arc<UdpSocket>,
    dispatcher: Arc<Dispatcher>,
    flows: Arc<Mutex<HashMap<FlowKey, mpsc::Sender<Bytes>>>>,
) {
    match dispatcher.connect_packet(session).await {
        Ok(conn) => {
            let mut out = Vec::with_capacity(2048);
            loop {
                tokio::select! {
                    p = rx.recv() => match p {
                        Some(p) => if conn.send(p).await.is_err() { break },
                        None => break,
                    },
                    r = conn.recv() => match r {
                        Ok(Some(p)) => {
                            out.clear();
                            if codec::encode_udp(&mut out, &key.address, key.port, &p).is_err() {
                                break;
                            }
                            if socket.send_to(&out, key.client).await.is_err() {
                                break;
                            }
                        }
                        _ => break,
                    },
                    _ = tokio::time::sleep(UDP_FLOW_IDLE) => break,
                }
            }
        }
        Err(e) => debug!(client = %key.client, "socks udp: flow refused: {e}"),
    }
    if let Ok(mut m) = flows.lock() {
        m.remove(&key);
    }
}

#[async_trait]
impl Inbound for SocksInbound {
    async fn accept(&self, conn: Accepted, dispatcher: &Arc<Dispatcher>) {
        self.serve(conn.stream, conn.peer, conn.local, dispatcher).await
    }

    fn udp(&self) -> bool {
        self.config.udp
    }

    async fn serve_udp(&self, socket: Arc<UdpSocket>, dispatcher: Arc<Dispatcher>) {
        SocksInbound::serve_udp(self, socket, dispatcher).await
    }
}

/// The socks outbound (SOCKS5 client).
pub struct SocksOutbound {
    servers: Vec<ProxyServer>,
    dialer: Dialer,
    send_through: Option<IpAddr>,
    next: AtomicUsize,
}

impl SocksOutbound {
    /// Builds it from its settings, the outbound's `streamSettings` and `sendThrough`.
    pub fn new(config: ProxyClientConfig, stream: &StreamSettings, send_through: Option<IpAddr>) -> Self {
        let dialer = Dialer::new(stream, send_through).with_retries(&DIAL_WAITS);
        SocksOutbound { servers: config.servers, dialer, send_through, next: AtomicUsize::new(0) }
    }

    /// Next server (round-robin) and one of its users.
    fn pick(&self) -> &ProxyServer {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.servers[i % self.servers.len().max(1)]
    }

    /// Dials the server and runs the greeting and a request `cmd` for `target`; returns the stream
    /// (with any bytes read past the reply) and the reply's bound address.
    async fn open(
        &self,
        cmd: u8,
        target: &Destination,
        policy: &LevelPolicy,
    ) -> Result<(BoxStream, (Address, u16), Address), ProxyError> {
        let server = self.pick();
        let user = if server.users.is_empty() {
            None
        } else {
            let mut b = [0u8; 4];
            let _ = aws_lc_rs::rand::fill(&mut b);
            Some(&server.users[u32::from_le_bytes(b) as usize % server.users.len()])
        };
        let mut stream = self.dialer.dial(&server.address, server.port).await?;
        let deadline = Instant::now() + policy.handshake;
        let mut out = Vec::with_capacity(64);
        codec::client_greeting(&mut out, user.map(|u| (u.user.as_bytes(), u.pass.as_bytes())));
        stream.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(64);
        let password = user.is_some();
        read_until(&mut stream, &mut buf, 512, deadline, |b| codec::decode_method_reply(b, password))
            .await
            .map_err(handshake_error)?;
        out.clear();
        codec::client_request(&mut out, cmd, &target.address, target.port)
            .map_err(|e| ProxyError::Refused(format!("socks: {e}")))?;
        stream.write_all(&out).await?;
        let bound =
            read_until(&mut stream, &mut buf, 512, deadline, codec::decode_reply).await.map_err(handshake_error)?;
        Ok((Box::new(Prefixed::new(buf.freeze(), stream)), bound, server.address.clone()))
    }
}

fn handshake_error(e: ReadError<SocksError>) -> ProxyError {
    match e {
        ReadError::Io(e) => ProxyError::Io(e),
        e => ProxyError::Refused(format!("socks server: {e}")),
    }
}

#[async_trait]
impl Outbound for SocksOutbound {
    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError> {
        let (stream, _, _) = self.open(codec::CMD_CONNECT, &session.target, &session.policy).await?;
        Ok(stream)
    }

    async fn connect_packet(&self, session: &Session) -> Result<BoxPacketConn, ProxyError> {
        let (control, bound, server) = self.open(codec::CMD_UDP, &session.target, &session.policy).await?;
        let (relay, port) = codec::udp_relay_addr(bound, server);
        let relay = *tcp::resolve(&relay, port, Resolve::Any)
            .await?
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no relay address"))?;
        let bind = self.send_through.unwrap_or(if relay.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::from([0u16; 8])
        });
        let socket = UdpSocket::bind((bind, 0)).await?;
        socket.connect(relay).await?;
        Ok(Box::new(SocksUdp {
            socket,
            _control: tokio::sync::Mutex::new(control),
            target: session.target.clone(),
            idle: session.policy.conn_idle,
            buf: tokio::sync::Mutex::new(vec![0u8; 65536].into_boxed_slice()),
        }))
    }
}

/// A UDP flow through a SOCKS5 server; the TCP control connection stays open for its lifetime.
struct SocksUdp {
    socket: UdpSocket,
    _control: tokio::sync::Mutex<BoxStream>,
    target: Destination,
    idle: Duration,
    buf: tokio::sync::Mutex<Box<[u8]>>,
}

#[async_trait]
impl PacketConn for SocksUdp {
    async fn send(&self, packet: Bytes) -> io::Result<()> {
        let mut out = Vec::with_capacity(packet.len() + 262);
        codec::encode_udp(&mut out, &self.target.address, self.target.port, &packet)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.socket.send(&out).await.map(|_| ())
    }

    async fn recv(&self) -> io::Result<Option<Bytes>> {
        let mut buf = self.buf.lock().await;
        loop {
            let n = match tokio::time::timeout(self.idle, self.socket.recv(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => return Ok(None),
            };
            if let Some((_, _, data)) = codec::decode_udp(&buf[..n]) {
                return Ok(Some(Bytes::copy_from_slice(data)));
            }
        }
    }
}
