//! The `dns` outbound (4.34 `proxy/dns`): A and AAAA questions are answered by the built-in resolver;
//! every other message is forwarded unchanged to the flow's target (or the configured override) over
//! one upstream connection per flow, dialled when first needed.
//!
//! Over TCP a message is framed by a 2-byte big-endian length; over UDP a datagram is one message.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, Notify, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use crate::config::DnsOutboundConfig;
use crate::dns::{Family, LookupError, Resolver, SERVER_TIMEOUT, message};
use crate::proxy::{BoxPacketConn, BoxStream, Outbound, PacketConn, ProxyError, RelayStats};
use crate::session::{Address, Network, Session};
use crate::transport::{Dialer, Resolve, StreamSettings, tcp};

/// 4.34 ends a TCP connection whose message length is above this.
const MAX_TCP_MESSAGE: usize = 2048;
/// Questions answered at once per flow; past it a TCP flow waits, a UDP flow drops (clients retry).
const MAX_IN_FLIGHT: usize = 32;
/// Replies queued per flow before the answering tasks wait for the client.
const QUEUE: usize = 64;

/// The `dns` outbound.
pub struct DnsOutbound {
    config: DnsOutboundConfig,
    resolver: Arc<Resolver>,
    dialer: Arc<Dialer>,
}

impl DnsOutbound {
    /// Builds it; `resolver` is the `dns` object's (or the system resolver without one). Forwarded
    /// messages over TCP go out through the outbound's `streamSettings` and `sendThrough`.
    pub fn new(
        config: DnsOutboundConfig,
        stream: &StreamSettings,
        send_through: Option<IpAddr>,
        resolver: Arc<Resolver>,
    ) -> Self {
        DnsOutbound { config, resolver, dialer: Arc::new(Dialer::new(stream, send_through)) }
    }

    fn core(&self, session: &Session, out: mpsc::Sender<Bytes>) -> Arc<Core> {
        let network = self.config.network.unwrap_or(session.target.network);
        let address = self.config.address.clone().unwrap_or_else(|| session.target.address.clone());
        let port = if self.config.port != 0 { self.config.port } else { session.target.port };
        // The resolver's own queries routed here are only forwarded: answering them would loop.
        let forward_all = session.inbound_tag.as_deref() == Some(&**self.resolver.tag());
        Arc::new(Core {
            resolver: self.resolver.clone(),
            forward_all,
            out,
            upstream: Forwarder {
                network,
                address,
                port,
                dialer: self.dialer.clone(),
                state: Mutex::new(None),
                pending: Arc::default(),
            },
            lookups: std::sync::Mutex::new(JoinSet::new()),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }
}

#[async_trait]
impl Outbound for DnsOutbound {
    async fn connect(&self, _session: &Session) -> Result<BoxStream, ProxyError> {
        Err(ProxyError::Unsupported("opening a plain stream"))
    }

    async fn handle(&self, session: Session, stream: BoxStream) -> Result<RelayStats, ProxyError> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        let core = self.core(&session, tx);
        let (mut rd, mut wr) = tokio::io::split(stream);
        let down = Arc::new(AtomicU64::new(0));
        let down_w = down.clone();
        // Ends when every sender is gone (the core and its tasks), so it cannot outlive the flow.
        let mut writer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let Ok(len) = u16::try_from(msg.len()) else { continue };
                if wr.write_all(&len.to_be_bytes()).await.is_err() || wr.write_all(&msg).await.is_err() {
                    return;
                }
                down_w.fetch_add(msg.len() as u64 + 2, Ordering::Relaxed);
            }
            let _ = wr.shutdown().await;
        });
        let mut up = 0u64;
        let idle = session.policy.conn_idle;
        loop {
            let msg = match tokio::time::timeout(idle, read_frame(&mut rd)).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    debug!(session = session.id, "dns outbound: {e}");
                    break;
                }
                Err(_) => break,
            };
            up += msg.len() as u64 + 2;
            // Back-pressure: a TCP client with too many questions open waits for answers.
            let Ok(permit) = core.permits.clone().acquire_owned().await else { break };
            core.clone().take(msg, Some(permit)).await;
        }
        // The client is done sending: let open questions and forwarded ones get their answers.
        core.finish().await;
        drop(core);
        if tokio::time::timeout(Duration::from_secs(1), &mut writer).await.is_err() {
            writer.abort();
        }
        Ok(RelayStats { uplink: up, downlink: down.load(Ordering::Relaxed) })
    }

    async fn connect_packet(&self, session: &Session) -> Result<BoxPacketConn, ProxyError> {
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
        let core = self.core(session, tx);
        Ok(Box::new(DnsPackets { core, rx: Mutex::new(rx), idle: session.policy.conn_idle }))
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One 2-byte-length framed message; None at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = usize::from(u16::from_be_bytes(len));
    if n > MAX_TCP_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message length {n} is above {MAX_TCP_MESSAGE}"),
        ));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(Some(Bytes::from(buf)))
}

