//! The http inbound and outbound: real curl (`-x http://`, with and without auth, `-p` tunnels)
//! through an oxray http inbound to a local web server, the request rewriting and keep-alive rules on
//! raw sockets, interop with V2Ray 4.34 both ways, CONNECT sent at once, and probes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn oxray_http_config(open: u16, auth: u16, transparent: u16) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "debug"}},
  "inbounds": [
    {{"tag": "open", "listen": "127.0.0.1", "port": {open}, "protocol": "http", "settings": {{"timeout": 30}}}},
    {{"tag": "auth", "listen": "127.0.0.1", "port": {auth}, "protocol": "http",
      "settings": {{"accounts": [{{"user": "u1", "pass": "p1"}}]}}}},
    {{"tag": "tr", "listen": "127.0.0.1", "port": {transparent}, "protocol": "http",
      "settings": {{"allowTransparent": true}}}}
  ],
  "outbounds": [{{"protocol": "freedom", "tag": "direct"}}]
}}"#
    )
}

/// curl with `args` + `url`; returns exit code, HTTP status printed by `-w` and the body bytes.
async fn curl_get(curl: &Path, args: &[String], url: &str, out: &Path) -> (i32, String, Vec<u8>) {
    let _ = std::fs::remove_file(out);
    let mut cmd = std::process::Command::new(curl);
    cmd.args(["-s", "--max-time", "20", "-w", "%{http_code}", "-o"]).arg(out).args(args).arg(url);
    let o = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("run curl");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        std::fs::read(out).unwrap_or_default(),
    )
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

struct Ports {
    open: u16,
    auth: u16,
    tr: u16,
}

fn start_oxray(dir: &Path) -> (Proc, Ports) {
    let p = Ports { open: free_port(), auth: free_port(), tr: free_port() };
    let ox = spawn_impl(Impl::Oxray, "oxray", dir, &oxray_http_config(p.open, p.auth, p.tr));
    for port in [p.open, p.auth, p.tr] {
        assert!(wait_for_port(local(port), Duration::from_secs(10)), "oxray did not listen on {port}");
    }
    (ox, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_http_inbound() {
    let Some(curl) = curl() else { return };
    let body = payload(300_000, 11);
    let web = http_server(body.clone()).await;
    let dir = temp_dir("http-curl");
    let (_ox, p) = start_oxray(&dir);
    let out = dir.join("out.bin");
    let url = format!("http://localhost:{}/index.html", web.port());
    let cases: Vec<Vec<String>> = vec![
        s(&["-x", &format!("http://127.0.0.1:{}", p.open)]),
        s(&["-p", "-x", &format!("http://127.0.0.1:{}", p.open)]),
        s(&["-x", &format!("http://u1:p1@127.0.0.1:{}", p.auth)]),
        s(&["-p", "-x", &format!("http://u1:p1@127.0.0.1:{}", p.auth)]),
    ];
    for args in &cases {
        let (code, status, got) = curl_get(&curl, args, &url, &out).await;
        assert_eq!((code, status.as_str()), (0, "200"), "curl {args:?}");
        assert!(got == body, "curl {args:?}: {} bytes, body differs", got.len());
    }
    for args in
        [s(&["-x", &format!("http://127.0.0.1:{}", p.auth)]), s(&["-x", &format!("http://u1:zz@127.0.0.1:{}", p.auth)])]
    {
        let (_, status, _) = curl_get(&curl, &args, &url, &out).await;
        assert_eq!(status, "407", "curl {args:?}");
    }
    // Two URLs in one curl run: the second reuses the kept-alive connection and still gets its bytes.
    let mut cmd = std::process::Command::new(&curl);
    cmd.args(["-s", "-v", "--max-time", "20", "-x", &format!("http://127.0.0.1:{}", p.open), &url, &url]);
    let o = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    assert!(o.status.success());
    assert!(o.stdout == [body.clone(), body.clone()].concat(), "two bodies expected");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Re-using existing connection"), "curl did not reuse the connection:\n{err}");
}

/// An upstream that reports each request head it receives and answers with `answer`.
async fn capture_server(answer: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut b = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&b[..n]),
                    }
                }
                let _ = tx.send(got);
                let _ = c.write_all(answer).await;
                let _ = c.shutdown().await;
            });
        }
    });
    (addr, rx)
}

