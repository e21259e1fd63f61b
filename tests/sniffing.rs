//! Sniffing (PROXIES.md §5) end to end, on oxray and on V2Ray 4.34 with the same config: a TLS
//! ClientHello and an HTTP request sent to IP-addressed dokodemo-door and socks destinations are routed
//! by their SNI / Host (seen in the access log and by which server received them, byte for byte); a
//! server-speaks-first connection still works after the bounded wait.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Impl, free_port, local, spawn_impl, temp_dir, v2ray};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A real ClientHello for `sni`, made by rustls (no server needed).
fn client_hello(sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn http_get(host: &str) -> Vec<u8> {
    format!("GET /probe HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sniff-test\r\n\r\n").into_bytes()
}

fn bittorrent() -> Vec<u8> {
    let mut v = b"\x13BitTorrent protocol".to_vec();
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&[0x11; 20]);
    v.extend_from_slice(&[0x22; 20]);
    v
}

/// True once `b` holds one whole probe (a TLS record, a BitTorrent handshake, or an HTTP head).
fn complete(b: &[u8]) -> bool {
    match b.first() {
        Some(0x16) => b.len() >= 5 && b.len() >= 5 + u16::from_be_bytes([b[3], b[4]]) as usize,
        Some(0x13) => b.len() >= 68,
        Some(_) => b.windows(4).any(|w| w == b"\r\n\r\n"),
        None => false,
    }
}

