//! One name server: how it is asked (UDP, routed; or the system resolver) and its cache.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hickory_proto::rr::{Name, RecordType};
use ipnet::IpNet;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::config::{DnsServerConfig, DnsServerKind};
use crate::proxy::{BoxPacketConn, PacketConn};
use crate::session::{Address, Destination, canonical_ip};

use super::doh::{Doh, Route};
use super::message::{self, Answer};
use super::{Family, LookupError, Resolver};

/// Records live at most this long, and answers without a TTL (NXDOMAIN, NODATA) or with TTL 0 this long
/// (4.34 `dnscommon.go`).
const MAX_TTL: u32 = 600;
/// Cache bound per server: past it, expired entries go, and if that is not enough, all of them.
const MAX_CACHE: usize = 4096;
/// Once one family has answered, how long to wait for the other before using what came (4.34 waits
/// for its whole deadline and then fails, T9).
const OTHER_FAMILY_GRACE: Duration = Duration::from_secs(1);

/// Why one server gave no usable answer.
#[derive(Debug)]
pub(super) enum Failure {
    /// Final for the lookup (an RCODE, an empty answer, a system-resolver error).
    Final(LookupError),
    /// Try the next server (timeout, unreachable, every IP rejected by `expectIPs`).
    Next(String),
}

enum Kind {
    Udp(Destination),
    Doh(Arc<Doh>),
    Local,
}

#[derive(Clone)]
struct Cached {
    answer: Answer,
    expires: Instant,
}

#[derive(Default)]
struct Entry {
    a: Option<Cached>,
    aaaa: Option<Cached>,
}

/// A configured server.
pub(super) struct Server {
    kind: Kind,
    expect: Vec<IpNet>,
    expect_geoip: Vec<std::sync::Arc<crate::router::geo::GeoIpList>>,
    client_ip: Option<IpAddr>,
    /// Key: the name as asked (case-sensitive, as 4.34).
    cache: Mutex<HashMap<Box<str>, Entry>>,
    /// For logs: `UDP:1.1.1.1:53`, `DOH//dns.example`, `DOHL//dns.example`, `localhost` (4.34's names).
    pub name: String,
}

impl Server {
    pub fn new(c: &DnsServerConfig) -> Result<Server, String> {
        let (kind, name) = match &c.kind {
            DnsServerKind::Udp { address, port } => {
                (Kind::Udp(Destination::udp(address.clone(), *port)), format!("UDP:{address}:{port}"))
            }
            DnsServerKind::Doh { url, host, port, local } => {
                let doh = Doh::new(url, host, *port, *local).ok_or_else(|| format!("invalid DoH URL {url:?}"))?;
                let prefix = if *local { "DOHL" } else { "DOH" };
                (Kind::Doh(Arc::new(doh)), format!("{prefix}//{host}:{port}"))
            }
            DnsServerKind::Localhost => (Kind::Local, "localhost".to_string()),
        };
        Ok(Server {
            kind,
            expect: c.expect_ips.clone(),
            expect_geoip: c.expect_geoip.clone(),
            client_ip: c.client_ip,
            cache: Mutex::new(HashMap::new()),
            name,
        })
    }

    /// Asks this server (or its cache) and applies `expectIPs`.
    pub async fn query(&self, r: &Resolver, name: &str, wire: &Name, family: Family) -> Result<Vec<IpAddr>, Failure> {
        let ips = match self.kind {
            Kind::Local => self.system(name, family, r.timeout).await?,
            Kind::Udp(_) | Kind::Doh(_) => self.remote(r, name, wire, family).await?,
        };
        if self.expect.is_empty() && self.expect_geoip.is_empty() {
            return Ok(ips);
        }
        let kept: Vec<IpAddr> = ips
            .into_iter()
            .filter(|ip| {
                self.expect.iter().any(|n| n.contains(ip)) || self.expect_geoip.iter().any(|g| g.contains(*ip))
            })
            .collect();
        if kept.is_empty() {
            return Err(Failure::Next("no answer matched expectIPs".into()));
        }
        Ok(kept)
    }