async fn read_response(c: &mut TcpStream, body_len: usize) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
            && got.len() >= end + 4 + body_len
        {
            break;
        }
        let n =
            tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await.expect("response timed out").unwrap();
        assert!(n > 0, "closed early after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    String::from_utf8(got).unwrap()
}

async fn closed_within(c: &mut TcpStream, d: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(d, c.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_forwarding_rewrites_and_keeps_alive_honestly() {
    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Up\r\nX-Up: 1\r\nKeep-Alive: timeout=99\r\n\r\nhello";
    let (up, mut seen) = capture_server(ANSWER).await;
    let dir = temp_dir("http-raw");
    let (_ox, p) = start_oxray(&dir);
    let mut c = TcpStream::connect(local(p.open)).await.unwrap();
    let req = format!(
        "GET http://127.0.0.1:{}/a?q=1 HTTP/1.1\r\nHost: elsewhere\r\nx-keep: yes\r\nConnection: X-Drop\r\nX-Drop: 1\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\r\n",
        up.port()
    );
    for round in 0..2 {
        c.write_all(req.as_bytes()).await.unwrap();
        let resp = read_response(&mut c, 5).await;
        assert_eq!(
            resp,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\nProxy-Connection: keep-alive\r\n\r\nhello",
            "round {round}"
        );
        let head = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            format!("GET /a?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nX-Keep: yes\r\n\r\n", up.port())
        );
    }
    // HTTP/1.0 without keep-alive: told "close", and closed.
    let mut c = TcpStream::connect(local(p.open)).await.unwrap();
    c.write_all(format!("GET http://127.0.0.1:{}/ HTTP/1.0\r\n\r\n", up.port()).as_bytes()).await.unwrap();
    let resp = read_response(&mut c, 5).await;
    assert!(resp.contains("\r\nConnection: close\r\n") && resp.ends_with("hello"), "{resp}");
    assert!(closed_within(&mut c, Duration::from_secs(5)).await);
    let head = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap();
    assert!(head.starts_with(b"GET / HTTP/1.1\r\n"), "an HTTP/1.0 request goes upstream as HTTP/1.1");
    // Origin form: 400 without allowTransparent, forwarded by Host with it.
    let origin = format!("GET /t HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", up.port());
    let mut c = TcpStream::connect(local(p.open)).await.unwrap();
    c.write_all(origin.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(
        got,
        b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let mut c = TcpStream::connect(local(p.tr)).await.unwrap();
    c.write_all(origin.as_bytes()).await.unwrap();
    assert!(read_response(&mut c, 5).await.ends_with("hello"));
    let head = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap();
    assert!(head.starts_with(b"GET /t HTTP/1.1\r\n"));
    // No upstream: 503.
    let dead = free_port();
    let mut c = TcpStream::connect(local(p.open)).await.unwrap();
    c.write_all(format!("GET http://127.0.0.1:{dead}/ HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n");
    // A POST body (Content-Length) and a chunked upload reach the upstream whole.
    let (echo_up, _t) = body_echo_server().await;
    for (framing, body) in [
        ("Content-Length: 11\r\n", b"hello world".to_vec()),
        ("Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec()),
    ] {
        let mut c = TcpStream::connect(local(p.open)).await.unwrap();
        let head = format!("POST http://127.0.0.1:{}/up HTTP/1.1\r\n{framing}\r\n", echo_up.port());
        c.write_all(&[head.as_bytes(), &body].concat()).await.unwrap();
        let resp = read_response(&mut c, 11).await;
        assert!(resp.ends_with("hello world"), "{framing}: {resp}");
    }
}

/// An upstream that reads one request with a Content-Length or chunked body and answers with the body.
async fn body_echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut b = [0u8; 4096];
                let body = loop {
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        let rest = &got[end + 4..];
                        if head.contains("content-length: 11") && rest.len() >= 11 {
                            break rest[..11].to_vec();
                        }
                        if head.contains("transfer-encoding: chunked") && rest.ends_with(b"0\r\n\r\n") {
                            break b"hello world".to_vec();
                        }
                    }
                    match c.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&b[..n]),
                    }
                };
                let _ =
                    c.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).await;
                let _ = c.write_all(&body).await;
            });
        }
    });
    (addr, t)
}

