//! `streamSettings` and the top-level `transport` as 4.34 parses them: refusals naming the key,
//! warnings for what 4.34 ignores, and the typed result.

use oxray::config::{Config, ConfigError, InboundProtocol, load_str};
use oxray::transport::{CertUsage, Security, Tproxy, TransportKind};

fn ok(text: &str) -> Config {
    load_str("t.json", text).unwrap_or_else(|e| panic!("expected to load:\n{text}\n{e}"))
}

fn err(text: &str) -> Vec<ConfigError> {
    match load_str("t.json", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

fn out(stream: &str) -> String {
    format!(r#"{{"outbounds": [{{"protocol": "freedom", "streamSettings": {stream}}}]}}"#)
}

fn vmess_out(extra: &str) -> String {
    format!(
        r#"{{"outbounds": [{{"protocol": "vmess", "settings": {{"vnext": [{{"address": "portal.example.com", "port": 443,
        "users": [{{"id": "27848739-7e62-4138-9fd3-098a63964b6b"}}]}}]{extra}}}}}]}}"#
    )
}

#[test]
fn network_names() {
    for (net, want_ws) in [("tcp", false), ("TCP", false), ("ws", true), ("WebSocket", true), ("WS", true)] {
        let c = ok(&out(&format!(r#"{{"network": "{net}"}}"#)));
        assert_eq!(matches!(c.outbounds[0].stream.network, TransportKind::Ws(_)), want_ws, "{net}");
    }
    for (net, name) in [
        ("kcp", "mKCP"),
        ("mkcp", "mKCP"),
        ("h2", "HTTP/2"),
        ("http", "HTTP/2"),
        ("quic", "QUIC"),
        ("domainsocket", "domain socket"),
        ("ds", "domain socket"),
    ] {
        let e = err(&out(&format!(r#"{{"network": "{net}"}}"#)));
        assert_eq!(e[0].path, "outbounds[0].streamSettings.network");
        assert!(
            e[0].message.contains(&format!("{net:?} ({name}) is a V2Ray 4.34 transport that oxray does not support")),
            "{}",
            e[0].message
        );
    }
    for net in ["grpc", "xhttp"] {
        let e = err(&out(&format!(r#"{{"network": "{net}"}}"#)));
        assert!(e[0].message.contains(&format!("unknown transport protocol: {net}")), "{}", e[0].message);
    }
    let e = err(&out(r#"{"network": 1}"#));
    assert!(e[0].message.contains("expected a string"), "{}", e[0].message);
}

#[test]
fn unknown_security_is_refused() {
    for sec in ["xtls", "reality", "tsl"] {
        let e = err(&out(&format!(r#"{{"security": "{sec}"}}"#)));
        assert_eq!(e[0].path, "outbounds[0].streamSettings.security");
        assert!(e[0].message.contains(&format!("security {sec:?} is not supported")), "{}", e[0].message);
    }
    let c = ok(&out(r#"{"security": "none"}"#));
    assert_eq!(c.outbounds[0].stream.security, Security::None);
    let c = ok(&out(r#"{"security": "TLS"}"#));
    assert!(matches!(c.outbounds[0].stream.security, Security::Tls(_)));
}

#[test]
fn tls_client_keys() {
    let c =
        ok(&out(r#"{"network": "ws", "security": "tls", "tlsSettings": {"serverName": "experiment:8357example.com",
        "allowInsecure": true, "alpn": "h2,http/1.1", "disableSystemRoot": true, "enableSessionResumption": true,
        "fingerprint": "chrome"}}"#));
    let Security::Tls(t) = &c.outbounds[0].stream.security else { panic!() };
    assert_eq!(t.server_name.as_deref(), Some("example.com"));
    assert!(t.allow_insecure && t.disable_system_root && t.session_resumption);
    assert_eq!(t.alpn, ["h2", "http/1.1"]);
    assert!(c.warnings.iter().any(|w| w.path.ends_with("tlsSettings.fingerprint")), "{:?}", c.warnings);
    // Spaces are kept, as 4.34's StringList does, with a warning.
    let c = ok(&out(r#"{"security": "tls", "tlsSettings": {"alpn": "h2, http/1.1"}}"#));
    let Security::Tls(t) = &c.outbounds[0].stream.security else { panic!() };
    assert_eq!(t.alpn, ["h2", " http/1.1"]);
    assert!(c.warnings.iter().any(|w| w.message.contains("without trimming")));
}

#[test]
fn tls_certificates() {
    let e = err(&out(
        r#"{"security": "tls", "tlsSettings": {"certificates": [{"certificateFile": "/nonexistent/x.crt"}]}}"#,
    ));
    assert!(e[0].message.contains("failed to parse certificate > open /nonexistent/x.crt"), "{}", e[0].message);
    let e = err(&out(r#"{"security": "tls", "tlsSettings": {"certificates": [{}]}}"#));
    assert!(e[0].message.contains("both file and bytes are empty."), "{}", e[0].message);
    let e = err(&out(
        r#"{"security": "tls", "tlsSettings": {"certificates": [{"certificate": ["x"], "usage": "issue"}]}}"#,
    ));
    assert!(e[0].message.contains("usage \"issue\"") && e[0].path.ends_with("certificates[0].usage"), "{:?}", e[0]);
    // Inline lines are joined with \n; garbage with a key loads with 4.34's warning.
    let c =
        ok(&out(r#"{"security": "tls", "tlsSettings": {"certificates": [{"certificate": ["a", "b"], "key": ["k"]},
        {"certificate": ["ca"], "usage": "VERIFY"}]}}"#));
    let Security::Tls(t) = &c.outbounds[0].stream.security else { panic!() };
    assert_eq!(t.certificates[0].certificate, b"a\nb");
    assert_eq!(t.certificates[1].usage, CertUsage::Verify);
    assert!(c.warnings.iter().any(|w| w.message.contains("ignoring invalid X509 key pair")), "{:?}", c.warnings);
    // A TLS inbound without any certificate would fail every handshake: refused at load.
    let e = err(r#"{"inbounds": [{"port": 1, "protocol": "vmess", "settings": {"clients": []},
        "streamSettings": {"security": "tls"}}]}"#);
    assert!(e[0].message.contains("needs a certificate"), "{}", e[0].message);
}

#[test]
fn ws_settings() {
    let c = ok(&out(
        r#"{"network": "ws", "wsSettings": {"path": "ray", "headers": {"host": "example.com", "x-test": "1"}}}"#,
    ));
    let TransportKind::Ws(w) = &c.outbounds[0].stream.network else { panic!() };
    assert_eq!(w.path, "/ray");
    assert_eq!(w.headers, [("Host".to_string(), "example.com".to_string()), ("X-Test".into(), "1".into())]);
    let c = ok(&out(r#"{"network": "ws", "wsSettings": {"Path": "/old"}}"#));
    let TransportKind::Ws(w) = &c.outbounds[0].stream.network else { panic!() };
    assert_eq!(w.path, "/old");
    let e = err(&out(r#"{"network": "ws", "wsSettings": {"headers": {"upgrade": "x"}}}"#));
    assert!(e[0].message.contains("duplicate header not allowed"), "{}", e[0].message);
    let e = err(&out(r#"{"network": "ws", "wsSettings": {"headers": {"X": ["a"]}}}"#));
    assert!(e[0].message.contains("expected a string"), "{}", e[0].message);
    let c = ok(&out(r#"{"network": "ws", "wsSettings": {"maxEarlyData": 2048}}"#));
    assert!(c.warnings.iter().any(|w| w.path.ends_with("wsSettings.maxEarlyData")));
}

#[test]
fn unused_settings_warn() {
    let c = ok(&out(
        r#"{"network": "tcp", "wsSettings": {"path": "/x"}, "quicSettings": {"security": "none"}, "tlsSettings": {"serverName": "a"}}"#,
    ));
    let paths: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
    for p in [
        "outbounds[0].streamSettings.wsSettings",
        "outbounds[0].streamSettings.quicSettings",
        "outbounds[0].streamSettings.tlsSettings",
    ] {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
    }
    assert_eq!(c.outbounds[0].stream.security, Security::None, "tlsSettings without security tls is plaintext");
    let e = err(&out(r#"{"kcpSettings": {"mtu": 100}}"#));
    assert!(e[0].message.contains("mtu"), "{}", e[0].message);
}

#[test]
fn tcp_http_header() {
    let c = ok(&out(r#"{"tcpSettings": {"header": {"type": "HTTP", "request": {"method": "POST", "path": ["/a"],
        "headers": {"x-custom": "v", "Host": "h2.test", "Accept": ["*/*"]}}, "response": {"status": "404"}}}}"#));
    let h = c.outbounds[0].stream.tcp.http_header.as_ref().unwrap();
    assert_eq!(h.request_method, "POST");
    assert_eq!(h.request_paths, ["/a"]);
    let names: Vec<&str> = h.request_headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Accept", "Host", "x-custom"], "sorted by name, as written");
    assert_eq!((h.response_status.as_str(), h.response_reason.as_str()), ("404", "OK"));
    let e = err(&out(r#"{"tcpSettings": {"header": {}}}"#));
    assert!(e[0].message.contains("type not found"), "{}", e[0].message);
    let e = err(&out(r#"{"tcpSettings": {"header": {"type": "tls"}}}"#));
    assert!(e[0].message.contains("unknown config id: tls"), "{}", e[0].message);
    let e = err(&out(r#"{"tcpSettings": {"header": {"type": "http", "request": {"headers": {"Host": null}}}}}"#));
    assert!(e[0].message.contains("empty HTTP header value: Host"), "{}", e[0].message);
    let c = ok(&out(
        r#"{"tcpSettings": {"header": {"type": "http", "response": {"headers": {"Date": "Thu, 01 Jan 1970"}}}}}"#,
    ));
    assert!(c.warnings.iter().any(|w| w.message.contains("splits this value at each comma")));
}

#[test]
fn sockopt_keys() {
    let c = ok(&out(r#"{"sockopt": {"mark": 77, "tcpFastOpen": false, "tproxy": "Redirect"}}"#));
    let s = c.outbounds[0].stream.sockopt;
    assert_eq!((s.mark, s.fast_open, s.tproxy), (Some(77), Some(false), Tproxy::Redirect));
    let c = ok(&out(r#"{"sockopt": {"tproxy": "bogus", "acceptProxyProtocol": true}}"#));
    assert_eq!(c.outbounds[0].stream.sockopt.tproxy, Tproxy::Off);
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    let e = err(&out(r#"{"sockopt": {"mark": "255"}}"#));
    assert!(e[0].message.contains("expected an integer"), "{}", e[0].message);
}

#[test]
fn top_level_transport_fills_missing_settings() {
    let c = ok(r#"{"transport": {"wsSettings": {"path": "/global"}, "quicSettings": {}},
        "inbounds": [{"port": 1, "protocol": "vmess", "settings": {"clients": []}, "streamSettings": {"network": "ws"}},
                     {"port": 2, "protocol": "vmess", "settings": {"clients": []}, "streamSettings": {"network": "ws", "wsSettings": {"path": "/own"}}}]}"#);
    let paths: Vec<String> = c
        .inbounds
        .iter()
        .map(|i| match &i.stream.network {
            TransportKind::Ws(w) => w.path.clone(),
            TransportKind::Tcp => "tcp".into(),
        })
        .collect();
    assert_eq!(paths, ["/global", "/own"]);
    assert!(matches!(c.inbounds[0].protocol, InboundProtocol::Vmess(_)));
}

#[test]
fn misplaced_stream_settings_warn_and_name_the_right_place() {
    let c = ok(&vmess_out(r#", "streamSettings": {"network": "ws"}"#));
    assert_eq!(c.outbounds[0].stream.network, TransportKind::Tcp, "ignored, as 4.34 does");
    let w = c.warnings.iter().find(|w| w.path == "outbounds[0].settings.streamSettings").expect("a warning");
    assert!(w.message.contains("belongs in outbounds[0], next to \"settings\""), "{}", w.message);
}
