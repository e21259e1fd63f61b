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
    let mut udp = o.bool(ctx, "udp").unwrap_or(false);
    if let Some(n) = o.get("network") {
        for (s, _, _) in ctx.string_list(n, &o.path_of("network")).unwrap_or_default() {
            udp |= s.eq_ignore_ascii_case("udp");
        }
    }
    if udp {
        let at = o.get("network").or(o.get("udp")).unwrap_or(o.node);
        ctx.unsupported(at, &o.path_of("network"), "shadowsocks UDP");
    }
    let method = ss_method(ctx, o);
    let password = ss_password(ctx, o);
    let level = o.int::<u8>(ctx, "level", 0, u8::MAX).unwrap_or(0).into();
    let email = o.str(ctx, "email").filter(|e| !e.is_empty());
    Some(ShadowsocksInboundConfig { method: method?, password: password?, level, email })
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
