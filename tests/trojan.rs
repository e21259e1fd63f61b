//! Trojan: oxray ↔ oxray and oxray ↔ V2Ray 4.34 both ways (bytes checked through the XOR echo),
//! fallbacks, a server-speaks-first protocol through the oxray client, and probes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn server_config(port: u16, fallbacks: &str) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "trojan",
    "settings": {{"clients": [{{"password": "pw1", "email": "t@test"}}]{fallbacks}}}}}],
  "outbounds": [{{"protocol": "freedom"}}]}}"#
    )
}

fn client_config(entry: u16, target: SocketAddr, server: u16, password: &str) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {entry}, "protocol": "dokodemo-door",
    "settings": {{"address": "{}", "port": {}}}}}],
  "outbounds": [{{"protocol": "trojan", "settings": {{"servers": [{{"address": "127.0.0.1", "port": {server},
    "password": "{password}"}}]}}}}]}}"#,
        target.ip(),
        target.port()
    )
}

async fn check_sizes(entry: SocketAddr, what: &str) {
    for (i, n) in [1usize, 100, 65_536, 1 << 20].into_iter().enumerate() {
        let data = payload(n, 60 + i as u64);
        match tokio::time::timeout(Duration::from_secs(30), xor_exchange(entry, &data, false)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{what}: {n} bytes: {e}"),
            Err(_) => panic!("{what}: {n} bytes timed out"),
        }
    }
}

async fn pair(server: Impl, client: Impl) {
    let (echo, _t) = xor_echo_server().await;
    let dir = temp_dir(&format!("trojan-{server:?}-{client:?}"));
    let (sp, entry) = (free_port(), free_port());
    let _s = spawn_impl(server, "server", &dir, &server_config(sp, ""));
    let _c = spawn_impl(client, "client", &dir, &client_config(entry, echo, sp, "pw1"));
    assert!(wait_for_port(local(sp), Duration::from_secs(10)) && wait_for_port(local(entry), Duration::from_secs(10)));
    check_sizes(local(entry), &format!("{client:?} client → {server:?} server")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_to_oxray() {
    pair(Impl::Oxray, Impl::Oxray).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_v2ray_both_ways() {
    if v2ray().is_none() {
        return;
    }
    pair(Impl::V2ray, Impl::Oxray).await;
    pair(Impl::Oxray, Impl::V2ray).await;
}

async fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let _ = c.write_all(data).await;
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "connection held open");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_probes_and_server_first() {
    let (a, b) = (fallback_target("a").await, fallback_target("b").await);
    let dir = temp_dir("trojan-fallback");
    let (with_fb, plain) = (free_port(), free_port());
    let fb = format!(r#", "fallbacks": [{{"dest": {}}}, {{"path": "/ws", "dest": {}}}]"#, a.port(), b.port());
    let s1 = spawn_impl(Impl::Oxray, "fb", &dir, &server_config(with_fb, &fb));
    let s2 = spawn_impl(Impl::Oxray, "plain", &dir, &server_config(plain, ""));
    assert!(
        wait_for_port(local(with_fb), Duration::from_secs(10)) && wait_for_port(local(plain), Duration::from_secs(10))
    );
    let get =
        |p: &str| format!("GET {p} HTTP/1.1\r\nHost: some.host.example\r\nUser-Agent: probe/1.0\r\n\r\n").into_bytes();
    assert_eq!(exchange(local(with_fb), &get("/")).await, [b"FB-a got: ".to_vec(), get("/")].concat());
    assert_eq!(exchange(local(with_fb), &get("/ws")).await, [b"FB-b got: ".to_vec(), get("/ws")].concat());
    // A well-formed request with a wrong password goes to the fallback unchanged.
    let mut wrong = oxray::proxy::trojan::codec::password_hash("nope").to_vec();
    wrong.extend_from_slice(b"\r\n\x01\x01\x7f\x00\x00\x01\x00\x50\r\n\r\n\r\n");
    assert_eq!(exchange(local(with_fb), &wrong).await, [b"FB-a got: ".to_vec(), wrong.clone()].concat());
    // Without fallbacks: short input, wrong password and garbage are closed without a reply.
    let baseline = fd_count(s2.pid());
    for probe in [b"abc".to_vec(), wrong, payload(5000, 8), get("/")] {
        assert!(exchange(local(plain), &probe).await.is_empty());
    }
    let settled = wait_until(Duration::from_secs(5), || async { fd_count(s2.pid()) <= baseline }).await;
    assert!(settled, "descriptors leaked");
    drop(s1);
    // A server that speaks first (SMTP-like) works through the oxray client: the header is sent at once.
    let banner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let banner_addr = banner.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = banner.accept().await {
            let _ = c.write_all(b"220 banner\r\n").await;
            tokio::spawn(async move {
                let mut b = [0u8; 64];
                while matches!(c.read(&mut b).await, Ok(n) if n > 0) {}
            });
        }
    });
    let entry = free_port();
    let _c = spawn_impl(Impl::Oxray, "client", &dir, &client_config(entry, banner_addr, plain, "pw1"));
    assert!(wait_for_port(local(entry), Duration::from_secs(10)));
    let mut c = TcpStream::connect(local(entry)).await.unwrap();
    let mut got = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got)).await.expect("banner never came").unwrap();
    assert_eq!(&got, b"220 banner\r\n");
}
