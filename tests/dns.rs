//! The `dns` object and the `dns` outbound, run as real processes against DNS responders on 127.0.0.1,
//! and the same configs on V2Ray 4.34: both must take the same routing decisions (read from their
//! access logs), dial the same addresses and give the same answers.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    connect_when_listening, decision, free_port, impls, local, probe, spawn_impl, temp_dir, v2ray, wait_port_async,
};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use oxray::dns::responder::{Rec, Responder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rec(ips: &[&str]) -> Rec {
    Rec { ips: ips.iter().map(|s| s.parse().unwrap()).collect(), ttl: 300, ..Default::default() }
}

/// An inbound that only tells when the process is up, not that the others listen (V2Ray starts its
/// inbounds in map order): connections to those go through `connect_when_listening`.
fn ready_inbound(port: u16) -> String {
    format!(
        r#"{{"tag": "ready", "listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
            "settings": {{"address": "127.0.0.1", "port": 9}}}}"#
    )
}

fn log_block(dir: &Path, name: &str) -> String {
    let a = dir.join(format!("{name}-access.log"));
    let e = dir.join(format!("{name}-error.log"));
    format!(r#""log": {{"loglevel": "debug", "access": "{}", "error": "{}"}}"#, a.display(), e.display())
}

/// Routing with `IPIfNonMatch` and `IPOnDemand` through the `dns` object: hosts entries, answers from a server, NXDOMAIN,
/// a server that never answers (its `domains` put it first for one name) and the fallback to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_through_the_dns_object_hosts_and_fallback_match_v2ray() {
    let main = Responder::start(
        [
            ("r10.oxt", rec(&["10.10.1.1"])),
            ("r20.oxt", rec(&["10.20.1.1"])),
            ("slow.oxt", rec(&["10.20.2.2"])),
            ("MIXED.oxt", rec(&["10.10.7.7"])),
        ]
        .into_iter()
        .map(|(n, r)| (n.to_string(), r))
        .collect(),
        false,
    )
    .await
    .unwrap();
    let silent = Responder::start(HashMap::new(), true).await.unwrap();
    // (target host, expected outbound)
    let probes: &[(&str, &str)] = &[
        ("r10.oxt", "hit10"),
        ("r20.oxt", "hit20"),
        ("nx.oxt", "default"),
        ("h.oxt", "hit20"),
        ("x.hd.oxt", "hit10"),
        ("10.10.3.3", "hit10"),
        ("named.oxt", "named"),
        ("MIXED.oxt", "hit10"),
        ("mixed.oxt", "default"),
        ("slow.oxt", "hit20"),
    ];
    for (strategy, which) in
        ["IPIfNonMatch", "IPOnDemand"].into_iter().flat_map(|s| impls().into_iter().map(move |w| (s, w)))
    {
        let dir = temp_dir(&format!("dns-routing-{strategy}-{which:?}"));
        let ports: Vec<u16> = probes.iter().map(|_| free_port()).collect();
        let ready = free_port();
        // Distinct tags: 4.34 listens on only some of several inbounds that share one tag.
        let mut inbounds: Vec<String> = probes
            .iter()
            .zip(&ports)
            .enumerate()
            .map(|(i, ((host, _), port))| {
                format!(
                    r#"{{"tag": "probe{i}", "listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
                        "settings": {{"address": "{host}", "port": {}}}}}"#,
                    1000 + i
                )
            })
            .collect();
        inbounds.push(ready_inbound(ready));
        let config = format!(
            r#"{{ {log},
  "dns": {{"tag": "dns-app",
    "servers": [{{"address": "127.0.0.1", "port": {main}}},
                {{"address": "127.0.0.1", "port": {silent}, "domains": ["domain:slow.oxt"]}}],
    "hosts": {{"h.oxt": "10.20.9.9", "domain:hd.oxt": "10.10.9.9"}}}},
  "inbounds": [{inbounds}],
  "outbounds": [{{"protocol": "blackhole", "tag": "default"}}, {{"protocol": "blackhole", "tag": "hit10"}},
                {{"protocol": "blackhole", "tag": "hit20"}}, {{"protocol": "blackhole", "tag": "named"}},
                {{"protocol": "freedom", "tag": "direct"}}],
  "routing": {{"domainStrategy": "{strategy}", "rules": [
    {{"type": "field", "inboundTag": ["dns-app"], "outboundTag": "direct"}},
    {{"type": "field", "domain": ["full:named.oxt"], "outboundTag": "named"}},
    {{"type": "field", "ip": ["10.10.0.0/16"], "outboundTag": "hit10"}},
    {{"type": "field", "ip": ["10.20.0.0/16"], "outboundTag": "hit20"}}]}}
}}"#,
            log = log_block(&dir, "p"),
            main = main.addr.port(),
            silent = silent.addr.port(),
            inbounds = inbounds.join(",\n"),
        );
        let mut proc = spawn_impl(which, "p", &dir, &config);
        assert!(wait_port_async(local(ready), Duration::from_secs(10)).await, "{which:?}: {}", proc.log_text());
        let access = dir.join("p-access.log");
        let before = main.seen().len();
        for (i, ((host, want), port)) in probes.iter().zip(&ports).enumerate() {
            let start = Instant::now();
            probe(*port).await;
            let target = format!("tcp:{host}:{}", 1000 + i);
            let got = decision(&access, &target, Duration::from_secs(10)).await;
            let took = start.elapsed();
            assert_eq!(
                got.as_deref(),
                Some(*want),
                "{which:?} {strategy}: {host}\n{}",
                std::fs::read_to_string(&access).unwrap_or_default()
            );
            if *host == "slow.oxt" {
                // The silent server is asked first (its `domains`), times out after 4 s, then the next answers.
                assert!(took >= Duration::from_millis(3900), "{which:?}: slow.oxt routed after {took:?}");
                assert!(took < Duration::from_secs(9), "{which:?}: slow.oxt routed after {took:?}");
            }
        }
        let seen: Vec<_> = main.seen()[before..].to_vec();
        let names: Vec<&str> = seen.iter().map(|s| s.name.as_str()).collect();
        for hosted in ["h.oxt", "x.hd.oxt", "named.oxt", "10.10.3.3"] {
            assert!(!names.contains(&hosted), "{which:?}: {hosted} must not reach a server: {names:?}");
        }
        assert!(names.contains(&"MIXED.oxt"), "{which:?}: case kept in the question: {names:?}");
        assert!(silent.seen().iter().any(|s| s.name == "slow.oxt"), "{which:?}: the silent server was asked first");
        assert!(
            !silent.seen().iter().any(|s| s.name == "r10.oxt"),
            "{which:?}: servers without matching domains come after"
        );
        proc.terminate(Duration::from_secs(5));
    }
}

