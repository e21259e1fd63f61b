//! Positioned JSON trees (already merged) → the validated [`Config`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use super::ctx::{Ctx, Obj, index, is_noop, join};
use super::json::{Node, Value};
use super::proxies;
use super::stream;
use super::types::*;
use super::values::{parse_cidr, parse_port_list, parse_port_range, parse_uuid, split_host_port};
use crate::router::geo;
use crate::session::Address;

/// Keys of the top-level object (`infra/conf/v2ray.go Config`).
pub(crate) const TOP_KEYS: &[&str] = &[
    "port",
    "inbound",
    "outbound",
    "inboundDetour",
    "outboundDetour",
    "log",
    "routing",
    "dns",
    "inbounds",
    "outbounds",
    "transport",
    "policy",
    "api",
    "stats",
    "reverse",
    // oxray extension (V2Ray's decoder ignores unknown top-level keys, so such a file still loads there).
    "ops",
];

/// The merged top level: each key's winning value, and the inbound/outbound lists in final order
/// (each entry with the JSON path it had in its own file).
#[derive(Default)]
pub(crate) struct Merged<'n> {
    /// Top-level objects, by canonical key (`log`, `routing`, …).
    pub singles: HashMap<&'static str, &'n Node>,
    /// Top-level `port` of the first file.
    pub port: Option<&'n Node>,
    /// Final inbound list.
    pub inbounds: Vec<(&'n Node, String)>,
    /// Final outbound list.
    pub outbounds: Vec<(&'n Node, String)>,
}

/// Builds the typed config from the merged tree, collecting errors in `ctx`.
pub(crate) fn build(ctx: &mut Ctx<'_>, m: &Merged<'_>) -> Config {
    // Go's decoder: any object (even `{}`) creates the stats manager; `null` does not.
    let stats = match m.singles.get("stats") {
        Some(n) if !matches!(n.value, Value::Null) => ctx.obj(n, "stats", &[]).is_some(),
        _ => false,
    };
    let api = m.singles.get("api").and_then(|n| build_api(ctx, n));
    let log = build_log(ctx, m.singles.get("log").copied());
    let reverse = m.singles.get("reverse").map(|n| build_reverse(ctx, n)).unwrap_or_default();
    let policy = m.singles.get("policy").map(|n| build_policy(ctx, n)).unwrap_or_default();
    let ops = m.singles.get("ops").and_then(|n| build_ops(ctx, n));

    let transport = stream::transport_defaults(ctx, m.singles.get("transport").copied());
    let legacy_port = m.port.and_then(|n| ctx.int::<u16>(n, "port", 0, u16::MAX));
    let mut inbounds = Vec::new();
    for (i, (node, path)) in m.inbounds.iter().enumerate() {
        let fallback = if i == 0 { legacy_port.filter(|p| *p > 0) } else { None };
        if let Some(ib) = build_inbound(ctx, node, path, fallback, transport) {
            inbounds.push(ib);
        }
    }
    check_emails(ctx, &m.inbounds);
    let mut outbounds = Vec::new();
    for (node, path) in &m.outbounds {
        if let Some(ob) = build_outbound(ctx, node, path, transport) {
            outbounds.push(ob);
        }
    }
    for p in &reverse.portals {
        if outbounds.iter().any(|o| o.tag.as_deref() == Some(p.tag.as_str())) {
            let (node, path) = portal_tag_site(m, &p.tag);
            match node {
                Some(n) => ctx.error(n, &path, format!("portal tag {:?} is also an outbound tag", p.tag)),
                None => ctx.error_pos(0, 0, &path, format!("portal tag {:?} is also an outbound tag", p.tag)),
            }
        }
    }
    let mut tags: Vec<&str> = outbounds.iter().filter_map(|o| o.tag.as_deref()).collect();
    tags.extend(reverse.portals.iter().map(|p| p.tag.as_str()));
    // The API registers an outbound with its tag (replacing a configured one, as 4.34's commander does).
    if let (Some(a), Some(n)) = (&api, m.singles.get("api")) {
        if tags.contains(&a.tag.as_str()) {
            ctx.warn(
                n,
                "api.tag",
                format!("outbound tag {:?} is replaced by the API handler (as in V2Ray 4.34)", a.tag),
            );
        }
        tags.push(a.tag.as_str());
    }
    // Tags of outbounds that were refused: their error is enough, rules naming them add nothing.
    let refused: Vec<String> = m
        .outbounds
        .iter()
        .map(|(n, _)| super::tag_of(n))
        .filter(|t| !t.is_empty() && !tags.contains(&t.as_str()))
        .collect();
    let default_tag = outbounds
        .first()
        .map(|o| o.tag.clone().unwrap_or_default())
        .or_else(|| reverse.portals.first().map(|p| p.tag.clone()));
    let known = KnownTags { tags: &tags, refused: &refused, default: default_tag.as_deref() };
    let routing = m.singles.get("routing").map(|n| build_routing(ctx, n, &known)).unwrap_or_default();
    let dns = m.singles.get("dns").and_then(|n| super::dns::build_dns(ctx, n));
    if let (Some(o), Some(n)) = (&ops, m.singles.get("ops"))
        && let Some(ib) = inbounds.iter().find(|ib| {
            (ib.port.first..=ib.port.last).contains(&o.listen.port())
                && (ib.listen == o.listen.ip() || ib.listen.is_unspecified() || o.listen.ip().is_unspecified())
        })
    {
        ctx.error(
            n,
            "ops.listen",
            format!("{} is also the address of {}: the ops listener is never shared", o.listen, ib.path),
        );
    }
    Config { log, inbounds, outbounds, routing, policy, reverse, dns, ops, stats, api, warnings: Vec::new() }
}

/// `api`: `tag` is required; `services` names are case-insensitive. 4.34 silently ignores names it does
/// not know (so does oxray, with a warning); the services oxray does not implement are refused by name.
fn build_api(ctx: &mut Ctx<'_>, node: &Node) -> Option<ApiConfig> {
    let o = ctx.obj(node, "api", &["tag", "services"])?;
    let tag = o.str(ctx, "tag").unwrap_or_default();
    let mut stats_service = false;
    if let Some(list) = o.array(ctx, "services") {
        for (i, n) in list.iter().enumerate() {
            let path = index(&o.path_of("services"), i);
            let Some(name) = ctx.string(n, &path) else { continue };
            match name.to_ascii_lowercase().as_str() {
                "statsservice" => stats_service = true,
                "handlerservice" | "loggerservice" | "reflectionservice" => ctx.error(
                    n,
                    &path,
                    format!("API service {name:?} is not implemented by oxray (only \"StatsService\" is); remove it"),
                ),
                _ => ctx.warn(n, &path, format!("unknown API service {name:?} is ignored (as V2Ray 4.34 does)")),
            }
        }
    }
    if tag.is_empty() {
        ctx.error(o.get("tag").unwrap_or(node), "api.tag", "API tag can't be empty.");
        return None;
    }
    Some(ApiConfig { tag, stats_service })
}

/// `ops`: `{"listen": "127.0.0.1:9090", "token": "...", "allowRemote": false}`.
fn build_ops(ctx: &mut Ctx<'_>, node: &Node) -> Option<OpsConfig> {
    let o = ctx.obj(node, "ops", &["listen", "token", "allowRemote"])?;
    let allow_remote = o.bool(ctx, "allowRemote").unwrap_or(false);
    let token = o.str(ctx, "token").filter(|t| !t.is_empty());
    let Some(text) = o.str(ctx, "listen") else {
        if o.get("listen").is_none() {
            ctx.error(node, "ops.listen", "ops.listen is required (e.g. \"127.0.0.1:9090\")");
        }
        return None;
    };
    let at = o.get("listen").unwrap_or(node);
    match crate::ops::parse_listen(&text, allow_remote) {
        Ok(listen) => Some(OpsConfig { listen, token, allow_remote }),
        Err(e) => {
            ctx.error(at, "ops.listen", e);
            None
        }
    }
}

/// Where to blame a portal/outbound tag clash: the outbound's `tag` value.
fn portal_tag_site<'n>(m: &Merged<'n>, tag: &str) -> (Option<&'n Node>, String) {
    for (node, path) in &m.outbounds {
        if let Value::Object(members) = &node.value
            && let Some(mm) = members.iter().rev().find(|mm| mm.key.eq_ignore_ascii_case("tag"))
            && matches!(&mm.node.value, Value::String(s) if s == tag)
        {
            return (Some(&mm.node), join(path, "tag"));
        }
    }
    (None, "reverse.portals".into())
}

