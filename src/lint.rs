//! Reverse-proxy lint: the mistakes V2Ray users make with bridges and portals, which 4.34 runs silently
//! broken (docs/REVERSE.md "Lint"), and `oxray route`'s report of how one connection is routed.
//!
//! Each check replays the routing decision the reverse proxy depends on with [`Router::explain`]
//! (no DNS, nothing dialled), so the lint says exactly which rule takes the tunnel where.

use std::sync::Arc;

use crate::config::{Config, OutboundConfig, OutboundProtocol, RoutingDomainStrategy};
use crate::router::Router;
use crate::router::explain::{Explanation, Verdict};
use crate::session::{Address, Destination, Network, Session};

/// One finding: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    /// JSON path to blame (a rule, an outbound's `mux`, a `reverse` entry).
    pub path: String,
    /// The message, saying what to change.
    pub message: String,
}

/// Where a connection goes.
struct Route<'c> {
    ex: Explanation,
    /// The tag it ends at (the rule's, or the default outbound's).
    tag: String,
    /// "routing.rules[2]" or "no rule (the default outbound)".
    by: String,
    /// The outbound with that tag, if one exists (portals are not outbounds).
    outbound: Option<&'c OutboundConfig>,
}

fn default_tag(c: &Config) -> String {
    match c.outbounds.first() {
        Some(o) => o.tag.clone().unwrap_or_default(),
        None => c.reverse.portals.first().map(|p| p.tag.clone()).unwrap_or_default(),
    }
}

fn route<'c>(c: &'c Config, router: &Router, s: &Session, resolved: Option<&[std::net::IpAddr]>) -> Route<'c> {
    let ex = router.explain(s, resolved);
    let (tag, by) = match (ex.rule, &ex.outbound_tag) {
        (Some(i), Some(t)) => {
            let path = c.routing.rules.get(i).map(|r| r.path.clone()).unwrap_or_else(|| format!("routing.rules[{i}]"));
            (t.clone(), path)
        }
        _ => (default_tag(c), "no rule (so the default outbound)".to_string()),
    };
    let outbound = c.outbounds.iter().find(|o| o.tag.as_deref() == Some(tag.as_str()));
    // 4.34 sends a rule's connections to the default outbound when its tag names nothing.
    let outbound = outbound.or_else(|| {
        let portal = c.reverse.portals.iter().any(|p| p.tag == tag);
        if portal { None } else { c.outbounds.first() }
    });
    Route { ex, tag, by, outbound }
}

fn kind(o: &OutboundConfig) -> &'static str {
    match &o.protocol {
        OutboundProtocol::Freedom(_) => "freedom",
        OutboundProtocol::Blackhole(_) => "blackhole",
        OutboundProtocol::Vmess(_) => "vmess",
        #[allow(unreachable_patterns)]
        _ => "proxy",
    }
}

fn is_proxy(o: &OutboundConfig) -> bool {
    !matches!(o.protocol, OutboundProtocol::Freedom(_) | OutboundProtocol::Blackhole(_))
}

fn tunnel_session(inbound: &str, domain: &str) -> Session {
    Session::new(Some(Arc::from(inbound)), None, Destination::tcp(Address::Domain(domain.into()), 0))
}

/// The first `ip` rule the tunnel reaches under IPOnDemand, for the DNS warning.
fn resolving_rule(c: &Config, r: &Route<'_>) -> String {
    r.ex.steps
        .iter()
        .find(|(_, v)| matches!(v, Verdict::Failed("ip", _)))
        .and_then(|(i, _)| c.routing.rules.get(*i).map(|r| r.path.clone()))
        .unwrap_or_else(|| r.by.clone())
}

fn dns_lint(c: &Config, r: &Route<'_>, who: &str, domain: &str, out: &mut Vec<Lint>) {
    if !r.ex.resolves {
        return;
    }
    let how = match c.routing.domain_strategy {
        RoutingDomainStrategy::IpOnDemand => format!("IPOnDemand, and {} has an ip condition", resolving_rule(c, r)),
        _ => "IPIfNonMatch and no rule matches the tunnel by name".to_string(),
    };
    out.push(Lint {
        path: "routing.domainStrategy".into(),
        message: format!(
            "{who}'s tunnel target {domain:?} is looked up in DNS before it is routed (domainStrategy is {how}); \
             the domain usually does not exist, so each tunnel dial waits for DNS. Put a rule matching \
             \"full:{domain}\" before the ip rules"
        ),
    });
}

