//! `streamSettings` (and the top-level `transport` defaults) → [`StreamSettings`], as V2Ray 4.34's
//! `infra/conf/transport_internet.go` parses them, with clear errors for what oxray does not run and
//! warnings for what 4.34 silently ignores.

use super::ctx::{Ctx, Obj, is_noop};
use super::json::{Node, Value};
use crate::transport::http_head::{canonical_header_name, percent_decode};
use crate::transport::settings::*;
use crate::transport::{header, tls, ws};

const STREAM_KEYS: &[&str] = &[
    "network",
    "security",
    "tlsSettings",
    "tcpSettings",
    "kcpSettings",
    "wsSettings",
    "httpSettings",
    "dsSettings",
    "quicSettings",
    "sockopt",
];

/// Keys of the top-level `transport` object.
const TRANSPORT_KEYS: &[&str] =
    &["tcpSettings", "kcpSettings", "wsSettings", "httpSettings", "dsSettings", "quicSettings"];

/// Keys of later V2Ray/Xray versions: not in 4.34, so ignored there; oxray warns.
const LATER_STREAM_KEYS: &[&str] =
    &["xtlsSettings", "realitySettings", "grpcSettings", "xhttpSettings", "splithttpSettings"];
const LATER_TLS_KEYS: &[&str] = &[
    "pinnedPeerCertificateChainSha256",
    "minVersion",
    "maxVersion",
    "cipherSuites",
    "fingerprint",
    "rejectUnknownSni",
    "verifyClientCertificate",
    "preferServerCipherSuites",
    "serverNameToVerify",
];
const LATER_WS_KEYS: &[&str] = &["maxEarlyData", "earlyDataHeaderName", "useBrowserForwarding", "host"];
const LATER_SOCKOPT_KEYS: &[&str] = &[
    "tcpKeepAliveInterval",
    "tcpKeepAliveIdle",
    "domainStrategy",
    "dialerProxy",
    "tcpcongestion",
    "interface",
    "tcpMptcp",
    "tcpNoDelay",
    "bindToDevice",
    "mptcp",
];

/// The top-level `transport` object: per-transport settings copied into every stream that lacks them.
#[derive(Default, Clone, Copy)]
pub(crate) struct TransportDefaults<'n> {
    tcp: Option<(&'n Node, &'static str)>,
    ws: Option<(&'n Node, &'static str)>,
}

/// Parses the top-level `transport`. Its kcp/http/ds settings are validated as settings objects;
/// `quicSettings` is not copied anywhere (a 4.34 omission, kept).
pub(crate) fn transport_defaults<'n>(ctx: &mut Ctx<'_>, node: Option<&'n Node>) -> TransportDefaults<'n> {
    let mut d = TransportDefaults::default();
    let Some(node) = node else { return d };
    let Some(o) = lenient_obj(ctx, node, "transport", TRANSPORT_KEYS, &[]) else { return d };
    d.tcp = o.get("tcpSettings").map(|n| (n, "transport.tcpSettings"));
    d.ws = o.get("wsSettings").map(|n| (n, "transport.wsSettings"));
    for key in ["kcpSettings", "httpSettings", "dsSettings", "quicSettings"] {
        if let Some(n) = o.get(key) {
            check_unused(ctx, n, &o.path_of(key), key);
        }
    }
    d
}

/// Views an object whose `later` keys (from later V2Ray/Xray versions) are ignored with a warning;
/// other unknown keys are errors as everywhere.
fn lenient_obj<'n>(
    ctx: &mut Ctx<'_>,
    node: &'n Node,
    path: &str,
    known: &[&'static str],
    later: &[&'static str],
) -> Option<Obj<'n>> {
    let all: Vec<&'static str> = known.iter().chain(later).copied().collect();
    let o = ctx.obj(node, path, &all)?;
    for k in later {
        if let Some(n) = o.get(k) {
            ctx.warn(n, &o.path_of(k), format!("{k:?} does not exist in V2Ray 4.34, which ignores it; so does oxray"));
        }
    }
    Some(o)
}