fn build_log(ctx: &mut Ctx<'_>, node: Option<&Node>) -> LogConfig {
    let Some(node) = node else { return LogConfig::default() };
    let Some(o) = ctx.obj(node, "log", &["access", "error", "loglevel"]) else { return LogConfig::default() };
    let target = |v: Option<String>| match v.as_deref() {
        None | Some("") => LogTarget::Console,
        Some("none") => LogTarget::Off,
        Some(p) => LogTarget::File(PathBuf::from(p)),
    };
    let mut log = LogConfig {
        level: LogLevel::Warning,
        access: target(o.str(ctx, "access")),
        error: target(o.str(ctx, "error")),
    };
    if let Some(level) = o.str(ctx, "loglevel") {
        let level_node = o.get("loglevel");
        log.level = match level.to_ascii_lowercase().as_str() {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warning" => LogLevel::Warning,
            "error" => LogLevel::Error,
            "none" => {
                log.access = LogTarget::Off;
                log.error = LogTarget::Off;
                LogLevel::None
            }
            other => {
                if let Some(n) = level_node {
                    ctx.warn(
                        n,
                        "log.loglevel",
                        format!("{other:?} is not a log level; using \"warning\" as V2Ray does"),
                    );
                }
                LogLevel::Warning
            }
        };
    }
    log
}

const INBOUND_KEYS: &[&str] =
    &["protocol", "port", "listen", "settings", "tag", "allocate", "streamSettings", "domainOverride", "sniffing"];
const OUTBOUND_KEYS: &[&str] =
    &["protocol", "sendThrough", "tag", "settings", "streamSettings", "proxySettings", "mux"];
const KNOWN_INBOUND_PROTOCOLS: &[&str] =
    &["dokodemo-door", "http", "socks", "vmess", "shadowsocks", "vless", "trojan", "mtproto"];
const KNOWN_OUTBOUND_PROTOCOLS: &[&str] =
    &["freedom", "blackhole", "vmess", "socks", "http", "shadowsocks", "vless", "trojan", "mtproto", "dns"];

fn protocol_name(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<String> {
    match o.str(ctx, "protocol") {
        Some(p) => Some(p.to_ascii_lowercase()),
        None => {
            if o.get("protocol").is_none() {
                ctx.error(o.node, &o.path_of("protocol"), "\"protocol\" is missing");
            }
            None
        }
    }
}

fn unknown_protocol(ctx: &mut Ctx<'_>, o: &Obj<'_>, name: &str, known: &[&str]) {
    let node = o.get("protocol").unwrap_or(o.node);
    let msg = if known.contains(&name) {
        format!("protocol {name:?} is not supported yet by oxray")
    } else {
        format!("unknown protocol {name:?}")
    };
    ctx.error(node, &o.path_of("protocol"), msg);
}

fn tag(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<String> {
    o.str(ctx, "tag").filter(|t| !t.is_empty())
}

/// Keys that belong next to `settings`, not inside it: V2Ray's decoder drops them there silently
/// (the usual cause of "reverse does not work over WebSocket": a bridge dialing plain TCP).
const MISPLACED_IN_SETTINGS: &[&str] = &["streamSettings", "tag", "mux", "proxySettings", "sendThrough"];

/// `settings` (missing → `{}`).
fn settings<'n>(ctx: &mut Ctx<'_>, o: &Obj<'n>, known: &[&'static str]) -> Option<Obj<'n>> {
    let Some(n) = o.get("settings") else { return Some(Obj::empty(o.node, o.path_of("settings"))) };
    let extra: Vec<&'static str> = MISPLACED_IN_SETTINGS.iter().filter(|k| !known.contains(k)).copied().collect();
    let all: Vec<&'static str> = known.iter().chain(&extra).copied().collect();
    let s = ctx.obj(n, &o.path_of("settings"), &all)?;
    for k in extra {
        if let Some(v) = s.get(k) {
            ctx.warn(
                v,
                &s.path_of(k),
                format!(
                    "ignored: {k:?} belongs in {}, next to \"settings\", not inside it (V2Ray 4.34 ignores it here too)",
                    o.path
                ),
            );
        }
    }
    Some(s)
}

