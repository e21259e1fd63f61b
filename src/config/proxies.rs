//! Settings of the socks and http proxies (TRANSPORTS.md §5.1, §5.5, §6.1, §6.4): types and parsing.

use std::time::Duration;

use super::ctx::{Ctx, Obj, index};
use super::json::Value;
use crate::session::Address;

/// One `accounts` entry (socks/http inbound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// `user`.
    pub user: String,
    /// `pass`.
    pub pass: String,
}

/// `socks` inbound settings.
#[derive(Debug, Clone, Default)]
pub struct SocksInboundConfig {
    /// `auth: "password"` (compared case-insensitively; see docs/CONFIG.md).
    pub password: bool,
    /// `accounts` (a repeated user: the last wins).
    pub accounts: Vec<Account>,
    /// `udp`.
    pub udp: bool,
    /// `ip`: the address put in UDP ASSOCIATE replies.
    pub ip: Option<Address>,
    /// `userLevel`.
    pub user_level: u32,
    /// `timeout` (deprecated): replaces connIdle when > 0 and userLevel is 0.
    pub timeout: Option<Duration>,
}

/// `http` inbound settings.
#[derive(Debug, Clone, Default)]
pub struct HttpInboundConfig {
    /// `accounts`: non-empty means Basic proxy authentication is required.
    pub accounts: Vec<Account>,
    /// `allowTransparent`: accept origin-form requests, the target taken from `Host`.
    pub allow_transparent: bool,
    /// `userLevel`.
    pub user_level: u32,
    /// `timeout`: replaces connIdle when > 0 and userLevel is 0.
    pub timeout: Option<Duration>,
}

/// A user of a socks/http outbound server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUser {
    /// `user`.
    pub user: String,
    /// `pass`.
    pub pass: String,
    /// `level`.
    pub level: u32,
}

/// One `servers` entry of a socks/http outbound.
#[derive(Debug, Clone)]
pub struct ProxyServer {
    /// `address`.
    pub address: Address,
    /// `port`.
    pub port: u16,
    /// `users` (one is picked per connection).
    pub users: Vec<ProxyUser>,
}

/// `socks` or `http` outbound settings.
#[derive(Debug, Clone)]
pub struct ProxyClientConfig {
    /// `servers`, used round-robin.
    pub servers: Vec<ProxyServer>,
}

pub(crate) const SOCKS_IN_KEYS: &[&str] = &["auth", "accounts", "udp", "ip", "userLevel", "timeout"];
pub(crate) const HTTP_IN_KEYS: &[&str] = &["timeout", "accounts", "allowTransparent", "userLevel"];
pub(crate) const PROXY_OUT_KEYS: &[&str] = &["servers"];

