//! The compatibility promise, case by case: each config is checked with `oxray test`, `oxray test
//! --strict` and `v2ray -test`. What V2Ray accepts, oxray accepts (warnings allowed, or a clear "not
//! supported yet"); what V2Ray rejects, oxray rejects; keys V2Ray ignores warn; `--strict` turns
//! warnings into errors.

mod common;

use std::path::Path;
use std::process::Command;

/// What a case must give.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// V2Ray: OK. oxray: OK with no warning, also under --strict.
    Clean,
    /// V2Ray: OK. oxray: OK with a warning containing this; --strict fails with it.
    Warn(&'static str),
    /// V2Ray: refuses. oxray: refuses, naming this.
    Refused(&'static str),
    /// V2Ray: OK. oxray: refuses with "not supported yet" and this (a key oxray does not implement).
    Unsupported(&'static str),
}

use Want::*;

const IN: &str = r#"{"tag": "in", "listen": "127.0.0.1", "port": 46990, "protocol": "dokodemo-door", "settings": {"address": "1.1.1.1", "port": 53}}"#;
const OUT: &str = r#"{"tag": "direct", "protocol": "freedom"}, {"tag": "block", "protocol": "blackhole"}"#;

/// A config from its routing object and extra top-level members.
fn cfg(routing: &str, extra: &str) -> String {
    let extra = if extra.is_empty() { String::new() } else { format!(",\n {extra}") };
    format!("{{\"inbounds\": [{IN}],\n \"outbounds\": [{OUT}],\n \"routing\": {routing}{extra}}}")
}

/// One dokodemo inbound with `extra` members (sniffing keys).
fn sniff(extra: &str) -> String {
    format!(
        "{{\"inbounds\": [{{\"listen\": \"127.0.0.1\", \"port\": 46990, \"protocol\": \"dokodemo-door\", \"settings\": {{\"address\": \"1.1.1.1\"}}, {extra}}}]}}"
    )
}

fn cases() -> Vec<(&'static str, String, Want)> {
    let rule = |r: &str| cfg(&format!("{{\"rules\": [{r}]}}"), "");
    vec![
        ("plain rule", rule(r#"{"type": "field", "port": 53, "outboundTag": "block"}"#), Clean),
        (
            "typo in a rule key",
            rule(r#"{"type": "field", "port": 53, "outboundTag": "block", "inboudTag": ["in"]}"#),
            Warn("did you mean \"inboundTag\"?"),
        ),
        (
            "typo in outboundTag key",
            rule(r#"{"type": "field", "port": 53, "outbondTag": "block"}"#),
            Refused("neither outboundTag nor balancerTag"),
        ),
        (
            "$schema",
            cfg("{}", r#""$schema": "https://example.invalid/v2ray.schema.json""#),
            Warn("\"$schema\" is ignored"),
        ),
        ("comment as key", cfg("{}", r#""//": "portal on the VPS""#), Warn("\"//\" is ignored")),
        (
            "old routing strategy",
            cfg(r#"{"strategy": "rules", "rules": [{"type": "field", "port": 53, "outboundTag": "block"}]}"#, ""),
            Warn("\"strategy\" is ignored"),
        ),
        (
            "dangling outboundTag",
            rule(r#"{"type": "field", "port": 53, "outboundTag": "blokc"}"#),
            Warn("go to the default outbound \"direct\""),
        ),
        ("rule without type", rule(r#"{"port": 53, "outboundTag": "block"}"#), Refused("unknown router rule type")),
        (
            "rule without condition",
            rule(r#"{"type": "field", "outboundTag": "block"}"#),
            Refused("no effective fields"),
        ),
        (
            "bad regexp",
            rule(r#"{"type": "field", "domain": ["regexp:("], "outboundTag": "block"}"#),
            Refused("invalid regexp"),
        ),
        (
            "inbound-level key of older docs",
            format!(
                "{{\"inbounds\": [{{\"tag\": \"in\", \"listen\": \"127.0.0.1\", \"port\": 46990, \"protocol\": \"dokodemo-door\", \"allowPassive\": false, \"settings\": {{\"address\": \"1.1.1.1\"}}}}], \"outbounds\": [{OUT}]}}"
            ),
            Warn("\"allowPassive\" is ignored"),
        ),
        (
            "misplaced ws path",
            "{\"outbounds\": [{\"protocol\": \"freedom\", \"streamSettings\": {\"network\": \"tcp\", \"path\": \"/ws\"}}]}".to_string(),
            Warn("belongs in wsSettings.path"),
        ),
        (
            "kcp settings with tcp",
            "{\"outbounds\": [{\"protocol\": \"freedom\", \"streamSettings\": {\"network\": \"tcp\", \"kcpSettings\": {\"mtu\": 1350}}}]}".to_string(),
            Warn("\"kcpSettings\" is ignored: oxray runs only tcp and ws"),
        ),
        (
            "tls settings without tls",
            "{\"outbounds\": [{\"protocol\": \"freedom\", \"streamSettings\": {\"tlsSettings\": {\"serverName\": \"a.example\"}}}]}".to_string(),
            Warn("ignored: \"security\" is not \"tls\""),
        ),
        (
            "typo in freedom settings",
            "{\"outbounds\": [{\"protocol\": \"freedom\", \"settings\": {\"redirct\": \"127.0.0.1:80\"}}]}".to_string(),
            Warn("did you mean \"redirect\"?"),
        ),
        (
            "refused outbound, no follow-on",
            "{\"outbounds\": [{\"tag\": \"direct\", \"protocol\": \"freedom\"}, {\"tag\": \"s\", \"protocol\": \"freedom\", \"settings\": {\"redirect\": \"nope\"}}], \"routing\": {\"rules\": [{\"type\": \"field\", \"port\": 1, \"outboundTag\": \"s\"}]}}".to_string(),
            Refused("invalid redirect"),
        ),
        ("balancer", cfg(r#"{"balancers": [{"tag": "b", "selector": ["dir", "blo"]}], "rules": [{"type": "field", "port": 53, "balancerTag": "b"}]}"#, ""), Clean),
        ("balancer and outboundTag", cfg(r#"{"balancers": [{"tag": "b", "selector": "dir"}], "rules": [{"type": "field", "port": 53, "outboundTag": "block", "balancerTag": "b"}]}"#, ""), Clean),
        ("unknown balancerTag", rule(r#"{"type": "field", "port": 53, "balancerTag": "nope"}"#), Refused("balancer nope not found")),
        ("balancer without tag", cfg(r#"{"balancers": [{"selector": ["b"]}]}"#, ""), Refused("empty balancer tag")),
        ("balancer without selector", cfg(r#"{"balancers": [{"tag": "b", "selector": []}]}"#, ""), Refused("empty selector list")),
        ("balancer strategy of later versions", cfg(r#"{"balancers": [{"tag": "b", "selector": ["dir"], "strategy": {"type": "leastPing"}}], "rules": [{"type": "field", "port": 53, "balancerTag": "b"}]}"#, ""), Warn("\"strategy\" is ignored")),
        ("balancer selecting nothing", cfg(r#"{"balancers": [{"tag": "b", "selector": ["Dir"]}], "rules": [{"type": "field", "port": 53, "balancerTag": "b"}]}"#, ""), Warn("selects no outbound")),
        ("rule with only balancerTag", cfg(r#"{"balancers": [{"tag": "b", "selector": ["dir"]}], "rules": [{"type": "field", "balancerTag": "b"}]}"#, ""), Refused("no effective fields")),
        ("attrs", rule(r#"{"type": "field", "attrs": "attrs[':method'] == 'GET'", "outboundTag": "block"}"#), Clean),
        ("domainMatcher of later versions", cfg(r#"{"domainMatcher": "mph", "rules": []}"#, ""), Warn("\"domainMatcher\" is ignored")),
        ("AlwaysIP", cfg(r#"{"domainStrategy": "AlwaysIP", "rules": []}"#, ""), Warn("does nothing in V2Ray 4.34")),
        ("dotless", rule(r#"{"type": "field", "domain": ["dotless:", "dotless:intra"], "outboundTag": "block"}"#), Clean),
        ("dotless with a dot", rule(r#"{"type": "field", "domain": ["dotless:a.b"], "outboundTag": "block"}"#), Refused("should not contain a dot")),
        ("empty full:", rule(r#"{"type": "field", "domain": ["full:"], "outboundTag": "block"}"#), Refused("empty full")),
        ("dynamic ports", r#"{"inbounds": [
            {"tag": "main", "listen": "127.0.0.1", "port": 46994, "protocol": "vmess", "settings": {"clients": [{"id": "27848739-7e62-4138-9fd3-098a63964b6b"}], "detour": {"to": "dynamic"}}},
            {"tag": "dynamic", "listen": "127.0.0.1", "port": "47000-47010", "protocol": "vmess", "settings": {"default": {"alterId": 32}}, "allocate": {"strategy": "random", "concurrency": 2, "refresh": 5}}]}"#.to_string(),
            Unsupported("remove \"detour\" from the VMess inbound")),
        ("dynamic ports rewritten as the message says", r#"{"inbounds": [
            {"tag": "main", "listen": "127.0.0.1", "port": 46994, "protocol": "vmess", "settings": {"clients": [{"id": "27848739-7e62-4138-9fd3-098a63964b6b"}]}},
            {"tag": "dynamic", "listen": "127.0.0.1", "port": "47000-47010", "protocol": "vmess", "settings": {"clients": [{"id": "27848739-7e62-4138-9fd3-098a63964b6b"}]}}]}"#.to_string(),
            Clean),
        (
            "unknown protocol",
            "{\"outbounds\": [{\"protocol\": \"teleport\"}]}".to_string(),
            Refused("unknown protocol"),
        ),
        (
            "empty bridge tag",
            "{\"reverse\": {\"bridges\": [{\"tag\": \"\", \"domain\": \"a.example\"}]}}".to_string(),
            Refused("bridge tag is empty"),
        ),
        ("sniffing enabled", sniff(r#""sniffing": {"enabled": true}"#), Clean),
        ("sniffing destOverride", sniff(r#""sniffing": {"enabled": true, "destOverride": ["http", "TLS", "ssl"]}"#), Clean),
        ("sniffing destOverride as a comma string", sniff(r#""sniffing": {"enabled": true, "destOverride": "http,tls"}"#), Clean),
        ("sniffing fakedns (v5/Xray)", sniff(r#""sniffing": {"enabled": true, "destOverride": ["http", "fakedns"]}"#), Refused("fakedns")),
        ("sniffing disabled still checks destOverride", sniff(r#""sniffing": {"enabled": false, "destOverride": ["quic"]}"#), Refused("quic")),
        ("legacy domainOverride", sniff(r#""domainOverride": ["http", "tls"]"#), Clean),
        ("legacy domainOverride, unknown value", sniff(r#""domainOverride": ["bittorrent"]"#), Refused("bittorrent")),
    ]
}

struct Run {
    code: i32,
    out: String,
}

fn run(cmd: &mut Command) -> Run {
    let o = cmd.output().expect("run");
    Run {
        code: o.status.code().unwrap_or(-1),
        out: format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
    }
}

fn oxray(file: &Path, strict: bool, assets: Option<&Path>) -> Run {
    let mut c = Command::new(common::oxray_bin());
    c.arg("test");
    if strict {
        c.arg("--strict");
    }
    c.arg("-c").arg(file);
    if let Some(a) = assets {
        c.env("V2RAY_LOCATION_ASSET", a);
    }
    run(&mut c)
}

/// Checks every case; returns the failures (empty = all good).
pub(crate) fn check(cases: &[(&'static str, String, Want)], assets: Option<&Path>, dir: &Path) -> Vec<String> {
    let v2ray = common::v2ray();
    let mut failures = Vec::new();
    for (i, (name, text, want)) in cases.iter().enumerate() {
        let f = common::write_file(dir, &format!("case{i}.json"), text);
        let ox = oxray(&f, false, assets);
        let strict = oxray(&f, true, assets);
        let mut fail = |what: String| failures.push(format!("{name}: {what}\n  config: {text}"));
        let warned = ox.out.contains("warning:");
        match want {
            Clean => {
                if ox.code != 0 || warned || strict.code != 0 {
                    fail(format!("want clean; oxray {} {:?}; strict {}", ox.code, ox.out, strict.code));
                }
            }
            Warn(frag) => {
                if ox.code != 0 || !ox.out.contains(frag) || !warned {
                    fail(format!("want a warning with {frag:?}; oxray {} {:?}", ox.code, ox.out));
                }
                if strict.code != 23 || !strict.out.contains(frag) || !strict.out.contains("error:") {
                    fail(format!("want --strict to fail with {frag:?}; got {} {:?}", strict.code, strict.out));
                }
            }
            Refused(frag) | Unsupported(frag) => {
                if ox.code != 23 || !ox.out.contains(frag) {
                    fail(format!("want refusal with {frag:?}; oxray {} {:?}", ox.code, ox.out));
                }
                if matches!(want, Unsupported(_)) && !ox.out.contains("not supported") {
                    fail(format!("want \"not supported\"; oxray {:?}", ox.out));
                }
            }
        }
        if let Some(v2ray) = &v2ray {
            let mut c = Command::new(v2ray);
            c.arg("-test").arg("-config").arg(&f);
            if let Some(a) = assets {
                c.env("V2RAY_LOCATION_ASSET", a);
            }
            let v = run(&mut c);
            let v2ray_ok = !matches!(want, Refused(_));
            if (v.code == 0) != v2ray_ok {
                failures.push(format!(
                    "{name}: V2Ray 4.34 disagrees with the table (exit {}): {}",
                    v.code,
                    v.out.trim()
                ));
            }
        }
    }
    failures
}

#[test]
fn oxray_and_v2ray_agree_on_what_loads() {
    let dir = common::temp_dir("compat");
    let failures = check(&cases(), None, &dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn lint_is_test_strict() {
    let dir = common::temp_dir("compat-lint");
    let f = common::write_file(&dir, "c.json", &cfg("{}", r#""$schema": "x""#));
    let r = run(Command::new(common::oxray_bin()).arg("lint").arg("-c").arg(&f));
    assert_eq!(r.code, 23, "{}", r.out);
    assert!(r.out.contains("1 warning(s) treated as errors"), "{}", r.out);
    let clean = common::write_file(&dir, "ok.json", &cfg("{}", ""));
    let r = run(Command::new(common::oxray_bin()).arg("lint").arg("-c").arg(&clean));
    assert_eq!((r.code, r.out.trim()), (0, "Configuration OK."));
}

/// The docs' bridge, with `rules` and `interconn` extras substituted.
fn bridge(rules: &str, interconn_extra: &str, top: &str) -> String {
    format!(
        r#"{{"reverse": {{"bridges": [{{"tag": "bridge", "domain": "test.v2fly.org"}}]}},
 "outbounds": [
   {{"tag": "out", "protocol": "freedom", "settings": {{"redirect": "127.0.0.1:8080"}}}},
   {{"protocol": "vmess", "settings": {{"vnext": [{{"address": "127.0.0.1", "port": 46991, "users": [{{"id": "27848739-7e62-4138-9fd3-098a63964b6b"}}]}}]}}, "tag": "interconn"{interconn_extra}}}],
 "routing": {{{top}"rules": [{rules}]}}}}"#
    )
}

/// The docs' portal, with `rules` and extra outbounds.
fn portal(rules: &str, outbounds: &str) -> String {
    format!(
        r#"{{"reverse": {{"portals": [{{"tag": "portal", "domain": "test.v2fly.org"}}]}},
 "inbounds": [
   {{"tag": "external", "listen": "127.0.0.1", "port": 46992, "protocol": "dokodemo-door", "settings": {{"address": "127.0.0.1", "port": 80, "network": "tcp"}}}},
   {{"listen": "127.0.0.1", "port": 46993, "tag": "interconn", "protocol": "vmess", "settings": {{"clients": [{{"id": "27848739-7e62-4138-9fd3-098a63964b6b"}}]}}}}],
 "outbounds": [{outbounds}],
 "routing": {{"rules": [{rules}]}}}}"#
    )
}

const TUNNEL_RULE: &str =
    r#"{"type": "field", "inboundTag": ["bridge"], "domain": ["full:test.v2fly.org"], "outboundTag": "interconn"}"#;
const BRIDGE_OUT: &str = r#"{"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"}"#;
const EXTERNAL: &str = r#"{"type": "field", "inboundTag": ["external"], "outboundTag": "portal"}"#;
const INTERCONN: &str = r#"{"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"}"#;

/// Each reverse-proxy mistake 4.34 runs silently broken gets its warning (and --strict fails); V2Ray
/// accepts every one of these configs.
#[test]
fn broken_reverse_configs_get_the_named_warning() {
    let ok_bridge = bridge(&format!("{TUNNEL_RULE}, {BRIDGE_OUT}"), "", "");
    let ok_portal = portal(&format!("{EXTERNAL}, {INTERCONN}"), "");
    let cases: Vec<(&'static str, String, Want)> = vec![
        ("bridge as in the docs", ok_bridge, Clean),
        ("portal as in the docs", ok_portal, Clean),
        (
            "bridge rules in the wrong order",
            bridge(&format!("{BRIDGE_OUT}, {TUNNEL_RULE}"), "", ""),
            Warn(
                "its tunnel (tcp:test.v2fly.org:0, inbound \"bridge\") is routed by routing.rules[0] to \"out\" (freedom)",
            ),
        ),
        (
            "bridge without the full: rule",
            bridge(BRIDGE_OUT, "", ""),
            Warn("\"domain\": [\"full:test.v2fly.org\"], \"outboundTag\": \"interconn\"} before routing.rules[0]"),
        ),
        (
            "bridge without rules",
            bridge(r#"{"type": "field", "port": 1, "outboundTag": "out"}"#, "", ""),
            Warn("is routed by no rule (so the default outbound) to \"out\" (freedom)"),
        ),
        (
            "mux on the tunnel's outbound",
            bridge(&format!("{TUNNEL_RULE}, {BRIDGE_OUT}"), r#", "mux": {"enabled": true}"#, ""),
            Warn("mux is enabled on \"interconn\", the outbound that carries bridge \"bridge\"'s tunnel"),
        ),
        (
            "bridge domain resolved through DNS",
            bridge(
                &format!(
                    r#"{{"type": "field", "ip": ["10.0.0.0/8"], "outboundTag": "out"}}, {TUNNEL_RULE}, {BRIDGE_OUT}"#
                ),
                "",
                r#""domainStrategy": "IPOnDemand", "#,
            ),
            Warn("tunnel target \"test.v2fly.org\" is looked up in DNS"),
        ),
        (
            "portal no rule routes to",
            portal(
                r#"{"type": "field", "inboundTag": ["external"], "outboundTag": "direct"}"#,
                r#"{"tag": "direct", "protocol": "freedom"}"#,
            ),
            Warn("portal \"portal\": no routing rule sends connections to it"),
        ),
        (
            "portal no inbound reaches",
            portal(
                r#"{"type": "field", "inboundTag": ["externl", "interconect"], "outboundTag": "portal"}"#,
                r#"{"tag": "direct", "protocol": "freedom"}"#,
            ),
            Warn("no inbound reaches it"),
        ),
        (
            "portal interconn not routed to the portal",
            portal(EXTERNAL, r#"{"tag": "direct", "protocol": "freedom"}"#),
            Warn(
                "arriving on the VMess inbound \"interconn\" is routed by no rule (so the default outbound) to \"direct\"",
            ),
        ),
    ];
    let dir = common::temp_dir("compat-reverse");
    let failures = check(&cases, None, &dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn route_explains_each_rule() {
    let dir = common::temp_dir("compat-route");
    let f = common::write_file(&dir, "b.json", &bridge(&format!("{BRIDGE_OUT}, {TUNNEL_RULE}"), "", ""));
    let r = run(Command::new(common::oxray_bin())
        .args(["route", "--inbound", "bridge", "-c"])
        .arg(&f)
        .arg("tcp:test.v2fly.org:0"));
    assert_eq!(r.code, 0, "{}", r.out);
    assert_eq!(
        r.out,
        "tcp:test.v2fly.org:0 from inbound \"bridge\":\n  routing.rules[0] (→ \"out\"): matches\n→ outbound \"out\" (freedom, outbounds[0]), by routing.rules[0]\n"
    );
    let r =
        run(Command::new(common::oxray_bin()).args(["route", "--inbound", "x", "-c"]).arg(&f).arg("tcp:1.2.3.4:80"));
    assert!(r.out.contains("routing.rules[1] (→ \"interconn\"): no: domain: the target is not a domain"), "{}", r.out);
    assert!(
        r.out.contains("routing.rules[0] (→ \"out\"): no: inboundTag: inbound \"x\" is not in the list"),
        "{}",
        r.out
    );
    assert!(
        r.out.ends_with("→ outbound \"out\" (freedom, outbounds[0]), no rule matches: the default outbound\n"),
        "{}",
        r.out
    );
    let r = run(Command::new(common::oxray_bin()).args(["route", "-c"]).arg(&f).arg("tcp:nope"));
    assert_eq!(r.code, 23, "{}", r.out);
}
