//! The socks inbound and outbound: real curl (`--socks5-hostname`, `--socks5`, `--socks4a`, `--socks4`,
//! with and without `-U`) through an oxray socks inbound to a local web server, a SOCKS5 UDP ASSOCIATE
//! client against a UDP echo, interop with V2Ray 4.34 in both directions (TCP and UDP), and probes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const BODY_LEN: usize = 300_000;

fn oxray_socks_config(open: u16, pass: u16) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "debug"}},
  "inbounds": [
    {{"tag": "open", "listen": "127.0.0.1", "port": {open}, "protocol": "socks",
      "settings": {{"auth": "noauth", "udp": true}}}},
    {{"tag": "pass", "listen": "127.0.0.1", "port": {pass}, "protocol": "socks",
      "settings": {{"auth": "password", "accounts": [{{"user": "u1", "pass": "p1"}}], "udp": true, "userLevel": 0}}}}
  ],
  "outbounds": [{{"protocol": "freedom", "tag": "direct"}}]
}}"#
    )
}

/// Runs curl with `args` + `url`, output to a file; returns the exit code and the bytes received.
async fn curl_get(curl: &Path, args: &[String], url: &str, out: &Path) -> (i32, Vec<u8>) {
    let _ = std::fs::remove_file(out);
    let mut cmd = std::process::Command::new(curl);
    cmd.args(["-s", "--max-time", "20", "-o"]).arg(out).args(args).arg(url);
    let status = tokio::task::spawn_blocking(move || cmd.status()).await.expect("join").expect("run curl");
    (status.code().unwrap_or(-1), std::fs::read(out).unwrap_or_default())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_socks_inbound() {
    let Some(curl) = curl() else { return };
    let body = payload(BODY_LEN, 7);
    let web = http_server(body.clone()).await;
    let dir = temp_dir("socks-curl");
    let (open, pass) = (free_port(), free_port());
    let _ox = spawn_impl(Impl::Oxray, "oxray", &dir, &oxray_socks_config(open, pass));
    assert!(wait_for_port(local(open), Duration::from_secs(10)) && wait_for_port(local(pass), Duration::from_secs(5)));
    let out = dir.join("out.bin");
    let by_name = format!("http://localhost:{}/index.html", web.port());
    let by_ip = format!("http://127.0.0.1:{}/index.html", web.port());
    let ok_cases: Vec<(Vec<String>, &str)> = vec![
        (s(&["--socks5-hostname", &format!("127.0.0.1:{open}")]), &by_name),
        (s(&["--socks5", &format!("127.0.0.1:{open}")]), &by_name),
        (s(&["--socks4a", &format!("127.0.0.1:{open}")]), &by_name),
        (s(&["--socks4", &format!("127.0.0.1:{open}")]), &by_ip),
        (s(&["--socks5-hostname", &format!("127.0.0.1:{pass}"), "-U", "u1:p1"]), &by_name),
        (s(&["-x", &format!("socks5h://u1:p1@127.0.0.1:{pass}")]), &by_name),
    ];
    for (args, url) in &ok_cases {
        let (code, got) = curl_get(&curl, args, url, &out).await;
        assert_eq!(code, 0, "curl {args:?} {url}");
        assert!(got == body, "curl {args:?}: {} bytes, body differs", got.len());
    }
    let refused: Vec<Vec<String>> = vec![
        s(&["--socks5-hostname", &format!("127.0.0.1:{pass}"), "-U", "u1:zz"]),
        s(&["--socks5-hostname", &format!("127.0.0.1:{pass}")]),
        s(&["--socks4a", &format!("127.0.0.1:{pass}")]),
    ];
    for args in &refused {
        let (code, got) = curl_get(&curl, args, &by_name, &out).await;
        assert_eq!(code, 97, "curl {args:?} must fail in the proxy handshake");
        assert!(got.is_empty());
    }
}

/// SOCKS5 greeting (no auth) and a request; returns the connection and the reply.
async fn socks5_request(proxy: SocketAddr, request: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut c = TcpStream::connect(proxy).await.expect("connect socks");
    c.write_all(&[5, 1, 0]).await.unwrap();
    let mut m = [0u8; 2];
    c.read_exact(&mut m).await.unwrap();
    assert_eq!(m, [5, 0]);
    c.write_all(request).await.unwrap();
    let mut reply = vec![0u8; 10];
    c.read_exact(&mut reply).await.unwrap();
    (c, reply)
}

async fn recv_within(sock: &UdpSocket, d: Duration) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 65536];
    match tokio::time::timeout(d, sock.recv(&mut b)).await {
        Ok(Ok(n)) => Some(b[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_associate_relays_for_associated_clients_only() {
    let echo = udp_xor_echo().await;
    let dir = temp_dir("socks-udp");
    let (open, pass) = (free_port(), free_port());
    let _ox = spawn_impl(Impl::Oxray, "oxray", &dir, &oxray_socks_config(open, pass));
    assert!(wait_for_port(local(open), Duration::from_secs(10)));
    let (assoc, reply) = socks5_request(local(open), &[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    // A loopback client is told its own address (4.34's rule) and the inbound's port.
    let mut want = vec![5, 0, 0, 1, 127, 0, 0, 1];
    want.extend_from_slice(&open.to_be_bytes());
    assert_eq!(reply, want);
    let relay = local(open);
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(relay).await.unwrap();
    for (i, n) in [1usize, 100, 1400, 8000].into_iter().enumerate() {
        let data = payload(n, 40 + i as u64);
        // By IP and by name: the reply header echoes the destination as written.
        for host in [&b"\x01\x7f\x00\x00\x01"[..], &b"\x03\x09localhost"[..]] {
            let mut d = vec![0, 0, 0];
            d.extend_from_slice(host);
            d.extend_from_slice(&echo.port().to_be_bytes());
            let header_len = d.len();
            d.extend_from_slice(&data);
            udp.send(&d).await.unwrap();
            let got = recv_within(&udp, Duration::from_secs(5)).await.expect("UDP reply through the association");
            assert_eq!(&got[..header_len], &d[..header_len], "reply header");
            assert!(got[header_len..].iter().zip(&data).all(|(g, d)| *g == d ^ XOR) && got.len() == d.len());
        }
    }
    // FRAG ≠ 0 is dropped; so is anything from an IP without an association (127.0.0.2).
    let mut frag = vec![0, 0, 1, 1, 127, 0, 0, 1];
    frag.extend_from_slice(&echo.port().to_be_bytes());
    frag.extend_from_slice(b"x");
    udp.send(&frag).await.unwrap();
    let stranger = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    stranger.connect(relay).await.unwrap();
    let mut d = vec![0, 0, 0, 1, 127, 0, 0, 1];
    d.extend_from_slice(&echo.port().to_be_bytes());
    d.extend_from_slice(b"not associated");
    stranger.send(&d).await.unwrap();
    assert_eq!(recv_within(&stranger, Duration::from_secs(1)).await, None, "relayed without an association");
    assert_eq!(recv_within(&udp, Duration::from_millis(200)).await, None, "FRAG=1 was relayed");
    // UDP ASSOCIATE on an inbound without `udp`, and BIND: "command not supported".
    drop(assoc);
}

fn v2ray_socks_server(port: u16, udp: bool) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "socks",
    "settings": {{"auth": "password", "accounts": [{{"user": "u1", "pass": "p1"}}], "udp": {udp}}}}}],
  "outbounds": [{{"protocol": "freedom"}}]}}"#
    )
}