fn timeout(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<Duration> {
    o.int::<u32>(ctx, "timeout", 0, u32::MAX).filter(|t| *t > 0).map(|t| Duration::from_secs(t.into()))
}

fn accounts(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Vec<Account> {
    let mut out = Vec::new();
    for (i, a) in o.array(ctx, "accounts").unwrap_or_default().iter().enumerate() {
        let Some(ao) = ctx.obj(a, &index(&o.path_of("accounts"), i), &["user", "pass"]) else { continue };
        let user = ao.str(ctx, "user").unwrap_or_default();
        let pass = ao.str(ctx, "pass").unwrap_or_default();
        // V2Ray keeps a map: a repeated user's last password wins.
        out.retain(|x: &Account| x.user != user);
        out.push(Account { user, pass });
    }
    out
}

/// `socks` inbound `settings`.
pub(crate) fn socks_inbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<SocksInboundConfig> {
    let password = match o.str(ctx, "auth") {
        None => false,
        Some(a) if a.eq_ignore_ascii_case("noauth") => false,
        Some(a) if a.eq_ignore_ascii_case("password") => {
            if a != "password"
                && let Some(n) = o.get("auth")
            {
                ctx.warn(
                    n,
                    &o.path_of("auth"),
                    format!("auth {a:?} means \"password\" in oxray; V2Ray 4.34 compares case-sensitively and would run without authentication"),
                );
            }
            true
        }
        Some(a) => {
            let n = o.get("auth").unwrap_or(o.node);
            ctx.error(n, &o.path_of("auth"), format!("unknown socks auth {a:?} (expected \"noauth\" or \"password\")"));
            return None;
        }
    };
    let ip = o.str(ctx, "ip").filter(|s| !s.is_empty()).map(|s| Address::parse(&s));
    Some(SocksInboundConfig {
        password,
        accounts: accounts(ctx, o),
        udp: o.bool(ctx, "udp").unwrap_or(false),
        ip,
        user_level: o.int::<u32>(ctx, "userLevel", 0, u32::MAX).unwrap_or(0),
        timeout: timeout(ctx, o),
    })
}

/// `http` inbound `settings`.
pub(crate) fn http_inbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<HttpInboundConfig> {
    Some(HttpInboundConfig {
        accounts: accounts(ctx, o),
        allow_transparent: o.bool(ctx, "allowTransparent").unwrap_or(false),
        user_level: o.int::<u32>(ctx, "userLevel", 0, u32::MAX).unwrap_or(0),
        timeout: timeout(ctx, o),
    })
}

/// `socks`/`http` outbound `settings` (`what` names the protocol in messages).
pub(crate) fn proxy_client(ctx: &mut Ctx<'_>, o: &Obj<'_>, what: &str) -> Option<ProxyClientConfig> {
    let list = o.array(ctx, "servers").unwrap_or_default();
    if list.is_empty() {
        ctx.error(
            o.get("servers").unwrap_or(o.node),
            &o.path_of("servers"),
            format!("0 target server ({what} outbound has no servers)"),
        );
        return None;
    }
    let mut servers = Vec::new();
    let mut ok = true;
    for (i, s) in list.iter().enumerate() {
        let Some(so) = ctx.obj(s, &index(&o.path_of("servers"), i), &["address", "port", "users"]) else {
            ok = false;
            continue;
        };
        let address = so.str(ctx, "address").filter(|a| !a.is_empty()).map(|a| Address::parse(&a));
        if address.is_none() && so.get("address").is_none_or(|n| matches!(n.value, Value::String(_))) {
            ctx.error(
                so.get("address").unwrap_or(s),
                &so.path_of("address"),
                format!("{what} server address is not set"),
            );
        }
        let port = so.int::<u16>(ctx, "port", 0, u16::MAX).unwrap_or(0);
        if port == 0 {
            ctx.error(so.get("port").unwrap_or(s), &so.path_of("port"), format!("{what} server port is not set"));
            ok = false;
        }
        let mut users = Vec::new();
        for (j, u) in so.array(ctx, "users").unwrap_or_default().iter().enumerate() {
            let Some(uo) = ctx.obj(u, &index(&so.path_of("users"), j), &["user", "pass", "level", "email"]) else {
                ok = false;
                continue;
            };
            let user = uo.str(ctx, "user").unwrap_or_default();
            let pass = uo.str(ctx, "pass").unwrap_or_default();
            let _ = uo.str(ctx, "email");
            if what == "socks" && (user.len() > 255 || pass.len() > 255) {
                ctx.error(u, &uo.path_of("user"), "socks user and pass must be at most 255 bytes each");
                ok = false;
            }
            let level = uo.int::<u32>(ctx, "level", 0, u32::MAX).unwrap_or(0);
            users.push(ProxyUser { user, pass, level });
        }
        match address {
            Some(address) => servers.push(ProxyServer { address, port, users }),
            None => ok = false,
        }
    }
    ok.then_some(ProxyClientConfig { servers })
}

pub use crate::proxy::shadowsocks::codec::Method as ShadowsocksMethod;

/// `shadowsocks` inbound settings (one user per inbound, as 4.34).
#[derive(Debug, Clone)]
pub struct ShadowsocksInboundConfig {
    /// `method`.
    pub method: ShadowsocksMethod,
    /// `password`.
    pub password: String,
    /// `level` (0–255).
    pub level: u32,
    /// `email`.
    pub email: Option<String>,
    /// `network` has `tcp` (default true).
    pub tcp: bool,
    /// `network` has `udp`, or `udp: true`.
    pub udp: bool,
}

/// One `servers` entry of a shadowsocks outbound.
#[derive(Debug, Clone)]
pub struct ShadowsocksServer {
    /// `address`.
    pub address: Address,
    /// `port`.
    pub port: u16,
    /// `method`.
    pub method: ShadowsocksMethod,
    /// `password`.
    pub password: String,
    /// `level`.
    pub level: u32,
}

/// `shadowsocks` outbound settings.
#[derive(Debug, Clone)]
pub struct ShadowsocksClientConfig {
    /// `servers`, used round-robin.
    pub servers: Vec<ShadowsocksServer>,
}

pub(crate) const SS_IN_KEYS: &[&str] = &["method", "password", "network", "udp", "level", "email", "ota", "clients"];
const SS_SERVER_KEYS: &[&str] = &["address", "port", "method", "password", "level", "email", "ota"];

fn ss_method(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<ShadowsocksMethod> {
    let name = o.str(ctx, "method").unwrap_or_default();
    let at = o.get("method").unwrap_or(o.node);
    match ShadowsocksMethod::parse(&name) {
        Some(m) => Some(m),
        None => {
            let legacy =
                ["cfb", "ctr", "rc4", "chacha20", "chacha20-ietf", "xchacha20", "2022-", "salsa", "camellia", "bf-"];
            let lower = name.to_ascii_lowercase();
            let hint = if !lower.is_empty() && legacy.iter().any(|l| lower.contains(l)) {
                " (stream ciphers, xchacha20 and SIP022 2022-* methods are not supported by V2Ray 4.34)"
            } else {
                ""
            };
            ctx.error(
                at,
                &o.path_of("method"),
                format!("unknown cipher method: {name:?}{hint}; use aes-128-gcm, aes-256-gcm, chacha20-poly1305 (chacha20-ietf-poly1305) or none"),
            );
            None
        }
    }
}

fn ss_password(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<String> {
    match o.str(ctx, "password").filter(|p| !p.is_empty()) {
        Some(p) => Some(p),
        None => {
            ctx.error(
                o.get("password").unwrap_or(o.node),
                &o.path_of("password"),
                "Shadowsocks password is not specified.",
            );
            None
        }
    }
}

/// `shadowsocks` inbound `settings`.
pub(crate) fn shadowsocks_inbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<ShadowsocksInboundConfig> {
    if let Some(n) = o.get("clients") {
        ctx.error(n, &o.path_of("clients"), "a multi-user \"clients\" list is not supported by V2Ray 4.34's shadowsocks (one password per inbound: use several inbounds)");
    }
    if let Some(n) = o.get("ota") {
        ctx.warn(n, &o.path_of("ota"), "\"ota\" is ignored (AEAD methods only)");
    }
    // 4.34: `network` (default tcp) plus UDP when `udp` is true; entries are not trimmed.
    let mut udp = o.bool(ctx, "udp").unwrap_or(false);
    let mut tcp = o.get("network").is_none();
    if let Some(n) = o.get("network") {
        for (s, at, p) in ctx.string_list(n, &o.path_of("network")).unwrap_or_default() {
            match s.to_ascii_lowercase().as_str() {
                "udp" => udp = true,
                "tcp" => tcp = true,
                _ => ctx.warn(
                    at,
                    &p,
                    format!("unknown network {s:?} is ignored, as V2Ray 4.34 does (entries are not trimmed)"),
                ),
            }
        }
    }
    if !tcp && !udp {
        tcp = true;
    }
    let method = ss_method(ctx, o);
    let password = ss_password(ctx, o);
    let level = o.int::<u8>(ctx, "level", 0, u8::MAX).unwrap_or(0).into();
    let email = o.str(ctx, "email").filter(|e| !e.is_empty());
    Some(ShadowsocksInboundConfig { method: method?, password: password?, level, email, tcp, udp })
}

/// `shadowsocks` outbound `settings`.
pub(crate) fn shadowsocks_outbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<ShadowsocksClientConfig> {
    let list = o.array(ctx, "servers").unwrap_or_default();
    if list.is_empty() {
        ctx.error(o.get("servers").unwrap_or(o.node), &o.path_of("servers"), "0 Shadowsocks server configured.");
        return None;
    }
    let mut servers = Vec::new();
    let mut ok = true;
    for (i, s) in list.iter().enumerate() {
        let Some(so) = ctx.obj(s, &index(&o.path_of("servers"), i), SS_SERVER_KEYS) else {
            ok = false;
            continue;
        };
        let address = so.str(ctx, "address").filter(|a| !a.is_empty()).map(|a| Address::parse(&a));
        if address.is_none() {
            ctx.error(so.get("address").unwrap_or(s), &so.path_of("address"), "Shadowsocks server address is not set.");
        }
        let port = so.int::<u16>(ctx, "port", 0, u16::MAX).unwrap_or(0);
        if port == 0 {
            ctx.error(so.get("port").unwrap_or(s), &so.path_of("port"), "Invalid Shadowsocks port.");
        }
        let method = ss_method(ctx, &so);
        let password = ss_password(ctx, &so);
        let level = so.int::<u8>(ctx, "level", 0, u8::MAX).unwrap_or(0).into();
        let _ = so.str(ctx, "email");
        match (address, method, password) {
            (Some(address), Some(method), Some(password)) if port != 0 => {
                servers.push(ShadowsocksServer { address, port, method, password, level })
            }
            _ => ok = false,
        }
    }
    ok.then_some(ShadowsocksClientConfig { servers })
}

/// Where a fallback goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackDest {
    /// A TCP address (`80` means 127.0.0.1:80).
    Tcp(Address, u16),
    /// A unix socket path.
    Unix(std::path::PathBuf),
}

/// One `fallbacks` entry (VLESS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackConfig {
    /// `alpn` (`""` = any).
    pub alpn: String,
    /// `path` (`""` = default; otherwise starts with `/`).
    pub path: String,
    /// `dest`.
    pub dest: FallbackDest,
    /// `xver`: PROXY protocol version 0, 1 or 2.
    pub xver: u8,
}

/// One VLESS user on a server.
#[derive(Debug, Clone)]
pub struct VlessClient {
    /// `id`.
    pub id: super::SecretId,
    /// `level`.
    pub level: u32,
    /// `email`.
    pub email: Option<String>,
}

/// `vless` inbound settings.
#[derive(Debug, Clone, Default)]
pub struct VlessInboundConfig {
    /// `clients`.
    pub clients: Vec<VlessClient>,
    /// `fallbacks`.
    pub fallbacks: Vec<FallbackConfig>,
}

/// One `vnext` entry of a VLESS outbound.
#[derive(Debug, Clone)]
pub struct VlessServer {
    /// `address`.
    pub address: Address,
    /// `port`.
    pub port: u16,
    /// The users' ids (one picked per connection).
    pub users: Vec<super::SecretId>,
}

/// `vless` outbound settings.
#[derive(Debug, Clone)]
pub struct VlessOutboundConfig {
    /// `vnext`.
    pub servers: Vec<VlessServer>,
}

pub(crate) const VLESS_IN_KEYS: &[&str] = &["clients", "decryption", "fallbacks", "fallback"];
const VLESS_CLIENT_KEYS: &[&str] = &["id", "level", "email", "flow", "encryption"];

fn flow_warning(ctx: &mut Ctx<'_>, u: &Obj<'_>) {
    if let Some(f) = u.str(ctx, "flow").filter(|f| !f.is_empty())
        && let Some(n) = u.get("flow")
    {
        ctx.warn(n, &u.path_of("flow"), format!("flow {f:?} is ignored (V2Ray 4.34 has no XTLS; plain VLESS is used)"));
    }
}

fn fallbacks(ctx: &mut Ctx<'_>, o: &Obj<'_>, what: &str) -> Option<Vec<FallbackConfig>> {
    if let Some(n) = o.get("fallback") {
        ctx.error(
            n,
            &o.path_of("fallback"),
            format!("{what} settings: please use \"fallbacks\":[{{}}] instead of \"fallback\":{{}}"),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, f) in o.array(ctx, "fallbacks").unwrap_or_default().iter().enumerate() {
        let Some(fo) = ctx.obj(f, &index(&o.path_of("fallbacks"), i), &["alpn", "path", "dest", "xver", "type"]) else {
            ok = false;
            continue;
        };
        let alpn = fo.str(ctx, "alpn").unwrap_or_default();
        let path = fo.str(ctx, "path").unwrap_or_default();
        if !path.is_empty() && !path.starts_with('/') {
            ctx.error(
                fo.get("path").unwrap_or(f),
                &fo.path_of("path"),
                format!("{what} fallbacks: \"path\" must be empty or start with \"/\""),
            );
            ok = false;
        }
        let xver = fo.int::<u8>(ctx, "xver", 0, 2).unwrap_or(0);
        let _ = fo.str(ctx, "type");
        let dest_text = match fo.get("dest").map(|n| &n.value) {
            Some(Value::Number(_)) => fo.int::<u16>(ctx, "dest", 0, u16::MAX).map(|p| p.to_string()),
            Some(_) => fo.str(ctx, "dest"),
            None => None,
        };
        let at = fo.get("dest").unwrap_or(f);
        let dest = match dest_text.as_deref() {
            Some(d) if d.starts_with('@') => {
                ctx.unsupported(at, &fo.path_of("dest"), "an abstract unix socket fallback (\"@...\")");
                None
            }
            Some(d) if d.starts_with('/') => Some(FallbackDest::Unix(d.into())),
            Some(d) if !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()) => {
                d.parse::<u16>().ok().map(|p| FallbackDest::Tcp(Address::parse("127.0.0.1"), p))
            }
            Some("serve-ws-none") => {
                ctx.error(
                    at,
                    &fo.path_of("dest"),
                    "dest \"serve-ws-none\" fails every connection in V2Ray 4.34; refused",
                );
                None
            }
            Some(d) => match d.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?))) {
                Some((h, p)) if !h.is_empty() => Some(FallbackDest::Tcp(Address::parse(h), p)),
                _ => None,
            },
            None => None,
        };
        match dest {
            Some(dest) => out.push(FallbackConfig { alpn, path, dest, xver }),
            None => {
                ctx.error(
                    at,
                    &fo.path_of("dest"),
                    format!("{what} fallbacks: please fill in a valid value for every \"dest\""),
                );
                ok = false;
            }
        }
    }
    if out.iter().any(|f| !f.alpn.is_empty())
        && let Some(n) = o.get("fallbacks")
    {
        ctx.warn(
            n,
            &o.path_of("fallbacks"),
            "ALPN-keyed fallbacks never match yet: oxray inbounds have no TLS, so the ALPN is always \"\"",
        );
    }
    ok.then_some(out)
}

