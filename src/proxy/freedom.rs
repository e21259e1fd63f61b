//! `freedom`: connects straight to the target (or to the `redirect` override).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::net::UdpSocket;

use crate::config::{FreedomConfig, FreedomDomainStrategy, LevelPolicy, PolicyConfig};
use crate::dns::{Family, Resolver};
use crate::proxy::{BoxPacketConn, BoxStream, Outbound, PacketConn, ProxyError, RelayStats, relay_session};
use crate::session::{Address, Session};
use crate::transport::{Dialer, Resolve, StreamSettings, tcp};

/// V2Ray's freedom dial schedule: 5 attempts, waiting 100/200/300/400 ms between them.
const DIAL_WAITS: [Duration; 4] =
    [Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(300), Duration::from_millis(400)];

/// The freedom outbound.
pub struct Freedom {
    config: FreedomConfig,
    send_through: Option<IpAddr>,
    dialer: Dialer,
    /// The policy of `userLevel` when it is set: it then governs the flows this outbound carries.
    level_policy: Option<LevelPolicy>,
    /// The `dns` object's resolver, for `UseIP*` (None: the system resolver).
    resolver: Option<Arc<Resolver>>,
}

impl Freedom {
    /// Builds it from its settings, the outbound's `sendThrough` and the instance's policy levels.
    pub fn new(
        config: FreedomConfig,
        stream: &StreamSettings,
        send_through: Option<IpAddr>,
        policy: &PolicyConfig,
    ) -> Self {
        let level_policy = (config.user_level != 0).then(|| policy.level(config.user_level));
        let family = family(config.domain_strategy);
        let dialer = Dialer::new(stream, send_through).with_family(family).with_retries(&DIAL_WAITS);
        Freedom { config, send_through, dialer, level_policy, resolver: None }
    }

    /// Resolves `UseIP*` targets through the `dns` object's resolver.
    pub fn with_resolver(mut self, resolver: Option<Arc<Resolver>>) -> Self {
        self.resolver = resolver;
        self
    }

    /// With a resolver and `UseIP*`, a domain becomes one of its addresses, picked at random (4.34). If
    /// the lookup fails, the domain is dialled as is, through the system resolver, as 4.34 does.
    async fn resolved(&self, session: &Session, addr: Address) -> Address {
        let (Some(r), Address::Domain(d)) = (&self.resolver, &addr) else { return addr };
        // The resolver's own flow to a server given by name: asking the resolver again would loop.
        if session.inbound_tag.as_deref() == Some(&**r.tag()) {
            return addr;
        }
        let family = match (self.config.domain_strategy, self.send_through) {
            (FreedomDomainStrategy::AsIs, _) => return addr,
            (_, Some(IpAddr::V4(_))) | (FreedomDomainStrategy::UseIpv4, _) => Family::V4,
            (_, Some(IpAddr::V6(_))) | (FreedomDomainStrategy::UseIpv6, _) => Family::V6,
            (FreedomDomainStrategy::UseIp, None) => Family::Both,
        };
        let found = r.lookup(d, family).await.map(|ips| {
            ips.into_iter()
                .filter(|ip| match family {
                    Family::V4 => ip.is_ipv4(),
                    Family::V6 => ip.is_ipv6(),
                    Family::Both => true,
                })
                .collect::<Vec<_>>()
        });
        match found {
            Ok(ips) if !ips.is_empty() => {
                let mut b = [0u8; 4];
                let _ = aws_lc_rs::rand::fill(&mut b);
                let ip = ips[u32::from_le_bytes(b) as usize % ips.len()];
                tracing::debug!(domain = %d, %ip, "freedom: dialling a resolved address");
                Address::from(ip)
            }
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(_) => "no address of the wanted family".into(),
                };
                tracing::warn!(
                    domain = %d,
                    "freedom: the dns object could not resolve the target ({why}); dialling the name through the system resolver, as V2Ray does"
                );
                addr
            }
        }
    }

    /// The real target after `redirect`: a non-empty host (other than 0.0.0.0) and a non-zero port override.
    fn target(&self, session: &Session) -> (Address, u16) {
        let mut addr = session.target.address.clone();
        let mut port = session.target.port;
        if let Some(host) = &self.config.redirect_host
            && host.ip() != Some(IpAddr::from([0, 0, 0, 0]))
        {
            addr = host.clone();
        }
        if self.config.redirect_port != 0 {
            port = self.config.redirect_port;
        }
        (addr, port)
    }
}

fn family(strategy: FreedomDomainStrategy) -> Resolve {
    match strategy {
        FreedomDomainStrategy::AsIs | FreedomDomainStrategy::UseIp => Resolve::Any,
        FreedomDomainStrategy::UseIpv4 => Resolve::V4,
        FreedomDomainStrategy::UseIpv6 => Resolve::V6,
    }
}

#[async_trait]
impl Outbound for Freedom {
    async fn handle(&self, mut session: Session, stream: BoxStream) -> Result<RelayStats, ProxyError> {
        if let Some(p) = self.level_policy {
            session.policy = p;
        }
        // Boxed: the dial's state (resolution, connect attempts) is over before the relay starts, and
        // inline it would be carried by every flow for its whole life.
        let upstream = Box::pin(self.connect(&session)).await?;
        crate::mux::bypass_relay(&mut session, &stream, &upstream);
        Ok(relay_session(stream, upstream, &session).await?)
    }

    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError> {
        let (addr, port) = self.target(session);
        let addr = self.resolved(session, addr).await;
        Ok(self.dialer.dial(&addr, port).await?)
    }

    async fn connect_packet(&self, session: &Session) -> Result<BoxPacketConn, ProxyError> {
        let (addr, port) = self.target(session);
        let addr = self.resolved(session, addr).await;
        let dest = *tcp::resolve(&addr, port, self.dialer.family())
            .await?
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let bind = self.send_through.unwrap_or(if dest.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        });
        let socket = UdpSocket::bind((bind, 0)).await?;
        socket.connect(dest).await?;
        Ok(Box::new(UdpFlow {
            socket,
            idle: session.policy.conn_idle,
            recv_buf: tokio::sync::Mutex::new(vec![0u8; 65536].into_boxed_slice()),
        }))
    }
}

/// A connected UDP socket as a packet flow; ends after `idle` without a reply.
struct UdpFlow {
    socket: UdpSocket,
    idle: Duration,
    /// One receive buffer for the flow (a datagram is at most 64 KiB); each datagram is copied out at its
    /// own size, so a queued reply does not pin 64 KiB.
    recv_buf: tokio::sync::Mutex<Box<[u8]>>,
}

#[async_trait]
impl PacketConn for UdpFlow {
    async fn send(&self, packet: Bytes) -> io::Result<()> {
        self.socket.send(&packet).await.map(|_| ())
    }

    async fn recv(&self) -> io::Result<Option<Bytes>> {
        let mut buf = self.recv_buf.lock().await;
        match tokio::time::timeout(self.idle, self.socket.recv(&mut buf)).await {
            Ok(Ok(n)) => Ok(Some(Bytes::copy_from_slice(&buf[..n]))),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }
}
