//! The router: `type: "field"` rules matched in order; the first match names the outbound.
//!
//! Rule conditions are compiled once. The `domain` conditions of all rules go into one `DomainIndex`
//! that returns the ids of the rules whose domain list matches, so a lookup costs about the same with one
//! rule of 10k domains as with 10k rules of one domain. Those ids are merged, in rule order, with the rules
//! that have no `domain` condition, and the remaining conditions are checked on each candidate in turn.

mod domain;
pub mod explain;
pub mod geo;
mod ip;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{NetworkList, RoutingConfig, RoutingDomainStrategy, RuleConfig};
use crate::dns::{Family, Resolver};
use crate::session::{Address, Network, Session, canonical_ip};

use domain::{DomainIndex, IdBuf};
use ip::{IpCond, PortSet, port_set};

/// Why routing rules could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A rule condition is invalid (bad regexp...).
    #[error("{path}: {message}")]
    Invalid {
        /// JSON path of the rule.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A string condition (`inboundTag`, `user`): exact match against any entry.
#[derive(Debug)]
struct StringSet(Box<[Box<str>]>);

impl StringSet {
    fn new(list: &[String]) -> Option<StringSet> {
        if list.is_empty() {
            return None;
        }
        // V2Ray drops empty entries but keeps the condition, which then can never match.
        Some(StringSet(list.iter().filter(|s| !s.is_empty()).map(|s| Box::from(s.as_str())).collect()))
    }

    #[inline]
    fn contains(&self, s: &str) -> bool {
        // V2Ray: an empty input matches nothing.
        !s.is_empty() && self.0.iter().any(|x| **x == *s)
    }
}

/// One compiled rule, minus its `domain` condition (which lives in the [`DomainIndex`]).
#[derive(Debug)]
struct Rule {
    outbound_tag: Box<str>,
    inbound_tag: Option<StringSet>,
    user: Option<StringSet>,
    network: Option<NetworkList>,
    port: Option<PortSet>,
    source_port: Option<PortSet>,
    source: Option<IpCond>,
    ip: Option<IpCond>,
    /// `protocol`: prefixes of the sniffed protocol name.
    protocol: Option<Box<[Box<str>]>>,
    /// Has a `domain` condition (kept in the index).
    has_domain: bool,
    /// Can never match (an `attrs` condition: oxray's HTTP inbound gives no attributes).
    dead: bool,
    /// `balancerTag` (index into `Router::balancers`) when the rule has no `outboundTag`.
    balancer: Option<u32>,
}

impl Rule {
    /// Every condition except `domain` and `ip`.
    #[inline]
    fn check_static(&self, s: &Session) -> bool {
        if let Some(tags) = &self.inbound_tag
            && !s.inbound_tag.as_deref().is_some_and(|t| tags.contains(t))
        {
            return false;
        }
        if let Some(net) = &self.network {
            let ok = match s.target.network {
                Network::Tcp => net.tcp,
                Network::Udp => net.udp,
            };
            if !ok {
                return false;
            }
        }
        if let Some(ports) = &self.port
            && !ports.contains(s.target.port)
        {
            return false;
        }
        if let Some(ports) = &self.source_port
            && !s.source.is_some_and(|a| ports.contains(a.port()))
        {
            return false;
        }
        if let Some(nets) = &self.source
            && !s.source.is_some_and(|a| nets.contains(canonical_ip(a.ip())))
        {
            return false;
        }
        if let Some(users) = &self.user
            && !s.user.as_ref().and_then(|u| u.email.as_deref()).is_some_and(|e| users.contains(e))
        {
            return false;
        }
        // 4.34: each entry is a prefix of the sniffed name (`http` matches `http1`); nothing sniffed, no match.
        if let Some(protocols) = &self.protocol
            && !s.protocol.is_some_and(|p| protocols.iter().any(|x| p.starts_with(&**x)))
        {
            return false;
        }
        true
    }
}

/// A balancer: its tag and the outbound tags it picks from.
type Balancer = (Box<str>, Box<[Box<str>]>);

/// Compiled routing rules.
pub struct Router {
    strategy: RoutingDomainStrategy,
    rules: Vec<Rule>,
    /// Ids of the rules without a `domain` condition, ascending: the only ones an IP target can match.
    no_domain: Vec<u32>,
    /// The `domain` conditions of all rules.
    domains: DomainIndex,
    /// Whether any live rule has an `ip` condition (else IPIfNonMatch has nothing to resolve for).
    any_ip: bool,
    /// The `dns` object's resolver (None: the system resolver).
    resolver: Option<Arc<Resolver>>,
    /// `routing.balancers`: tag and the outbound tags it picks from.
    balancers: Vec<Balancer>,
    /// State of the balancers' random picks.
    rng: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The full rule set can be huge: show its shape only.
        f.debug_struct("Router")
            .field("strategy", &self.strategy)
            .field("rules", &self.rules.len())
            .field("without_domain", &self.no_domain.len())
            .finish_non_exhaustive()
    }
}

