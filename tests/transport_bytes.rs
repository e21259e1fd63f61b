//! What oxray's clients put on the wire, byte for byte against what V2Ray 4.34 sends with the same
//! config: the WebSocket upgrade request (only the random key differs) and the TLS ClientHello's SNI
//! and ALPN. Both binaries dial a raw listener that records the first bytes.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const UUID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";

/// Runs `which` with a dokodemo → vmess(`address`, raw port, `stream`) client, pokes it, and returns
/// the first bytes the raw listener receives (up to the end of an HTTP head or one TLS record).
async fn capture(which: Impl, address: &str, stream: &str, tag: &str) -> Vec<u8> {
    let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_port = raw.local_addr().unwrap().port();
    let entry = free_port();
    let json = format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {entry}, "protocol": "dokodemo-door",
    "settings": {{"address": "127.0.0.1", "port": 9, "network": "tcp"}}}}],
  "outbounds": [{{"protocol": "vmess", "settings": {{"vnext": [{{"address": "{address}", "port": {raw_port},
    "users": [{{"id": "{UUID}"}}]}}]}}, "streamSettings": {stream}}}]}}"#
    );
    let dir = temp_dir(&format!("bytes-{tag}-{which:?}"));
    let p = spawn_impl(which, "client", &dir, &json);
    assert!(wait_port_async(local(entry), Duration::from_secs(10)).await, "{which:?} did not start: {}", p.log_text());
    let mut poke = tokio::net::TcpStream::connect(local(entry)).await.unwrap();
    poke.write_all(b"hello").await.unwrap();
    // 4.34 may open a TCP connection and drop it before its lazy TLS handshake: take the first
    // connection that carries bytes.
    let read = async {
        loop {
            let (mut s, _) = raw.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let tls_done = got.len() >= 5
                    && got[0] == 0x16
                    && got.len() >= 5 + usize::from(u16::from_be_bytes([got[3], got[4]]));
                if tls_done || got.windows(4).any(|w| w == b"\r\n\r\n") {
                    return got;
                }
            }
        }
    };
    let got = tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .unwrap_or_else(|_| panic!("{tag}: {which:?} sent no complete head: {}", p.log_text()));
    drop(p);
    got
}

/// The request with the random `Sec-WebSocket-Key` value blanked.
fn without_key(req: &[u8]) -> String {
    String::from_utf8_lossy(req)
        .split("\r\n")
        .map(|l| if l.starts_with("Sec-WebSocket-Key: ") { "Sec-WebSocket-Key: <key>" } else { l })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_request_matches_v2ray() {
    if v2ray().is_none() {
        return;
    }
    let cases = [
        ("plain", r#"{"network": "ws"}"#),
        (
            "headers",
            r#"{"network": "ws", "wsSettings": {"path": "ray", "headers": {"host": "example.com", "x-test": "1", "User-Agent": "ua-test"}}}"#,
        ),
        ("escaped", r#"{"network": "ws", "wsSettings": {"path": "/a b/%41?ed=2048&x=1"}}"#),
        (
            "protocol",
            r#"{"network": "ws", "wsSettings": {"path": "/p", "headers": {"sec-websocket-protocol": "chat", "Zz": "last", "Accept": "x"}}}"#,
        ),
    ];
    for (tag, stream) in cases {
        let v = without_key(&capture(Impl::V2ray, "127.0.0.1", stream, tag).await);
        let o = without_key(&capture(Impl::Oxray, "127.0.0.1", stream, tag).await);
        // Host carries the raw listener's port, which differs per run: compare the rest.
        let strip_port = |s: &str| {
            s.lines()
                .map(|l| if l.starts_with("Host: 127.0.0.1:") { "Host: 127.0.0.1:<port>" } else { l })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip_port(&o), strip_port(&v), "{tag}: oxray's upgrade request differs from V2Ray's");
        eprintln!("{tag}: {}", strip_port(&v).replace('\n', " | "));
    }
}

/// SNI (None when absent) and ALPN list of a ClientHello record.
fn hello_fields(rec: &[u8]) -> (Option<String>, Vec<String>) {
    assert_eq!(rec[0], 0x16, "not a handshake record");
    let h = &rec[5..];
    assert_eq!(h[0], 1, "not a ClientHello");
    let mut p = 4 + 2 + 32;
    p += 1 + h[p] as usize;
    p += 2 + u16::from_be_bytes([h[p], h[p + 1]]) as usize;
    p += 1 + h[p] as usize;
    let end = p + 2 + u16::from_be_bytes([h[p], h[p + 1]]) as usize;
    p += 2;
    let (mut sni, mut alpn) = (None, Vec::new());
    while p + 4 <= end {
        let ty = u16::from_be_bytes([h[p], h[p + 1]]);
        let len = u16::from_be_bytes([h[p + 2], h[p + 3]]) as usize;
        let body = &h[p + 4..p + 4 + len];
        match ty {
            0 => sni = Some(String::from_utf8_lossy(&body[5..]).into_owned()),
            16 => {
                let mut q = 2;
                while q < body.len() {
                    let l = body[q] as usize;
                    alpn.push(String::from_utf8_lossy(&body[q + 1..q + 1 + l]).into_owned());
                    q += 1 + l;
                }
            }
            _ => {}
        }
        p += 4 + len;
    }
    (sni, alpn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_sni_and_alpn_match_v2ray() {
    if v2ray().is_none() {
        return;
    }
    let cases = [
        ("tcp-domain", "localhost", r#"{"security": "tls"}"#, Some("localhost"), vec!["h2", "http/1.1"]),
        (
            "tcp-servername",
            "127.0.0.1",
            r#"{"security": "tls", "tlsSettings": {"serverName": "example.com"}}"#,
            Some("example.com"),
            vec!["h2", "http/1.1"],
        ),
        ("ws-domain", "localhost", r#"{"network": "ws", "security": "tls"}"#, Some("localhost"), vec!["http/1.1"]),
        ("ws-ip", "127.0.0.1", r#"{"network": "ws", "security": "tls"}"#, None, vec!["http/1.1"]),
        (
            "ws-alpn",
            "localhost",
            r#"{"network": "ws", "security": "tls", "tlsSettings": {"alpn": ["h2", "http/1.1"]}}"#,
            Some("localhost"),
            vec!["h2", "http/1.1"],
        ),
    ];
    for (tag, address, stream, sni, alpn) in cases {
        let want = (sni.map(str::to_string), alpn.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let v = hello_fields(&capture(Impl::V2ray, address, stream, tag).await);
        let o = hello_fields(&capture(Impl::Oxray, address, stream, tag).await);
        assert_eq!(v, want, "{tag}: V2Ray 4.34 sent something else than this test expects");
        assert_eq!(o, want, "{tag}: oxray's ClientHello differs from V2Ray's");
    }
}