/// `vless` inbound `settings`.
pub(crate) fn vless_inbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<VlessInboundConfig> {
    if o.str(ctx, "decryption").as_deref() != Some("none") {
        ctx.error(
            o.get("decryption").unwrap_or(o.node),
            &o.path_of("decryption"),
            "VLESS settings: please add/set \"decryption\":\"none\" to every settings",
        );
        return None;
    }
    let mut cfg = VlessInboundConfig::default();
    let mut ok = true;
    for (i, c) in o.array(ctx, "clients").unwrap_or_default().iter().enumerate() {
        let Some(u) = ctx.obj(c, &index(&o.path_of("clients"), i), VLESS_CLIENT_KEYS) else {
            ok = false;
            continue;
        };
        if let Some(n) = u.get("encryption") {
            ctx.error(n, &u.path_of("encryption"), "VLESS clients: \"encryption\" should not in inbound settings");
            ok = false;
        }
        flow_warning(ctx, &u);
        let level = u.int::<u32>(ctx, "level", 0, u32::MAX).unwrap_or(0);
        let email = u.str(ctx, "email").filter(|e| !e.is_empty());
        match super::validate::secret_id(ctx, &u) {
            Some(id) => {
                cfg.clients.retain(|c| c.id != id);
                cfg.clients.push(VlessClient { id, level, email })
            }
            None => ok = false,
        }
    }
    cfg.fallbacks = fallbacks(ctx, o, "VLESS")?;
    ok.then_some(cfg)
}

