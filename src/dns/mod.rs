//! The built-in DNS resolver that the top-level `dns` object describes (4.34's "DNS app"): `hosts`
//! first, then the servers in 4.34's order (those whose `domains` match the name first), each with
//! its own cache and a 4-second deadline; timeouts and `expectIPs` rejections fall back to the next
//! server, any other answer (NXDOMAIN, an empty answer) is final.
//!
//! Queries to UDP and `https://` (DoH) servers are routed like any other flow (inbound tag = the `dns`
//! tag) through an [`Upstream`], which the instance sets to its dispatcher; without one they go
//! straight out, as `https+local://` and `localhost` always do.

mod doh;
pub mod hosts;
pub mod message;
#[doc(hidden)]
pub mod responder;
mod server;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tracing::debug;

use crate::config::{DnsConfig, DnsServerConfig, DnsServerKind, DomainMatcher};
use crate::proxy::{BoxPacketConn, BoxStream, ProxyError};
use crate::session::Destination;

use hosts::{HostAnswer, Hosts, is_subdomain};
use server::Server;

/// 4.34's per-server deadline (`app/dns/nameserver.go`).
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(4);

/// Which address families a lookup wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A only (`LookupIPv4`).
    V4,
    /// AAAA only (`LookupIPv6`).
    V6,
    /// Both (`LookupIP`).
    Both,
}

/// Why a lookup gave no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name cannot be sent in DNS (empty, over-long, an empty label).
    #[error("invalid domain name {0:?}")]
    InvalidName(String),
    /// A server answered with this RCODE (3 = NXDOMAIN, 2 = SERVFAIL, ...).
    #[error("the server answered with RCODE {0}")]
    Rcode(u16),
    /// A server (or `hosts`) answered with no address of the wanted family.
    #[error("empty answer")]
    Empty,
    /// Every server timed out, or was unreachable, or had its answers rejected by `expectIPs`.
    #[error("no server answered in time (or every answer was rejected by expectIPs)")]
    Exhausted,
    /// The system resolver (`localhost` server) failed.
    #[error("system resolver: {0}")]
    System(String),
}

/// Opens the datagram flows the resolver sends its queries on (the dispatcher, so they are routed).
#[async_trait]
pub trait Upstream: Send + Sync {
    /// A packet flow to `target`, routed as a flow from the inbound `tag` with no source address.
    async fn open_udp(&self, tag: Arc<str>, target: Destination) -> Result<BoxPacketConn, ProxyError>;
    /// A stream to `target` (a DoH server), routed as a connection from the inbound `tag` with no
    /// source address; the router does not resolve its domain (that would loop).
    async fn open_stream(&self, tag: Arc<str>, target: Destination) -> Result<BoxStream, ProxyError>;
}

/// One `domains` entry of a server (or the built-in list of a `localhost` server).
#[derive(Debug)]
enum Priority {
    Full(String),
    Domain(String),
    Keyword(String),
    Regexp(regex::Regex),
    /// Names without a dot (`^[^.]+$`).
    Dotless,
}

/// Why a resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DnsError {
    /// JSON path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The resolver. Cheap to share (`Arc<Resolver>`).
pub struct Resolver {
    hosts: Hosts,
    servers: Vec<Server>,
    priority: Vec<(usize, Priority)>,
    tag: Arc<str>,
    upstream: OnceLock<Weak<dyn Upstream>>,
    timeout: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("tag", &self.tag).field("servers", &self.servers.len()).finish_non_exhaustive()
    }
}

/// Names 4.34 sends to a `localhost` server first (`app/dns/config.go`, logged as `geosite:private`).
const LOCAL_SUFFIXES: &[&str] =
    &["local", "localdomain", "localhost", "lan", "home.arpa", "example", "invalid", "test"];

impl Resolver {
    /// Builds the resolver of a `dns` object. With no servers it has one system-resolver server (4.34).
    pub fn new(config: &DnsConfig) -> Result<Resolver, DnsError> {
        let hosts =
            Hosts::new(&config.hosts).map_err(|e| DnsError { path: "dns.hosts".into(), message: e.to_string() })?;
        let local = [DnsServerConfig {
            kind: DnsServerKind::Localhost,
            domains: Vec::new(),
            expect_ips: Vec::new(),
            expect_geoip: Vec::new(),
            client_ip: None,
            path: "dns".into(),
        }];
        let list = if config.servers.is_empty() { &local[..] } else { &config.servers[..] };
        let mut servers = Vec::with_capacity(list.len());
        let mut priority = Vec::new();
        for (i, s) in list.iter().enumerate() {
            servers.push(Server::new(s).map_err(|message| DnsError { path: s.path.clone(), message })?);
            if s.kind == DnsServerKind::Localhost {
                // Two `localhost` servers crash 4.34 (T5); here each simply gets the list.
                priority.push((i, Priority::Dotless));
                priority.extend(LOCAL_SUFFIXES.iter().map(|d| (i, Priority::Domain((*d).to_string()))));
            }
            for d in &s.domains {
                // A geosite list counts as its entries, in file order (4.34 expands it the same way).
                let entries = match d {
                    DomainMatcher::Geo(g) => &g.entries[..],
                    one => std::slice::from_ref(one),
                };
                for e in entries {
                    let p = match e {
                        DomainMatcher::Full(x) => Priority::Full(x.clone()),
                        DomainMatcher::Domain(x) => Priority::Domain(x.clone()),
                        DomainMatcher::Keyword(x) => Priority::Keyword(x.clone()),
                        DomainMatcher::Regexp(x) => Priority::Regexp(
                            regex::Regex::new(x)
                                .map_err(|e| DnsError { path: s.path.clone(), message: e.to_string() })?,
                        ),
                        // Geo lists hold plain entries only.
                        DomainMatcher::Geo(_) => continue,
                    };
                    priority.push((i, p));
                }
            }
        }
        let tag: Arc<str> = match &config.tag {
            Some(t) => Arc::from(t.as_str()),
            None => Arc::from(format!("v2ray.system.{}", uuid::Uuid::new_v4()).as_str()),
        };
        Ok(Resolver { hosts, servers, priority, tag, upstream: OnceLock::new(), timeout: SERVER_TIMEOUT })
    }