fn build_inbound(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    legacy_port: Option<u16>,
    transport: stream::TransportDefaults<'_>,
) -> Option<InboundConfig> {
    let o = ctx.obj(node, path, INBOUND_KEYS)?;
    let tag = tag(ctx, &o);
    let protocol = protocol_name(ctx, &o);
    let stream = stream::build(ctx, &o, transport, true);
    if let Some(n) = o.get("allocate") {
        check_allocate(ctx, n, &o.path_of("allocate"));
    }
    // 4.34 uses `domainOverride` only when `sniffing` is absent, but checks both.
    let sniffing = o.get("sniffing").map(|n| sniffing(ctx, n, &o.path_of("sniffing")));
    let legacy = o.get("domainOverride").map(|n| domain_override(ctx, n, &o.path_of("domainOverride")));
    let sniffing = match (sniffing, legacy) {
        (Some(s), _) => s,
        (None, Some(Some(list))) if !list.is_empty() => Some(SniffingConfig { dest_override: list }),
        _ => None,
    };
    let mut listen = Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let Some(s) = o.str(ctx, "listen") {
        let n = o.get("listen").unwrap_or(node);
        let p = o.path_of("listen");
        listen = if s.starts_with('/') || s.starts_with('@') {
            ctx.error(n, &p, "listening on a unix domain socket is not supported yet by oxray");
            None
        } else if s == "localhost" {
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else {
            match Address::parse(&s) {
                Address::Ip(ip) => Some(ip),
                Address::Domain(_) => {
                    ctx.error(n, &p, format!("unable to listen on domain address {s:?} (use an IP or \"localhost\")"));
                    None
                }
            }
        };
    }
    let port = match o.get("port") {
        Some(n) => port_range(ctx, n, &o.path_of("port")),
        None => match legacy_port {
            Some(p) => Some(PortRange { first: p, last: p }),
            None => {
                ctx.error(node, &o.path_of("port"), "\"port\" is missing");
                None
            }
        },
    };
    let protocol = match protocol.as_deref() {
        Some("dokodemo-door") => {
            settings(ctx, &o, DOKODEMO_KEYS).and_then(|s| dokodemo(ctx, &s)).map(InboundProtocol::Dokodemo)
        }
        Some("vmess") => {
            settings(ctx, &o, VMESS_IN_KEYS).and_then(|s| vmess_inbound(ctx, &s)).map(InboundProtocol::Vmess)
        }
        Some("socks") => settings(ctx, &o, proxies::SOCKS_IN_KEYS)
            .and_then(|s| proxies::socks_inbound(ctx, &s))
            .map(InboundProtocol::Socks),
        Some("http") => settings(ctx, &o, proxies::HTTP_IN_KEYS)
            .and_then(|s| proxies::http_inbound(ctx, &s))
            .map(InboundProtocol::Http),
        Some("shadowsocks") => settings(ctx, &o, proxies::SS_IN_KEYS)
            .and_then(|s| proxies::shadowsocks_inbound(ctx, &s))
            .map(InboundProtocol::Shadowsocks),
        Some("vless") => settings(ctx, &o, proxies::VLESS_IN_KEYS)
            .and_then(|s| proxies::vless_inbound(ctx, &s))
            .map(InboundProtocol::Vless),
        Some("trojan") => settings(ctx, &o, proxies::TROJAN_IN_KEYS)
            .and_then(|s| proxies::trojan_inbound(ctx, &s))
            .map(InboundProtocol::Trojan),
        Some(other) => {
            unknown_protocol(ctx, &o, other, KNOWN_INBOUND_PROTOCOLS);
            None
        }
        None => None,
    };
    Some(InboundConfig {
        tag,
        listen: listen?,
        port: port?,
        protocol: protocol?,
        stream,
        path: path.to_string(),
        sniffing,
    })
}

fn port_range(ctx: &mut Ctx<'_>, n: &Node, path: &str) -> Option<PortRange> {
    let r = match &n.value {
        Value::Number(_) => ctx.int::<u16>(n, path, 0, u16::MAX).map(|p| (p, p)),
        Value::String(s) => match parse_port_range(s, |v| std::env::var(v).ok()) {
            Ok(r) => Some(r),
            Err(e) => {
                ctx.error(n, path, e);
                None
            }
        },
        _ => {
            ctx.error(n, path, format!("expected a port number or a \"from-to\" string, got {}", n.value.kind()));
            None
        }
    }?;
    Some(PortRange { first: r.0, last: r.1 })
}

/// Why oxray refuses VMess dynamic ports, and how to rewrite such a config (docs/CONFIG.md).
const DYNAMIC_PORTS: &str = "VMess dynamic ports (\"detour\" + \"allocate\" random) are not supported by oxray: \
     remove \"detour\" from the VMess inbound and \"allocate\" from the detour inbound, give that inbound one \
     fixed port (or a \"from-to\" range, every port of which oxray listens on), and point the clients' \
     vnext port at it; a V2Ray 4.34 client follows no detour command it is not sent";

fn check_allocate(ctx: &mut Ctx<'_>, n: &Node, path: &str) {
    let Some(o) = ctx.obj(n, path, &["strategy", "concurrency", "refresh"]) else { return };
    // "always" is what oxray does anyway; concurrency and refresh only matter for "random".
    let _ = o.int::<u32>(ctx, "concurrency", 0, u32::MAX);
    let _ = o.int::<u32>(ctx, "refresh", 0, u32::MAX);
    match o.str(ctx, "strategy") {
        Some(s) if s.eq_ignore_ascii_case("always") => {}
        Some(s) if s.eq_ignore_ascii_case("random") || s.eq_ignore_ascii_case("external") => {
            ctx.error(
                o.get("strategy").unwrap_or(n),
                &o.path_of("strategy"),
                format!("{DYNAMIC_PORTS} (allocate strategy {s:?} here)"),
            );
        }
        Some(s) => ctx.error(
            o.get("strategy").unwrap_or(n),
            &o.path_of("strategy"),
            format!("unknown allocation strategy {s:?}"),
        ),
        None => ctx.error(n, &o.path_of("strategy"), "unknown allocation strategy \"\""),
    }
}

/// `sniffing`: Some when enabled. `destOverride` values are lowercased and `https`/`ssl` become `tls`,
/// as 4.34 does; any other value is its error (`fakedns`, `quic` are v5/Xray).
fn sniffing(ctx: &mut Ctx<'_>, n: &Node, path: &str) -> Option<SniffingConfig> {
    let o = ctx.obj(n, path, &["enabled", "destOverride"])?;
    let mut dest_override = Vec::new();
    if let Some(d) = o.get("destOverride") {
        for (s, at, p) in ctx.string_list(d, &o.path_of("destOverride")).unwrap_or_default() {
            match s.to_ascii_lowercase().as_str() {
                "http" => dest_override.push("http".to_string()),
                "tls" | "https" | "ssl" => dest_override.push("tls".to_string()),
                _ => ctx.error(at, &p, format!("unknown sniffing protocol {s:?}")),
            }
        }
    }
    (o.bool(ctx, "enabled") == Some(true)).then_some(SniffingConfig { dest_override })
}

/// The deprecated inbound-level `domainOverride` list (4.34: `http`, `tls`/`https`/`ssl`).
fn domain_override(ctx: &mut Ctx<'_>, n: &Node, path: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for (s, at, p) in ctx.string_list(n, path)? {
        match s.to_ascii_lowercase().as_str() {
            "http" => out.push("http".to_string()),
            "tls" | "https" | "ssl" => out.push("tls".to_string()),
            _ => ctx.error(at, &p, format!("unknown domainOverride protocol {s:?}")),
        }
    }
    Some(out)
}

const DOKODEMO_KEYS: &[&str] = &["address", "port", "network", "timeout", "followRedirect", "userLevel"];

