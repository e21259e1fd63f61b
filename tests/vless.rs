//! VLESS: oxray ↔ oxray and oxray ↔ V2Ray 4.34 both ways (TCP and Mux, bytes checked through the XOR
//! echo), fallbacks (default, by path, PROXY v1/v2 headers) with curl and raw requests, a header split
//! across segments, and probes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UUID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";
const ID: [u8; 16] = [0x27, 0x84, 0x87, 0x39, 0x7e, 0x62, 0x41, 0x38, 0x9f, 0xd3, 0x09, 0x8a, 0x63, 0x96, 0x4b, 0x6b];

fn server_config(port: u16, fallbacks: &str) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "vless",
    "settings": {{"clients": [{{"id": "{UUID}", "email": "v@test"}}], "decryption": "none"{fallbacks}}}}}],
  "outbounds": [{{"protocol": "freedom"}}]}}"#
    )
}

fn client_config(entry: u16, target: SocketAddr, server: u16, mux: bool) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {entry}, "protocol": "dokodemo-door",
    "settings": {{"address": "{}", "port": {}}}}}],
  "outbounds": [{{"protocol": "vless", "mux": {{"enabled": {mux}}}, "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {server},
    "users": [{{"id": "{UUID}", "encryption": "none"}}]}}]}}}}]}}"#,
        target.ip(),
        target.port()
    )
}

async fn check_sizes(entry: SocketAddr, what: &str) {
    for (i, n) in [1usize, 100, 65_536, 1 << 20].into_iter().enumerate() {
        let data = payload(n, 30 + i as u64);
        match tokio::time::timeout(Duration::from_secs(30), xor_exchange(entry, &data, false)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{what}: {n} bytes: {e}"),
            Err(_) => panic!("{what}: {n} bytes timed out"),
        }
    }
}