fn invalid(rule: &RuleConfig, index: usize, message: impl Into<String>) -> RouterError {
    let path = if rule.path.is_empty() { format!("routing.rules[{index}]") } else { rule.path.clone() };
    RouterError::Invalid { path, message: message.into() }
}

/// True if the rule has no condition at all besides `domain`.
fn only_domain(r: &RuleConfig) -> bool {
    r.inbound_tag.is_empty()
        && r.ip.is_empty()
        && r.geoip.is_empty()
        && r.source_geoip.is_empty()
        && r.port.is_none()
        && r.source_port.is_none()
        && r.network.is_none()
        && r.source.is_empty()
        && r.user.is_empty()
        && r.protocol.is_empty()
        && r.attrs.is_none()
}

impl Router {
    /// Compiles the rules.
    pub fn new(config: &RoutingConfig) -> Result<Router, RouterError> {
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut no_domain = Vec::new();
        let mut any_ip = false;
        let mut domain_lists: Vec<&[crate::config::DomainMatcher]> = Vec::with_capacity(config.rules.len());
        let mut terminal = Vec::with_capacity(config.rules.len());
        for (i, r) in config.rules.iter().enumerate() {
            let id = u32::try_from(i).map_err(|_| invalid(r, i, "too many rules"))?;
            if r.domain.is_empty() && only_domain(r) {
                return Err(invalid(r, i, "this rule has no effective fields"));
            }
            // No inbound gives `attrs`, so such a condition can never hold and the rule is dead.
            let dead = r.attrs.is_some();
            // 4.34 drops empty entries but keeps the condition (which then never matches).
            let protocol = (!r.protocol.is_empty())
                .then(|| r.protocol.iter().filter(|p| !p.is_empty()).map(|p| Box::from(p.as_str())).collect());
            rules.push(Rule {
                outbound_tag: Box::from(r.outbound_tag.as_str()),
                inbound_tag: StringSet::new(&r.inbound_tag),
                user: StringSet::new(&r.user),
                network: r.network,
                port: r.port.as_ref().map(port_set),
                source_port: r.source_port.as_ref().map(port_set),
                source: IpCond::new(&r.source, &r.source_geoip),
                ip: IpCond::new(&r.ip, &r.geoip),
                protocol,
                has_domain: !r.domain.is_empty(),
                dead,
                balancer: if r.outbound_tag.is_empty() {
                    config.balancers.iter().rposition(|b| b.tag == r.balancer_tag).map(|i| i as u32)
                } else {
                    None
                },
            });
            // A dead rule gets an empty domain list, so the index never names it.
            domain_lists.push(if dead { &[] } else { &r.domain });
            terminal.push(!dead && only_domain(r));
            if !dead && r.domain.is_empty() {
                no_domain.push(id);
            }
            any_ip |= !dead && (!r.ip.is_empty() || !r.geoip.is_empty());
        }
        let domains = DomainIndex::new(&domain_lists, terminal).map_err(|e| {
            let rule = &config.rules[e.rule.min(config.rules.len().saturating_sub(1))];
            let mut err = invalid(rule, e.rule, e.message);
            if let (Some(entry), RouterError::Invalid { path, .. }) = (e.entry, &mut err) {
                path.push_str(&format!(".domain[{entry}]"));
            }
            err
        })?;
        let balancers = config
            .balancers
            .iter()
            .map(|b| (Box::from(b.tag.as_str()), b.candidates.iter().map(|c| Box::from(c.as_str())).collect()))
            .collect();
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let rng = std::sync::atomic::AtomicU64::new(seed ^ (std::process::id() as u64) << 32);
        Ok(Router {
            strategy: config.domain_strategy,
            rules,
            no_domain,
            domains,
            any_ip,
            resolver: None,
            balancers,
            rng,
        })
    }

    /// Resolves for `IPIfNonMatch`/`IPOnDemand` through the `dns` object's resolver.
    pub fn with_resolver(mut self, resolver: Option<Arc<Resolver>>) -> Router {
        self.resolver = resolver;
        self
    }

    /// Resolves a domain target for IP rules; a failure is just "no IPs", as in V2Ray.
    async fn resolve(&self, s: &Session, domain: &str) -> Vec<IpAddr> {
        let Some(r) = &self.resolver else { return resolve(domain).await };
        // The resolver's own flows (to a server named by a domain) are never resolved: that would loop.
        if s.inbound_tag.as_deref() == Some(&**r.tag()) {
            return Vec::new();
        }
        match r.lookup(domain, Family::Both).await {
            Ok(ips) => ips.into_iter().map(canonical_ip).collect(),
            Err(e) => {
                tracing::debug!("routing: cannot resolve {domain}: {e}");
                Vec::new()
            }
        }
    }