fn dokodemo(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<DokodemoConfig> {
    let address = o.str(ctx, "address").map(|s| Address::parse(&s));
    let port = o.int::<u16>(ctx, "port", 0, u16::MAX).unwrap_or(0);
    let follow_redirect = o.bool(ctx, "followRedirect").unwrap_or(false);
    let timeout = o.int::<u32>(ctx, "timeout", 0, u32::MAX).filter(|t| *t > 0).map(|t| Duration::from_secs(t.into()));
    let user_level = o.int::<u32>(ctx, "userLevel", 0, u32::MAX).unwrap_or(0);
    let network = match o.get("network") {
        None => Some(NetworkList { tcp: true, udp: false }),
        Some(n) => network_list(ctx, n, &o.path_of("network")),
    };
    if address.is_none() && !follow_redirect {
        ctx.error(o.node, &o.path_of("address"), "\"address\" is required unless \"followRedirect\" is true");
        return None;
    }
    Some(DokodemoConfig { address, port, network: network?, follow_redirect, timeout, user_level })
}

/// `"tcp"`, `"udp"`, `"tcp,udp"` or a list (case-insensitive, not trimmed, as V2Ray).
fn network_list(ctx: &mut Ctx<'_>, n: &Node, path: &str) -> Option<NetworkList> {
    let items = ctx.string_list(n, path)?;
    let mut nl = NetworkList::default();
    let mut ok = true;
    for (s, at, p) in items {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => nl.tcp = true,
            "udp" => nl.udp = true,
            _ => {
                ctx.error(
                    at,
                    &p,
                    format!("unknown network {s:?} (expected \"tcp\" or \"udp\"; entries are not trimmed)"),
                );
                ok = false;
            }
        }
    }
    if ok && !nl.tcp && !nl.udp {
        ctx.error(n, path, "the network list is empty");
        ok = false;
    }
    ok.then_some(nl)
}

const VMESS_IN_KEYS: &[&str] = &["clients", "features", "default", "detour", "disableInsecureEncryption"];
const VMESS_USER_KEYS: &[&str] = &["id", "alterId", "security", "email", "level"];

pub(crate) fn secret_id(ctx: &mut Ctx<'_>, u: &Obj<'_>) -> Option<SecretId> {
    let p = u.path_of("id");
    let Some(n) = u.get("id") else {
        ctx.error(u.node, &p, "\"id\" is missing");
        return None;
    };
    let s = ctx.string(n, &p)?;
    match parse_uuid(&s) {
        Ok(b) => Some(SecretId(b)),
        Err(e) => {
            ctx.error(n, &p, e);
            None
        }
    }
}

fn email(ctx: &mut Ctx<'_>, u: &Obj<'_>) -> Option<String> {
    u.str(ctx, "email").filter(|e| !e.is_empty())
}

fn vmess_inbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<VmessInboundConfig> {
    for key in ["features", "detour"] {
        if let Some(n) = o.get(key)
            && !is_noop(n)
        {
            ctx.error(n, &o.path_of(key), format!("{DYNAMIC_PORTS} (vmess {key:?} here)"));
        }
    }
    let mut cfg = VmessInboundConfig {
        disable_insecure_encryption: o.bool(ctx, "disableInsecureEncryption").unwrap_or(false),
        ..Default::default()
    };
    if let Some(d) = o.get("default")
        && let Some(d) = ctx.obj(d, &o.path_of("default"), &["alterId", "level"])
    {
        cfg.default_alter_id = d.int::<u16>(ctx, "alterId", 0, u16::MAX).unwrap_or(0);
        cfg.default_level = d.int::<u8>(ctx, "level", 0, u8::MAX).unwrap_or(0).into();
    }
    let mut ok = true;
    for (i, c) in o.array(ctx, "clients").unwrap_or_default().iter().enumerate() {
        let Some(u) = ctx.obj(c, &index(&o.path_of("clients"), i), VMESS_USER_KEYS) else {
            ok = false;
            continue;
        };
        let _ = u.str(ctx, "security");
        let alter_id = u.int::<u16>(ctx, "alterId", 0, u16::MAX).unwrap_or(0);
        let level = u.int::<u8>(ctx, "level", 0, u8::MAX).unwrap_or(0).into();
        let email = email(ctx, &u);
        match secret_id(ctx, &u) {
            Some(id) => cfg.clients.push(VmessClientConfig { id, alter_id, level, email }),
            None => ok = false,
        }
    }
    ok.then_some(cfg)
}

/// Duplicate non-empty emails (case-insensitive) within one VMess inbound, as 4.34's user validator refuses.
fn check_emails(ctx: &mut Ctx<'_>, inbounds: &[(&Node, String)]) {
    for (node, path) in inbounds {
        let Some(clients) = child(node, "settings").and_then(|s| child(s, "clients")) else { continue };
        let Value::Array(items) = &clients.value else { continue };
        let mut seen: Vec<String> = Vec::new();
        for (i, c) in items.iter().enumerate() {
            let Some(e) = child(c, "email") else { continue };
            let Value::String(email) = &e.value else { continue };
            if email.is_empty() {
                continue;
            }
            let lower = email.to_lowercase();
            if seen.contains(&lower) {
                let p = join(&index(&join(&join(path, "settings"), "clients"), i), "email");
                ctx.error(e, &p, format!("duplicate user email {email:?}"));
            } else {
                seen.push(lower);
            }
        }
    }
}

/// The winning member of an object for a key, matched case-insensitively (for cross-checks only).
fn child<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    let Value::Object(members) = &node.value else { return None };
    let m = members
        .iter()
        .rev()
        .find(|m| m.key == key)
        .or_else(|| members.iter().rev().find(|m| m.key.eq_ignore_ascii_case(key)))?;
    (!matches!(m.node.value, Value::Null)).then_some(&m.node)
}

