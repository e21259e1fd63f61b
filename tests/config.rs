//! Config loading through the public API: broken configs (exact path and line:column), merging,
//! case-insensitive keys, and every shipped example (checked against V2Ray itself when installed).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use oxray::config::{
    BlackholeResponse, ConfigError, DomainMatcher, InboundProtocol, LogLevel, LogTarget, OutboundProtocol,
    RoutingDomainStrategy, VmessSecurity, load_files, load_str,
};
use oxray::session::Address;

fn errors(text: &str) -> Vec<ConfigError> {
    match load_str("t.json", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

/// (name, config, expected path, expected line:col, expected message fragment)
type Case = (&'static str, &'static str, &'static str, (usize, usize), &'static str);

const BROKEN: &[Case] = &[
    (
        "syntax error",
        "{\n  \"log\": {\n    \"loglevel\" \"info\"\n  }\n}",
        "",
        (3, 16),
        "invalid character '\"' after object key",
    ),
    ("trailing comma", "{\n  \"inbounds\": [],\n}", "", (3, 1), "trailing commas are not allowed"),
    ("trailing comma in array", "{\"outbounds\": [{\"protocol\": \"freedom\"},]}", "", (1, 40), "trailing commas"),
    ("unterminated comment", "{\n  /* never closed\n}", "", (2, 3), "unterminated /* comment"),
    (
        "bad uuid",
        "{\n  \"inbounds\": [{\n    \"port\": 1, \"protocol\": \"vmess\",\n    \"settings\": {\"clients\": [{\"id\": \"not-a-uuid\"}]}\n  }]\n}",
        "inbounds[0].settings.clients[0].id",
        (4, 37),
        "invalid UUID",
    ),
    (
        "unknown protocol",
        "{\"outbounds\": [\n  {\"protocol\": \"mtproto\"}\n]}",
        "outbounds[0].protocol",
        (2, 16),
        "protocol \"mtproto\" is not supported yet",
    ),
    (
        "socks outbound without servers",
        "{\"outbounds\": [\n  {\"protocol\": \"socks\", \"settings\": {}}\n]}",
        "outbounds[0].settings.servers",
        (2, 37),
        "0 target server",
    ),
    (
        "shadowsocks stream cipher",
        "{\"inbounds\": [{\"port\": 1, \"protocol\": \"shadowsocks\",\n  \"settings\": {\"method\": \"aes-256-cfb\", \"password\": \"p\"}}]}",
        "inbounds[0].settings.method",
        (2, 26),
        "unknown cipher method: \"aes-256-cfb\" (stream ciphers",
    ),
    (
        "shadowsocks multi-user",
        "{\"inbounds\": [{\"port\": 1, \"protocol\": \"shadowsocks\",\n  \"settings\": {\"method\": \"aes-128-gcm\", \"password\": \"p\", \"clients\": []}}]}",
        "inbounds[0].settings.clients",
        (2, 69),
        "multi-user \"clients\"",
    ),
    (
        "trojan client without password",
        "{\"inbounds\": [{\"port\": 1, \"protocol\": \"trojan\",\n  \"settings\": {\"clients\": [{\"email\": \"a@b\"}]}}]}",
        "inbounds[0].settings.clients[0].password",
        (2, 28),
        "password is empty",
    ),
    (
        "vless without decryption none",
        "{\"inbounds\": [{\"port\": 1, \"protocol\": \"vless\",\n  \"settings\": {\"clients\": []}}]}",
        "inbounds[0].settings.decryption",
        (2, 15),
        "please add/set \"decryption\":\"none\"",
    ),
    (
        "unknown socks auth",
        "{\"inbounds\": [{\"port\": 1, \"protocol\": \"socks\", \"settings\": {\"auth\": \"gssapi\"}}]}",
        "inbounds[0].settings.auth",
        (1, 69),
        "unknown socks auth \"gssapi\"",
    ),
    (
        "made-up protocol",
        "{\"outbounds\": [{\"protocol\": \"teleport\"}]}",
        "outbounds[0].protocol",
        (1, 29),
        "unknown protocol \"teleport\"",
    ),
    (
        "bad port range",
        "{\"inbounds\": [{\n  \"port\": \"2000-1000\",\n  \"protocol\": \"dokodemo-door\",\n  \"settings\": {\"address\": \"1.1.1.1\"}\n}]}",
        "inbounds[0].port",
        (2, 11),
        "invalid port range 2000 -> 1000",
    ),
    (
        "rule without type",
        "{\"outbounds\": [{\"protocol\": \"freedom\", \"tag\": \"a\"}],\n \"routing\": {\"rules\": [{\"port\": 1, \"outboundTag\": \"a\"}]}}",
        "routing.rules[0].type",
        (2, 24),
        "unknown router rule type",
    ),
    (
        "rule without conditions",
        "{\"outbounds\": [{\"protocol\": \"freedom\", \"tag\": \"a\"}],\n \"routing\": {\"rules\": [\n   {\"type\": \"field\", \"outboundTag\": \"a\"}]}}",
        "routing.rules[0]",
        (3, 4),
        "this rule has no effective fields",
    ),
    (
        "empty bridge tag",
        "{\"reverse\": {\"bridges\": [\n  {\"tag\": \"\", \"domain\": \"x.example\"}\n]}}",
        "reverse.bridges[0].tag",
        (2, 11),
        "bridge tag is empty",
    ),
    (
        "missing portal domain",
        "{\"reverse\": {\"portals\": [\n  {\"tag\": \"p\"}\n]}}",
        "reverse.portals[0].domain",
        (2, 3),
        "portal domain is empty",
    ),
    (
        "dokodemo network with a space",
        "{\"inbounds\": [{\"port\": 5353, \"protocol\": \"dokodemo-door\",\n  \"settings\": {\"address\": \"8.8.8.8\", \"port\": 53, \"network\": \"tcp, udp\"}}]}",
        "inbounds[0].settings.network",
        (2, 61),
        "unknown network \" udp\"",
    ),
    (
        "geoip rule",
        "{\"outbounds\": [{\"protocol\": \"blackhole\", \"tag\": \"b\"}],\n \"routing\": {\"rules\": [{\"type\": \"field\", \"outboundTag\": \"b\",\n   \"ip\": [\"10.0.0.0/8\", \"geoip:cn\"]}]}}",
        "routing.rules[0].ip[1]",
        (3, 25),
        "cannot find geoip.dat",
    ),
    (
        "geosite rule",
        "{\"outbounds\": [{\"protocol\": \"blackhole\", \"tag\": \"b\"}],\n \"routing\": {\"rules\": [{\"type\": \"field\", \"outboundTag\": \"b\",\n   \"domain\": \"geosite:cn\"}]}}",
        "routing.rules[0].domain",
        (3, 14),
        "cannot find geosite.dat",
    ),
    (
        "bad regexp",
        "{\"outbounds\": [{\"protocol\": \"blackhole\", \"tag\": \"b\"}],\n \"routing\": {\"rules\": [{\"type\": \"field\", \"outboundTag\": \"b\", \"domain\": [\"regexp:(\"]}]}}",
        "routing.rules[0].domain[0]",
        (2, 73),
        "invalid regexp",
    ),
    (
        "bad rule port",
        "{\"outbounds\": [{\"protocol\": \"blackhole\", \"tag\": \"b\"}],\n \"routing\": {\"rules\": [{\"type\": \"field\", \"outboundTag\": \"b\", \"port\": \"53,9-1\"}]}}",
        "routing.rules[0].port",
        (2, 70),
        "invalid port range 9 -> 1",
    ),
    (
        "bad redirect",
        "{\"outbounds\": [{\"protocol\": \"freedom\", \"settings\": {\"redirect\": \"127.0.0.1\"}}]}",
        "outbounds[0].settings.redirect",
        (1, 65),
        "missing port",
    ),
    (
        "DoH server without a host",
        "{\"dns\": {\"servers\": [\"https:///dns-query\"]}}",
        "dns.servers[0]",
        (1, 22),
        "DNS-over-HTTPS URL \"https:///dns-query\"",
    ),
    (
        "DNS server host:port",
        "{\"dns\": {\"servers\": [\"8.8.8.8:53\"]}}",
        "dns.servers[0]",
        (1, 22),
        "first path segment",
    ),
    (
        "hosts value empty",
        "{\"dns\": {\"hosts\": {\"a.test\": \"\"}}}",
        "dns.hosts.a.test",
        (1, 30),
        "neither IP address nor proxied domain",
    ),
    (
        "kcp transport",
        "{\"outbounds\": [{\"protocol\": \"freedom\", \"streamSettings\": {\"network\": \"kcp\"}}]}",
        "outbounds[0].streamSettings.network",
        (1, 70),
        "\"kcp\" (mKCP) is a V2Ray 4.34 transport that oxray does not support",
    ),
    (
        "mux concurrency too high",
        "{\"outbounds\": [{\"protocol\": \"freedom\", \"mux\": {\"enabled\": true, \"concurrency\": 2000}}]}",
        "outbounds[0].mux.concurrency",
        (1, 80),
        "1..=1024",
    ),
    (
        "duplicate email",
        "{\"inbounds\": [{\"port\": 1, \"protocol\": \"vmess\", \"settings\": {\"clients\": [\n {\"id\": \"27848739-7e62-4138-9fd3-098a63964b6b\", \"email\": \"a@x\"},\n {\"id\": \"b831381d-6324-4d53-ad4f-8cda48b30811\", \"email\": \"A@X\"}]}}]}",
        "inbounds[0].settings.clients[1].email",
        (3, 58),
        "duplicate user email",
    ),
    (
        "portal tag is an outbound tag",
        "{\"reverse\": {\"portals\": [{\"tag\": \"p\", \"domain\": \"d\"}]},\n \"outbounds\": [{\"protocol\": \"freedom\", \"tag\": \"p\"}]}",
        "outbounds[0].tag",
        (2, 47),
        "portal tag \"p\" is also an outbound tag",
    ),
    (
        "unix socket listen",
        "{\"inbounds\": [{\"listen\": \"/run/x.sock\", \"protocol\": \"vmess\", \"port\": 1}]}",
        "inbounds[0].listen",
        (1, 26),
        "unix domain socket",
    ),
    (
        "balancerTag",
        "{\"routing\": {\"rules\": [{\"type\": \"field\", \"port\": 1, \"balancerTag\": \"b\"}]}}",
        "routing.rules[0].balancerTag",
        (1, 68),
        "balancer b not found",
    ),
    (
        "port out of range",
        "{\"outbounds\": [{\"protocol\": \"vmess\", \"settings\": {\"vnext\": [{\"address\": \"a\", \"port\": 70000,\n \"users\": [{\"id\": \"27848739-7e62-4138-9fd3-098a63964b6b\"}]}]}}]}",
        "outbounds[0].settings.vnext[0].port",
        (1, 86),
        "expected an integer in 0..=65535, got 70000",
    ),
    ("api without tag", "{\"api\": {\"services\": [\"StatsService\"]}}", "api.tag", (1, 9), "API tag can't be empty."),
    (
        "api service oxray does not implement",
        "{\"api\": {\"tag\": \"api\", \"services\": [\"HandlerService\"]}}",
        "api.services[0]",
        (1, 37),
        "API service \"HandlerService\" is not implemented by oxray (only \"StatsService\" is)",
    ),
];

/// Keys and values V2Ray 4.34 ignores: the config loads, and a warning names the place.
const WARNED: &[Case] = &[
    (
        "unknown api service",
        "{\"api\": {\"tag\": \"api\", \"services\": [\"Nope\"]}}",
        "api.services[0]",
        (1, 37),
        "unknown API service \"Nope\" is ignored (as V2Ray 4.34 does)",
    ),
    (
        "alwaysip",
        "{\"routing\": {\"domainStrategy\": \"AlwaysIP\"}}",
        "routing.domainStrategy",
        (1, 32),
        "does nothing in V2Ray 4.34",
    ),
    (
        "dangling outboundTag",
        "{\n\"outbounds\": [{\"protocol\": \"freedom\", \"tag\": \"direct\"}],\n\"routing\": {\"rules\": [\n  {\"type\": \"field\", \"port\": 53, \"outboundTag\": \"direkt\"}\n]}}",
        "routing.rules[0].outboundTag",
        (4, 48),
        "outboundTag \"direkt\" names no outbound and no portal",
    ),
    (
        "unknown key with suggestion",
        "{\"outbounds\": [{\"protocol\": \"freedom\",\n   \"tga\": \"x\"}]}",
        "outbounds[0].tga",
        (2, 4),
        "unknown key \"tga\" is ignored (as V2Ray 4.34 does); did you mean \"tag\"?",
    ),
    ("unknown top-level key", "{\n  \"routeing\": {}\n}", "routeing", (2, 3), "did you mean \"routing\"?"),
    (
        "schema and comment keys",
        "{\"$schema\": \"x\",\n \"//\": \"a comment\"}",
        "//",
        (2, 2),
        "ignored (V2Ray 4.34 ignores it too)",
    ),
    (
        "old routing strategy",
        "{\"routing\": {\"strategy\": \"rules\", \"rules\": []}}",
        "routing.strategy",
        (1, 14),
        "unknown key \"strategy\" is ignored",
    ),
    (
        "misplaced ws path",
        "{\"outbounds\": [{\"protocol\": \"freedom\", \"streamSettings\": {\"path\": \"/ws\"}}]}",
        "outbounds[0].streamSettings.path",
        (1, 59),
        "belongs in wsSettings.path",
    ),
    (
        "settings of a transport not in use",
        "{\"outbounds\": [{\"protocol\": \"freedom\", \"streamSettings\": {\"network\": \"tcp\", \"kcpSettings\": {\"mtu\": 1350}}}]}",
        "outbounds[0].streamSettings.kcpSettings",
        (1, 92),
        "\"kcpSettings\" is ignored: oxray runs only tcp and ws",
    ),
    (
        "tls settings without tls",
        "{\"outbounds\": [{\"protocol\": \"freedom\", \"streamSettings\": {\"tlsSettings\": {\"serverName\": \"a\"}}}]}",
        "outbounds[0].streamSettings.tlsSettings",
        (1, 74),
        "ignored: \"security\" is not \"tls\"",
    ),
];

#[test]
fn ignored_keys_load_with_warnings_that_name_the_place() {
    let mut failures = Vec::new();
    for (name, text, path, loc, fragment) in WARNED {
        let cfg = match load_str("t.json", text) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: refused: {e}"));
                continue;
            }
        };
        let hit =
            cfg.warnings.iter().find(|w| w.path == *path && w.location == Some(*loc) && w.message.contains(fragment));
        if hit.is_none() {
            failures.push(format!("{name}: want {path} at {loc:?} with {fragment:?}; got {:#?}", cfg.warnings));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_refused_outbound_gives_no_follow_on_warning() {
    let text = r#"{"outbounds": [{"protocol": "freedom", "tag": "a"}, {"protocol": "mtproto", "tag": "s"}],
      "routing": {"rules": [{"type": "field", "port": 1, "outboundTag": "s"}]}}"#;
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "outbounds[1].protocol");
}

#[test]
fn broken_configs_report_path_and_position() {
    let mut failures = Vec::new();
    for (name, text, path, loc, fragment) in BROKEN {
        let errs = errors(text);
        let hit = errs.iter().find(|e| e.path == *path && e.location == Some(*loc) && e.message.contains(fragment));
        if hit.is_none() {
            failures.push(format!("{name}: want {path} at {loc:?} with {fragment:?}; got {errs:#?}"));
        }
        for e in &errs {
            assert_eq!(e.file, "t.json", "{name}");
            assert!(e.location.is_some(), "{name}: every error has a position: {e:?}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn bad_uuid_is_never_echoed() {
    let secret = "27848739-7e62-4138-9fd3-ZZZZZZZZZZZZ";
    let text = format!(
        r#"{{"inbounds": [{{"port": 1, "protocol": "vmess", "settings": {{"clients": [{{"id": "{secret}"}}]}}}}]}}"#
    );
    let err = load_str("t.json", &text).unwrap_err();
    assert!(!err.to_string().contains(secret));
    let ok = load_str("t.json", &text.replace("ZZZZZZZZZZZZ", "098a63964b6b")).unwrap();
    assert!(!format!("{ok:?}").contains("098a63964b6b"), "Debug output must not show the id");
}

#[test]
fn all_errors_are_reported_together() {
    let text = r#"{
  "inbounds": [{"port": "x", "protocol": "mtproto"}],
  "outbounds": [{"protocol": "freedom", "tag": "out", "settings": {"redirect": "nope"}}],
  "routing": {"rules": [{"type": "field", "outboundTag": "gone", "ip": "geoip:cn"}]},
  "reverse": {"bridges": [{"tag": "", "domain": ""}]}
}"#;
    let errs = errors(text);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "inbounds[0].port",
        "inbounds[0].protocol",
        "outbounds[0].settings.redirect",
        "routing.rules[0].ip",
        "reverse.bridges[0].tag",
        "reverse.bridges[0].domain",
    ] {
        assert!(paths.contains(&want), "missing {want} in {errs:#?}");
    }
    assert_eq!(paths.first(), Some(&"inbounds[0].port"), "errors come in file order");
    let shown = oxray::config::ConfigErrors(errs).to_string();
    assert!(shown.contains("t.json:2:25: inbounds[0].port: "), "{shown}");
}

#[test]
fn keys_and_names_are_case_insensitive_like_go() {
    let text = r#"{
  "Inbounds": [{"TAG": "in", "Port": "10800", "Listen": "localhost", "Protocol": "Dokodemo-Door",
                "Settings": {"Address": "example.com", "port": 80, "Network": "TCP"}}],
  "outbounds": [{"Protocol": "Freedom", "tag": "first", "tag": "direct"},
                {"protocol": "BLACKHOLE", "tag": "b", "settings": {"response": {"type": "HTTP"}}}],
  "routing": {"domainStrategy": "ipifnonmatch",
              "rules": [{"type": "Field", "inboundTag": "x,in", "domains": ["domain:example.com", "plain", "full:a.b"],
                         "outboundTag": "direct"}]},
  "log": {"LogLevel": "DEBUG"}
}"#;
    let c = load_str("t.json", text).unwrap();
    assert_eq!(c.inbounds[0].tag.as_deref(), Some("in"));
    assert_eq!(c.inbounds[0].listen.to_string(), "127.0.0.1");
    assert_eq!((c.inbounds[0].port.first, c.inbounds[0].port.last), (10800, 10800));
    let InboundProtocol::Dokodemo(d) = &c.inbounds[0].protocol else { panic!() };
    assert_eq!(d.address, Some(Address::parse("example.com")));
    assert!(d.network.tcp && !d.network.udp);
    assert_eq!(c.outbounds[0].tag.as_deref(), Some("direct"), "last duplicate key wins");
    let OutboundProtocol::Blackhole(b) = &c.outbounds[1].protocol else { panic!() };
    assert_eq!(b.response, BlackholeResponse::Http);
    assert_eq!(c.routing.domain_strategy, RoutingDomainStrategy::IpIfNonMatch);
    let r = &c.routing.rules[0];
    assert_eq!(r.inbound_tag, ["x", "in"]);
    assert_eq!(
        r.domain,
        [
            DomainMatcher::Domain("example.com".into()),
            DomainMatcher::Keyword("plain".into()),
            DomainMatcher::Full("a.b".into())
        ]
    );
    assert_eq!(c.log.level, LogLevel::Debug);
    assert_eq!(c.log.access, LogTarget::Console, "a log object without access logs to the console");
}

#[test]
fn defaults_follow_v2ray_4_34() {
    let text = r#"{
  "inbounds": [{"port": 1, "protocol": "vmess", "settings": {"clients": [{"id": "27848739-7e62-4138-9fd3-098a63964b6b"}]}}],
  "outbounds": [
    {"protocol": "vmess", "mux": {"enabled": true},
     "settings": {"vnext": [{"address": "::1", "port": 2, "users": [
        {"id": "27848739-7e62-4138-9fd3-098a63964b6b", "security": "whatever"},
        {"id": "27848739-7e62-4138-9fd3-098a63964b6b", "security": "zero"}]}]}},
    {"protocol": "freedom", "tag": "f", "mux": {"enabled": true, "concurrency": -1}, "settings": {"redirect": ":8080"}},
    {"protocol": "freedom", "tag": "g", "settings": {"redirect": "[::1]:80", "domainStrategy": "UseIPv4"}}
  ],
  "policy": {"levels": {"0": {"connIdle": 10, "bufferSize": -1}, "1": {"bufferSize": 0}, "2": {"bufferSize": 4}}},
  "reverse": {"portals": [{"tag": "p", "domain": "d", "sessionsPerTunnel": 4, "heartbeatSeconds": 5}],
              "bridges": [{"tag": "b", "domain": "d"}]}
}"#;
    let c = load_str("t.json", text).unwrap();
    assert_eq!(c.log.access, LogTarget::Off, "no log object: access log off");
    assert!(c.inbounds[0].listen.is_unspecified());
    let OutboundProtocol::Vmess(v) = &c.outbounds[0].protocol else { panic!() };
    assert_eq!(v.servers[0].users[0].security, VmessSecurity::Auto);
    assert_eq!(v.servers[0].users[1].security, VmessSecurity::Zero);
    assert_eq!(v.servers[0].users[0].alter_id, 0);
    assert_eq!(c.outbounds[0].mux.map(|m| m.concurrency), Some(8));
    assert_eq!(c.outbounds[1].mux, None);
    let OutboundProtocol::Freedom(f) = &c.outbounds[1].protocol else { panic!() };
    assert_eq!((f.redirect_host.clone(), f.redirect_port), (None, 8080));
    let OutboundProtocol::Freedom(g) = &c.outbounds[2].protocol else { panic!() };
    assert_eq!(g.redirect_host, Some(Address::parse("::1")));
    assert_eq!(c.policy.level(0).conn_idle, Duration::from_secs(10));
    assert_eq!(c.policy.level(0).handshake, Duration::from_secs(60));
    assert_eq!(c.policy.level(0).buffer_size, None);
    assert_eq!(c.policy.level(1).buffer_size, Some(0));
    assert_eq!(c.policy.level(2).buffer_size, Some(4096));
    assert_eq!(c.policy.level(9).uplink_only, Duration::from_secs(1));
    let p = &c.reverse.portals[0];
    assert_eq!(p.internal_domain, "reverse.internal.v2fly.org");
    assert_eq!((p.tuning.sessions_per_tunnel, p.tuning.drain_after), (4, 256));
    assert_eq!(p.tuning.heartbeat, Duration::from_secs(5));
    assert_eq!(c.reverse.bridges[0].tuning.sessions_per_tunnel, 16);
    assert_eq!(c.reverse.bridges[0].tuning.silence, None, "silence follows the portal's measured period");
    assert_eq!(c.reverse.bridges[0].tuning.connect_timeout, Duration::from_secs(4));
}