fn v2ray_http_server(port: u16) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "http",
    "settings": {{"accounts": [{{"user": "u1", "pass": "p1"}}]}}}}],
  "outbounds": [{{"protocol": "freedom"}}]}}"#
    )
}

fn http_client(entry: u16, target: SocketAddr, server: u16) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {entry}, "protocol": "dokodemo-door",
    "settings": {{"address": "{}", "port": {}}}}}],
  "outbounds": [{{"protocol": "http", "settings": {{"servers": [{{"address": "127.0.0.1", "port": {server},
    "users": [{{"user": "u1", "pass": "p1"}}]}}]}}}}]}}"#,
        target.ip(),
        target.port()
    )
}

async fn check_tcp(entry: SocketAddr, what: &str) {
    for (i, n) in [1usize, 17, 65_536, 1 << 20].into_iter().enumerate() {
        let data = payload(n, 190 + i as u64);
        match tokio::time::timeout(Duration::from_secs(20), xor_exchange(entry, &data, false)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{what}: {n} bytes: {e}"),
            Err(_) => panic!("{what}: {n} bytes timed out"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_with_v2ray_both_ways() {
    if v2ray().is_none() {
        return;
    }
    let (echo, _t) = xor_echo_server().await;
    let dir = temp_dir("http-interop");
    let (v2_server, ox_entry) = (free_port(), free_port());
    let _v2 = spawn_impl(Impl::V2ray, "v2ray-server", &dir, &v2ray_http_server(v2_server));
    let _ox = spawn_impl(Impl::Oxray, "oxray-client", &dir, &http_client(ox_entry, echo, v2_server));
    let (_ox2, p) = start_oxray(&dir);
    let v2_entry = free_port();
    let _v2c = spawn_impl(Impl::V2ray, "v2ray-client", &dir, &http_client(v2_entry, echo, p.auth));
    for port in [v2_server, ox_entry, v2_entry] {
        assert!(wait_for_port(local(port), Duration::from_secs(10)));
    }
    check_tcp(local(ox_entry), "oxray http out → v2ray http in").await;
    check_tcp(local(v2_entry), "v2ray http out → oxray http in").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_sends_connect_at_once_for_server_first_protocols() {
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
    let dir = temp_dir("http-banner");
    let (_ox, p) = start_oxray(&dir);
    let entry = free_port();
    let _c = spawn_impl(Impl::Oxray, "client", &dir, &http_client(entry, banner_addr, p.auth));
    assert!(wait_for_port(local(entry), Duration::from_secs(10)));
    let mut c = TcpStream::connect(local(entry)).await.unwrap();
    let mut got = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
        .await
        .expect("the banner did not arrive before the client wrote")
        .unwrap();
    assert_eq!(&got, b"220 banner\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_get_no_reply_and_leak_nothing() {
    let dir = temp_dir("http-probe");
    let (ox, p) = start_oxray(&dir);
    let web = http_server(b"still serving".to_vec()).await;
    let baseline = fd_count(ox.pid());
    let probes: Vec<(Vec<u8>, bool)> = vec![
        (payload(3000, 5), true),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(), false),
        (b"GET / SPDY/3\r\n\r\n".to_vec(), false),
        (b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x".to_vec(), true), // truncated head
        (vec![b'A'; 70_000], false),                                     // head too long
    ];
    for (i, (probe, half_close)) in probes.iter().enumerate() {
        let mut c = TcpStream::connect(local(p.open)).await.unwrap();
        let _ = c.write_all(probe).await;
        if *half_close {
            c.shutdown().await.unwrap();
        }
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "probe {i}: connection kept open");
        assert!(got.is_empty(), "probe {i}: got a reply {:?}", String::from_utf8_lossy(&got));
    }
    let settled = wait_until(Duration::from_secs(5), || async { fd_count(ox.pid()) <= baseline }).await;
    assert!(settled, "descriptors: {} before, {} after", baseline, fd_count(ox.pid()));
    let mut c = TcpStream::connect(local(p.open)).await.unwrap();
    c.write_all(format!("GET http://127.0.0.1:{}/ HTTP/1.1\r\n\r\n", web.port()).as_bytes()).await.unwrap();
    assert!(read_response(&mut c, 13).await.ends_with("still serving"));
}