fn build_outbound(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    transport: stream::TransportDefaults<'_>,
) -> Option<OutboundConfig> {
    let o = ctx.obj(node, path, OUTBOUND_KEYS)?;
    let tag = tag(ctx, &o);
    let protocol = protocol_name(ctx, &o);
    let stream = stream::build(ctx, &o, transport, false);
    if let Some(n) = o.get("proxySettings") {
        ctx.unsupported(n, &o.path_of("proxySettings"), "\"proxySettings\"");
    }
    let mut send_through = None;
    if let Some(s) = o.str(ctx, "sendThrough") {
        match Address::parse(&s) {
            Address::Ip(ip) => send_through = Some(ip),
            Address::Domain(_) => {
                let at = o.get("sendThrough").unwrap_or(node);
                ctx.error(at, &o.path_of("sendThrough"), format!("unable to send through {s:?}: not an IP address"));
            }
        }
    }
    let mux = o.get("mux").and_then(|n| build_mux(ctx, n, &o.path_of("mux")));
    let protocol = match protocol.as_deref() {
        Some("freedom") => {
            settings(ctx, &o, FREEDOM_KEYS).and_then(|s| freedom(ctx, &s)).map(OutboundProtocol::Freedom)
        }
        Some("blackhole") => {
            settings(ctx, &o, &["response"]).and_then(|s| blackhole(ctx, &s)).map(OutboundProtocol::Blackhole)
        }
        Some("vmess") => {
            settings(ctx, &o, &["vnext"]).and_then(|s| vmess_outbound(ctx, &s)).map(OutboundProtocol::Vmess)
        }
        Some("dns") => settings(ctx, &o, super::dns::DNS_OUT_KEYS)
            .and_then(|s| super::dns::dns_outbound(ctx, &s))
            .map(OutboundProtocol::Dns),
        Some("socks") => settings(ctx, &o, proxies::PROXY_OUT_KEYS)
            .and_then(|s| proxies::proxy_client(ctx, &s, "socks"))
            .map(OutboundProtocol::Socks),
        Some("http") => settings(ctx, &o, proxies::PROXY_OUT_KEYS)
            .and_then(|s| proxies::proxy_client(ctx, &s, "http"))
            .map(OutboundProtocol::Http),
        Some("shadowsocks") => settings(ctx, &o, proxies::PROXY_OUT_KEYS)
            .and_then(|s| proxies::shadowsocks_outbound(ctx, &s))
            .map(OutboundProtocol::Shadowsocks),
        Some("vless") => {
            settings(ctx, &o, &["vnext"]).and_then(|s| proxies::vless_outbound(ctx, &s)).map(OutboundProtocol::Vless)
        }
        Some("trojan") => settings(ctx, &o, proxies::PROXY_OUT_KEYS)
            .and_then(|s| proxies::trojan_outbound(ctx, &s))
            .map(OutboundProtocol::Trojan),
        Some(other) => {
            unknown_protocol(ctx, &o, other, KNOWN_OUTBOUND_PROTOCOLS);
            None
        }
        None => None,
    };
    Some(OutboundConfig { tag, protocol: protocol?, mux, send_through, stream, path: path.to_string() })
}

fn build_mux(ctx: &mut Ctx<'_>, n: &Node, path: &str) -> Option<MuxConfig> {
    let o = ctx.obj(n, path, &["enabled", "concurrency"])?;
    let enabled = o.bool(ctx, "enabled").unwrap_or(false);
    let concurrency = o.int::<i16>(ctx, "concurrency", i16::MIN, i16::MAX).unwrap_or(0);
    if !enabled || concurrency < 0 {
        return None;
    }
    let c = if concurrency == 0 { 8 } else { concurrency };
    if c > 1024 {
        let at = o.get("concurrency").unwrap_or(n);
        ctx.error(at, &o.path_of("concurrency"), format!("mux concurrency must be in 1..=1024, got {c}"));
        return None;
    }
    Some(MuxConfig { concurrency: c as u16 })
}

const FREEDOM_KEYS: &[&str] = &["domainStrategy", "timeout", "redirect", "userLevel"];

fn freedom(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<FreedomConfig> {
    let mut cfg = FreedomConfig::default();
    if let Some(s) = o.str(ctx, "domainStrategy") {
        cfg.domain_strategy = match s.to_ascii_lowercase().as_str() {
            "useip" | "use_ip" => FreedomDomainStrategy::UseIp,
            "useip4" | "useipv4" | "use_ipv4" | "use_ip_v4" | "use_ip4" => FreedomDomainStrategy::UseIpv4,
            "useip6" | "useipv6" | "use_ipv6" | "use_ip_v6" | "use_ip6" => FreedomDomainStrategy::UseIpv6,
            _ => FreedomDomainStrategy::AsIs,
        };
    }
    if let Some(t) = o.int::<u32>(ctx, "timeout", 0, u32::MAX)
        && t > 0
    {
        ctx.unsupported(
            o.get("timeout").unwrap_or(o.node),
            &o.path_of("timeout"),
            "freedom \"timeout\" (use policy levels)",
        );
    }
    cfg.user_level = o.int::<u32>(ctx, "userLevel", 0, u32::MAX).unwrap_or(0);
    if let Some(r) = o.str(ctx, "redirect").filter(|r| !r.is_empty()) {
        match split_host_port(&r) {
            Ok((host, port)) => {
                cfg.redirect_port = port;
                if !host.is_empty() && host != "0.0.0.0" {
                    cfg.redirect_host = Some(Address::parse(host));
                }
            }
            Err(e) => {
                ctx.error(
                    o.get("redirect").unwrap_or(o.node),
                    &o.path_of("redirect"),
                    format!("invalid redirect: {e}"),
                );
                return None;
            }
        }
    }
    Some(cfg)
}

fn blackhole(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<BlackholeConfig> {
    let Some(n) = o.get("response") else { return Some(BlackholeConfig::default()) };
    let r = ctx.obj(n, &o.path_of("response"), &["type"])?;
    let t = r.str(ctx, "type").unwrap_or_default();
    let response = match t.to_ascii_lowercase().as_str() {
        "none" => BlackholeResponse::None,
        "http" => BlackholeResponse::Http,
        _ => {
            ctx.error(
                r.get("type").unwrap_or(n),
                &r.path_of("type"),
                format!("unknown response type {t:?} (expected \"none\" or \"http\")"),
            );
            return None;
        }
    };
    Some(BlackholeConfig { response })
}

fn vmess_outbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<VmessOutboundConfig> {
    let vnext = o.array(ctx, "vnext").unwrap_or_default();
    if vnext.is_empty() {
        ctx.error(
            o.get("vnext").unwrap_or(o.node),
            &o.path_of("vnext"),
            "0 VMess receiver configured (vnext is empty)",
        );
        return None;
    }
    let mut servers = Vec::new();
    let mut ok = true;
    for (i, s) in vnext.iter().enumerate() {
        let Some(so) = ctx.obj(s, &index(&o.path_of("vnext"), i), &["address", "port", "users"]) else {
            ok = false;
            continue;
        };
        let address = so.str(ctx, "address").filter(|a| !a.is_empty()).map(|a| Address::parse(&a));
        if address.is_none() && so.get("address").is_none_or(|n| matches!(n.value, Value::String(_))) {
            ctx.error(
                so.get("address").unwrap_or(s),
                &so.path_of("address"),
                "address is not set in VMess outbound config",
            );
        }
        let port = so.int::<u16>(ctx, "port", 0, u16::MAX).unwrap_or(0);
        let users_nodes = so.array(ctx, "users").unwrap_or_default();
        if users_nodes.is_empty() {
            ctx.error(so.get("users").unwrap_or(s), &so.path_of("users"), "0 user configured for VMess outbound");
            ok = false;
        }
        let mut users = Vec::new();
        for (j, u) in users_nodes.iter().enumerate() {
            let Some(uo) = ctx.obj(u, &index(&so.path_of("users"), j), VMESS_USER_KEYS) else {
                ok = false;
                continue;
            };
            let alter_id = uo.int::<u16>(ctx, "alterId", 0, u16::MAX).unwrap_or(0);
            let level = uo.int::<u8>(ctx, "level", 0, u8::MAX).unwrap_or(0).into();
            let security = match uo.str(ctx, "security").map(|s| s.to_ascii_lowercase()).as_deref() {
                None | Some("auto") | Some("") => VmessSecurity::Auto,
                Some("aes-128-gcm") => VmessSecurity::Aes128Gcm,
                Some("chacha20-poly1305") => VmessSecurity::Chacha20Poly1305,
                Some("none") => VmessSecurity::None,
                Some("zero") => VmessSecurity::Zero,
                Some(other) => {
                    if let Some(n) = uo.get("security") {
                        ctx.warn(
                            n,
                            &uo.path_of("security"),
                            format!("unknown VMess security {other:?}; using \"auto\" as V2Ray 4.34 does"),
                        );
                    }
                    VmessSecurity::Auto
                }
            };
            let email = email(ctx, &uo);
            match secret_id(ctx, &uo) {
                Some(id) => users.push(VmessUserConfig { id, alter_id, security, level, email }),
                None => ok = false,
            }
        }
        match address {
            Some(address) => servers.push(VmessServerConfig { address, port, users }),
            None => ok = false,
        }
    }
    ok.then_some(VmessOutboundConfig { servers })
}

const ROUTING_KEYS: &[&str] = &["settings", "rules", "domainStrategy", "balancers"];

/// The outbound tags a rule may name.
pub(crate) struct KnownTags<'a> {
    /// Outbounds and portals that were built.
    pub tags: &'a [&'a str],
    /// Outbounds that were refused (already reported).
    pub refused: &'a [String],
    /// The default outbound's tag ("" when untagged; None when there is no outbound at all).
    pub default: Option<&'a str>,
}
const RULE_KEYS: &[&str] = &[
    "type",
    "outboundTag",
    "balancerTag",
    "domain",
    "domains",
    "ip",
    "port",
    "network",
    "source",
    "sourcePort",
    "user",
    "inboundTag",
    "protocol",
    "attrs",
];