#[test]
fn bridge_liveness_keys() {
    let text =
        r#"{"reverse": {"bridges": [{"tag": "b", "domain": "d", "silenceSeconds": 9, "connectTimeoutSeconds": 2}]}}"#;
    let c = load_str("t.json", text).unwrap();
    assert_eq!(c.reverse.bridges[0].tuning.silence, Some(Duration::from_secs(9)));
    assert_eq!(c.reverse.bridges[0].tuning.connect_timeout, Duration::from_secs(2));
    let bad = errors(
        r#"{"reverse": {"bridges": [{"tag": "b", "domain": "d", "silenceSeconds": 0, "connectTimeoutSeconds": 301, "heartbeatSeconds": 0}]}}"#,
    );
    let text: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
    assert!(text.iter().any(|e| e.contains("reverse.bridges[0].silenceSeconds")), "{text:?}");
    assert!(text.iter().any(|e| e.contains("reverse.bridges[0].connectTimeoutSeconds")), "{text:?}");
    // Out of range was accepted before (0 s made the heartbeat ticker panic).
    assert!(text.iter().any(|e| e.contains("reverse.bridges[0].heartbeatSeconds")), "{text:?}");
}

#[test]
fn legacy_keys_come_first() {
    let text = r#"{
  "port": 1080,
  "inbound": {"protocol": "dokodemo-door", "settings": {"address": "1.1.1.1", "port": 53}},
  "inbounds": [{"port": 2, "protocol": "dokodemo-door", "settings": {"address": "1.1.1.1"}}],
  "outbound": {"protocol": "freedom", "tag": "legacy"},
  "outboundDetour": [{"protocol": "blackhole", "tag": "detour"}],
  "outbounds": [{"protocol": "freedom", "tag": "new"}]
}"#;
    let c = load_str("t.json", text).unwrap();
    assert_eq!(c.inbounds[0].port.first, 1080);
    assert_eq!(c.inbounds[0].path, "inbound");
    let tags: Vec<_> = c.outbounds.iter().map(|o| o.tag.clone().unwrap_or_default()).collect();
    assert_eq!(tags, ["legacy", "detour", "new"]);
}