/// What one flow shares between its reader, its answering tasks and its upstream reader.
struct Core {
    resolver: Arc<Resolver>,
    forward_all: bool,
    out: mpsc::Sender<Bytes>,
    upstream: Forwarder,
    lookups: std::sync::Mutex<JoinSet<()>>,
    permits: Arc<Semaphore>,
}

impl Core {
    /// Answers an A/AAAA question itself, forwards anything else.
    async fn take(self: Arc<Self>, msg: Bytes, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
        if !self.forward_all
            && let Ok(m) = Message::from_vec(&msg)
            && message::intercepted_question(&m).is_some()
        {
            let me = self.clone();
            let task = async move {
                let _permit = permit;
                if let Some(reply) = me.answer(&m).await {
                    let _ = me.out.send(Bytes::from(reply)).await;
                }
            };
            if let Ok(mut set) = self.lookups.lock() {
                set.spawn(task);
            }
            return;
        }
        drop(permit);
        if let Err(e) = self.upstream.send(msg, &self.out).await {
            debug!("dns outbound: forwarding failed: {e}");
        }
    }

    /// The reply to an intercepted question, or None when 4.34 would not reply (timeouts, expectIPs).
    async fn answer(&self, m: &Message) -> Option<Vec<u8>> {
        let q = message::intercepted_question(m)?;
        let family = if q.query_type == RecordType::A { Family::V4 } else { Family::V6 };
        let name = q.name.to_ascii();
        let (rcode, ips): (u16, Vec<IpAddr>) = match self.resolver.lookup(&name, family).await {
            Ok(ips) => (0, ips),
            Err(LookupError::Rcode(c)) => (c, Vec::new()),
            Err(LookupError::Empty) => (0, Vec::new()),
            Err(e) => {
                debug!(domain = %name, "dns outbound: no reply: {e}");
                return None;
            }
        };
        message::reply(m, q, rcode, &ips)
    }

    /// Waits (bounded) for open questions and forwarded messages to be answered.
    async fn finish(&self) {
        let deadline = tokio::time::Instant::now() + SERVER_TIMEOUT * 2;
        let set = self.lookups.lock().map(|mut s| std::mem::take(&mut *s)).ok();
        if let Some(set) = set {
            let _ = tokio::time::timeout_at(deadline, set.join_all()).await;
        }
        self.upstream.drain(deadline).await;
    }
}

/// The lazily dialled upstream for forwarded messages.
struct Forwarder {
    network: Network,
    address: Address,
    port: u16,
    dialer: Arc<Dialer>,
    state: Mutex<Option<Link>>,
    pending: Arc<Pending>,
}

#[derive(Default)]
struct Pending {
    count: AtomicUsize,
    changed: Notify,
}

struct Link {
    send: Sender,
    _reader: AbortOnDrop,
}

enum Sender {
    Tcp(WriteHalf<BoxStream>),
    Udp(Arc<UdpSocket>),
}