    /// The outbound tag of the first rule that matches, or None (use the default outbound).
    pub async fn pick(&self, session: &Session) -> Option<&str> {
        match &session.target.address {
            Address::Ip(ip) => self.pick_ip(session, *ip),
            Address::Domain(d) => self.pick_domain(session, d).await,
        }
    }

    /// An IP target: no resolution, no `domain` rule can match.
    fn pick_ip(&self, s: &Session, ip: IpAddr) -> Option<&str> {
        self.no_domain
            .iter()
            .map(|&id| &self.rules[id as usize])
            .find_map(|r| {
                (r.check_static(s) && r.ip.as_ref().is_none_or(|set| set.contains(ip))).then(|| self.target(r))
            })
            .flatten()
    }

    async fn pick_domain(&self, s: &Session, domain: &str) -> Option<&str> {
        let mut buf = IdBuf::new();
        let matched = self.domains.lookup(domain, &mut buf);
        // Resolved IPs for IPOnDemand, looked up at most once.
        let mut resolved: Option<Vec<IpAddr>> = None;
        for id in merge(matched, &self.no_domain) {
            let r = &self.rules[id as usize];
            if !r.check_static(s) {
                continue;
            }
            let Some(set) = &r.ip else { return self.target(r) };
            // A domain target has no IP unless the strategy resolves it on demand.
            if self.strategy == RoutingDomainStrategy::IpOnDemand && !domain.is_empty() {
                if resolved.is_none() {
                    resolved = Some(self.resolve(s, domain).await);
                }
                if resolved.as_deref().is_some_and(|ips| set.contains_any(ips)) {
                    return self.target(r);
                }
            }
        }
        if self.strategy != RoutingDomainStrategy::IpIfNonMatch || domain.is_empty() || !self.any_ip {
            return None;
        }
        // V2Ray tries all rules again with the resolved IPs; only rules with an `ip` condition can
        // change their answer, and the domain still counts as the target domain.
        let ips = self.resolve(s, domain).await;
        if ips.is_empty() {
            return None;
        }
        merge(matched, &self.no_domain)
            .map(|id| &self.rules[id as usize])
            .find_map(|r| {
                let set = r.ip.as_ref()?;
                (r.check_static(s) && set.contains_any(&ips)).then(|| self.target(r))
            })
            .flatten()
    }

    /// Where a matching rule sends the connection: its outbound, or a balancer's random pick (None when
    /// the balancer selects nothing: the default outbound, as in 4.34).
    fn target<'a>(&'a self, r: &'a Rule) -> Option<&'a str> {
        let Some(b) = r.balancer else { return Some(&r.outbound_tag) };
        let candidates = &self.balancers.get(b as usize)?.1;
        if candidates.is_empty() {
            return None;
        }
        Some(&candidates[self.next_random(candidates.len())])
    }

    /// Uniform in 0..n (4.34 picks with Go's math/rand). splitmix64 over a per-router counter: no lock,
    /// no global state, and unpredictability does not matter here.
    fn next_random(&self, n: usize) -> usize {
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((u128::from(z) * n as u128) >> 64) as usize
    }

    /// The balancers (tag, candidate outbound tags), in config order.
    pub fn balancers(&self) -> impl Iterator<Item = (&str, &[Box<str>])> {
        self.balancers.iter().map(|(t, c)| (&**t, &**c))
    }
}

/// Resolves with the system resolver; a failure is just "no IPs", as in V2Ray.
async fn resolve(domain: &str) -> Vec<IpAddr> {
    match tokio::net::lookup_host((domain, 0)).await {
        Ok(addrs) => {
            let mut ips: Vec<IpAddr> = addrs.map(|a| canonical_ip(a.ip())).collect();
            ips.sort_unstable();
            ips.dedup();
            ips
        }
        Err(e) => {
            tracing::debug!("routing: cannot resolve {domain}: {e}");
            Vec::new()
        }
    }
}

/// The union of two ascending id lists, ascending.
fn merge<'a>(a: &'a [u32], b: &'a [u32]) -> impl Iterator<Item = u32> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || match (a.get(i), b.get(j)) {
        (Some(&x), Some(&y)) if x < y => {
            i += 1;
            Some(x)
        }
        (Some(&x), Some(&y)) if x == y => {
            i += 1;
            j += 1;
            Some(x)
        }
        (_, Some(&y)) => {
            j += 1;
            Some(y)
        }
        (Some(&x), None) => {
            i += 1;
            Some(x)
        }
        (None, None) => None,
    })
}
