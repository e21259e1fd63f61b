//! Shadowsocks AEAD over TCP: oxray ↔ oxray and oxray ↔ V2Ray 4.34 in both directions for every method
//! (bytes checked through the XOR echo), and probes of the server: random bytes and a wrong key get no
//! reply, the connection is held as 4.34 holds it, and nothing leaks.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METHODS: [&str; 4] = ["aes-128-gcm", "AES-256-GCM", "chacha20-poly1305", "chacha20-ietf-poly1305"];
const SIZES: [usize; 6] = [1, 100, 2014, 16_383, 100_000, 1 << 20];

fn server_config(port: u16, method: &str, password: &str, handshake: u32) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "policy": {{"levels": {{"0": {{"handshake": {handshake}}}}}}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "shadowsocks",
    "settings": {{"method": "{method}", "password": "{password}", "email": "ss@test"}}}}],
  "outbounds": [{{"protocol": "freedom"}}]}}"#
    )
}

fn client_config(entry: u16, target: SocketAddr, server: u16, method: &str, password: &str) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {entry}, "protocol": "dokodemo-door",
    "settings": {{"address": "{}", "port": {}}}}}],
  "outbounds": [{{"protocol": "shadowsocks", "settings": {{"servers": [{{"address": "127.0.0.1", "port": {server},
    "method": "{method}", "password": "{password}"}}]}}}}]}}"#,
        target.ip(),
        target.port()
    )
}

async fn check_sizes(entry: SocketAddr, what: &str) {
    let tasks: Vec<_> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            tokio::spawn(async move {
                let data = payload(n, 70 + i as u64);
                (n, tokio::time::timeout(Duration::from_secs(30), xor_exchange(entry, &data, false)).await)
            })
        })
        .collect();
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(Ok(()))) => {}
            (n, Ok(Err(e))) => panic!("{what}: {n} bytes: {e}"),
            (n, Err(_)) => panic!("{what}: {n} bytes timed out"),
        }
    }
}

async fn pair(server: Impl, client: Impl, method: &str) {
    let (echo, _t) = xor_echo_server().await;
    let dir = temp_dir(&format!("ss-{server:?}-{client:?}-{}", method.to_ascii_lowercase()));
    let (sp, entry) = (free_port(), free_port());
    let _s = spawn_impl(server, "server", &dir, &server_config(sp, method, "test", 60));
    let _c = spawn_impl(client, "client", &dir, &client_config(entry, echo, sp, method, "test"));
    assert!(wait_for_port(local(sp), Duration::from_secs(10)) && wait_for_port(local(entry), Duration::from_secs(10)));
    check_sizes(local(entry), &format!("{client:?} client → {server:?} server, {method}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_to_oxray_every_method() {
    for m in METHODS.iter().chain(&["none"]) {
        pair(Impl::Oxray, Impl::Oxray, m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_client_to_v2ray_server() {
    if v2ray().is_none() {
        return;
    }
    for m in METHODS {
        pair(Impl::V2ray, Impl::Oxray, m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2ray_client_to_oxray_server() {
    if v2ray().is_none() {
        return;
    }
    for m in METHODS {
        pair(Impl::Oxray, Impl::V2ray, m).await;
    }
}

/// Sends `data`, then waits for the server to close; returns the bytes it sent back and how long it took.
async fn probe(addr: SocketAddr, data: &[u8]) -> (Vec<u8>, Duration) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let _ = c.write_all(data).await;
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&b[..n]),
            Err(_) => panic!("server held the connection past 10 s"),
        }
    }
    (got, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_learn_nothing() {
    let (echo, _t) = xor_echo_server().await;
    let dir = temp_dir("ss-probe");
    let (sp, entry, wrong) = (free_port(), free_port(), free_port());
    let server = spawn_impl(Impl::Oxray, "server", &dir, &server_config(sp, "aes-128-gcm", "test", 2));
    let _good = spawn_impl(Impl::Oxray, "client", &dir, &client_config(entry, echo, sp, "aes-128-gcm", "test"));
    let _bad = spawn_impl(Impl::Oxray, "wrong", &dir, &client_config(wrong, echo, sp, "aes-128-gcm", "nope"));
    for p in [sp, entry, wrong] {
        assert!(wait_for_port(local(p), Duration::from_secs(10)));
    }
    let baseline = fd_count(server.pid());
    // A short random probe is read and held until the 2 s handshake timeout: no reply, no early close.
    for n in [10usize, 100, 60] {
        let (got, took) = probe(local(sp), &payload(n, n as u64)).await;
        assert!(got.is_empty(), "{n} random bytes got a reply");
        assert!(took >= Duration::from_millis(1800), "{n} random bytes: closed after {took:?}, before the timeout");
        eprintln!("{n} random bytes: closed after {took:?}");
    }
    // A long one is drained up to the per-key limit and closed at once (by FIN or RST), without a reply.
    let (got, took) = probe(local(sp), &payload(6000, 9)).await;
    assert!(
        got.is_empty() && took < Duration::from_millis(1500),
        "6000 random bytes: {} back after {took:?}",
        got.len()
    );
    // A client with the wrong password: its data never reaches the echo and nothing comes back.
    let mut c = TcpStream::connect(local(wrong)).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(6), c.read(&mut b)).await.expect("wrong key: held forever");
    assert!(matches!(r, Ok(0) | Err(_)), "wrong key got a reply");
    let settled = wait_until(Duration::from_secs(5), || async { fd_count(server.pid()) <= baseline }).await;
    assert!(settled, "descriptors: {} before, {} after", baseline, fd_count(server.pid()));
    // And the right key still works.
    check_sizes(local(entry), "after the probes").await;
}
