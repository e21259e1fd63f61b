//! Why a connection takes the route it takes: every rule up to the one that matches, each with the
//! first condition that failed (in 4.34's order: domain, user, inboundTag, port, sourcePort, network,
//! ip, source, protocol). Used by `oxray route` and the reverse-proxy lint; never resolves anything.

use std::net::IpAddr;

use super::domain::IdBuf;
use super::{Router, Rule};
use crate::config::RoutingDomainStrategy;
use crate::session::{Address, Network, Session, canonical_ip};

/// The verdict on one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// All conditions hold: this rule wins.
    Matched,
    /// This condition does not hold (its name, and why).
    Failed(&'static str, String),
}

/// The route of one connection.
#[derive(Debug, Clone, Default)]
pub struct Explanation {
    /// (rule index, verdict) for every rule tried, in order, up to and including the winner.
    pub steps: Vec<(usize, Verdict)>,
    /// The winning rule, if any (else the default outbound takes the connection).
    pub rule: Option<usize>,
    /// The winning rule's outbound tag.
    pub outbound_tag: Option<String>,
    /// The target domain would be resolved through DNS on the way (IPOnDemand / IPIfNonMatch).
    pub resolves: bool,
    /// When the winning rule uses a balancer: its tag and the outbound tags it picks from at random.
    pub balancer: Option<(String, Vec<String>)>,
}

impl Router {
    /// Explains the route of `s` without resolving: `resolved` stands for what DNS would answer for a
    /// domain target (None = resolution gives nothing).
    pub fn explain(&self, s: &Session, resolved: Option<&[IpAddr]>) -> Explanation {
        let mut ex = Explanation::default();
        let domain = s.target.address.domain().filter(|d| !d.is_empty());
        let mut buf = IdBuf::new();
        let matched: Vec<u32> = match domain {
            Some(d) => self.domains.lookup(d, &mut buf).to_vec(),
            None => Vec::new(),
        };
        let ips: Vec<IpAddr> = match &s.target.address {
            Address::Ip(ip) => vec![canonical_ip(*ip)],
            Address::Domain(_) => Vec::new(),
        };
        let resolved = resolved.unwrap_or(&[]);
        let on_demand = self.strategy == RoutingDomainStrategy::IpOnDemand;
        for (i, r) in self.rules.iter().enumerate() {
            let v = verdict(r, s, domain, matched.contains(&(i as u32)), &ips, on_demand.then_some(resolved));
            if domain.is_some() && on_demand && r.ip.is_some() && reaches_ip(&v) {
                ex.resolves = true;
            }
            let won = v == Verdict::Matched;
            ex.steps.push((i, v));
            if won {
                self.won(&mut ex, i, r);
                return ex;
            }
        }
        // IPIfNonMatch: nothing matched a domain target, so it is resolved and the rules tried again.
        if self.strategy == RoutingDomainStrategy::IpIfNonMatch && domain.is_some() && self.any_ip {
            ex.resolves = true;
            for (i, r) in self.rules.iter().enumerate() {
                if r.ip.is_none() || resolved.is_empty() {
                    continue;
                }
                let dm = matched.contains(&(i as u32));
                if verdict(r, s, domain, dm, resolved, None) == Verdict::Matched {
                    ex.steps.push((i, Verdict::Matched));
                    self.won(&mut ex, i, r);
                    return ex;
                }
            }
        }
        ex
    }
}

impl Router {
    fn won(&self, ex: &mut Explanation, i: usize, r: &Rule) {
        ex.rule = Some(i);
        match r.balancer.and_then(|b| self.balancers.get(b as usize)) {
            Some((tag, c)) => ex.balancer = Some((tag.to_string(), c.iter().map(|t| t.to_string()).collect())),
            None => ex.outbound_tag = Some(r.outbound_tag.to_string()),
        }
    }
}

/// True when the verdict got as far as the `ip` condition (so IPOnDemand resolved for it).
fn reaches_ip(v: &Verdict) -> bool {
    matches!(v, Verdict::Matched | Verdict::Failed("ip" | "source" | "protocol" | "attrs", _))
}

fn verdict(
    r: &Rule,
    s: &Session,
    domain: Option<&str>,
    domain_matched: bool,
    ips: &[IpAddr],
    resolved: Option<&[IpAddr]>,
) -> Verdict {
    let fail = |what: &'static str, why: String| Verdict::Failed(what, why);
    if r.has_domain && !domain_matched {
        return fail(
            "domain",
            if domain.is_some() {
                "the domain matches none of its entries".into()
            } else {
                "the target is not a domain".into()
            },
        );
    }
    if let Some(users) = &r.user
        && !s.user.as_ref().and_then(|u| u.email.as_deref()).is_some_and(|e| users.contains(e))
    {
        return fail("user", "the user's email is not in the list".into());
    }
    if let Some(tags) = &r.inbound_tag
        && !s.inbound_tag.as_deref().is_some_and(|t| tags.contains(t))
    {
        let t = s.inbound_tag.as_deref().unwrap_or("");
        return fail("inboundTag", format!("inbound {t:?} is not in the list"));
    }
    if let Some(ports) = &r.port
        && !ports.contains(s.target.port)
    {
        return fail("port", format!("port {} is not in the list", s.target.port));
    }
    if let Some(ports) = &r.source_port
        && !s.source.is_some_and(|a| ports.contains(a.port()))
    {
        return fail("sourcePort", "the source port is not in the list".into());
    }
    if let Some(net) = &r.network {
        let ok = match s.target.network {
            Network::Tcp => net.tcp,
            Network::Udp => net.udp,
        };
        if !ok {
            return fail("network", "the network is not in the list".into());
        }
    }
    if let Some(set) = &r.ip {
        let candidates = if ips.is_empty() { resolved.unwrap_or(&[]) } else { ips };
        if !set.contains_any(candidates) {
            let why = match (ips.is_empty(), resolved) {
                (false, _) => "the target IP is not in the list".to_string(),
                (true, None) => "the target is a domain and domainStrategy does not resolve it here".to_string(),
                (true, Some([])) => {
                    "the target is a domain; it would be resolved (IPOnDemand), to nothing here".to_string()
                }
                (true, Some(_)) => "the resolved IPs are not in the list".to_string(),
            };
            return fail("ip", why);
        }
    }
    if let Some(set) = &r.source
        && !s.source.is_some_and(|a| set.contains(canonical_ip(a.ip())))
    {
        return fail("source", "the source IP is not in the list".into());
    }
    if let Some(protocols) = &r.protocol
        && !s.protocol.is_some_and(|p| protocols.iter().any(|x| p.starts_with(&**x)))
    {
        let why = match s.protocol {
            Some(p) => format!("the sniffed protocol {p:?} is not in the list"),
            None => "nothing was sniffed (it needs sniffing on the inbound and a recognised first packet)".into(),
        };
        return fail("protocol", why);
    }
    if r.dead {
        return fail("attrs", "no oxray inbound gives attributes, so an attrs condition never holds".into());
    }
    Verdict::Matched
}