/// `vless` outbound `settings`.
pub(crate) fn vless_outbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<VlessOutboundConfig> {
    let list = o.array(ctx, "vnext").unwrap_or_default();
    if list.is_empty() {
        ctx.error(
            o.get("vnext").unwrap_or(o.node),
            &o.path_of("vnext"),
            "0 VLESS receiver configured (vnext is empty)",
        );
        return None;
    }
    let mut servers = Vec::new();
    let mut ok = true;
    for (i, s) in list.iter().enumerate() {
        let Some(so) = ctx.obj(s, &index(&o.path_of("vnext"), i), &["address", "port", "users"]) else {
            ok = false;
            continue;
        };
        let address = so.str(ctx, "address").filter(|a| !a.is_empty()).map(|a| Address::parse(&a));
        if address.is_none() {
            ctx.error(so.get("address").unwrap_or(s), &so.path_of("address"), "VLESS: address is not set");
        }
        let port = so.int::<u16>(ctx, "port", 0, u16::MAX).unwrap_or(0);
        let mut users = Vec::new();
        let nodes = so.array(ctx, "users").unwrap_or_default();
        if nodes.is_empty() {
            ctx.error(so.get("users").unwrap_or(s), &so.path_of("users"), "VLESS: 0 user configured");
            ok = false;
        }
        for (j, u) in nodes.iter().enumerate() {
            let Some(uo) = ctx.obj(u, &index(&so.path_of("users"), j), VLESS_CLIENT_KEYS) else {
                ok = false;
                continue;
            };
            if uo.str(ctx, "encryption").as_deref() != Some("none") {
                ctx.error(
                    uo.get("encryption").unwrap_or(u),
                    &uo.path_of("encryption"),
                    "VLESS users: please add/set \"encryption\":\"none\" for every user",
                );
                ok = false;
            }
            flow_warning(ctx, &uo);
            let _ = uo.int::<u32>(ctx, "level", 0, u32::MAX);
            let _ = uo.str(ctx, "email");
            match super::validate::secret_id(ctx, &uo) {
                Some(id) => users.push(id),
                None => ok = false,
            }
        }
        match address {
            Some(address) => servers.push(VlessServer { address, port, users }),
            None => ok = false,
        }
    }
    ok.then_some(VlessOutboundConfig { servers })
}