/// A server that reads one whole probe and answers `<name>\n` followed by exactly the bytes it got.
async fn marker(name: &'static str, addr: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {name} on {addr}: {e}"));
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !complete(&got) {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let mut reply = format!("{name}\n").into_bytes();
                reply.extend_from_slice(&got);
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A server-speaks-first service: sends a banner, then echoes.
async fn banner_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                if s.write_all(b"220 banner\r\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Servers {
    /// The port of `orig` (127.0.0.1) and `alt` (127.0.0.2): the dokodemo and socks target.
    target: u16,
    fb: [SocketAddr; 4],
    banner: SocketAddr,
}

async fn servers() -> Servers {
    // The same port on two loopback addresses, so a Host of 127.0.0.2 (port kept) reaches `alt`.
    let (orig, target) = loop {
        let p = free_port();
        let Ok(orig) = TcpListener::bind(local(p)).await else { continue };
        if TcpListener::bind(SocketAddr::from(([127, 0, 0, 2], p))).await.is_ok() {
            break (orig, p);
        }
    };
    drop(orig);
    marker("orig", local(target)).await;
    marker("alt", SocketAddr::from(([127, 0, 0, 2], target))).await;
    let fb = [
        marker("fbA", local(0)).await,
        marker("fbB", local(0)).await,
        marker("fbC", local(0)).await,
        marker("fbD", local(0)).await,
    ];
    Servers { target, fb, banner: banner_server().await }
}

struct Ports {
    sn: u16,
    sk: u16,
    sn2: u16,
    sn3: u16,
    sn4: u16,
}

fn config(s: &Servers, p: &Ports, access: &Path) -> String {
    let doko = |tag: &str, port: u16, to: u16, sniff: &str| {
        format!(
            r#"{{"tag": "{tag}", "listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
              "settings": {{"address": "127.0.0.1", "port": {to}, "network": "tcp"}}{sniff}}}"#
        )
    };
    let fb = |tag: &str, a: SocketAddr| {
        format!(r#"{{"tag": "{tag}", "protocol": "freedom", "settings": {{"redirect": "{a}"}}}}"#)
    };
    let sk = format!(
        r#"{{"tag": "sk", "listen": "127.0.0.1", "port": {}, "protocol": "socks", "settings": {{"auth": "noauth"}},
              "sniffing": {{"enabled": true, "destOverride": "http,tls"}}}}"#,
        p.sk
    );
    format!(
        r#"{{"log": {{"loglevel": "warning", "access": "{access}"}},
 "inbounds": [{sn}, {sk}, {sn2}, {sn3}, {sn4}],
 "outbounds": [{{"tag": "direct", "protocol": "freedom"}}, {a}, {b}, {c}, {d},
   {{"tag": "block", "protocol": "blackhole"}}],
 "routing": {{"rules": [
   {{"type": "field", "domain": ["full:sni.test"], "outboundTag": "fbA"}},
   {{"type": "field", "domain": ["full:host.test"], "outboundTag": "fbD"}},
   {{"type": "field", "domain": ["full:blocked.test"], "outboundTag": "block"}},
   {{"type": "field", "protocol": ["bittorrent"], "outboundTag": "fbB"}},
   {{"type": "field", "inboundTag": ["sn4"], "protocol": ["http"], "outboundTag": "fbC"}}]}}}}"#,
        access = access.display(),
        sn = doko("sn", p.sn, s.target, r#", "sniffing": {"enabled": true, "destOverride": ["http", "tls"]}"#),
        sk = sk,
        sn2 = doko("sn2", p.sn2, s.banner.port(), r#", "sniffing": {"enabled": true, "destOverride": ["tls"]}"#),
        sn3 = doko("sn3", p.sn3, s.banner.port(), ""),
        sn4 = doko("sn4", p.sn4, s.target, r#", "sniffing": {"enabled": true, "destOverride": ["tls"]}"#),
        a = fb("fbA", s.fb[0]),
        b = fb("fbB", s.fb[1]),
        c = fb("fbC", s.fb[2]),
        d = fb("fbD", s.fb[3]),
    )
}

/// How a probe enters: straight to a dokodemo port, or as SOCKS5 CONNECT to 127.0.0.1:`target`.
#[derive(Clone, Copy)]
enum Via {
    Doko(u16),
    Socks(u16, u16),
}

/// Sends one probe; returns the client's source port and the name of the server that answered (None:
/// the connection closed without an answer). Asserts the server received exactly the probe's bytes.
async fn probe(via: Via, bytes: &[u8]) -> (u16, Option<String>) {
    let port = match via {
        Via::Doko(p) | Via::Socks(p, _) => p,
    };
    let mut s = TcpStream::connect(local(port)).await.unwrap();
    let source = s.local_addr().unwrap().port();
    if let Via::Socks(_, target) = via {
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut m = [0u8; 2];
        s.read_exact(&mut m).await.unwrap();
        assert_eq!(m, [5, 0]);
        let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
        req.extend_from_slice(&target.to_be_bytes());
        s.write_all(&req).await.unwrap();
        let mut rep = [0u8; 10];
        s.read_exact(&mut rep).await.unwrap();
        assert_eq!(rep[..2], [5, 0], "socks reply");
    }
    s.write_all(bytes).await.unwrap();
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all)).await;
    assert!(read.is_ok(), "probe got no answer and no close within 10 s");
    if all.is_empty() {
        return (source, None);
    }
    let nl = all.iter().position(|&c| c == b'\n').expect("marker line");
    let name = String::from_utf8(all[..nl].to_vec()).unwrap();
    assert!(
        all[nl + 1..] == *bytes,
        "{name} received other bytes than sent ({} vs {})",
        all.len() - nl - 1,
        bytes.len()
    );
    (source, Some(name))
}

/// Time until the banner of a server-speaks-first service arrives through `port`, then one echo round
/// trip (bytes checked).
async fn banner_through(port: u16) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(local(port)).await.unwrap();
    let mut banner = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut banner)).await.expect("banner in time").unwrap();
    let took = start.elapsed();
    assert_eq!(&banner, b"220 banner\r\n");
    let data = common::payload(3000, 7);
    s.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await.expect("echo in time").unwrap();
    assert!(back == data, "echo differs");
    took
}

/// The outbound tag of the access line from `source`: `[tag]` (V2Ray) or `[inbound -> tag]` (oxray).
fn tag_of(text: &str, source: u16) -> Option<String> {
    let line = text.lines().find(|l| l.contains(&format!("127.0.0.1:{source} accepted")))?;
    let inside = line.rsplit('[').next()?.trim_end_matches(']');
    Some(inside.rsplit(" -> ").next()?.to_string())
}