#[test]
fn files_merge_like_v2ray() {
    let dir = common::temp_dir("config-merge");
    let base = common::write_file(
        &dir,
        "base.json",
        r#"{
  "log": {"loglevel": "error"},
  "inbounds": [{"tag": "a", "port": 1, "protocol": "dokodemo-door", "settings": {"address": "1.1.1.1"}},
               {"tag": "b", "port": 2, "protocol": "dokodemo-door", "settings": {"address": "1.1.1.1"}}],
  "outbounds": [{"tag": "direct", "protocol": "freedom"}],
  "routing": {"rules": [{"type": "field", "port": 1, "outboundTag": "direct"}]}
}"#,
    );
    let over = common::write_file(
        &dir,
        "over.json",
        r#"{
  "log": {"loglevel": "debug"},
  "inbounds": [{"tag": "b", "port": 22, "protocol": "dokodemo-door", "settings": {"address": "1.1.1.1"}}],
  "outbounds": [{"tag": "block", "protocol": "blackhole"}]
}"#,
    );
    let tail = common::write_file(&dir, "99-tail.json", r#"{"outbounds": [{"tag": "last", "protocol": "freedom"}]}"#);
    let c = load_files(&[&base, &over, &tail]).unwrap();
    assert_eq!(c.log.level, LogLevel::Debug);
    let ports: Vec<u16> = c.inbounds.iter().map(|i| i.port.first).collect();
    assert_eq!(ports, [1, 22], "a single inbound replaces the one with its tag");
    let tags: Vec<_> = c.outbounds.iter().map(|o| o.tag.clone().unwrap_or_default()).collect();
    assert_eq!(tags, ["block", "direct", "last"], "prepended, unless the file name says tail");
    assert_eq!(c.routing.rules.len(), 1, "routing kept from the first file");

    // Errors name the file they are in.
    let bad = common::write_file(&dir, "bad.json", "{\n  \"outbounds\": [{\"protocol\": \"mtproto\"}]\n}");
    let errs = load_files(&[&base, &bad]).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].file.ends_with("bad.json"));
    assert_eq!(errs[0].location, Some((2, 30)));
    let missing = load_files(&[dir.join("nope.json")]).unwrap_err();
    assert!(missing.0[0].message.contains("cannot read"));
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let files = json_files(&dir);
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        match load_files(&[f]) {
            Err(e) => panic!("{} does not load:\n{e}", f.display()),
            // The examples (and the seed configs, which are these files with other ports) are clean:
            // no ignored key, no reverse-proxy lint.
            Ok(c) => assert!(c.warnings.is_empty(), "{} has warnings: {:#?}", f.display(), c.warnings),
        }
    }
    let portal = load_files(&[dir.join("portal.json")]).unwrap();
    assert!(portal.outbounds.is_empty(), "the seed portal has no outbounds: the portal is the default");
    assert_eq!(portal.reverse.portals[0].domain, "test.v2fly.org");
    let bridge = load_files(&[dir.join("bridge.json")]).unwrap();
    assert_eq!(bridge.outbounds[0].tag.as_deref(), Some("out"));
    assert_eq!(bridge.routing.rules[0].domain, [DomainMatcher::Full("test.v2fly.org".into())]);
    let both = load_files(&[dir.join("both.json")]).unwrap();
    assert_eq!((both.reverse.portals.len(), both.reverse.bridges.len()), (1, 1));
}