/// One Trojan user on a server.
#[derive(Debug, Clone)]
pub struct TrojanClient {
    /// `password`.
    pub password: String,
    /// `level` (0–255).
    pub level: u32,
    /// `email`.
    pub email: Option<String>,
}

/// `trojan` inbound settings.
#[derive(Debug, Clone, Default)]
pub struct TrojanInboundConfig {
    /// `clients`.
    pub clients: Vec<TrojanClient>,
    /// `fallbacks`.
    pub fallbacks: Vec<FallbackConfig>,
}

/// One `servers` entry of a Trojan outbound.
#[derive(Debug, Clone)]
pub struct TrojanServer {
    /// `address`.
    pub address: Address,
    /// `port`.
    pub port: u16,
    /// `password`.
    pub password: String,
}

/// `trojan` outbound settings.
#[derive(Debug, Clone)]
pub struct TrojanOutboundConfig {
    /// `servers`, used round-robin.
    pub servers: Vec<TrojanServer>,
}

pub(crate) const TROJAN_IN_KEYS: &[&str] = &["clients", "fallbacks", "fallback"];

/// `trojan` inbound `settings`.
pub(crate) fn trojan_inbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<TrojanInboundConfig> {
    let mut cfg = TrojanInboundConfig::default();
    let mut ok = true;
    for (i, c) in o.array(ctx, "clients").unwrap_or_default().iter().enumerate() {
        let Some(u) = ctx.obj(c, &index(&o.path_of("clients"), i), &["password", "level", "email", "flow"]) else {
            ok = false;
            continue;
        };
        let Some(password) = u.str(ctx, "password").filter(|p| !p.is_empty()) else {
            // 4.34 silently makes the empty password valid for such a client.
            ctx.error(
                u.get("password").unwrap_or(c),
                &u.path_of("password"),
                format!("{} is empty (V2Ray 4.34 would let anyone in with the empty password)", u.path_of("password")),
            );
            ok = false;
            continue;
        };
        let level = u.int::<u8>(ctx, "level", 0, u8::MAX).unwrap_or(0).into();
        let email = u.str(ctx, "email").filter(|e| !e.is_empty());
        let _ = u.str(ctx, "flow");
        cfg.clients.retain(|x| x.password != password);
        cfg.clients.push(TrojanClient { password, level, email });
    }
    cfg.fallbacks = fallbacks(ctx, o, "Trojan")?;
    ok.then_some(cfg)
}