    /// The resolver used when the config has no `dns` object: the system resolver, no cache.
    pub fn system() -> Resolver {
        // An empty `dns` object is exactly that (4.34 builds the same).
        match Resolver::new(&DnsConfig::default()) {
            Ok(r) => r,
            Err(_) => Resolver {
                hosts: Hosts::default(),
                servers: Vec::new(),
                priority: Vec::new(),
                tag: Arc::from("v2ray.system"),
                upstream: OnceLock::new(),
                timeout: SERVER_TIMEOUT,
            },
        }
    }

    /// The inbound tag of the resolver's own queries.
    pub fn tag(&self) -> &Arc<str> {
        &self.tag
    }

    /// Routes the resolver's UDP queries through `upstream` (set once, by the instance).
    pub fn set_upstream(&self, upstream: Weak<dyn Upstream>) {
        let _ = self.upstream.set(upstream);
    }

    /// Changes the per-server deadline (tests; 4.34's is fixed at 4 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Resolver {
        self.timeout = timeout;
        self
    }

    /// Resolves `name` as 4.34's DNS app does (`app/dns/dns.go lookupIPInternal`).
    pub async fn lookup(&self, name: &str, family: Family) -> Result<Vec<IpAddr>, LookupError> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(LookupError::InvalidName(String::new()));
        }
        let owned;
        let name = match self.hosts.lookup(name, family) {
            HostAnswer::Ips(ips) if ips.is_empty() => return Err(LookupError::Empty),
            HostAnswer::Ips(ips) => {
                debug!(domain = name, ?ips, "dns: answered from hosts");
                return Ok(ips);
            }
            HostAnswer::Alias(a) => {
                debug!(domain = name, alias = %a, "dns: hosts alias");
                owned = a;
                owned.as_str()
            }
            HostAnswer::None => name,
        };
        let Some(wire) = message::wire_name(name) else {
            return Err(LookupError::InvalidName(name.to_string()));
        };
        let order = self.order(name);
        for &i in &order {
            let server = &self.servers[i];
            match server.query(self, name, &wire, family).await {
                Ok(ips) => return Ok(ips),
                Err(server::Failure::Final(e)) => {
                    debug!(domain = name, server = %server.name, "dns: {e}");
                    return Err(e);
                }
                Err(server::Failure::Next(why)) => {
                    debug!(domain = name, server = %server.name, "dns: failed to lookup ip: {why}; trying the next server");
                }
            }
        }
        Err(LookupError::Exhausted)
    }

    /// Server indexes in 4.34's order: the servers owning matching `domains` entries, by match kind
    /// (exact, then longest suffix, then keyword/regexp in config order), then the rest in config order.
    fn order(&self, name: &str) -> Vec<usize> {
        let mut hits: Vec<((u8, usize), usize)> = Vec::new();
        for (k, (server, p)) in self.priority.iter().enumerate() {
            let rank = match p {
                Priority::Full(d) => (d == name).then_some((0, k)),
                Priority::Domain(d) => is_subdomain(name, d).then_some((1, usize::MAX - d.len())),
                Priority::Keyword(d) => name.contains(d.as_str()).then_some((2, k)),
                Priority::Regexp(re) => re.is_match(name).then_some((2, k)),
                Priority::Dotless => (!name.contains('.')).then_some((2, k)),
            };
            if let Some(r) = rank {
                hits.push((r, *server));
            }
        }
        hits.sort_by_key(|(r, _)| *r);
        let mut order: Vec<usize> = Vec::with_capacity(self.servers.len());
        for i in hits.into_iter().map(|(_, s)| s).chain(0..self.servers.len()) {
            if !order.contains(&i) {
                order.push(i);
            }
        }
        if order.len() > 1 {
            debug!(domain = name, order = ?order.iter().map(|&i| &self.servers[i].name).collect::<Vec<_>>(), "dns: will use DNS in order");
        }
        order
    }

    fn upstream(&self) -> Option<Arc<dyn Upstream>> {
        self.upstream.get().and_then(|w| w.upgrade())
    }
}

#[cfg(test)]
mod tests;