    async fn system(&self, name: &str, family: Family, timeout: Duration) -> Result<Vec<IpAddr>, Failure> {
        let found = match tokio::time::timeout(timeout, tokio::net::lookup_host((name, 0))).await {
            Err(_) => return Err(Failure::Next("the system resolver timed out".into())),
            Ok(Err(e)) => return Err(Failure::Final(LookupError::System(e.to_string()))),
            Ok(Ok(addrs)) => addrs,
        };
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in found.map(|a| canonical_ip(a.ip())) {
            let wanted = match family {
                Family::Both => true,
                Family::V4 => ip.is_ipv4(),
                Family::V6 => ip.is_ipv6(),
            };
            if wanted && !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if ips.is_empty() { Err(Failure::Final(LookupError::Empty)) } else { Ok(ips) }
    }

    /// A UDP or DoH server: its cache, else a query.
    async fn remote(&self, r: &Resolver, name: &str, wire: &Name, family: Family) -> Result<Vec<IpAddr>, Failure> {
        let doh = matches!(self.kind, Kind::Doh(_));
        let types: &[RecordType] = match family {
            Family::V4 => &[RecordType::A],
            Family::V6 => &[RecordType::AAAA],
            // 4.34 lists a DoH server's IPv6 addresses first, a UDP server's IPv4 ones.
            Family::Both if doh => &[RecordType::AAAA, RecordType::A],
            Family::Both => &[RecordType::A, RecordType::AAAA],
        };
        // A cached family satisfies the lookup even if the other is missing (4.34, T10).
        let cached = self.cached(name, types);
        if cached.iter().any(Option::is_some) {
            tracing::debug!(domain = name, server = %self.name, "dns: cache HIT");
            return combine(&cached);
        }
        let answers = match &self.kind {
            Kind::Udp(dest) => self.ask(r, dest, wire, types).await,
            Kind::Doh(d) => {
                let route = Route { upstream: r.upstream(), tag: r.tag.clone() };
                d.ask(&route, wire, types, self.client_ip, Instant::now() + r.timeout).await
            }
            Kind::Local => return Err(Failure::Next("not a remote server".into())),
        };
        for (t, a) in types.iter().zip(&answers) {
            if let Some(a) = a {
                self.store(name, *t, a.clone());
            }
        }
        combine(&answers)
    }

    fn cached(&self, name: &str, types: &[RecordType]) -> Vec<Option<Answer>> {
        let now = Instant::now();
        let Ok(cache) = self.cache.lock() else { return vec![None; types.len()] };
        let entry = cache.get(name);
        types
            .iter()
            .map(|t| {
                let slot = entry.and_then(|e| if *t == RecordType::A { e.a.as_ref() } else { e.aaaa.as_ref() });
                slot.filter(|c| c.expires > now).map(|c| c.answer.clone())
            })
            .collect()
    }

    fn store(&self, name: &str, t: RecordType, answer: Answer) {
        let ttl = match answer.min_ttl {
            None | Some(0) => MAX_TTL,
            Some(t) => t.min(MAX_TTL),
        };
        let now = Instant::now();
        let c = Cached { answer, expires: now + Duration::from_secs(ttl.into()) };
        let Ok(mut cache) = self.cache.lock() else { return };
        if cache.len() >= MAX_CACHE && !cache.contains_key(name) {
            cache.retain(|_, e| {
                e.a.as_ref().is_some_and(|c| c.expires > now) || e.aaaa.as_ref().is_some_and(|c| c.expires > now)
            });
            if cache.len() >= MAX_CACHE {
                cache.clear();
            }
        }
        let e = cache.entry(Box::from(name)).or_default();
        if t == RecordType::A {
            e.a = Some(c);
        } else {
            e.aaaa = Some(c);
        }
    }

    /// Sends one query per type on one flow and collects the answers until the deadline.
    async fn ask(&self, r: &Resolver, dest: &Destination, wire: &Name, types: &[RecordType]) -> Vec<Option<Answer>> {
        let mut answers: Vec<Option<Answer>> = vec![None; types.len()];
        let deadline = Instant::now() + r.timeout;
        let conn = match tokio::time::timeout_at(deadline, open(r, dest)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(server = %self.name, "dns: cannot reach the server: {e}");
                return answers;
            }
            Err(_) => return answers,
        };
        let mut ids = Vec::with_capacity(types.len());
        for t in types {
            let id = random_id();
            ids.push(id);
            let Some(q) = message::query(id, wire, *t, self.client_ip) else { return answers };
            if let Err(e) = conn.send(Bytes::from(q)).await {
                tracing::debug!(server = %self.name, "dns: send failed: {e}");
                return answers;
            }
        }
        let mut until = deadline;
        while answers.iter().any(Option::is_none) {
            let packet = match tokio::time::timeout_at(until, conn.recv()).await {
                Ok(Ok(Some(p))) => p,
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            };
            for (i, t) in types.iter().enumerate() {
                if answers[i].is_none()
                    && let Some(a) = message::parse_answer(&packet, ids[i], wire, *t)
                {
                    answers[i] = Some(a);
                    until = until.min(Instant::now() + OTHER_FAMILY_GRACE);
                    break;
                }
            }
        }
        answers
    }
}