impl Forwarder {
    async fn send(&self, msg: Bytes, out: &mpsc::Sender<Bytes>) -> io::Result<()> {
        let mut state = self.state.lock().await;
        if state.is_none() {
            *state = Some(self.dial(out.clone()).await?);
        }
        let Some(link) = state.as_mut() else { return Ok(()) };
        self.pending.count.fetch_add(1, Ordering::AcqRel);
        let sent = match &mut link.send {
            Sender::Tcp(w) => match u16::try_from(msg.len()) {
                Ok(len) => {
                    let r = w.write_all(&len.to_be_bytes()).await;
                    if r.is_ok() { w.write_all(&msg).await } else { r }
                }
                Err(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "message too long for TCP")),
            },
            Sender::Udp(s) => s.send(&msg).await.map(|_| ()),
        };
        if sent.is_err() {
            self.pending.count.fetch_sub(1, Ordering::AcqRel);
            *state = None;
        }
        sent
    }

    async fn dial(&self, out: mpsc::Sender<Bytes>) -> io::Result<Link> {
        let pending = self.pending.clone();
        let got = move || {
            let _ = pending.count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
            pending.changed.notify_waiters();
        };
        match self.network {
            Network::Tcp => {
                let stream = self.dialer.dial(&self.address, self.port).await?;
                let (mut rd, wr) = tokio::io::split(stream);
                let reader = tokio::spawn(async move {
                    while let Ok(Some(m)) = read_any_frame(&mut rd).await {
                        got();
                        if out.send(m).await.is_err() {
                            return;
                        }
                    }
                });
                Ok(Link { send: Sender::Tcp(wr), _reader: AbortOnDrop(reader) })
            }
            Network::Udp => {
                let dest: SocketAddr = *tcp::resolve(&self.address, self.port, Resolve::Any)
                    .await?
                    .first()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
                let bind: SocketAddr = if dest.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
                let sock = Arc::new(UdpSocket::bind(bind).await?);
                sock.connect(dest).await?;
                let r = sock.clone();
                let reader = tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = r.recv(&mut buf).await {
                        got();
                        if out.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            return;
                        }
                    }
                });
                Ok(Link { send: Sender::Udp(sock), _reader: AbortOnDrop(reader) })
            }
        }
    }

    /// Waits until every forwarded message had a reply, or the deadline.
    async fn drain(&self, deadline: tokio::time::Instant) {
        loop {
            let notified = self.pending.changed.notified();
            if self.pending.count.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

/// A framed reply from a TCP upstream (no 2048 limit: that is 4.34's limit for queries).
async fn read_any_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Bytes>> {
    let mut len = [0u8; 2];
    if r.read_exact(&mut len).await.is_err() {
        return Ok(None);
    }
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut buf).await?;
    Ok(Some(Bytes::from(buf)))
}

/// A UDP flow through the `dns` outbound: each datagram is one message.
struct DnsPackets {
    core: Arc<Core>,
    rx: Mutex<mpsc::Receiver<Bytes>>,
    idle: Duration,
}

#[async_trait]
impl PacketConn for DnsPackets {
    async fn send(&self, packet: Bytes) -> io::Result<()> {
        match self.core.permits.clone().try_acquire_owned() {
            Ok(permit) => self.core.clone().take(packet, Some(permit)).await,
            Err(_) => debug!("dns outbound: too many open questions on one flow; datagram dropped"),
        }
        Ok(())
    }

    async fn recv(&self) -> io::Result<Option<Bytes>> {
        let mut rx = self.rx.lock().await;
        match tokio::time::timeout(self.idle, rx.recv()).await {
            Ok(m) => Ok(m),
            Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData};

    use super::*;
    use crate::config::{DnsConfig, DnsServerConfig, DnsServerKind, HostEntry, HostValue};
    use crate::dns::responder::{Rec, Responder};
    use crate::session::Destination;

    fn query(id: u16, name: &str, t: RecordType) -> Bytes {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        Bytes::from(m.to_vec().unwrap())
    }

    async fn setup() -> (Responder, Arc<Resolver>) {
        let mut zone = HashMap::new();
        zone.insert(
            "up.test".to_string(),
            Rec { ips: vec!["10.5.5.5".parse().unwrap()], ttl: 42, ..Default::default() },
        );
        let r = Responder::start(zone, false).await.unwrap();
        let cfg = DnsConfig {
            servers: vec![DnsServerConfig {
                kind: DnsServerKind::Udp { address: Address::from(r.addr.ip()), port: r.addr.port() },
                domains: vec![],
                expect_ips: vec![],
                expect_geoip: vec![],
                client_ip: None,
                path: "dns.servers[0]".into(),
            }],
            hosts: vec![HostEntry {
                matcher: crate::config::host_matcher("h.test").unwrap(),
                value: HostValue::Ip("10.9.9.9".parse().unwrap()),
            }],
            tag: Some("dns-app".into()),
            ..Default::default()
        };
        (r, Arc::new(Resolver::new(&cfg).unwrap()))
    }

    /// Every wait on the outbound has a deadline, so a missing answer fails the test instead of hanging.
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), f).await.expect("answered in time")
    }

    fn records(m: &Message) -> Vec<(u32, String)> {
        m.answers
            .iter()
            .map(|r| {
                let d = match &r.data {
                    RData::A(a) => a.0.to_string(),
                    other => format!("{other:?}"),
                };
                (r.ttl, d)
            })
            .collect()
    }

    #[tokio::test]
    async fn udp_flows_are_answered_and_the_resolver_own_flows_only_forwarded() {
        let (up, resolver) = setup().await;
        let ob = DnsOutbound::new(DnsOutboundConfig::default(), &StreamSettings::default(), None, resolver);
        let target = Destination::udp(Address::from(up.addr.ip()), up.addr.port());
        let flow = ob.connect_packet(&Session::new(Some(Arc::from("client")), None, target.clone())).await.unwrap();
        flow.send(query(7, "h.test.", RecordType::A)).await.unwrap();
        let m = Message::from_vec(&within(flow.recv()).await.unwrap().unwrap()).unwrap();
        assert_eq!((m.metadata.id, m.metadata.authoritative), (7, true));
        assert_eq!(records(&m), vec![(600, "10.9.9.9".to_string())]);
        // A TXT question goes to the target unchanged.
        flow.send(query(8, "up.test.", RecordType::TXT)).await.unwrap();
        let m = Message::from_vec(&within(flow.recv()).await.unwrap().unwrap()).unwrap();
        assert_eq!((m.metadata.id, m.metadata.authoritative), (8, false));
        // The resolver's own flow: even A is forwarded (the upstream's TTL 42, not 600).
        let own = ob.connect_packet(&Session::new(Some(Arc::from("dns-app")), None, target)).await.unwrap();
        own.send(query(9, "up.test.", RecordType::A)).await.unwrap();
        let m = Message::from_vec(&within(own.recv()).await.unwrap().unwrap()).unwrap();
        assert_eq!(records(&m), vec![(42, "10.5.5.5".to_string())]);
        assert_eq!(up.seen().iter().filter(|q| q.id == 9 && q.proto == "udp").count(), 1);
    }

    #[tokio::test]
    async fn network_udp_forwards_a_tcp_client_over_udp() {
        let (up, resolver) = setup().await;
        let cfg = DnsOutboundConfig { network: Some(Network::Udp), ..Default::default() };
        let ob = DnsOutbound::new(cfg, &StreamSettings::default(), None, resolver);
        let (mut client, server) = tokio::io::duplex(8192);
        let session = Session::new(None, None, Destination::tcp(Address::from(up.addr.ip()), up.addr.port()));
        let task = tokio::spawn(async move { ob.handle(session, Box::new(server)).await });
        let q = query(11, "up.test.", RecordType::TXT);
        client.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        client.write_all(&q).await.unwrap();
        client.shutdown().await.unwrap();
        let mut len = [0u8; 2];
        within(client.read_exact(&mut len)).await.unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len).into()];
        within(client.read_exact(&mut buf)).await.unwrap();
        assert_eq!(Message::from_vec(&buf).unwrap().metadata.id, 11);
        assert_eq!(up.seen().iter().filter(|s| s.id == 11).map(|s| s.proto).collect::<Vec<_>>(), vec!["udp"]);
        // The client half-closed: the flow ends once the forwarded question has its answer.
        assert!(within(task).await.is_ok());
    }

    #[tokio::test]
    async fn an_oversized_tcp_message_ends_the_flow() {
        let (up, resolver) = setup().await;
        let ob = DnsOutbound::new(DnsOutboundConfig::default(), &StreamSettings::default(), None, resolver);
        let (mut client, server) = tokio::io::duplex(8192);
        let session = Session::new(None, None, Destination::tcp(Address::from(up.addr.ip()), up.addr.port()));
        let task = tokio::spawn(async move { ob.handle(session, Box::new(server)).await });
        let q = query(5, "h.test.", RecordType::A);
        client.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        client.write_all(&q).await.unwrap();
        let mut len = [0u8; 2];
        within(client.read_exact(&mut len)).await.unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len).into()];
        within(client.read_exact(&mut buf)).await.unwrap();
        assert_eq!(Message::from_vec(&buf).unwrap().metadata.id, 5);
        client.write_all(&3000u16.to_be_bytes()).await.unwrap();
        let done = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(done.is_ok(), "the flow ended");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut rest)).await;
        assert!(rest.is_empty());
    }
}