/// Builds `owner.streamSettings`; `inbound` says which side it configures.
pub(crate) fn build<'n>(
    ctx: &mut Ctx<'_>,
    owner: &Obj<'n>,
    defaults: TransportDefaults<'n>,
    inbound: bool,
) -> StreamSettings {
    let mut stream = StreamSettings::default();
    let o = match owner.get("streamSettings") {
        Some(n) => match lenient_obj(ctx, n, &owner.path_of("streamSettings"), STREAM_KEYS, LATER_STREAM_KEYS) {
            Some(o) => Some(o),
            None => return stream,
        },
        None => None,
    };
    let get = |key: &str| o.as_ref().and_then(|o| o.get(key).map(|n| (n, o.path_of(key))));

    // network
    let mut network = "tcp".to_string();
    if let Some((n, p)) = get("network")
        && let Some(s) = ctx.string(n, &p)
    {
        network = s.to_ascii_lowercase();
        let unsupported = match network.as_str() {
            "tcp" | "ws" | "websocket" => None,
            "kcp" | "mkcp" => Some("mKCP"),
            "h2" | "http" => Some("HTTP/2"),
            "ds" | "domainsocket" => Some("domain socket"),
            "quic" => Some("QUIC"),
            _ => {
                ctx.error(n, &p, format!("Config: unknown transport protocol: {s} (V2Ray 4.34 knows tcp, kcp, ws, http, domainsocket, quic)"));
                return stream;
            }
        };
        if let Some(name) = unsupported {
            ctx.error(
                n,
                &p,
                format!("streamSettings.network {s:?} ({name}) is a V2Ray 4.34 transport that oxray does not support; supported: tcp, ws"),
            );
            return stream;
        }
    }
    let websocket = network != "tcp";

    // Settings of the chosen transport (own, else the top-level default); the others only warn.
    let tcp_node = get("tcpSettings").or_else(|| defaults.tcp.map(|(n, p)| (n, p.to_string())));
    let ws_node = get("wsSettings").or_else(|| defaults.ws.map(|(n, p)| (n, p.to_string())));
    if websocket {
        let ws = match &ws_node {
            Some((n, p)) => build_ws(ctx, n, p, inbound),
            None => Some(WsSettings::default()),
        };
        stream.network = TransportKind::Ws(ws.unwrap_or_default());
        if let Some((n, p)) = get("tcpSettings") {
            ctx.warn(n, &p, "ignored: \"network\" is \"ws\" (V2Ray 4.34 ignores it too)");
            let _ = build_tcp(ctx, n, &p);
        }
    } else {
        if let Some((n, p)) = &tcp_node {
            stream.tcp = build_tcp(ctx, n, p).unwrap_or_default();
        }
        if let Some((n, p)) = get("wsSettings") {
            ctx.warn(n, &p, "ignored: \"network\" is \"tcp\"; set \"network\": \"ws\" to use WebSocket");
            let _ = build_ws(ctx, n, &p, inbound);
        }
    }
    for key in ["kcpSettings", "httpSettings", "dsSettings", "quicSettings"] {
        if let Some((n, p)) = get(key) {
            check_unused(ctx, n, &p, key);
        }
    }

    // security
    let mut tls_on = false;
    if let Some((n, p)) = get("security")
        && let Some(s) = ctx.string(n, &p)
    {
        if s.eq_ignore_ascii_case("tls") {
            tls_on = true;
        } else if !(s.is_empty() || s.eq_ignore_ascii_case("none")) {
            // 4.34 silently runs such a stream in plaintext: a hazard for configs written for Xray.
            ctx.error(n, &p, format!("security {s:?} is not supported; use \"tls\" or \"none\" (V2Ray 4.34 would silently send plaintext)"));
        }
    }
    match get("tlsSettings") {
        Some((n, p)) if tls_on => {
            if let Some(t) = build_tls(ctx, n, &p, websocket, inbound) {
                stream.security = Security::Tls(t);
            }
        }
        Some((n, p)) => {
            if !is_noop(n) {
                ctx.warn(n, &p, "ignored: \"security\" is not \"tls\", so this stream is plaintext (as in V2Ray 4.34)");
            }
            let _ = build_tls(ctx, n, &p, websocket, inbound);
        }
        None if tls_on => stream.security = Security::Tls(TlsSettings::default()),
        None => {}
    }
    if inbound
        && let Security::Tls(t) = &stream.security
        && !t.certificates.iter().any(|c| c.usage == CertUsage::Encipherment && c.key.is_some())
    {
        let (n, p) = get("tlsSettings").or_else(|| get("security")).map_or((owner.node, owner.path.clone()), |x| x);
        ctx.error(n, &p, "TLS on an inbound needs a certificate with its key (tlsSettings.certificates)");
    }

    if let Some((n, p)) = get("sockopt") {
        build_sockopt(ctx, n, &p, &mut stream);
    }
    stream
}