fn build_routing(ctx: &mut Ctx<'_>, node: &Node, tags: &KnownTags<'_>) -> RoutingConfig {
    let mut cfg = RoutingConfig::default();
    let Some(o) = ctx.obj(node, "routing", ROUTING_KEYS) else { return cfg };
    if let Some(list) = o.array(ctx, "balancers") {
        for (i, b) in list.iter().enumerate() {
            if let Some(bc) = build_balancer(ctx, b, &index(&o.path_of("balancers"), i), tags) {
                // A later balancer with the same tag wins (4.34 keeps them in a map).
                cfg.balancers.retain(|x| x.tag != bc.tag);
                cfg.balancers.push(bc);
            }
        }
    }
    // Deprecated nested form: its rules come after the top-level ones, its strategy is a fallback.
    let nested = o.get("settings").and_then(|n| ctx.obj(n, &o.path_of("settings"), &["rules", "domainStrategy"]));
    let strategy = match o.get("domainStrategy") {
        Some(n) => Some((n, o.path_of("domainStrategy"))),
        None => nested.as_ref().and_then(|s| s.get("domainStrategy").map(|n| (n, s.path_of("domainStrategy")))),
    };
    if let Some((n, p)) = strategy
        && let Some(s) = ctx.string(n, &p)
    {
        cfg.domain_strategy = match s.to_ascii_lowercase().as_str() {
            "ipifnonmatch" | "ip_if_non_match" | "ip-if-non-match" => RoutingDomainStrategy::IpIfNonMatch,
            "ipondemand" | "ip_on_demand" | "ip-on-demand" => RoutingDomainStrategy::IpOnDemand,
            "alwaysip" | "always_ip" | "always-ip" => {
                ctx.warn(n, &p, "domainStrategy \"AlwaysIP\" does nothing in V2Ray 4.34 (it routes as \"AsIs\"); oxray does the same");
                RoutingDomainStrategy::AsIs
            }
            _ => RoutingDomainStrategy::AsIs,
        };
    }
    let mut lists = vec![(o.array(ctx, "rules").unwrap_or_default(), o.path_of("rules"))];
    if let Some(s) = &nested {
        lists.push((s.array(ctx, "rules").unwrap_or_default(), s.path_of("rules")));
    }
    let balancer_tags: Vec<String> = cfg.balancers.iter().map(|b| b.tag.clone()).collect();
    for (rules, base) in lists {
        for (i, r) in rules.iter().enumerate() {
            if let Some(rule) = build_rule(ctx, r, &index(&base, i), tags, &balancer_tags) {
                cfg.rules.push(rule);
            }
        }
    }
    cfg
}

