//! The top-level `dns` object and the `dns` outbound's settings, as V2Ray 4.34 reads them
//! (`infra/conf/dns.go`, `infra/conf/dns_proxy.go`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::ctx::{Ctx, Obj, index, join};
use super::json::{Node, Value};
use super::types::DomainMatcher;
use super::validate::domain_entry;
use super::values::parse_cidr;
use crate::session::{Address, Network};

/// `dns`: the built-in resolver. Present only when the config has a (non-null) `dns` object.
#[derive(Debug, Clone, Default)]
pub struct DnsConfig {
    /// `servers`, in priority order (empty: one system-resolver server, as 4.34).
    pub servers: Vec<DnsServerConfig>,
    /// `hosts`, sorted by key (byte order), as 4.34 adds them.
    pub hosts: Vec<HostEntry>,
    /// `clientIp`: EDNS0 Client Subnet for every UDP server without its own.
    pub client_ip: Option<IpAddr>,
    /// `tag`: inbound tag of the resolver's own queries (None: a random `v2ray.system.<uuid>`).
    pub tag: Option<String>,
}

/// How one server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsServerKind {
    /// Classic DNS over UDP, sent through the dispatcher (routed with the resolver's tag).
    Udp {
        /// An IP or a domain.
        address: Address,
        /// `port` (default 53).
        port: u16,
    },
    /// `"localhost"`: the system resolver, never routed.
    Localhost,
    /// `"https://HOST[:PORT]/PATH"` (routed with the resolver's tag) or `"https+local://..."` (dialled
    /// directly): DNS over HTTPS, RFC 8484 POST.
    Doh {
        /// The URL requests go to, scheme `https`.
        url: String,
        /// Its host (an IP is checked against the certificate's IP addresses).
        host: Address,
        /// Its port (default 443).
        port: u16,
        /// `https+local`: not routed.
        local: bool,
    },
}

/// One `servers` entry.
#[derive(Debug, Clone)]
pub struct DnsServerConfig {
    /// What the address string picked.
    pub kind: DnsServerKind,
    /// `domains`: names this server is asked first for (routing `domain` syntax).
    pub domains: Vec<DomainMatcher>,
    /// `expectIPs`: only answers inside these networks count (empty, with `expect_geoip` empty: all).
    pub expect_ips: Vec<IpNet>,
    /// `expectIPs` entries that name geoip lists (`geoip:cn`, `ext:file.dat:code`).
    pub expect_geoip: Vec<std::sync::Arc<crate::router::geo::GeoIpList>>,
    /// `clientIp` of this server (or the top-level one).
    pub client_ip: Option<IpAddr>,
    /// JSON path, e.g. `dns.servers[1]`.
    pub path: String,
}

/// A `hosts` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatcher {
    /// A bare key or `full:`: exactly this name.
    Full(String),
    /// `domain:`: the name and its subdomains.
    Domain(String),
    /// `keyword:`: names containing it.
    Keyword(String),
    /// `regexp:`: a regular-expression search.
    Regexp(String),
    /// `dotless:`: names without a dot that contain it (empty: any dotless name).
    Dotless(String),
}

/// A `hosts` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostValue {
    /// A fixed address.
    Ip(IpAddr),
    /// Another name to look up instead.
    Alias(String),
}

/// One `hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// Which names it covers.
    pub matcher: HostMatcher,
    /// What they resolve to.
    pub value: HostValue,
}

/// `dns` outbound settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsOutboundConfig {
    /// `network`: transport for forwarded queries (None: the incoming connection's).
    pub network: Option<Network>,
    /// `address`: replaces the target address of forwarded queries.
    pub address: Option<Address>,
    /// `port`: replaces the target port when non-zero.
    pub port: u16,
}

/// Keys of later V2Ray versions that 4.34 does not read: accepted with a warning, no effect.
const LATER_DNS_KEYS: &[&str] =
    &["disableCache", "queryStrategy", "disableFallback", "disableFallbackIfMatch", "fakedns"];