#[test]
fn interop_configs_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/interop");
    let files = json_files(&dir);
    assert_eq!(files.len(), 4);
    for f in &files {
        if let Err(e) = load_files(&[f]) {
            panic!("{} does not load:\n{e}", f.display());
        }
    }
}

#[test]
fn v2ray_accepts_the_examples() {
    let Some(v2ray) = common::v2ray() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = json_files(&root.join("examples"));
    files.extend(json_files(&root.join("tests/data/interop")));
    for f in files {
        let out = std::process::Command::new(&v2ray).arg("-test").arg("-config").arg(&f).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("Configuration OK"), "V2Ray refuses {}:\n{text}", f.display());
    }
}

#[test]
fn seed_reverse_object_fragment_loads() {
    // The ReverseObject example of reverse-seed.md, as given, under "reverse".
    let text = r#"{"reverse": {
    "bridges": [
        {
            "tag": "bridge",
            "domain": "test.v2fly.org"
        }
    ],
    "portals": [
        {
            "tag": "portal",
            "domain": "test.v2fly.org"
        }
    ]
}}"#;
    let c = load_str("seed.json", text).unwrap();
    assert_eq!(c.reverse.bridges[0].tag, "bridge");
    assert_eq!(c.reverse.portals[0].tag, "portal");
}