fn build_rule(
    ctx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    tags: &KnownTags<'_>,
    balancers: &[String],
) -> Option<RuleConfig> {
    let o = ctx.obj(node, path, RULE_KEYS)?;
    let ty = o.str(ctx, "type").unwrap_or_default();
    if !ty.eq_ignore_ascii_case("field") {
        ctx.error(
            o.get("type").unwrap_or(node),
            &o.path_of("type"),
            format!("unknown router rule type {ty:?} (4.34 needs \"type\": \"field\")"),
        );
        return None;
    }
    let mut ok = true;
    let mut rule = RuleConfig { path: path.to_string(), ..Default::default() };
    match o.str(ctx, "outboundTag").filter(|t| !t.is_empty()) {
        Some(t) => {
            if !tags.tags.contains(&t.as_str()) && !tags.refused.contains(&t) {
                // 4.34 loads this and, at run time, logs "non existing tag" and uses the default outbound.
                let at = o.get("outboundTag").unwrap_or(node);
                let fallback = match tags.default {
                    Some(d) if !d.is_empty() => format!("the default outbound {d:?}"),
                    Some(_) => "the default (first) outbound".to_string(),
                    None => "no outbound (there is none), so they fail".to_string(),
                };
                ctx.warn(
                    at,
                    &o.path_of("outboundTag"),
                    format!(
                        "outboundTag {t:?} names no outbound and no portal: this rule's connections go to {fallback}, as in V2Ray 4.34"
                    ),
                );
            }
            rule.outbound_tag = t;
        }
        // With both, 4.34 takes outboundTag and ignores the balancer.
        None => match o.str(ctx, "balancerTag").filter(|t| !t.is_empty()) {
            Some(b) => {
                if !balancers.contains(&b) {
                    let at = o.get("balancerTag").unwrap_or(node);
                    ctx.error(at, &o.path_of("balancerTag"), format!("balancer {b} not found"));
                    ok = false;
                }
                rule.balancer_tag = b;
            }
            None => {
                ok = false;
                ctx.error(
                    node,
                    &o.path_of("outboundTag"),
                    "neither outboundTag nor balancerTag is specified in routing rule",
                );
            }
        },
    }
    for key in ["domain", "domains"] {
        if let Some(n) = o.get(key) {
            for (s, at, p) in ctx.string_list(n, &o.path_of(key)).unwrap_or_default() {
                match domain_entry(ctx, &s) {
                    Ok(m) => rule.domain.push(m),
                    Err(e) => {
                        ctx.error(at, &p, e);
                        ok = false;
                    }
                }
            }
        }
    }
    for (key, out, geo_out) in
        [("ip", &mut rule.ip, &mut rule.geoip), ("source", &mut rule.source, &mut rule.source_geoip)]
    {
        if let Some(n) = o.get(key) {
            for (s, at, p) in ctx.string_list(n, &o.path_of(key)).unwrap_or_default() {
                let r = match geo::ip_ref(&s) {
                    Some(Ok(g)) => ctx.geo.ip(&s, &g.file, &g.code).map(|l| geo_out.push(l)).map_err(|e| e.to_string()),
                    Some(Err(e)) => Err(e),
                    None => parse_cidr(&s).map(|net| out.push(net)),
                };
                if let Err(e) = r {
                    ctx.error(at, &p, e);
                    ok = false;
                }
            }
        }
    }
    for (key, out) in [("port", &mut rule.port), ("sourcePort", &mut rule.source_port)] {
        if let Some(n) = o.get(key) {
            let p = o.path_of(key);
            let parsed = match &n.value {
                Value::Number(_) => ctx.int::<u16>(n, &p, 0, u16::MAX).map(|v| vec![(v, v)]),
                Value::String(s) => parse_port_list(s).map_err(|e| ctx.error(n, &p, e)).ok(),
                _ => {
                    ctx.error(
                        n,
                        &p,
                        format!("expected a port number or a string like \"53,443,1000-2000\", got {}", n.value.kind()),
                    );
                    None
                }
            };
            match parsed {
                Some(v) if !v.is_empty() => *out = Some(PortList(v)),
                Some(_) => {}
                None => ok = false,
            }
        }
    }
    if let Some(n) = o.get("network") {
        match network_list(ctx, n, &o.path_of("network")) {
            Some(nl) => rule.network = Some(nl),
            None => ok = false,
        }
    }
    for (key, out) in
        [("user", &mut rule.user), ("inboundTag", &mut rule.inbound_tag), ("protocol", &mut rule.protocol)]
    {
        if let Some(n) = o.get(key) {
            out.extend(ctx.string_list(n, &o.path_of(key)).unwrap_or_default().into_iter().map(|(s, _, _)| s));
        }
    }
    // 4.34 fills attributes only for plain-HTTP requests through the `http` inbound, which oxray does
    // not have: accepted, and the rule never matches (as in 4.34 for every other inbound).
    if let Some(n) = o.get("attrs")
        && let Some(a) = ctx.string(n, &o.path_of("attrs"))
        && !a.is_empty()
    {
        rule.attrs = Some(a);
    }
    let has_condition = !rule.domain.is_empty()
        || !rule.ip.is_empty()
        || !rule.geoip.is_empty()
        || !rule.source_geoip.is_empty()
        || rule.port.is_some()
        || rule.source_port.is_some()
        || rule.network.is_some()
        || !rule.source.is_empty()
        || !rule.user.is_empty()
        || !rule.inbound_tag.is_empty()
        || !rule.protocol.is_empty()
        || rule.attrs.is_some();
    if ok && !has_condition {
        ctx.error(node, path, "this rule has no effective fields (it needs at least one condition)");
        ok = false;
    }
    ok.then_some(rule)
}

/// One `routing.balancers` entry (`router.go BalancingRule.Build`).
fn build_balancer(ctx: &mut Ctx<'_>, node: &Node, path: &str, tags: &KnownTags<'_>) -> Option<BalancerConfig> {
    let o = ctx.obj(node, path, &["tag", "selector"])?;
    let tag = o.str(ctx, "tag").unwrap_or_default();
    if tag.is_empty() {
        ctx.error(o.get("tag").unwrap_or(node), &o.path_of("tag"), "empty balancer tag");
        return None;
    }
    let selector: Vec<String> = match o.get("selector") {
        Some(n) => ctx.string_list(n, &o.path_of("selector"))?.into_iter().map(|(s, _, _)| s).collect(),
        None => Vec::new(),
    };
    if selector.is_empty() {
        ctx.error(o.get("selector").unwrap_or(node), &o.path_of("selector"), "empty selector list");
        return None;
    }
    // Prefixes, case-sensitive; "" selects every tagged handler (the default and portals included).
    let candidates: Vec<String> = tags
        .tags
        .iter()
        .filter(|t| selector.iter().any(|s| t.starts_with(s.as_str())))
        .map(|t| t.to_string())
        .collect();
    if candidates.is_empty() {
        let at = o.get("selector").unwrap_or(node);
        ctx.warn(
            at,
            &o.path_of("selector"),
            format!("balancer {tag:?} selects no outbound (selectors are case-sensitive tag prefixes): its rules' connections go to the default outbound, as in V2Ray 4.34"),
        );
    }
    Some(BalancerConfig { tag, selector, candidates })
}

/// One `domain` entry, geo lists included (read through `ctx.geo`, once per file and list).
pub(crate) fn domain_entry(ctx: &mut Ctx<'_>, s: &str) -> Result<DomainMatcher, String> {
    match geo::site_ref(s) {
        Some(Ok(g)) => ctx.geo.site(s, &g.file, &g.code, &g.attrs).map(DomainMatcher::Geo).map_err(|e| e.to_string()),
        Some(Err(e)) => Err(e),
        None => domain_matcher(s),
    }
}