async fn pair(server: Impl, client: Impl, mux: bool) {
    let (echo, _t) = xor_echo_server().await;
    let dir = temp_dir(&format!("vless-{server:?}-{client:?}-{mux}"));
    let (sp, entry) = (free_port(), free_port());
    let _s = spawn_impl(server, "server", &dir, &server_config(sp, ""));
    let _c = spawn_impl(client, "client", &dir, &client_config(entry, echo, sp, mux));
    assert!(wait_for_port(local(sp), Duration::from_secs(10)) && wait_for_port(local(entry), Duration::from_secs(10)));
    check_sizes(local(entry), &format!("{client:?} client → {server:?} server, mux {mux}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_to_oxray_tcp_and_mux() {
    pair(Impl::Oxray, Impl::Oxray, false).await;
    pair(Impl::Oxray, Impl::Oxray, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_v2ray_both_ways() {
    if v2ray().is_none() {
        return;
    }
    pair(Impl::V2ray, Impl::Oxray, false).await;
    pair(Impl::Oxray, Impl::V2ray, false).await;
    pair(Impl::Oxray, Impl::V2ray, true).await;
    pair(Impl::V2ray, Impl::Oxray, true).await;
}

async fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(data).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await.expect("no answer").ok();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_by_path_with_proxy_headers() {
    let (a, b, c) = (fallback_target("a").await, fallback_target("b").await, fallback_target("c").await);
    let dir = temp_dir("vless-fallback");
    let sp = free_port();
    let fb = format!(
        r#", "fallbacks": [{{"dest": {}}}, {{"path": "/ws", "dest": "127.0.0.1:{}", "xver": 1}}, {{"path": "/v2", "dest": "{}", "xver": 2}}]"#,
        a.port(),
        b.port(),
        c.port()
    );
    let _s = spawn_impl(Impl::Oxray, "server", &dir, &server_config(sp, &fb));
    assert!(wait_for_port(local(sp), Duration::from_secs(10)));
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
    assert_eq!(exchange(local(sp), &get("/")).await, [b"FB-a got: ".to_vec(), get("/")].concat());
    assert_eq!(exchange(local(sp), &get("/ws?ed=2048")).await, [b"FB-a got: ".to_vec(), get("/ws?ed=2048")].concat());
    let ws = exchange(local(sp), &get("/ws")).await;
    let text = String::from_utf8_lossy(&ws);
    assert!(text.starts_with("FB-b got: PROXY TCP4 127.0.0.1 127.0.0.1 "), "{text}");
    assert!(ws.ends_with(&get("/ws")), "{text}");
    let v2 = exchange(local(sp), &get("/v2")).await;
    assert!(v2.starts_with(b"FB-c got: \x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x21\x11\x00\x0c"));
    assert!(v2.ends_with(&get("/v2")));
    // A VLESS header with an unknown user goes to the default fallback unchanged.
    let mut stranger = vec![0u8];
    stranger.extend_from_slice(&[7u8; 16]);
    stranger.extend_from_slice(b"\x00\x01\x00\x50\x01\x7f\x00\x00\x01\r\n\r\n");
    assert_eq!(exchange(local(sp), &stranger).await, [b"FB-a got: ".to_vec(), stranger].concat());
    // curl against the port sees the fallback web site.
    if let Some(curl) = curl() {
        let web = http_server(b"the web site".to_vec()).await;
        let dir2 = temp_dir("vless-fallback-web");
        let sp2 = free_port();
        let _s2 = spawn_impl(
            Impl::Oxray,
            "server",
            &dir2,
            &server_config(sp2, &format!(r#", "fallbacks": [{{"dest": {}}}]"#, web.port())),
        );
        assert!(wait_for_port(local(sp2), Duration::from_secs(10)));
        let mut cmd = std::process::Command::new(curl);
        cmd.args(["-s", "--max-time", "10", &format!("http://127.0.0.1:{sp2}/")]);
        let o = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
        assert_eq!(o.stdout, b"the web site");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_header_is_still_vless_and_probes_get_nothing() {
    let (echo, _t) = xor_echo_server().await;
    let fb = fallback_target("fb").await;
    let dir = temp_dir("vless-split");
    let (with_fb, plain) = (free_port(), free_port());
    let s1 = spawn_impl(
        Impl::Oxray,
        "fb",
        &dir,
        &server_config(with_fb, &format!(r#", "fallbacks": [{{"dest": {}}}]"#, fb.port())),
    );
    let s2 = spawn_impl(Impl::Oxray, "plain", &dir, &server_config(plain, ""));
    assert!(
        wait_for_port(local(with_fb), Duration::from_secs(10)) && wait_for_port(local(plain), Duration::from_secs(10))
    );
    let mut req = vec![0u8];
    req.extend_from_slice(&ID);
    req.extend_from_slice(&[0, 1]);
    req.extend_from_slice(&echo.port().to_be_bytes());
    req.extend_from_slice(&[1, 127, 0, 0, 1]);
    for port in [with_fb, plain] {
        let mut c = TcpStream::connect(local(port)).await.unwrap();
        c.set_nodelay(true).unwrap();
        c.write_all(&req[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await; // a second segment, as a slow client sends it
        c.write_all(&req[10..]).await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
            .await
            .expect("split header not served")
            .unwrap();
        assert_eq!(got, [0, 0, b'h' ^ XOR, b'i' ^ XOR], "port {port}");
    }
    let baseline = (fd_count(s1.pid()), fd_count(s2.pid()));
    // Without fallbacks: a wrong user or garbage is closed at once, with no reply.
    let mut wrong = req.clone();
    wrong[5] ^= 1;
    for probe in [wrong, payload(3000, 4), vec![1, 2, 3]] {
        let mut c = TcpStream::connect(local(plain)).await.unwrap();
        let _ = c.write_all(&probe).await;
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "probe held open");
        assert!(got.is_empty(), "probe got {} bytes", got.len());
    }
    let settled = wait_until(Duration::from_secs(5), || async {
        fd_count(s1.pid()) <= baseline.0 && fd_count(s2.pid()) <= baseline.1
    })
    .await;
    assert!(settled, "descriptors leaked");
}