/// Settings of a transport the stream does not use: 4.34 builds (validates) and ignores them.
fn check_unused(ctx: &mut Ctx<'_>, n: &Node, p: &str, key: &str) {
    if !matches!(n.value, Value::Object(_)) {
        ctx.error(n, p, format!("expected an object, got {}", n.value.kind()));
        return;
    }
    if key == "kcpSettings"
        && let Value::Object(members) = &n.value
    {
        for m in members {
            let (lo, hi) = match m.key.to_ascii_lowercase().as_str() {
                "mtu" => (576, 1460),
                "tti" => (10, 100),
                _ => continue,
            };
            if let Some(v) = ctx.int::<u32>(&m.node, &super::ctx::join(p, &m.key), 0, u32::MAX)
                && !(lo..=hi).contains(&v)
            {
                ctx.error(
                    &m.node,
                    &super::ctx::join(p, &m.key),
                    format!("invalid mKCP {}: {v} (must be {lo}..={hi})", m.key),
                );
            }
        }
    }
    if !is_noop(n) {
        ctx.warn(n, p, format!("{key:?} is ignored: oxray runs only tcp and ws, and this stream does not use it"));
    }
}

fn build_tcp(ctx: &mut Ctx<'_>, n: &Node, p: &str) -> Option<TcpSettings> {
    let o = ctx.obj(n, p, &["header", "acceptProxyProtocol"])?;
    let mut t = TcpSettings {
        accept_proxy_protocol: o.bool(ctx, "acceptProxyProtocol").unwrap_or(false),
        ..Default::default()
    };
    let Some(h) = o.get("header") else { return Some(t) };
    let hp = o.path_of("header");
    let ho = ctx.obj(h, &hp, &["type", "request", "response"])?;
    let Some(ty) = ho.get("type") else {
        ctx.error(h, &ho.path_of("type"), "type not found in JSON context");
        return None;
    };
    let ty = ctx.string(ty, &ho.path_of("type"))?;
    match ty.to_ascii_lowercase().as_str() {
        "none" => Some(t),
        "http" => {
            let mut cfg = header::defaults();
            if let Some(r) = ho.get("request") {
                http_request(ctx, r, &ho.path_of("request"), &mut cfg)?;
            }
            if let Some(r) = ho.get("response") {
                http_response(ctx, r, &ho.path_of("response"), &mut cfg)?;
            }
            t.http_header = Some(cfg);
            Some(t)
        }
        _ => {
            ctx.error(ho.get("type").unwrap_or(h), &ho.path_of("type"), format!("unknown config id: {ty}"));
            None
        }
    }
}

fn non_empty_string(ctx: &mut Ctx<'_>, o: &Obj<'_>, key: &str, into: &mut String) {
    if let Some(v) = o.str(ctx, key).filter(|v| !v.is_empty()) {
        *into = v;
    }
}