/// freedom `UseIPv4` dials the address the `dns` object returns, asking only for A records, with the
/// `clientIp` subnet in the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freedom_use_ipv4_dials_the_resolved_address_like_v2ray() {
    let (target_port, mut hit_rx, accept) = common::hit_recorder([127, 0, 0, 5]).await;
    let mut zone = HashMap::new();
    zone.insert("f.oxt".to_string(), rec(&["127.0.0.5", "::1"]));
    let dns = Responder::start(zone, false).await.unwrap();
    for which in impls() {
        let dir = temp_dir(&format!("dns-freedom-{which:?}"));
        let (port, ready) = (free_port(), free_port());
        let config = format!(
            r#"{{ {log},
  "dns": {{"servers": [{{"address": "127.0.0.1", "port": {dns}}}], "clientIp": "203.0.113.9"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
                 "settings": {{"address": "f.oxt", "port": {target_port}}}}}, {ready}],
  "outbounds": [{{"protocol": "freedom", "tag": "direct", "settings": {{"domainStrategy": "UseIPv4"}}}}]
}}"#,
            log = log_block(&dir, "f"),
            dns = dns.addr.port(),
            ready = ready_inbound(ready),
        );
        let before = dns.seen().len();
        let mut proc = spawn_impl(which, "f", &dir, &config);
        assert!(wait_port_async(local(ready), Duration::from_secs(10)).await, "{which:?}: {}", proc.log_text());
        let mut s = connect_when_listening(local(port), Duration::from_secs(10)).await.unwrap();
        s.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{which:?}: no answer through freedom\n{}", proc.log_text()))
            .unwrap();
        assert_eq!(&buf, b"ok");
        let hit = tokio::time::timeout(Duration::from_secs(5), hit_rx.recv()).await.unwrap().unwrap();
        assert_eq!(hit.ip(), "127.0.0.5".parse::<IpAddr>().unwrap(), "{which:?}");
        let seen: Vec<_> = dns.seen()[before..].iter().filter(|q| q.name == "f.oxt").cloned().collect();
        assert_eq!(seen.iter().map(|q| q.rtype).collect::<Vec<_>>(), vec![RecordType::A], "{which:?}: only an A query");
        // `clientIp`: an EDNS Client Subnet option with the /24 of it.
        assert_eq!(seen[0].ecs, Some("203.0.113.0".parse().unwrap()), "{which:?}");
        proc.terminate(Duration::from_secs(5));
    }
    accept.abort();
}

