//! VMess over every transport oxray runs (ws, tls, ws+tls, the TCP "http" header) against the real
//! V2Ray 4.34, both directions, plus oxray ↔ oxray. The same JSON config runs under either binary.
//! Chain: TCP client → [dokodemo → vmess outbound] → [vmess inbound → freedom] → XOR echo.
//! Sizes sit around V2Ray's 2048-byte WebSocket frames and VMess's 16 KiB chunks.

mod common;

use std::time::Duration;

use common::pki::Pki;
use common::*;

const UUID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";
const SIZES: [usize; 12] = [1, 2047, 2048, 2049, 4096, 8193, 16383, 16384, 16385, 65537, 300_001, 1 << 20];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ws,
    Tls,
    WsTls,
    HttpHeader,
}

fn stream(kind: Kind, pki: &Pki, server: bool) -> String {
    let tls = if server { pki.server_tls() } else { pki.client_tls() };
    match kind {
        Kind::Ws => r#"{"network": "ws", "wsSettings": {"path": "/ray"}}"#.to_string(),
        Kind::Tls => format!(r#"{{"security": "tls", "tlsSettings": {tls}}}"#),
        Kind::WsTls => {
            format!(r#"{{"network": "ws", "wsSettings": {{"path": "/ray"}}, "security": "tls", "tlsSettings": {tls}}}"#)
        }
        Kind::HttpHeader => {
            r#"{"tcpSettings": {"header": {"type": "http", "request": {"path": ["/", "/a"]}}}}"#.to_string()
        }
    }
}

/// Both implementations cut a half-closed connection whose answer pauses for `downlinkOnly` (1 s by
/// default); on a loaded machine the echo's answer can pause that long. Wire tests, not policy tests.
const SLACK: &str = r#""policy": {"levels": {"0": {"uplinkOnly": 10, "downlinkOnly": 10}}},"#;

fn server_json(port: u16, stream: &str) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}}, {SLACK}
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "vmess",
    "settings": {{"clients": [{{"id": "{UUID}"}}]}}, "streamSettings": {stream}}}],
  "outbounds": [{{"protocol": "freedom"}}]}}"#
    )
}

fn client_json(port: u16, server: u16, target: u16, stream: &str) -> String {
    client_json_mux(port, server, target, stream, false)
}

fn client_json_mux(port: u16, server: u16, target: u16, stream: &str, mux: bool) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}}, {SLACK}
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
    "settings": {{"address": "127.0.0.1", "port": {target}, "network": "tcp"}}}}],
  "outbounds": [{{"protocol": "vmess", "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {server},
    "users": [{{"id": "{UUID}"}}]}}]}}, "streamSettings": {stream}, "mux": {{"enabled": {mux}}}}}]}}"#
    )
}

async fn pair(kind: Kind, client: Impl, server: Impl) {
    let dir = temp_dir(&format!("transport-{kind:?}-{client:?}-{server:?}"));
    let pki = Pki::new(&dir);
    let (echo, _e) = xor_echo_server().await;
    let (sport, cport) = (free_port(), free_port());
    let s = spawn_impl(server, "server", &dir, &server_json(sport, &stream(kind, &pki, true)));
    assert!(wait_port_async(local(sport), Duration::from_secs(10)).await, "server did not start: {}", s.log_text());
    let c = spawn_impl(client, "client", &dir, &client_json(cport, sport, echo.port(), &stream(kind, &pki, false)));
    assert!(wait_port_async(local(cport), Duration::from_secs(10)).await, "client did not start: {}", c.log_text());
    let what = format!("{kind:?}: {client:?} client → {server:?} server");
    let logs = || format!("--- client\n{}\n--- server\n{}", c.log_text(), s.log_text());
    let first = until_traffic(local(cport), Duration::from_secs(10)).await;
    assert!(first.is_some(), "{what}: no traffic\n{}", logs());
    check_sizes(local(cport), &what, &SIZES, 7, Duration::from_secs(30)).await;
    // 4 parallel 4 MiB transfers: frames of several connections interleave on one listener.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let entry = local(cport);
            tokio::spawn(async move {
                let data = payload(4 << 20, 50 + i);
                tokio::time::timeout(Duration::from_secs(60), xor_roundtrip(entry, &data)).await
            })
        })
        .collect();
    for t in tasks {
        match t.await.expect("join") {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{what}: 4 MiB: {e}\n{}", logs()),
            Err(_) => panic!("{what}: 4 MiB timed out\n{}", logs()),
        }
    }
    for p in [&s, &c] {
        assert!(!p.log_text().contains("panic"), "{what}: {} panicked\n{}", p.name, logs());
    }
    eprintln!("{what}: ok");
}

async fn all_pairings(kind: Kind) {
    pair(kind, Impl::Oxray, Impl::Oxray).await;
    if v2ray().is_none() {
        return;
    }
    pair(kind, Impl::Oxray, Impl::V2ray).await;
    pair(kind, Impl::V2ray, Impl::Oxray).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmess_over_ws() {
    all_pairings(Kind::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmess_over_tls() {
    all_pairings(Kind::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmess_over_ws_tls() {
    all_pairings(Kind::WsTls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmess_over_http_header() {
    all_pairings(Kind::HttpHeader).await;
}

/// Mux.Cool over ws+tls: many sessions share one WebSocket connection. V2Ray 4.34's Mux client loses
/// the answer of a half-closed session, so visitors read the whole answer before closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_over_ws_tls() {
    let mut pairs = vec![(Impl::Oxray, Impl::Oxray)];
    if v2ray().is_some() {
        pairs.extend([(Impl::Oxray, Impl::V2ray), (Impl::V2ray, Impl::Oxray)]);
    }
    for (client, server) in pairs {
        let dir = temp_dir(&format!("transport-mux-{client:?}-{server:?}"));
        let pki = Pki::new(&dir);
        let (echo, _e) = xor_echo_server().await;
        let (sport, cport) = (free_port(), free_port());
        let s = spawn_impl(server, "server", &dir, &server_json(sport, &stream(Kind::WsTls, &pki, true)));
        assert!(wait_port_async(local(sport), Duration::from_secs(10)).await, "server: {}", s.log_text());
        let cfg = client_json_mux(cport, sport, echo.port(), &stream(Kind::WsTls, &pki, false), true);
        let c = spawn_impl(client, "client", &dir, &cfg);
        assert!(wait_port_async(local(cport), Duration::from_secs(10)).await, "client: {}", c.log_text());
        let what = format!("mux over ws+tls: {client:?} client → {server:?} server");
        let logs = || format!("--- client\n{}\n--- server\n{}", c.log_text(), s.log_text());
        assert!(until_traffic(local(cport), Duration::from_secs(10)).await.is_some(), "{what}: no traffic\n{}", logs());
        let tasks: Vec<_> = SIZES
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let entry = local(cport);
                tokio::spawn(async move {
                    let data = payload(size, 70 + i as u64);
                    (size, tokio::time::timeout(Duration::from_secs(30), xor_exchange(entry, &data, false)).await)
                })
            })
            .collect();
        for t in tasks {
            match t.await.expect("join") {
                (_, Ok(Ok(()))) => {}
                (size, Ok(Err(e))) => panic!("{what}: {size} bytes: {e}\n{}", logs()),
                (size, Err(_)) => panic!("{what}: {size} bytes timed out\n{}", logs()),
            }
        }
        eprintln!("{what}: ok");
    }
}