/// 4.34's reading of per-family answers: any IP wins (A first); else an RCODE; else "empty" if every
/// family answered; else a timeout (try the next server).
fn combine(answers: &[Option<Answer>]) -> Result<Vec<IpAddr>, Failure> {
    let ips: Vec<IpAddr> = answers.iter().flatten().flat_map(|a| a.ips.iter().copied()).collect();
    if !ips.is_empty() {
        return Ok(ips);
    }
    if let Some(a) = answers.iter().flatten().find(|a| a.rcode != 0) {
        return Err(Failure::Final(LookupError::Rcode(a.rcode)));
    }
    if answers.iter().all(Option::is_some) {
        return Err(Failure::Final(LookupError::Empty));
    }
    Err(Failure::Next("timed out (context deadline exceeded)".into()))
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // A failing system RNG leaves the id 0: still a valid query, only less hardened.
    let _ = aws_lc_rs::rand::fill(&mut b);
    u16::from_be_bytes(b)
}

async fn open(r: &Resolver, dest: &Destination) -> Result<BoxPacketConn, String> {
    match r.upstream() {
        Some(up) => up.open_udp(r.tag.clone(), dest.clone()).await.map_err(|e| e.to_string()),
        None => DirectUdp::open(dest).await.map(|c| Box::new(c) as BoxPacketConn).map_err(|e| e.to_string()),
    }
}

/// The resolver's own socket when nothing routes its queries (a resolver used on its own).
struct DirectUdp(UdpSocket);

impl DirectUdp {
    async fn open(dest: &Destination) -> std::io::Result<DirectUdp> {
        let addr: SocketAddr = match &dest.address {
            Address::Ip(ip) => SocketAddr::new(*ip, dest.port),
            Address::Domain(d) => tokio::net::lookup_host((d.as_ref(), dest.port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "server name has no address"))?,
        };
        let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let s = UdpSocket::bind(bind).await?;
        s.connect(addr).await?;
        Ok(DirectUdp(s))
    }
}

#[async_trait]
impl PacketConn for DirectUdp {
    async fn send(&self, packet: Bytes) -> std::io::Result<()> {
        self.0.send(&packet).await.map(|_| ())
    }

    async fn recv(&self) -> std::io::Result<Option<Bytes>> {
        let mut buf = vec![0u8; 4096];
        let n = self.0.recv(&mut buf).await?;
        buf.truncate(n);
        Ok(Some(Bytes::from(buf)))
    }
}