const LATER_SERVER_KEYS: &[&str] = &["skipFallback", "tag", "queryStrategy"];
const DNS_KEYS: &[&str] = &[
    "servers",
    "hosts",
    "clientIp",
    "tag",
    "disableCache",
    "queryStrategy",
    "disableFallback",
    "disableFallbackIfMatch",
    "fakedns",
];
const SERVER_KEYS: &[&str] =
    &["address", "port", "domains", "expectIPs", "clientIp", "skipFallback", "tag", "queryStrategy"];

/// The `dns` object (`infra/conf/dns.go DNSConfig.Build`). `null` means no DNS object at all.
pub(crate) fn build_dns(ctx: &mut Ctx<'_>, node: &Node) -> Option<DnsConfig> {
    if matches!(node.value, Value::Null) {
        return None;
    }
    let mut cfg = DnsConfig::default();
    let Some(o) = ctx.obj(node, "dns", DNS_KEYS) else { return Some(cfg) };
    later_keys(ctx, &o, LATER_DNS_KEYS);
    cfg.tag = o.str(ctx, "tag").filter(|t| !t.is_empty());
    cfg.client_ip = client_ip(ctx, &o);
    for (i, s) in o.array(ctx, "servers").unwrap_or_default().iter().enumerate() {
        if let Some(server) = build_server(ctx, s, &index(&o.path_of("servers"), i), cfg.client_ip) {
            cfg.servers.push(server);
        }
    }
    if let Some(h) = o.get("hosts") {
        cfg.hosts = build_hosts(ctx, h, &o.path_of("hosts"));
    }
    Some(cfg)
}

fn later_keys(ctx: &mut Ctx<'_>, o: &Obj<'_>, keys: &[&str]) {
    for key in keys {
        if let Some(n) = o.get(key) {
            ctx.warn(
                n,
                &o.path_of(key),
                format!("{key:?} is not read by V2Ray 4.34 (later versions have it); it has no effect"),
            );
        }
    }
}

