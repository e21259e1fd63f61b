//! The reverse proxy over WebSocket and TLS: the seed's reverse and routing objects unchanged, only the
//! interconn `streamSettings` differ. Every oxray/V2Ray pairing over ws+tls, oxray over ws and tls, and
//! behind a real nginx that terminates TLS and proxies the WebSocket path to the portal (TRANSPORTS.md §8.1).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::pki::Pki;
use common::*;

const UUID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";

static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn portal_config(external: u16, interconn: u16, stream: &str) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "warning"}},
  "reverse": {{"portals": [{{"tag": "portal", "domain": "test.v2fly.org", "internalDomain": "reverse.internal.v2ray.com"}}]}},
  "inbounds": [
    {{"tag": "external", "listen": "127.0.0.1", "port": {external}, "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1", "port": 80, "network": "tcp"}}}},
    {{"tag": "interconn", "listen": "127.0.0.1", "port": {interconn}, "protocol": "vmess",
      "settings": {{"clients": [{{"id": "{UUID}", "email": "bridge1"}}]}}, "streamSettings": {stream}}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["external"], "outboundTag": "portal"}},
    {{"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"}}
  ]}}
}}"#
    )
}

fn bridge_config(portal: u16, service: u16, stream: &str) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "warning"}},
  "reverse": {{"bridges": [{{"tag": "bridge", "domain": "test.v2fly.org"}}]}},
  "outbounds": [
    {{"tag": "out", "protocol": "freedom", "settings": {{"redirect": "127.0.0.1:{service}"}}}},
    {{"protocol": "vmess", "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {portal}, "users": [{{"id": "{UUID}"}}]}}]}},
      "tag": "interconn", "streamSettings": {stream}}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["bridge"], "domain": ["full:test.v2fly.org"], "outboundTag": "interconn"}},
    {{"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"}}
  ]}}
}}"#
    )
}

/// Visitors through the portal's public port: first traffic, then 8 concurrent 1 MiB exchanges and
/// sizes around frame boundaries, every byte checked.
async fn visit(public: SocketAddr, half_close: bool, what: &str, logs: &dyn Fn() -> String) {
    let t0 = std::time::Instant::now();
    until_traffic(public, Duration::from_secs(20)).await.unwrap_or_else(|| panic!("{what}: no traffic\n{}", logs()));
    eprintln!("{what}: first traffic after {:?}", t0.elapsed());
    let mut tasks = Vec::new();
    for (i, size) in
        [1usize, 2047, 2048, 2049, 16384, 16385, 1 << 20, 1 << 20, 1 << 20, 1 << 20].into_iter().enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let data = payload(size, 900 + i as u64);
            (size, tokio::time::timeout(Duration::from_secs(60), xor_exchange(public, &data, half_close)).await)
        }));
    }
    for t in tasks {
        match t.await.unwrap() {
            (_, Ok(Ok(()))) => {}
            (size, Ok(Err(e))) => panic!("{what}: {size} bytes: {e}\n{}", logs()),
            (size, Err(_)) => panic!("{what}: {size} bytes timed out\n{}", logs()),
        }
    }
    eprintln!("{what}: ok after {:?}", t0.elapsed());
}