fn socks_client(entry: u16, target: SocketAddr, server: u16, network: &str) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {entry}, "protocol": "dokodemo-door",
    "settings": {{"address": "{}", "port": {}, "network": "{network}"}}}}],
  "outbounds": [{{"protocol": "socks", "settings": {{"servers": [{{"address": "127.0.0.1", "port": {server},
    "users": [{{"user": "u1", "pass": "p1"}}]}}]}}}}]}}"#,
        target.ip(),
        target.port()
    )
}

async fn check_tcp(entry: SocketAddr, what: &str) {
    for (i, n) in [1usize, 17, 65_536, 1 << 20].into_iter().enumerate() {
        let data = payload(n, 90 + i as u64);
        match tokio::time::timeout(Duration::from_secs(20), xor_exchange(entry, &data, false)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{what}: {n} bytes: {e}"),
            Err(_) => panic!("{what}: {n} bytes timed out"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_socks_outbound_to_v2ray_socks_inbound() {
    if v2ray().is_none() {
        return;
    }
    let (echo, _t) = xor_echo_server().await;
    let udp_echo = udp_xor_echo().await;
    let dir = temp_dir("socks-ox-to-v2");
    let (server, entry) = (free_port(), free_port());
    let _v2 = spawn_impl(Impl::V2ray, "v2ray", &dir, &v2ray_socks_server(server, true));
    let _ox = spawn_impl(Impl::Oxray, "oxray", &dir, &socks_client(entry, echo, server, "tcp"));
    assert!(
        wait_for_port(local(server), Duration::from_secs(10)) && wait_for_port(local(entry), Duration::from_secs(10))
    );
    check_tcp(local(entry), "oxray socks out → v2ray socks in").await;
    // UDP through the outbound itself (dokodemo UDP is another issue's work).
    use oxray::config::{ProxyClientConfig, ProxyServer, ProxyUser};
    use oxray::proxy::Outbound;
    use oxray::session::{Address, Destination, Session};
    let ob = oxray::proxy::socks::SocksOutbound::new(
        ProxyClientConfig {
            servers: vec![ProxyServer {
                address: Address::parse("127.0.0.1"),
                port: server,
                users: vec![ProxyUser { user: "u1".into(), pass: "p1".into(), level: 0 }],
            }],
        },
        &oxray::transport::StreamSettings::default(),
        None,
    );
    let session = Session::new(None, None, Destination::udp(Address::parse("127.0.0.1"), udp_echo.port()));
    let conn = ob.connect_packet(&session).await.expect("UDP ASSOCIATE through V2Ray");
    for (i, &n) in DATAGRAMS.iter().enumerate() {
        let data = payload(n, 300 + i as u64);
        conn.send(bytes::Bytes::from(data.clone())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), conn.recv())
            .await
            .unwrap_or_else(|_| panic!("datagram {n} timed out"))
            .unwrap()
            .expect("flow ended");
        assert!(got.len() == n && got.iter().zip(&data).all(|(g, d)| *g == d ^ XOR), "datagram {n} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2ray_socks_outbound_to_oxray_socks_inbound() {
    if v2ray().is_none() {
        return;
    }
    let (echo, _t) = xor_echo_server().await;
    let udp_echo = udp_xor_echo().await;
    let dir = temp_dir("socks-v2-to-ox");
    let (open, server, entry, udp_entry) = (free_port(), free_port(), free_port(), free_port());
    let _ox = spawn_impl(Impl::Oxray, "oxray", &dir, &oxray_socks_config(open, server));
    let _v2 = spawn_impl(Impl::V2ray, "v2ray", &dir, &socks_client(entry, echo, server, "tcp"));
    let _v2u = spawn_impl(Impl::V2ray, "v2ray-udp", &dir, &socks_client(udp_entry, udp_echo, server, "udp"));
    assert!(
        wait_for_port(local(server), Duration::from_secs(10)) && wait_for_port(local(entry), Duration::from_secs(10))
    );
    check_tcp(local(entry), "v2ray socks out → oxray socks in").await;
    // UDP: V2Ray's client holds the TCP association open and sends datagrams to the reply address.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(local(udp_entry)).await.unwrap();
    let mut ok = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // The dokodemo UDP port has no "listening" signal: send until the first echo (bounded), then check all.
    while !ok && std::time::Instant::now() < deadline {
        udp.send(b"ping").await.unwrap();
        ok = recv_within(&udp, Duration::from_millis(300)).await.is_some_and(|g| g == b"ping".map(|b| b ^ XOR));
    }
    assert!(ok, "no UDP echo through V2Ray's socks outbound and oxray's socks inbound");
    for (i, &n) in DATAGRAMS.iter().enumerate() {
        let data = payload(n, 500 + i as u64);
        udp.send(&data).await.unwrap();
        let got = recv_within(&udp, Duration::from_secs(5)).await.unwrap_or_else(|| panic!("datagram {n} lost"));
        assert!(got.len() == n && got.iter().zip(&data).all(|(g, d)| *g == d ^ XOR), "datagram {n} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_get_no_reply_and_leak_nothing() {
    let Some(curl) = curl() else { return };
    let web = http_server(b"still serving".to_vec()).await;
    let dir = temp_dir("socks-probe");
    let (open, pass) = (free_port(), free_port());
    let ox = spawn_impl(Impl::Oxray, "oxray", &dir, &oxray_socks_config(open, pass));
    assert!(wait_for_port(local(open), Duration::from_secs(10)));
    let baseline = fd_count(ox.pid());
    let probes: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        payload(1000, 3).into_iter().map(|b| b | 0x80).collect(),
        vec![9, 9, 9],
        vec![5, 1, 0, 5, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80], // bad domain: silent close
        vec![4, 1, 0, 80, 0, 0, 0, 1, b'u'],                   // truncated SOCKS4a
        vec![5, 200],                                          // truncated method list
    ];
    for (i, p) in probes.iter().enumerate() {
        let mut c = TcpStream::connect(local(open)).await.unwrap();
        c.write_all(p).await.unwrap();
        if i >= 4 {
            // Truncated: the client gives up; the server must notice and free the connection.
            c.shutdown().await.unwrap();
        }
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
        assert!(r.is_ok(), "probe {i}: server kept the connection open");
        let expect: &[u8] = if i == 3 { &[5, 0] } else { &[] };
        assert_eq!(got, expect, "probe {i}: unexpected reply");
    }
    let settled = wait_until(Duration::from_secs(5), || async { fd_count(ox.pid()) <= baseline }).await;
    assert!(settled, "descriptors: {} before, {} after the probes", baseline, fd_count(ox.pid()));
    let out = dir.join("out.bin");
    let url = format!("http://127.0.0.1:{}/", web.port());
    let (code, got) = curl_get(&curl, &s(&["--socks5", &format!("127.0.0.1:{open}")]), &url, &out).await;
    assert_eq!((code, got.as_slice()), (0, &b"still serving"[..]));
}