fn client_ip(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<IpAddr> {
    let s = o.str(ctx, "clientIp").filter(|s| !s.is_empty())?;
    match Address::parse(&s) {
        Address::Ip(ip) => Some(ip),
        Address::Domain(_) => {
            let at = o.get("clientIp").unwrap_or(o.node);
            ctx.error(at, &o.path_of("clientIp"), format!("clientIp {s:?} is not an IP address"));
            None
        }
    }
}

/// One `servers` entry: a string or an object (`infra/conf/dns.go NameServerConfig`).
fn build_server(ctx: &mut Ctx<'_>, node: &Node, path: &str, top_client_ip: Option<IpAddr>) -> Option<DnsServerConfig> {
    let mut server = DnsServerConfig {
        kind: DnsServerKind::Localhost,
        domains: Vec::new(),
        expect_ips: Vec::new(),
        expect_geoip: Vec::new(),
        client_ip: top_client_ip,
        path: path.to_string(),
    };
    let (address, port, at, at_path) = match &node.value {
        Value::String(s) => (s.clone(), 0, node, path.to_string()),
        Value::Object(_) => {
            let o = ctx.obj(node, path, SERVER_KEYS)?;
            later_keys(ctx, &o, LATER_SERVER_KEYS);
            let port = o.int::<u16>(ctx, "port", 0, u16::MAX).unwrap_or(0);
            if let Some(ip) = client_ip(ctx, &o) {
                server.client_ip = Some(ip);
            }
            let mut ok = true;
            if let Some(n) = o.get("domains") {
                for (s, at, p) in ctx.string_list(n, &o.path_of("domains")).unwrap_or_default() {
                    // geosite:/ext: lists too, read once per file and list like routing's.
                    match domain_entry(ctx, &s) {
                        Ok(m) => server.domains.push(m),
                        Err(e) => {
                            ctx.error(at, &p, e);
                            ok = false;
                        }
                    }
                }
            }
            if let Some(n) = o.get("expectIPs") {
                for (s, at, p) in ctx.string_list(n, &o.path_of("expectIPs")).unwrap_or_default() {
                    let r = match crate::router::geo::ip_ref(&s) {
                        Some(Ok(g)) => ctx
                            .geo
                            .ip(&s, &g.file, &g.code)
                            .map(|l| server.expect_geoip.push(l))
                            .map_err(|e| e.to_string()),
                        Some(Err(e)) => Err(e),
                        None => parse_cidr(&s).map(|net| server.expect_ips.push(net)),
                    };
                    match r {
                        Ok(()) => {}
                        Err(e) => {
                            ctx.error(at, &p, e);
                            ok = false;
                        }
                    }
                }
            }
            let Some(addr_node) = o.get("address") else {
                ctx.error(node, &o.path_of("address"), "NameServer address is not specified.");
                return None;
            };
            let address = ctx.string(addr_node, &o.path_of("address"))?;
            if !ok {
                return None;
            }
            (address, port, addr_node, o.path_of("address"))
        }
        _ => {
            ctx.error(node, path, format!("expected a server address string or object, got {}", node.value.kind()));
            return None;
        }
    };
    match server_kind(&address, port) {
        Ok(kind) => server.kind = kind,
        Err(e) => {
            ctx.error(at, &at_path, e);
            return None;
        }
    }
    Some(server)
}

/// What a server address string means (`app/dns/nameserver.go NewServer`).
pub(crate) fn server_kind(address: &str, port: u16) -> Result<DnsServerKind, String> {
    if address.eq_ignore_ascii_case("localhost") {
        return Ok(DnsServerKind::Localhost);
    }
    let port = if port == 0 { 53 } else { port };
    if let Address::Ip(ip) = Address::parse(address) {
        return Ok(DnsServerKind::Udp { address: Address::Ip(ip), port });
    }
    if let Some((scheme, _)) = address.split_once("://") {
        let lower = scheme.to_ascii_lowercase();
        if lower == "https" || lower == "https+local" {
            return doh_kind(address, lower == "https+local");
        }
        return Err(match scheme {
            "quic+local" => {
                format!("DNS-over-QUIC server {address:?} is not supported by oxray (4.34 speaks an abandoned draft)")
            }
            _ => format!(
                "unknown DNS server scheme {scheme:?} in {address:?}: V2Ray 4.34 would send UDP to a host named {address:?}, which can never work"
            ),
        });
    }
    if address.is_empty() {
        return Err("NameServer address is not specified.".into());
    }
    if address.contains(':') {
        return Err(format!(
            "{address:?} is not a server address (4.34: \"first path segment in URL cannot contain colon\"); write {{\"address\": HOST, \"port\": PORT}}"
        ));
    }
    Ok(DnsServerKind::Udp { address: Address::parse(address), port })
}

/// A DoH URL (Go's `url.Parse` lower-cases the scheme; 4.34 sends the URL as written, `https+local`
/// turned into `https`). `port` of the object form does not apply to it.
fn doh_kind(address: &str, local: bool) -> Result<DnsServerKind, String> {
    let rest = address.split_once("://").map_or("", |(_, r)| r);
    let url = format!("https://{rest}");
    let uri: hyper::Uri = url.parse().map_err(|e| format!("invalid DNS-over-HTTPS URL {address:?}: {e}"))?;
    let Some(authority) = uri.authority() else {
        return Err(format!("DNS-over-HTTPS URL {address:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("DNS-over-HTTPS URL {address:?}: user credentials in the URL are not supported"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("DNS-over-HTTPS URL {address:?} has no host"));
    }
    Ok(DnsServerKind::Doh { url, host: Address::parse(host), port: authority.port_u16().unwrap_or(443), local })
}

/// `hosts`: key → one string (IP or alias), keys sorted as 4.34 adds them.
fn build_hosts(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Vec<HostEntry> {
    let Value::Object(members) = &node.value else {
        ctx.error(node, path, format!("expected an object, got {}", node.value.kind()));
        return Vec::new();
    };
    let mut entries: Vec<(&str, Vec<HostEntry>)> = Vec::new();
    for m in members {
        let p = join(path, &m.key);
        if matches!(m.node.value, Value::Null) {
            continue;
        }
        let Some(value) = ctx.string(&m.node, &p) else { continue };
        let value = if value.is_empty() {
            ctx.error(&m.node, &p, "neither IP address nor proxied domain specified");
            continue;
        } else {
            match Address::parse(&value) {
                Address::Ip(ip) => HostValue::Ip(ip),
                Address::Domain(d) => HostValue::Alias(d.to_string()),
            }
        };
        let matchers = if m.key.starts_with("geosite:") || m.key.starts_with("ext:") {
            geo_host_matchers(ctx, &m.key)
        } else {
            host_matcher(&m.key).map(|m| vec![m])
        };
        match matchers {
            Ok(matchers) => {
                // A later duplicate key replaces an earlier one (a JSON object in Go).
                entries.retain(|(k, _)| *k != m.key.as_str());
                let list = matchers.into_iter().map(|matcher| HostEntry { matcher, value: value.clone() }).collect();
                entries.push((m.key.as_str(), list));
            }
            Err(e) => ctx.error_pos(node.file, m.key_pos, &p, e),
        }
    }
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries.into_iter().flat_map(|(_, e)| e).collect()
}

/// A `geosite:LIST[@ATTR]` or `ext:FILE:LIST[@ATTR]` hosts key: one entry per list entry, in file order,
/// each with its own type (4.34 `DNSConfig.Build`; a plain geosite entry is a keyword there too).
fn geo_host_matchers(ctx: &mut Ctx<'_>, key: &str) -> Result<Vec<HostMatcher>, String> {
    if key == "geosite:" {
        return Err(format!("empty geosite rule: {key:?}"));
    }
    let DomainMatcher::Geo(list) = domain_entry(ctx, key)? else {
        return Err(format!("hosts key {key:?} is not a geosite list"));
    };
    Ok(list
        .entries
        .iter()
        .filter_map(|e| match e {
            DomainMatcher::Full(d) => Some(HostMatcher::Full(d.clone())),
            DomainMatcher::Domain(d) => Some(HostMatcher::Domain(d.clone())),
            DomainMatcher::Keyword(d) => Some(HostMatcher::Keyword(d.clone())),
            DomainMatcher::Regexp(d) => Some(HostMatcher::Regexp(d.clone())),
            // Lists hold plain entries only.
            DomainMatcher::Geo(_) => None,
        })
        .collect())
}

/// A `hosts` key that is not a geosite list (`infra/conf/dns.go`): a bare key is an exact name here,
/// unlike in routing.
pub(crate) fn host_matcher(key: &str) -> Result<HostMatcher, String> {
    let nonempty = |body: &str, what: &str| {
        if body.is_empty() { Err(format!("empty {what} rule in hosts key {key:?}")) } else { Ok(body.to_string()) }
    };
    if key.starts_with("geosite:") || key.starts_with("ext:") {
        return Err(format!("hosts key {key:?} names a geosite list: it is read with the config (build_hosts)"));
    }
    if let Some(b) = key.strip_prefix("domain:") {
        return nonempty(b, "domain").map(HostMatcher::Domain);
    }
    if let Some(b) = key.strip_prefix("full:") {
        return nonempty(b, "full").map(HostMatcher::Full);
    }
    if let Some(b) = key.strip_prefix("keyword:") {
        return nonempty(b, "keyword").map(HostMatcher::Keyword);
    }
    if let Some(b) = key.strip_prefix("regexp:") {
        let re = nonempty(b, "regexp")?;
        return regex::Regex::new(&re).map(|_| HostMatcher::Regexp(re.clone())).map_err(|e| {
            format!("invalid regexp {re:?}: {}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
        });
    }
    if let Some(b) = key.strip_prefix("dotless:") {
        if b.contains('.') {
            return Err(format!("dotless rule {key:?} must not contain a dot"));
        }
        return Ok(HostMatcher::Dotless(b.to_string()));
    }
    nonempty(key, "full").map(HostMatcher::Full)
}

pub(crate) const DNS_OUT_KEYS: &[&str] = &["network", "address", "port"];

/// `dns` outbound settings (`infra/conf/dns_proxy.go`).
pub(crate) fn dns_outbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<DnsOutboundConfig> {
    let network = match o.str(ctx, "network").map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("tcp") => Some(Network::Tcp),
        Some("udp") => Some(Network::Udp),
        _ => None,
    };
    let address = o.str(ctx, "address").filter(|s| !s.is_empty()).map(|s| Address::parse(&s));
    let port = o.int::<u16>(ctx, "port", 0, u16::MAX).unwrap_or(0);
    Some(DnsOutboundConfig { network, address, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_strings_pick_kinds_like_4_34() {
        let udp = |a: &str, p| DnsServerKind::Udp { address: Address::parse(a), port: p };
        assert_eq!(server_kind("1.1.1.1", 0), Ok(udp("1.1.1.1", 53)));
        assert_eq!(server_kind("::1", 5353), Ok(udp("::1", 5353)));
        assert_eq!(server_kind("dns.example", 0), Ok(udp("dns.example", 53)));
        assert_eq!(server_kind("LocalHost", 0), Ok(DnsServerKind::Localhost));
        for bad in ["8.8.8.8:53", "tcp://1.1.1.1", "quic+local://dns.example", "https:///dns-query", "https://u@h/", ""]
        {
            assert!(server_kind(bad, 0).is_err(), "{bad}");
        }
        let doh = |url: &str, host: &str, port, local| DnsServerKind::Doh {
            url: url.to_string(),
            host: Address::parse(host),
            port,
            local,
        };
        assert_eq!(
            server_kind("https://dns.example/dns-query", 53),
            Ok(doh("https://dns.example/dns-query", "dns.example", 443, false))
        );
        assert_eq!(
            server_kind("https+local://127.0.0.1:8443/q?x=1", 0),
            Ok(doh("https://127.0.0.1:8443/q?x=1", "127.0.0.1", 8443, true))
        );
        assert_eq!(
            server_kind("HTTPS://[::1]:444/dns-query", 0),
            Ok(doh("https://[::1]:444/dns-query", "::1", 444, false))
        );
    }

    #[test]
    fn host_keys() {
        assert_eq!(host_matcher("a.test"), Ok(HostMatcher::Full("a.test".into())));
        assert_eq!(host_matcher("full:a"), Ok(HostMatcher::Full("a".into())));
        assert_eq!(host_matcher("domain:a"), Ok(HostMatcher::Domain("a".into())));
        assert_eq!(host_matcher("keyword:a"), Ok(HostMatcher::Keyword("a".into())));
        assert_eq!(host_matcher("dotless:"), Ok(HostMatcher::Dotless(String::new())));
        // `ext-domain:` is not a hosts prefix in 4.34: the key is a literal name.
        assert_eq!(host_matcher("ext-domain:x"), Ok(HostMatcher::Full("ext-domain:x".into())));
        // geosite:/ext: keys are lists, read with the config (build_hosts), never single matchers.
        for bad in ["domain:", "full:", "regexp:(", "geosite:cn", "ext:f.dat:x", "dotless:a.b"] {
            assert!(host_matcher(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_gives_a_kind_or_an_error(s in "\\PC{0,80}", port in proptest::prelude::any::<u16>()) {
            let _ = server_kind(&s, port);
            let _ = host_matcher(&s);
        }
    }
}