fn tls_stream(ws: bool, tls: Option<String>) -> String {
    let mut parts = Vec::new();
    if ws {
        parts.push(r#""network": "ws", "wsSettings": {"path": "/tunnel"}"#.to_string());
    }
    if let Some(t) = tls {
        parts.push(format!(r#""security": "tls", "tlsSettings": {t}"#));
    }
    format!("{{{}}}", parts.join(", "))
}

async fn pairing(bridge_impl: Impl, portal_impl: Impl, ws: bool, tls: bool) {
    if (bridge_impl == Impl::V2ray || portal_impl == Impl::V2ray) && v2ray().is_none() {
        return;
    }
    let _heavy = HEAVY.lock().await;
    let dir = temp_dir(&format!("reverse-tr-{bridge_impl:?}-{portal_impl:?}-{ws}-{tls}"));
    let pki = Pki::new(&dir);
    let (echo, _task) = xor_echo_server().await;
    let (external, interconn) = (free_port(), free_port());
    let portal_stream = tls_stream(ws, tls.then(|| pki.server_tls()));
    let bridge_stream = tls_stream(ws, tls.then(|| pki.client_tls()));
    let portal = spawn_impl(portal_impl, "portal", &dir, &portal_config(external, interconn, &portal_stream));
    let bridge = spawn_impl(bridge_impl, "bridge", &dir, &bridge_config(interconn, echo.port(), &bridge_stream));
    let logs = || format!("--- bridge\n{}\n--- portal\n{}", bridge.log_text(), portal.log_text());
    let what = format!("{bridge_impl:?} bridge → {portal_impl:?} portal, ws={ws} tls={tls}");
    // V2Ray 4.34's portal loses the answer of a half-closed session: only oxray pairs half-close.
    let half_close = bridge_impl == Impl::Oxray && portal_impl == Impl::Oxray;
    visit(local(external), half_close, &what, &logs).await;
    for p in [&portal, &bridge] {
        assert!(!p.log_text().contains("panic"), "{what}: {} panicked\n{}", p.name, logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_pair_over_ws_tls_ws_and_tls() {
    pairing(Impl::Oxray, Impl::Oxray, true, true).await;
    pairing(Impl::Oxray, Impl::Oxray, true, false).await;
    pairing(Impl::Oxray, Impl::Oxray, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_bridge_v2ray_portal_over_ws_tls() {
    pairing(Impl::Oxray, Impl::V2ray, true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2ray_bridge_oxray_portal_over_ws_tls() {
    pairing(Impl::V2ray, Impl::Oxray, true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2ray_pair_over_ws_tls_control() {
    pairing(Impl::V2ray, Impl::V2ray, true, true).await;
}

/// The nginx config of docs/DEPLOY-NGINX.md, with test paths and ports: TLS on `listen`, the exact
/// WebSocket path proxied to the portal's plain WS inbound.
fn nginx_config(dir: &Path, listen: u16, portal: u16, pki: &Pki) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/nginx-access.log;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    server {{
        listen 127.0.0.1:{listen} ssl;
        server_name example.com;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location = /tunnel {{
            proxy_pass http://127.0.0.1:{portal};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"#,
        cert = pki.cert.display(),
        key = pki.key.display()
    )
}

async fn behind_nginx(bridge_impl: Impl) {
    let Some(nginx_bin) = tool("nginx", "nginx") else { return };
    if bridge_impl == Impl::V2ray && v2ray().is_none() {
        return;
    }
    let _heavy = HEAVY.lock().await;
    let dir = temp_dir(&format!("nginx-{bridge_impl:?}"));
    let pki = Pki::new(&dir);
    let (echo, _task) = xor_echo_server().await;
    let (external, interconn, https) = (free_port(), free_port(), free_port());
    let conf = write_file(&dir, "nginx.conf", &nginx_config(&dir, https, interconn, &pki));
    let dir_s = format!("{}/", dir.display());
    let nginx = Proc::spawn(
        "nginx",
        &nginx_bin,
        &["-p", &dir_s, "-e", &format!("{dir_s}nginx-error.log"), "-c", conf.to_str().unwrap(), "-g", "daemon off;"],
        &dir.join("nginx.out"),
        &[],
    );
    assert!(wait_port_async(local(https), Duration::from_secs(10)).await, "nginx did not start: {}", nginx.log_text());
    let portal = spawn_impl(
        Impl::Oxray,
        "portal",
        &dir,
        &portal_config(external, interconn, r#"{"network": "ws", "wsSettings": {"path": "/tunnel"}}"#),
    );
    // The bridge of TRANSPORTS.md §8.1: wss:// to nginx, Host and SNI example.com.
    let bridge_stream = format!(
        r#"{{"network": "ws", "security": "tls", "tlsSettings": {}, "wsSettings": {{"path": "/tunnel", "headers": {{"Host": "example.com"}}}}}}"#,
        pki.client_tls()
    );
    let bridge = spawn_impl(bridge_impl, "bridge", &dir, &bridge_config(https, echo.port(), &bridge_stream));
    let nginx_log = dir.join("nginx-access.log");
    let logs = || {
        format!(
            "--- bridge\n{}\n--- portal\n{}\n--- nginx\n{}\n{}",
            bridge.log_text(),
            portal.log_text(),
            nginx.log_text(),
            std::fs::read_to_string(&nginx_log).unwrap_or_default()
        )
    };
    let what = format!("{bridge_impl:?} bridge → nginx → oxray portal");
    visit(local(external), false, &what, &logs).await;
    // The tunnel really went through nginx: once the bridge is gone and its tunnels end, nginx's access
    // log has the upgrade (101) on the exact path.
    let _ = std::process::Command::new("kill").arg("-KILL").arg(bridge.pid().to_string()).status();
    let logged = wait_until(Duration::from_secs(10), || {
        let p = nginx_log.clone();
        async move { std::fs::read_to_string(p).unwrap_or_default().contains("\"GET /tunnel HTTP/1.1\" 101") }
    })
    .await;
    assert!(logged, "{what}: no upgrade in nginx's access log\n{}", logs());
    drop(portal);
    let mut nginx = nginx;
    let _ = nginx.terminate(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_bridge_through_nginx() {
    behind_nginx(Impl::Oxray).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2ray_bridge_through_nginx() {
    behind_nginx(Impl::V2ray).await;
}