struct Outcome {
    /// Per probe: who answered and which outbound the access log names.
    decisions: Vec<(Option<String>, String)>,
    access: String,
    banner_sniffed: Duration,
    banner_plain: Duration,
}

const PROBES: &[&str] = &[
    "doko tls sni.test",
    "doko http host.test",
    "socks tls sni.test",
    "socks http host.test",
    "doko http 127.0.0.2 (port kept)",
    "doko bittorrent",
    "doko unknown bytes",
    "doko http blocked.test",
    "tls-only override, http host.test (protocol rule)",
];

async fn run(which: Impl, s: &Servers) -> Outcome {
    let dir = temp_dir(&format!("sniffing-{which:?}"));
    let p = Ports { sn: free_port(), sk: free_port(), sn2: free_port(), sn3: free_port(), sn4: free_port() };
    let access = dir.join("access.log");
    let mut proc = spawn_impl(which, "node", &dir, &config(s, &p, &access));
    for port in [p.sn, p.sk, p.sn2, p.sn3, p.sn4] {
        assert!(
            common::wait_port_async(local(port), Duration::from_secs(10)).await,
            "{which:?} did not start:\n{}",
            proc.log_text()
        );
    }
    let t = s.target;
    let probes: Vec<(Via, Vec<u8>)> = vec![
        (Via::Doko(p.sn), client_hello("sni.test")),
        (Via::Doko(p.sn), http_get("host.test")),
        (Via::Socks(p.sk, t), client_hello("sni.test")),
        (Via::Socks(p.sk, t), http_get("host.test")),
        (Via::Doko(p.sn), http_get("127.0.0.2")),
        (Via::Doko(p.sn), bittorrent()),
        (Via::Doko(p.sn), b"HELLO there\r\n\r\n".to_vec()),
        (Via::Doko(p.sn), http_get("blocked.test")),
        (Via::Doko(p.sn4), http_get("host.test")),
    ];
    let mut answers = Vec::new();
    for (via, bytes) in &probes {
        answers.push(probe(*via, bytes).await);
    }
    let banner_sniffed = banner_through(p.sn2).await;
    let banner_plain = banner_through(p.sn3).await;
    // Every probe's access line, by source port, within a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&access).unwrap_or_default();
        if answers.iter().all(|(src, _)| tag_of(&text, *src).is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let decisions = answers
        .into_iter()
        .enumerate()
        .map(|(i, (src, who))| {
            let tag =
                tag_of(&text, src).unwrap_or_else(|| panic!("{which:?}: no access line for {}:\n{text}", PROBES[i]));
            (who, tag)
        })
        .collect();
    proc.kill();
    Outcome { decisions, access: text, banner_sniffed, banner_plain }
}

fn expected() -> Vec<(Option<String>, String)> {
    [
        (Some("fbA"), "fbA"),
        (Some("fbD"), "fbD"),
        (Some("fbA"), "fbA"),
        (Some("fbD"), "fbD"),
        (Some("alt"), "direct"),
        (Some("fbB"), "fbB"),
        (Some("orig"), "direct"),
        (None, "block"),
        (Some("fbC"), "fbC"),
    ]
    .iter()
    .map(|(w, t)| (w.map(str::to_string), t.to_string()))
    .collect()
}

fn check(which: Impl, o: &Outcome) {
    let want = expected();
    for (i, (got, want)) in o.decisions.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "{which:?}: {}\naccess log:\n{}", PROBES[i], o.access);
    }
    eprintln!(
        "{which:?}: time to banner through a sniffing inbound {:?}, without sniffing {:?}",
        o.banner_sniffed, o.banner_plain
    );
    // The client sends nothing: two 100 ms attempts, then the connection is dialled (4.34 ≈ 0.2 s).
    assert!(o.banner_sniffed >= Duration::from_millis(190), "{which:?}: sniffing did not wait: {:?}", o.banner_sniffed);
    assert!(
        o.banner_sniffed < Duration::from_millis(1500),
        "{which:?}: sniffing wait unbounded: {:?}",
        o.banner_sniffed
    );
    assert!(o.banner_plain < Duration::from_millis(150), "{which:?}: no sniffing, yet slow: {:?}", o.banner_plain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sniffed_domains_route_like_v2ray_4_34() {
    let s = servers().await;
    let ox = run(Impl::Oxray, &s).await;
    check(Impl::Oxray, &ox);
    // oxray logs the destination as routed: the sniffed name with the original port.
    assert!(ox.access.contains(&format!("accepted tcp:sni.test:{} [sn -> fbA]", s.target)), "{}", ox.access);
    assert!(ox.access.contains(&format!("accepted tcp:127.0.0.2:{} [sn -> direct]", s.target)), "{}", ox.access);
    if v2ray().is_none() {
        return;
    }
    let v2 = run(Impl::V2ray, &s).await;
    check(Impl::V2ray, &v2);
    let by_probe: HashMap<&str, _> = PROBES.iter().copied().zip(v2.decisions.iter()).collect();
    for (i, d) in ox.decisions.iter().enumerate() {
        assert_eq!(Some(&d), by_probe.get(PROBES[i]), "{}: oxray and V2Ray differ", PROBES[i]);
    }
}

/// A sniffing VMess inbound sniffs each Mux.Cool sub-session (4.34 does): a ClientHello for sni.test,
/// sent through an oxray client's muxed VMess outbound to an IP destination, is routed by its SNI on
/// the server (oxray and V2Ray 4.34), byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_sub_sessions_are_sniffed() {
    let s = servers().await;
    const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";
    for which in common::impls() {
        let dir = temp_dir(&format!("sniffing-mux-{which:?}"));
        let (vm, entry) = (free_port(), free_port());
        let server = format!(
            r#"{{"log": {{"loglevel": "warning"}},
 "inbounds": [{{"tag": "vm", "listen": "127.0.0.1", "port": {vm}, "protocol": "vmess",
   "settings": {{"clients": [{{"id": "{ID}", "alterId": 0}}]}},
   "sniffing": {{"enabled": true, "destOverride": ["tls"]}}}}],
 "outbounds": [{{"tag": "direct", "protocol": "freedom"}},
   {{"tag": "fbA", "protocol": "freedom", "settings": {{"redirect": "{fb}"}}}}],
 "routing": {{"rules": [{{"type": "field", "domain": ["full:sni.test"], "outboundTag": "fbA"}}]}}}}"#,
            fb = s.fb[0]
        );
        let client = format!(
            r#"{{"log": {{"loglevel": "warning"}},
 "inbounds": [{{"listen": "127.0.0.1", "port": {entry}, "protocol": "dokodemo-door",
   "settings": {{"address": "127.0.0.1", "port": {t}, "network": "tcp"}}}}],
 "outbounds": [{{"protocol": "vmess", "mux": {{"enabled": true, "concurrency": 8}},
   "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {vm}, "users": [{{"id": "{ID}", "alterId": 0}}]}}]}}}}]}}"#,
            t = s.target
        );
        let mut srv = spawn_impl(which, "server", &dir, &server);
        let mut cli = spawn_impl(Impl::Oxray, "client", &dir, &client);
        for (port, p) in [(vm, &srv), (entry, &cli)] {
            assert!(
                common::wait_port_async(local(port), Duration::from_secs(10)).await,
                "{which:?}: not listening:\n{}",
                p.log_text()
            );
        }
        // Two sub-sessions on one carrier: the sniffed one goes to fbA, the plain one to its IP.
        let (_, sniffed) = probe(Via::Doko(entry), &client_hello("sni.test")).await;
        let (_, plain) = probe(Via::Doko(entry), b"HELLO there\r\n\r\n").await;
        assert_eq!(sniffed.as_deref(), Some("fbA"), "{which:?}: the sub-session was not routed by its SNI");
        assert_eq!(plain.as_deref(), Some("orig"), "{which:?}");
        cli.kill();
        srv.kill();
    }
}