/// `trojan` outbound `settings`.
pub(crate) fn trojan_outbound(ctx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<TrojanOutboundConfig> {
    let list = o.array(ctx, "servers").unwrap_or_default();
    if list.is_empty() {
        ctx.error(o.get("servers").unwrap_or(o.node), &o.path_of("servers"), "0 Trojan server configured.");
        return None;
    }
    let mut servers = Vec::new();
    let mut ok = true;
    for (i, s) in list.iter().enumerate() {
        let Some(so) =
            ctx.obj(s, &index(&o.path_of("servers"), i), &["address", "port", "password", "level", "email", "flow"])
        else {
            ok = false;
            continue;
        };
        let address = so.str(ctx, "address").filter(|a| !a.is_empty()).map(|a| Address::parse(&a));
        if address.is_none() {
            ctx.error(so.get("address").unwrap_or(s), &so.path_of("address"), "Trojan server address is not set.");
        }
        let port = so.int::<u16>(ctx, "port", 0, u16::MAX).unwrap_or(0);
        if port == 0 {
            ctx.error(so.get("port").unwrap_or(s), &so.path_of("port"), "Invalid Trojan port.");
        }
        let password = so.str(ctx, "password").filter(|p| !p.is_empty());
        if password.is_none() {
            ctx.error(so.get("password").unwrap_or(s), &so.path_of("password"), "Trojan password is not specified.");
        }
        let _ = so.int::<u8>(ctx, "level", 0, u8::MAX);
        let _ = so.str(ctx, "email");
        let _ = so.str(ctx, "flow");
        match (address, password) {
            (Some(address), Some(password)) if port != 0 => servers.push(TrojanServer { address, port, password }),
            _ => ok = false,
        }
    }
    ok.then_some(TrojanOutboundConfig { servers })
}