/// `headers`: name → string list. Given, it replaces the defaults and is written sorted by name.
fn http_headers(ctx: &mut Ctx<'_>, n: &Node, p: &str) -> Option<Vec<(String, Vec<String>)>> {
    let Value::Object(members) = &n.value else {
        ctx.error(n, p, format!("expected an object, got {}", n.value.kind()));
        return None;
    };
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut ok = true;
    for m in members {
        let mp = super::ctx::join(p, &m.key);
        if matches!(m.node.value, Value::Null) {
            ctx.error(&m.node, &mp, format!("empty HTTP header value: {}", m.key));
            ok = false;
            continue;
        }
        if let Value::String(s) = &m.node.value
            && s.contains(',')
        {
            ctx.warn(
                &m.node,
                &mp,
                "V2Ray splits this value at each comma (not trimmed) and sends one piece at random; use an array to send it whole",
            );
        }
        match ctx.string_list(&m.node, &mp) {
            Some(items) => {
                let values: Vec<String> = items.into_iter().map(|(s, _, _)| s).collect();
                // A duplicate key: Go's map keeps the last one.
                out.retain(|(k, _)| *k != m.key);
                out.push((m.key.clone(), values));
            }
            None => ok = false,
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    ok.then_some(out)
}

fn http_request(ctx: &mut Ctx<'_>, n: &Node, p: &str, cfg: &mut HttpHeaderSettings) -> Option<()> {
    let o = ctx.obj(n, p, &["version", "method", "path", "headers"])?;
    non_empty_string(ctx, &o, "version", &mut cfg.request_version);
    non_empty_string(ctx, &o, "method", &mut cfg.request_method);
    if let Some(pn) = o.get("path") {
        let paths: Vec<String> = ctx.string_list(pn, &o.path_of("path"))?.into_iter().map(|(s, _, _)| s).collect();
        if !paths.is_empty() {
            cfg.request_paths = paths;
        }
    }
    if let Some(h) = o.get("headers") {
        let headers = http_headers(ctx, h, &o.path_of("headers"))?;
        if !headers.is_empty() {
            cfg.request_headers = headers;
        }
    }
    Some(())
}

fn http_response(ctx: &mut Ctx<'_>, n: &Node, p: &str, cfg: &mut HttpHeaderSettings) -> Option<()> {
    let o = ctx.obj(n, p, &["version", "status", "reason", "headers"])?;
    non_empty_string(ctx, &o, "version", &mut cfg.response_version);
    non_empty_string(ctx, &o, "status", &mut cfg.response_status);
    non_empty_string(ctx, &o, "reason", &mut cfg.response_reason);
    if let Some(h) = o.get("headers") {
        let headers = http_headers(ctx, h, &o.path_of("headers"))?;
        if !headers.is_empty() {
            cfg.response_headers = headers;
        }
    }
    Some(())
}

fn build_ws(ctx: &mut Ctx<'_>, n: &Node, p: &str, inbound: bool) -> Option<WsSettings> {
    let o = lenient_obj(ctx, n, p, &["path", "Path", "headers", "acceptProxyProtocol"], LATER_WS_KEYS)?;
    let mut w = WsSettings::default();
    let mut path = o.str(ctx, "path").unwrap_or_default();
    let mut at = ("path", o.get("path"));
    if path.is_empty() {
        // The old misspelled key, read only when `path` is empty.
        path = o.str(ctx, "Path").unwrap_or_default();
        at = ("Path", o.get("Path"));
    }
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let at_node = at.1.unwrap_or(n);
    let path_part = path.split(['?', '#']).next().unwrap_or("");
    if percent_decode(path_part).is_none() {
        ctx.error(at_node, &o.path_of(at.0), format!("invalid escape in the WebSocket path {path:?}"));
        return None;
    }
    if inbound && path.contains('?') {
        ctx.warn(
            at_node,
            &o.path_of(at.0),
            "a V2Ray 4.34 server compares the whole path, query included, and so never matches this one; oxray compares only the part before '?'",
        );
    }
    w.path = path;
    if let Some(h) = o.get("headers") {
        let hp = o.path_of("headers");
        let Value::Object(members) = &h.value else {
            ctx.error(h, &hp, format!("expected an object, got {}", h.value.kind()));
            return None;
        };
        let mut ok = true;
        for m in members {
            let mp = super::ctx::join(&hp, &m.key);
            let Some(v) = ctx.string(&m.node, &mp) else {
                ok = false;
                continue;
            };
            let name = canonical_header_name(&m.key);
            if ws::FORBIDDEN_CLIENT_HEADERS.contains(&name.as_str()) {
                ctx.error(
                    &m.node,
                    &mp,
                    format!("header {:?} is set by the WebSocket handshake itself (V2Ray 4.34 fails every dial with \"duplicate header not allowed\")", m.key),
                );
                ok = false;
                continue;
            }
            w.headers.push((name, v));
        }
        if !ok {
            return None;
        }
    }
    w.accept_proxy_protocol = o.bool(ctx, "acceptProxyProtocol").unwrap_or(false);
    Some(w)
}

const TLS_KEYS: &[&str] =
    &["serverName", "allowInsecure", "alpn", "certificates", "disableSystemRoot", "enableSessionResumption"];
const CERT_KEYS: &[&str] = &["certificateFile", "certificate", "keyFile", "key", "usage"];

fn build_tls(ctx: &mut Ctx<'_>, n: &Node, p: &str, websocket: bool, inbound: bool) -> Option<TlsSettings> {
    let o = lenient_obj(ctx, n, p, TLS_KEYS, LATER_TLS_KEYS)?;
    let mut t = TlsSettings {
        allow_insecure: o.bool(ctx, "allowInsecure").unwrap_or(false),
        disable_system_root: o.bool(ctx, "disableSystemRoot").unwrap_or(false),
        session_resumption: o.bool(ctx, "enableSessionResumption").unwrap_or(false),
        ..Default::default()
    };
    if let Some(name) = o.str(ctx, "serverName") {
        // 4.34 strips this uTLS experiment prefix and does nothing else with it.
        let name = name.strip_prefix("experiment:8357").unwrap_or(&name).to_string();
        if !name.is_empty() {
            if rustls::pki_types::ServerName::try_from(name.clone()).is_err() {
                ctx.error(
                    o.get("serverName").unwrap_or(n),
                    &o.path_of("serverName"),
                    format!("{name:?} is not a valid TLS server name"),
                );
                return None;
            }
            t.server_name = Some(name);
        }
    }
    if let Some(a) = o.get("alpn") {
        for (s, at, ap) in ctx.string_list(a, &o.path_of("alpn")).unwrap_or_default() {
            if s != s.trim() {
                ctx.warn(
                    at,
                    &ap,
                    format!("ALPN protocol {s:?} has spaces: V2Ray splits \"a, b\" at commas without trimming"),
                );
            }
            if s.is_empty() || s.len() > 255 {
                ctx.error(at, &ap, format!("ALPN protocol {s:?} must be 1..=255 bytes"));
                continue;
            }
            if inbound && websocket && s == "h2" {
                ctx.warn(at, &ap, "a WebSocket listener cannot upgrade over HTTP/2: oxray never selects \"h2\" here (V2Ray 4.34 does, and then fails)");
            }
            t.alpn.push(s);
        }
    }
    for (i, c) in o.array(ctx, "certificates").unwrap_or_default().iter().enumerate() {
        let cp = super::ctx::index(&o.path_of("certificates"), i);
        if let Some(cert) = build_cert(ctx, c, &cp) {
            t.certificates.push(cert);
        }
    }
    Some(t)
}

/// `certificateFile` (wins) or `certificate` (lines joined with `\n`); same for the key.
fn pem_source(
    ctx: &mut Ctx<'_>,
    o: &Obj<'_>,
    file_key: &str,
    inline_key: &str,
    what: &str,
) -> Result<Option<Vec<u8>>, ()> {
    if let Some(f) = o.str(ctx, file_key).filter(|f| !f.is_empty()) {
        return match std::fs::read(&f) {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                ctx.error(
                    o.get(file_key).unwrap_or(o.node),
                    &o.path_of(file_key),
                    format!("failed to parse {what} > open {f}: {e}"),
                );
                Err(())
            }
        };
    }
    let Some(n) = o.get(inline_key) else { return Ok(None) };
    let lines = ctx.string_list(n, &o.path_of(inline_key)).ok_or(())?;
    if lines.is_empty() {
        return Ok(None);
    }
    Ok(Some(lines.into_iter().map(|(s, _, _)| s).collect::<Vec<_>>().join("\n").into_bytes()))
}

fn build_cert(ctx: &mut Ctx<'_>, n: &Node, p: &str) -> Option<TlsCertificate> {
    let o = lenient_obj(ctx, n, p, CERT_KEYS, &["ocspStapling", "oneTimeLoading", "buildChain"])?;
    let usage = match o.str(ctx, "usage").map(|u| u.to_ascii_lowercase()).as_deref() {
        None | Some("encipherment") => CertUsage::Encipherment,
        Some("verify") => CertUsage::Verify,
        Some("issue") => {
            ctx.unsupported(
                o.get("usage").unwrap_or(n),
                &o.path_of("usage"),
                "certificate usage \"issue\" (a CA that signs leaves per SNI); list a leaf certificate with usage \"encipherment\"",
            );
            return None;
        }
        Some(other) => {
            ctx.warn(
                o.get("usage").unwrap_or(n),
                &o.path_of("usage"),
                format!("unknown usage {other:?}; taken as \"encipherment\", as V2Ray 4.34 does"),
            );
            CertUsage::Encipherment
        }
    };
    let certificate = match pem_source(ctx, &o, "certificateFile", "certificate", "certificate") {
        Ok(Some(c)) => c,
        Ok(None) => {
            ctx.error(n, p, "both file and bytes are empty.");
            return None;
        }
        Err(()) => return None,
    };
    let key = pem_source(ctx, &o, "keyFile", "key", "key").ok()?;
    if usage == CertUsage::Encipherment
        && let Some(k) = &key
        && let Err(e) = tls::certified_key(&certificate, k)
    {
        ctx.warn(n, p, format!("ignoring invalid X509 key pair ({e}), as V2Ray 4.34 does"));
    }
    Some(TlsCertificate { certificate, key, usage })
}

fn build_sockopt(ctx: &mut Ctx<'_>, n: &Node, p: &str, stream: &mut StreamSettings) {
    let Some(o) = lenient_obj(ctx, n, p, &["mark", "tcpFastOpen", "tproxy", "acceptProxyProtocol"], LATER_SOCKOPT_KEYS)
    else {
        return;
    };
    if let Some(m) = o.int::<i32>(ctx, "mark", i32::MIN, i32::MAX)
        && m != 0
    {
        stream.sockopt.mark = Some(m as u32);
    }
    if let Some(b) = o.bool(ctx, "tcpFastOpen") {
        stream.sockopt.fast_open = Some(b);
    }
    if let Some(t) = o.str(ctx, "tproxy") {
        stream.sockopt.tproxy = match t.to_ascii_lowercase().as_str() {
            "tproxy" => crate::transport::sockopt::Tproxy::Tproxy,
            "redirect" => crate::transport::sockopt::Tproxy::Redirect,
            "off" | "" => crate::transport::sockopt::Tproxy::Off,
            _ => {
                ctx.warn(
                    o.get("tproxy").unwrap_or(n),
                    &o.path_of("tproxy"),
                    format!("unknown tproxy mode {t:?}; taken as \"off\", as V2Ray 4.34 does"),
                );
                crate::transport::sockopt::Tproxy::Off
            }
        };
    }
    if o.bool(ctx, "acceptProxyProtocol") == Some(true) {
        ctx.warn(
            o.get("acceptProxyProtocol").unwrap_or(n),
            &o.path_of("acceptProxyProtocol"),
            "ignored, as V2Ray 4.34 ignores it on tcp and ws listeners: set tcpSettings.acceptProxyProtocol or wsSettings.acceptProxyProtocol",
        );
    }
}