fn query_bytes(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(format!("{name}.")).unwrap(), rtype));
    m.to_vec().unwrap()
}

async fn ask_tcp(s: &mut TcpStream, msg: &[u8]) -> Option<Message> {
    s.write_all(&(msg.len() as u16).to_be_bytes()).await.ok()?;
    s.write_all(msg).await.ok()?;
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(8), s.read_exact(&mut len)).await.ok()?.ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len).into()];
    s.read_exact(&mut buf).await.ok()?;
    Message::from_vec(&buf).ok()
}

/// What a client sees of one answer: rcode, flags, (type, TTL, data) of each record.
fn shape(m: &Message) -> (u16, bool, bool, Vec<(RecordType, u32, String)>) {
    let recs = m
        .answers
        .iter()
        .map(|r| {
            let data = match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                RData::TXT(t) => t.to_string(),
                other => format!("{other:?}"),
            };
            (r.record_type(), r.ttl, data)
        })
        .collect();
    (u16::from(m.metadata.response_code), m.metadata.authoritative, m.metadata.recursion_available, recs)
}

/// The `dns` outbound behind a TCP dokodemo-door: A/AAAA answered from hosts and the servers (TTL 600,
/// AA), NXDOMAIN kept, other types forwarded over TCP to the original target and answered by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_outbound_answers_a_client_like_v2ray() {
    let mut zone = HashMap::new();
    zone.insert("r10.oxt".to_string(), rec(&["10.10.1.1", "fd00::10"]));
    zone.insert("t.oxt".to_string(), Rec { txt: vec!["hello".into()], ttl: 77, ..Default::default() });
    let upstream = Responder::start(zone, false).await.unwrap();
    let mut results = Vec::new();
    for which in impls() {
        let dir = temp_dir(&format!("dns-outbound-{which:?}"));
        let port = free_port();
        let config = format!(
            r#"{{ {log},
  "dns": {{"servers": [{{"address": "127.0.0.1", "port": {up}}}], "hosts": {{"h.oxt": "10.20.9.9"}}}},
  "inbounds": [{{"tag": "dns-in", "listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
                 "settings": {{"address": "127.0.0.1", "port": {up}, "network": "tcp"}}}}],
  "outbounds": [{{"protocol": "freedom", "tag": "direct"}}, {{"protocol": "dns", "tag": "dns-out"}}],
  "routing": {{"rules": [{{"type": "field", "inboundTag": ["dns-in"], "outboundTag": "dns-out"}}]}}
}}"#,
            log = log_block(&dir, "d"),
            up = upstream.addr.port(),
        );
        let before = upstream.seen().len();
        let mut proc = spawn_impl(which, "d", &dir, &config);
        assert!(wait_port_async(local(port), Duration::from_secs(10)).await, "{which:?}: {}", proc.log_text());
        let mut s = TcpStream::connect(local(port)).await.unwrap();
        let mut got = Vec::new();
        for (i, (name, t)) in [
            ("h.oxt", RecordType::A),
            ("r10.oxt", RecordType::A),
            ("r10.oxt", RecordType::AAAA),
            ("nx.oxt", RecordType::A),
            ("t.oxt", RecordType::TXT),
        ]
        .into_iter()
        .enumerate()
        {
            let id = 0x100 + i as u16;
            let m = ask_tcp(&mut s, &query_bytes(id, name, t))
                .await
                .unwrap_or_else(|| panic!("{which:?}: no answer for {name} {t}\n{}", proc.log_text()));
            assert_eq!(m.metadata.id, id, "{which:?}");
            got.push((name, t, shape(&m)));
        }
        let forwarded: Vec<_> = upstream.seen()[before..].iter().filter(|q| q.name == "t.oxt").cloned().collect();
        assert_eq!(forwarded.len(), 1, "{which:?}");
        assert_eq!((forwarded[0].proto, forwarded[0].id), ("tcp", 0x104), "{which:?}: forwarded unchanged over TCP");
        proc.terminate(Duration::from_secs(5));
        results.push((which, got));
    }
    let expected = vec![
        ("h.oxt", RecordType::A, (0, true, true, vec![(RecordType::A, 600, "10.20.9.9".to_string())])),
        ("r10.oxt", RecordType::A, (0, true, true, vec![(RecordType::A, 600, "10.10.1.1".to_string())])),
        ("r10.oxt", RecordType::AAAA, (0, true, true, vec![(RecordType::AAAA, 600, "fd00::10".to_string())])),
        ("nx.oxt", RecordType::A, (3, true, true, vec![])),
        ("t.oxt", RecordType::TXT, (0, false, true, vec![(RecordType::TXT, 77, "hello".to_string())])),
    ];
    for (which, got) in results {
        assert_eq!(got, expected, "{which:?}");
    }
}