/// One `domain` entry that is not a geo list (`router.go parseDomainRule`).
pub(crate) fn domain_matcher(s: &str) -> Result<DomainMatcher, String> {
    if geo::site_ref(s).is_some() {
        return Err(format!("{s:?}: a geosite list is not allowed here"));
    }
    if let Some(sub) = s.strip_prefix("dotless:") {
        // 4.34 turns it into a regexp: names without a dot (containing `sub`, itself a regexp there).
        if sub.contains('.') {
            return Err(format!("substr in dotless rule should not contain a dot: {sub:?}"));
        }
        let re = format!("^[^.]*{sub}[^.]*$");
        return regex::Regex::new(&re)
            .map(|_| DomainMatcher::Regexp(re))
            .map_err(|e| format!("invalid dotless rule {s:?}: {e}"));
    }
    for (prefix, what) in [("domain:", "domain"), ("full:", "full"), ("keyword:", "keyword"), ("regexp:", "regexp")] {
        if s == prefix {
            return Err(format!("empty {what} type of rule: {s:?}"));
        }
    }
    if let Some(re) = s.strip_prefix("regexp:") {
        return regex::Regex::new(re).map(|_| DomainMatcher::Regexp(re.to_string())).map_err(|e| {
            format!("invalid regexp {re:?}: {}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
        });
    }
    Ok(if let Some(d) = s.strip_prefix("domain:") {
        DomainMatcher::Domain(d.to_string())
    } else if let Some(d) = s.strip_prefix("full:") {
        DomainMatcher::Full(d.to_string())
    } else if let Some(d) = s.strip_prefix("keyword:") {
        DomainMatcher::Keyword(d.to_string())
    } else {
        DomainMatcher::Keyword(s.to_string())
    })
}

fn build_policy(ctx: &mut Ctx<'_>, node: &Node) -> PolicyConfig {
    let mut cfg = PolicyConfig::default();
    let Some(o) = ctx.obj(node, "policy", &["levels", "system"]) else { return cfg };
    if let Some(levels) = o.get("levels") {
        let lp = o.path_of("levels");
        if let Value::Object(members) = &levels.value {
            for m in members {
                let p = join(&lp, &m.key);
                let Ok(level) = m.key.parse::<u32>() else {
                    ctx.error_pos(levels.file, m.key_pos, &p, format!("policy level {:?} is not a u32 number", m.key));
                    continue;
                };
                if matches!(m.node.value, Value::Null) {
                    continue;
                }
                if let Some(l) = level_policy(ctx, &m.node, &p) {
                    cfg.levels.insert(level, l);
                }
            }
        } else {
            ctx.error(levels, &lp, format!("expected an object, got {}", levels.value.kind()));
        }
    }
    if let Some(sys) = o.get("system") {
        let keys = ["statsInboundUplink", "statsInboundDownlink", "statsOutboundUplink", "statsOutboundDownlink"];
        if let Some(s) = ctx.obj(sys, &o.path_of("system"), &keys) {
            let mut flag = |k: &str| s.bool(ctx, k).unwrap_or(false);
            cfg.system = SystemPolicy {
                inbound_uplink: flag("statsInboundUplink"),
                inbound_downlink: flag("statsInboundDownlink"),
                outbound_uplink: flag("statsOutboundUplink"),
                outbound_downlink: flag("statsOutboundDownlink"),
            };
        }
    }
    cfg
}

fn level_policy(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<LevelPolicy> {
    let keys =
        ["handshake", "connIdle", "uplinkOnly", "downlinkOnly", "statsUserUplink", "statsUserDownlink", "bufferSize"];
    let o = ctx.obj(node, path, &keys)?;
    let mut l = LevelPolicy::default();
    let secs = |ctx: &mut Ctx<'_>, k: &str, d: &mut Duration| {
        if let Some(v) = o.int::<u32>(ctx, k, 0, u32::MAX) {
            *d = Duration::from_secs(v.into());
        }
    };
    secs(ctx, "handshake", &mut l.handshake);
    secs(ctx, "connIdle", &mut l.conn_idle);
    secs(ctx, "uplinkOnly", &mut l.uplink_only);
    secs(ctx, "downlinkOnly", &mut l.downlink_only);
    l.stats_user_uplink = o.bool(ctx, "statsUserUplink").unwrap_or(false);
    l.stats_user_downlink = o.bool(ctx, "statsUserDownlink").unwrap_or(false);
    if let Some(kib) = o.int::<i32>(ctx, "bufferSize", i32::MIN, i32::MAX) {
        l.buffer_size = usize::try_from(kib).ok().map(|k| k * 1024);
    }
    Some(l)
}

const BRIDGE_KEYS: &[&str] = &[
    "tag",
    "domain",
    "sessionsPerTunnel",
    "drainAfter",
    "heartbeatSeconds",
    "silenceSeconds",
    "connectTimeoutSeconds",
];
const PORTAL_KEYS: &[&str] =
    &["tag", "domain", "internalDomain", "sessionsPerTunnel", "drainAfter", "heartbeatSeconds"];

fn build_reverse(ctx: &mut Ctx<'_>, node: &Node) -> ReverseConfig {
    let mut cfg = ReverseConfig::default();
    let Some(o) = ctx.obj(node, "reverse", &["bridges", "portals"]) else { return cfg };
    for (list, role, keys) in [("bridges", "bridge", BRIDGE_KEYS), ("portals", "portal", PORTAL_KEYS)] {
        for (i, n) in o.array(ctx, list).unwrap_or_default().iter().enumerate() {
            let Some(e) = ctx.obj(n, &index(&o.path_of(list), i), keys) else { continue };
            let required = |ctx: &mut Ctx<'_>, key: &str| {
                let v = e.str(ctx, key).unwrap_or_default();
                if v.is_empty() {
                    ctx.error(e.get(key).unwrap_or(n), &e.path_of(key), format!("{role} {key} is empty"));
                }
                v
            };
            let tag = required(ctx, "tag");
            let domain = required(ctx, "domain");
            let tuning = tuning(ctx, &e);
            if tag.is_empty() || domain.is_empty() {
                continue;
            }
            if role == "bridge" {
                cfg.bridges.push(BridgeConfig { tag, domain, tuning });
            } else {
                let internal_domain = match e.str(ctx, "internalDomain") {
                    Some(d) if d.is_empty() => {
                        ctx.error(
                            e.get("internalDomain").unwrap_or(n),
                            &e.path_of("internalDomain"),
                            "portal internalDomain is empty",
                        );
                        continue;
                    }
                    Some(d) => d,
                    None => "reverse.internal.v2fly.org".to_string(),
                };
                cfg.portals.push(PortalConfig { tag, domain, internal_domain, tuning });
            }
        }
    }
    cfg
}

fn tuning(ctx: &mut Ctx<'_>, e: &Obj<'_>) -> ReverseTuning {
    // `int` checks only that the number fits the type: the bounds are checked here (a heartbeat of
    // 0 s would make the ticker panic).
    let ranged = |ctx: &mut Ctx<'_>, key: &str, lo: u32, hi: u32| {
        let v = e.int::<u32>(ctx, key, lo, hi)?;
        if (lo..=hi).contains(&v) {
            return Some(v);
        }
        let at = e.get(key)?;
        ctx.error(at, &e.path_of(key), format!("expected an integer in {lo}..={hi}, got {v}"));
        None
    };
    let mut t = ReverseTuning::default();
    if let Some(v) = ranged(ctx, "sessionsPerTunnel", 1, u32::MAX) {
        t.sessions_per_tunnel = v;
    }
    if let Some(v) = ranged(ctx, "drainAfter", 1, u32::MAX) {
        t.drain_after = v;
    }
    if let Some(v) = ranged(ctx, "heartbeatSeconds", 1, 3600) {
        t.heartbeat = Duration::from_secs(v.into());
    }
    if let Some(v) = ranged(ctx, "silenceSeconds", 1, 3600) {
        t.silence = Some(Duration::from_secs(v.into()));
    }
    if let Some(v) = ranged(ctx, "connectTimeoutSeconds", 1, 300) {
        t.connect_timeout = Duration::from_secs(v.into());
    }
    t
}