/// Every reverse-proxy finding for a validated config (empty when there is no `reverse`).
pub fn reverse(c: &Config) -> Vec<Lint> {
    let mut out = Vec::new();
    if c.reverse.bridges.is_empty() && c.reverse.portals.is_empty() {
        return out;
    }
    let Ok(router) = Router::new(&c.routing) else { return out };
    let proxies: Vec<&str> = c.outbounds.iter().filter(|o| is_proxy(o)).filter_map(|o| o.tag.as_deref()).collect();

    for (bi, b) in c.reverse.bridges.iter().enumerate() {
        let who = format!("bridge {:?}", b.tag);
        let r = route(c, &router, &tunnel_session(&b.tag, &b.domain), None);
        // A balancer's pick is random: nothing certain to say about the tunnel's outbound.
        if r.ex.balancer.is_some() {
            continue;
        }
        let target = format!("tcp:{}:0", b.domain);
        let to_proxy = r.outbound.is_some_and(is_proxy) && !c.reverse.portals.iter().any(|p| p.tag == r.tag);
        if !to_proxy {
            let what = match r.outbound {
                Some(o)
                    if c.outbounds.first().is_some_and(|f| std::ptr::eq(f, o))
                        && o.tag.as_deref() != Some(r.tag.as_str()) =>
                {
                    format!(
                        "{:?}, which names no outbound, so to the default {:?} ({})",
                        r.tag,
                        o.tag.as_deref().unwrap_or(""),
                        kind(o)
                    )
                }
                Some(o) => format!("{:?} ({})", r.tag, kind(o)),
                None => format!("{:?} (a portal)", r.tag),
            };
            let vmess = match proxies.as_slice() {
                [one] => format!("{one:?}"),
                _ => "<the VMess outbound to the portal>".to_string(),
            };
            let first = match r.ex.rule {
                Some(_) => format!(" before {}", r.by),
                None => " first".to_string(),
            };
            out.push(Lint {
                path: r.ex.rule.map_or_else(|| format!("reverse.bridges[{bi}]"), |_| r.by.clone()),
                message: format!(
                    "{who}: its tunnel ({target}, inbound {:?}) is routed by {} to {what}, so it never reaches the \
                     portal. Put {{\"type\": \"field\", \"inboundTag\": [{:?}], \"domain\": [\"full:{}\"], \"outboundTag\": {vmess}}}{first}",
                    b.tag, r.by, b.tag, b.domain
                ),
            });
        } else if let Some(o) = r.outbound
            && o.mux.is_some()
        {
            out.push(Lint {
                path: format!("{}.mux", o.path),
                message: format!(
                    "mux is enabled on {:?}, the outbound that carries {who}'s tunnel: the reverse proxy already runs \
                     Mux inside that connection (V2Ray's docs say to leave it off). Remove \"mux\" or set \"enabled\": false",
                    r.tag
                ),
            });
        }
        dns_lint(c, &r, &who, &b.domain, &mut out);
    }

    let inbound_tags: Vec<&str> = c.inbounds.iter().filter_map(|i| i.tag.as_deref()).collect();
    let bridge_tags: Vec<&str> = c.reverse.bridges.iter().map(|b| b.tag.as_str()).collect();
    let vmess_in: Vec<&str> = c
        .inbounds
        .iter()
        .filter(|i| matches!(i.protocol, crate::config::InboundProtocol::Vmess(_)))
        .filter_map(|i| i.tag.as_deref())
        .collect();
    let default = default_tag(c);
    for (pi, p) in c.reverse.portals.iter().enumerate() {
        let who = format!("portal {:?}", p.tag);
        let rules: Vec<_> = c.routing.rules.iter().filter(|r| r.outbound_tag == p.tag).collect();
        if rules.is_empty() && default != p.tag {
            out.push(Lint {
                path: format!("reverse.portals[{pi}]"),
                message: format!(
                    "{who}: no routing rule sends connections to it, so neither the bridge's tunnel nor public traffic \
                     reaches it. Add {{\"type\": \"field\", \"inboundTag\": [<the VMess inbound>, <the public inbound>], \
                     \"outboundTag\": {:?}}}",
                    p.tag
                ),
            });
            continue;
        }
        // Rules to the portal that can only ever see inbounds that do not exist.
        let reachable = default == p.tag
            || rules.iter().any(|r| {
                r.inbound_tag.is_empty()
                    || r.inbound_tag
                        .iter()
                        .any(|t| inbound_tags.contains(&t.as_str()) || bridge_tags.contains(&t.as_str()))
            });
        if !reachable {
            let named: Vec<&str> = rules.iter().flat_map(|r| r.inbound_tag.iter().map(String::as_str)).collect();
            out.push(Lint {
                path: rules[0].path.clone(),
                message: format!(
                    "{who}: no inbound reaches it: the rules that route to it name inbound(s) {named:?}, and no inbound \
                     has such a tag (inbounds: {inbound_tags:?})"
                ),
            });
        }
        if vmess_in.is_empty() {
            out.push(Lint {
                path: format!("reverse.portals[{pi}]"),
                message: format!("{who}: there is no tagged VMess inbound, so no bridge can connect to it"),
            });
            continue;
        }
        let routes: Vec<(&str, Route<'_>)> =
            vmess_in.iter().map(|t| (*t, route(c, &router, &tunnel_session(t, &p.domain), None))).collect();
        if !routes.iter().any(|(_, r)| r.tag == p.tag) {
            let (t, r) = &routes[0];
            let place = if r.ex.rule.is_some() { format!(" before {}", r.by) } else { String::new() };
            out.push(Lint {
                path: r.ex.rule.map_or_else(|| format!("reverse.portals[{pi}]"), |_| r.by.clone()),
                message: format!(
                    "{who}: a bridge's tunnel (tcp:{}:0) arriving on the VMess inbound {t:?} is routed by {} to {:?}, not \
                     to the portal. Add {{\"type\": \"field\", \"inboundTag\": [{t:?}], \"outboundTag\": {:?}}}{place}",
                    p.domain, r.by, r.tag, p.tag
                ),
            });
        }
        if let Some((_, r)) = routes.iter().find(|(_, r)| r.tag == p.tag) {
            dns_lint(c, r, &who, &p.domain, &mut out);
        }
    }
    out
}

/// Parses `tcp:host:port` / `udp:host:port` (IPv6 as `[::1]`), as V2Ray prints destinations.
pub fn parse_destination(s: &str) -> Result<Destination, String> {
    let (net, rest) = match s.split_once(':') {
        Some(("tcp", r)) => (Network::Tcp, r),
        Some(("udp", r)) => (Network::Udp, r),
        _ => (Network::Tcp, s),
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("{s:?}: expected tcp:HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| format!("{s:?}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?}: empty host"));
    }
    let address = Address::parse(host);
    Ok(match net {
        Network::Tcp => Destination::tcp(address, port),
        Network::Udp => Destination { network: Network::Udp, address, port },
    })
}

/// `oxray route`: every rule tried, why it did not match, and the outbound the connection takes.
pub fn route_report(
    c: &Config,
    inbound: Option<&str>,
    dest: Destination,
    resolved: Option<&[std::net::IpAddr]>,
) -> Result<String, String> {
    let router = Router::new(&c.routing).map_err(|e| e.to_string())?;
    let target = dest.to_string();
    let s = Session::new(inbound.map(Arc::from), None, dest);
    let r = route(c, &router, &s, resolved);
    let mut text = format!("{target} from inbound {:?}:\n", inbound.unwrap_or(""));
    for (i, v) in &r.ex.steps {
        let path = c.routing.rules.get(*i).map(|r| r.path.as_str()).unwrap_or("?");
        let tag = c.routing.rules.get(*i).map(|r| r.outbound_tag.as_str()).unwrap_or("");
        match v {
            Verdict::Matched => text.push_str(&format!("  {path} (→ {tag:?}): matches\n")),
            Verdict::Failed(what, why) => text.push_str(&format!("  {path} (→ {tag:?}): no: {what}: {why}\n")),
        }
    }
    if r.ex.resolves {
        text.push_str(
            "  (the target domain would be resolved through DNS on the way; pass --ip to say what it resolves to)\n",
        );
    }
    if let Some((b, candidates)) = &r.ex.balancer {
        let by = r.ex.rule.and_then(|i| c.routing.rules.get(i)).map(|x| x.path.clone()).unwrap_or_default();
        if candidates.is_empty() {
            text.push_str(&format!(
                "→ balancer {b:?} selects no outbound, so the default outbound {:?}, by {by}\n",
                default_tag(c)
            ));
        } else {
            text.push_str(&format!("→ balancer {b:?}: one of {candidates:?} at random per connection, by {by}\n"));
        }
        return Ok(text);
    }
    let outbound = match r.outbound {
        Some(o) if o.tag.as_deref() == Some(r.tag.as_str()) => {
            format!("outbound {:?} ({}, {})", r.tag, kind(o), o.path)
        }
        Some(o) => format!(
            "{:?}, which names no outbound, so (as in V2Ray 4.34) the default outbound {:?} ({})",
            r.tag,
            o.tag.as_deref().unwrap_or(""),
            kind(o)
        ),
        None if c.reverse.portals.iter().any(|p| p.tag == r.tag) => format!("portal {:?}", r.tag),
        None => "nothing (there is no outbound): the connection is closed".to_string(),
    };
    let by = match r.ex.rule {
        Some(_) => format!("by {}", r.by),
        None => "no rule matches: the default outbound".to_string(),
    };
    text.push_str(&format!("→ {outbound}, {by}\n"));
    Ok(text)
}