/// Configs with a `dns` object that V2Ray 4.34 accepts load in oxray (warnings allowed), those it refuses
/// are refused; where oxray refuses what 4.34 loads, the deviation is named here (and in docs/CONFIG.md).
#[test]
fn dns_configs_accepted_and_refused_like_v2ray() {
    // (name, dns object, oxray accepts, V2Ray 4.34 accepts)
    let table: &[(&str, &str, bool, bool)] = &[
        ("strings", r#"{"servers": ["1.1.1.1", "::1", "localhost", "dns.example"]}"#, true, true),
        (
            "objects",
            r#"{"servers": [{"address": "10.0.0.1", "port": 5353, "domains": ["domain:a.test", "full:b.test", "keyword:c", "regexp:^d"], "expectIPs": ["10.0.0.0/8", "fd00::/8"], "clientIp": "203.0.113.9"}]}"#,
            true,
            true,
        ),
        (
            "hosts",
            r#"{"hosts": {"a.test": "10.0.0.1", "full:b.test": "::1", "domain:c.test": "d.test", "keyword:e": "10.0.0.2", "regexp:^f": "10.0.0.3", "dotless:g": "10.0.0.4"}, "clientIp": "10.0.0.9", "tag": "dns-app"}"#,
            true,
            true,
        ),
        ("empty", r#"{}"#, true, true),
        ("later keys", r#"{"servers": ["1.1.1.1"], "queryStrategy": "UseIPv4", "disableCache": true}"#, true, true),
        ("host:port string", r#"{"servers": ["8.8.8.8:53"]}"#, false, false),
        ("no address", r#"{"servers": [{"port": 53}]}"#, false, false),
        ("empty hosts value", r#"{"hosts": {"a.test": ""}}"#, false, false),
        ("empty domain key", r#"{"hosts": {"domain:": "10.0.0.1"}}"#, false, false),
        ("clientIp domain", r#"{"clientIp": "x.test"}"#, false, false),
        ("hosts list value (4.34 panics)", r#"{"hosts": {"a.test": ["10.0.0.1"]}}"#, false, false),
        (
            "DoH",
            r#"{"servers": ["https://1.1.1.1/dns-query", "https+local://dns.example:8443/q", {"address": "HTTPS://[::1]/dns-query", "port": 53}]}"#,
            true,
            true,
        ),
        ("hosts geosite key without geosite.dat", r#"{"hosts": {"geosite:nope": "10.0.0.1"}}"#, false, false),
        // Deviations: 4.34 loads these; oxray refuses them by name.
        ("tcp:// scheme", r#"{"servers": ["tcp://1.1.1.1"]}"#, false, true),
    ];
    let dir = temp_dir("dns-config-table");
    let v2 = v2ray();
    for (name, dns, ox_ok, v2_ok) in table {
        let text = format!(r#"{{"dns": {dns}, "outbounds": [{{"protocol": "freedom"}}]}}"#);
        let ox = oxray::config::load_str("t.json", &text);
        assert_eq!(ox.is_ok(), *ox_ok, "oxray, {name}: {ox:?}");
        if let Some(bin) = &v2 {
            let f = common::write_file(&dir, "t.json", &text);
            let out = std::process::Command::new(bin).args(["-test", "-config", f.to_str().unwrap()]).output().unwrap();
            assert_eq!(out.status.success(), *v2_ok, "v2ray, {name}: {}", String::from_utf8_lossy(&out.stdout));
        }
    }
    let warned = oxray::config::load_str("t.json", r#"{"dns": {"queryStrategy": "UseIPv4"}}"#).unwrap();
    assert!(warned.warnings.iter().any(|w| w.path == "dns.queryStrategy"), "{:?}", warned.warnings);
}