#[test]
fn doubtful_values_load_with_warnings_that_name_the_place() {
    let text = "{\n  \"log\": {\"loglevel\": \"verbose\"},\n  \"outbounds\": [{\"protocol\": \"vmess\", \"settings\": {\"vnext\": [{\"address\": \"127.0.0.1\", \"port\": 1, \"users\": [{\"id\": \"27848739-7e62-4138-9fd3-098a63964b6b\", \"security\": \"aes-256-cfb\"}]}]}}]\n}\n";
    let cfg = oxray::config::load_str("w.json", text).expect("loads");
    let all: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all[0].starts_with("w.json:2:") && all[0].contains("log.loglevel") && all[0].contains("verbose"),
        "{all:?}"
    );
    assert!(all[1].contains("outbounds[0].settings.vnext[0].users[0].security") && all[1].contains("auto"), "{all:?}");
}

#[test]
fn ops_is_an_oxray_extension_with_loopback_by_default() {
    let c = load_str("t.json", r#"{"ops": {"listen": "127.0.0.1:9090", "token": "zq9x"}}"#).unwrap();
    let ops = c.ops.expect("ops");
    assert_eq!(ops.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(ops.token.as_deref(), Some("zq9x"));
    assert!(!format!("{ops:?}").contains("zq9x"), "the token is redacted in Debug");
    assert!(load_str("t.json", "{}").unwrap().ops.is_none());
    let e = errors(r#"{"ops": {"listen": "0.0.0.0:9090"}}"#);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].path, "ops.listen");
    assert!(e[0].message.contains("allowRemote") && e[0].location == Some((1, 20)), "{e:?}");
    assert!(load_str("t.json", r#"{"ops": {"listen": "0.0.0.0:9090", "allowRemote": true}}"#).is_ok());
    // A typo in an oxray-only object follows the key policy: a warning with the likely key.
    let typo = load_str("t.json", r#"{"ops": {"listen": "127.0.0.1:9090", "tokn": "x"}}"#).unwrap();
    assert!(typo.warnings.iter().any(|w| w.message.contains("did you mean \"token\"")), "{:?}", typo.warnings);
    let e = errors(r#"{"ops": {"listen": "nonsense"}}"#);
    assert!(e[0].message.contains("host:port"), "{e:?}");
    // Never shared with a proxy listener.
    let shared = r#"{"ops": {"listen": "127.0.0.1:9090"}, "inbounds": [{"listen": "127.0.0.1", "port": 9090,
        "protocol": "dokodemo-door", "settings": {"address": "1.2.3.4", "port": 1}}]}"#;
    let e = errors(shared);
    assert!(e.iter().any(|e| e.path == "ops.listen" && e.message.contains("inbounds[0]")), "{e:?}");
}
