//! Mux.Cool on ordinary outbounds (`mux.enabled`), between oxray and the real V2Ray 4.34 in both
//! directions: many flows share a few VMess connections, every byte checked.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

const ID: &str = "b831381d-6324-4d53-ad4f-8cda48b30811";

fn server_config(port: u16, access: &Path) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning", "access": "{access}"}},
  "inbounds": [{{"tag": "vmess-in", "listen": "127.0.0.1", "port": {port}, "protocol": "vmess",
                 "settings": {{"clients": [{{"id": "{ID}"}}]}}}}],
  "outbounds": [{{"tag": "direct", "protocol": "freedom"}}]}}"#,
        access = access.display()
    )
}

fn client_config(port: u16, server: u16, echo: SocketAddr) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"tag": "local", "listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
                 "settings": {{"address": "{ip}", "port": {ep}, "network": "tcp"}}}}],
  "outbounds": [{{"protocol": "vmess",
                  "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {server}, "users": [{{"id": "{ID}", "security": "aes-128-gcm"}}]}}]}},
                  "mux": {{"enabled": true, "concurrency": 8}}}}]}}"#,
        ip = echo.ip(),
        ep = echo.port()
    )
}

/// Source ports of the access-log lines for flows to `target` (both implementations log
/// `<ip>:<port> accepted tcp:<target> ...`; Mux sessions keep their carrier connection's source).
fn carrier_ports(access: &Path, target: SocketAddr) -> (usize, HashSet<String>) {
    let text = std::fs::read_to_string(access).unwrap_or_default();
    let needle = format!(" accepted tcp:{target} ");
    let mut flows = 0;
    let mut ports = HashSet::new();
    for line in text.lines().filter(|l| l.contains(&needle)) {
        flows += 1;
        let before = &line[..line.find(&needle).unwrap_or(0)];
        if let Some(src) = before.split_whitespace().last() {
            ports.insert(src.rsplit(':').next().unwrap_or("").to_string());
        }
    }
    (flows, ports)
}

async fn mux_pair(client: Impl, server: Impl) {
    if (client == Impl::V2ray || server == Impl::V2ray) && v2ray().is_none() {
        return;
    }
    let (echo, _task) = xor_echo_server().await;
    let (cport, sport) = (free_port(), free_port());
    let dir = temp_dir(&format!("mux-{client:?}-{server:?}"));
    let access = dir.join("server-access.log");
    let s = spawn_impl(server, "server", &dir, &server_config(sport, &access));
    let c = spawn_impl(client, "client", &dir, &client_config(cport, sport, echo));
    let entry = local(cport);
    let logs = || format!("--- client\n{}\n--- server\n{}", c.log_text(), s.log_text());
    // V2Ray 4.34's mux client drops answers of half-closed sessions and its freedom never half-closes:
    // clients read the whole answer before closing unless both sides are oxray.
    let half_close = client == Impl::Oxray && server == Impl::Oxray;

    let up = wait_until(Duration::from_secs(15), || async move {
        tokio::time::timeout(Duration::from_secs(2), xor_exchange(entry, b"ping", half_close))
            .await
            .is_ok_and(|r| r.is_ok())
    })
    .await;
    assert!(up, "no traffic through the mux pair:\n{}", logs());

    let payloads: Vec<Vec<u8>> = (0..16u64).map(|i| payload(1 << 20, i)).collect();
    let mut tasks = Vec::new();
    for data in payloads {
        tasks.push(tokio::spawn(async move { xor_exchange(entry, &data, half_close).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(60), t).await.unwrap_or_else(|_| panic!("flow {i} hangs"));
        r.unwrap().unwrap_or_else(|e| panic!("flow {i}: {e}\n{}", logs()));
    }
    for i in 0..50u64 {
        xor_exchange(entry, &payload(2000, 100 + i), half_close).await.unwrap_or_else(|e| panic!("seq {i}: {e}"));
    }

    // 67 flows went through; with mux they share a few carrier connections (concurrency 8), so the server
    // sees far fewer source ports than flows. Toward V2Ray more carriers open: its freedom never forwards
    // half-close, so finished sessions linger until its 1 s idle limit and occupy concurrency slots.
    let echo_target = echo;
    let ok = wait_until(Duration::from_secs(5), || {
        let (flows, _) = carrier_ports(&access, echo_target);
        async move { flows >= 67 }
    })
    .await;
    let (flows, ports) = carrier_ports(&access, echo);
    assert!(ok, "server logged {flows} flows, expected 67+\n{}", logs());
    eprintln!("{client:?} mux client -> {server:?} server: {flows} flows over {} connections", ports.len());
    assert!(ports.len() <= 16, "{} carrier connections for {flows} flows: mux not used? {ports:?}", ports.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_mux_client_to_oxray_server() {
    mux_pair(Impl::Oxray, Impl::Oxray).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxray_mux_client_to_v2ray_server() {
    mux_pair(Impl::Oxray, Impl::V2ray).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2ray_mux_client_to_oxray_server() {
    mux_pair(Impl::V2ray, Impl::Oxray).await;
}
