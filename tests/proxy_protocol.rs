//! `acceptProxyProtocol` as V2Ray 4.34 treats it, probed with raw sockets against both binaries:
//! tcpSettings' flag requires a v1 or v2 header whose source becomes the connection's source (access
//! log), wsSettings' flag the same before the upgrade, and sockopt's flag alone is ignored.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(port: u16, echo: u16, stream: &str) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning", "access": ""}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
    "settings": {{"address": "127.0.0.1", "port": {echo}, "network": "tcp"}}, "streamSettings": {stream}}}],
  "outbounds": [{{"protocol": "freedom"}}]}}"#
    )
}

async fn echo_through(port: u16, prefix: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect(local(port)).await.map_err(|e| e.to_string())?;
    let mut msg = prefix.to_vec();
    msg.extend_from_slice(b"ping");
    s.write_all(&msg).await.map_err(|e| e.to_string())?;
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut got))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    if got.iter().zip(b"ping").all(|(g, p)| *g == p ^ XOR) { Ok(()) } else { Err(format!("{got:?}")) }
}

fn v2_header() -> Vec<u8> {
    let mut h = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 9, 127, 0, 0, 1, 0x1a, 0x0a, 0x52, 0x8c]);
    h
}

async fn check(which: Impl) {
    let (echo, _e) = xor_echo_server().await;
    let dir = temp_dir(&format!("proxyproto-{which:?}"));
    let (tcp_port, plain_port) = (free_port(), free_port());
    let a = spawn_impl(
        which,
        "tcp",
        &dir,
        &config(tcp_port, echo.port(), r#"{"tcpSettings": {"acceptProxyProtocol": true}}"#),
    );
    let b = spawn_impl(
        which,
        "sockopt",
        &dir,
        &config(plain_port, echo.port(), r#"{"sockopt": {"acceptProxyProtocol": true}}"#),
    );
    for (p, port) in [(&a, tcp_port), (&b, plain_port)] {
        assert!(
            wait_port_async(local(port), Duration::from_secs(10)).await,
            "{which:?} did not start: {}",
            p.log_text()
        );
    }
    echo_through(tcp_port, b"PROXY TCP4 198.51.100.1 127.0.0.1 5555 21132\r\n")
        .await
        .unwrap_or_else(|e| panic!("{which:?} v1: {e}"));
    echo_through(tcp_port, &v2_header()).await.unwrap_or_else(|e| panic!("{which:?} v2: {e}"));
    // Without a header: REQUIRE mode fails the connection once the bytes are not a header.
    assert!(echo_through(tcp_port, b"").await.is_err(), "{which:?}: a connection without a PROXY header was served");
    // sockopt.acceptProxyProtocol alone is ignored by 4.34's tcp listener.
    echo_through(plain_port, b"").await.unwrap_or_else(|e| panic!("{which:?} sockopt flag: {e}"));
    let seen = wait_until(Duration::from_secs(5), || {
        let log = a.log_text();
        async move { log.contains("198.51.100.1:5555 accepted") && log.contains("203.0.113.9:6666 accepted") }
    })
    .await;
    assert!(seen, "{which:?}: the header's sources are not in the access log:\n{}", a.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_takes_the_source_from_proxy_headers() {
    check(Impl::Oxray).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2ray_takes_the_source_from_proxy_headers() {
    if v2ray().is_none() {
        return;
    }
    check(Impl::V2ray).await;
}
