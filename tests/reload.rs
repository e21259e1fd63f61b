//! Hot reload on real processes: an oxray portal and bridge with a tunnel, a visitor connection that
//! keeps moving checked bytes the whole time, and the portal's config changed under it (SIGHUP and
//! `oxray reload`): a routing rule changes, an inbound is added, a broken file changes nothing, an
//! inbound is removed and its port is free again; the tunnel and the visitor's session survive all of it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UUID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";
/// Every wait on a condition ends by this.
const DEADLINE: Duration = Duration::from_secs(15);

struct Ports {
    external: u16,
    interconn: u16,
    side: u16,
    added: u16,
    ops: u16,
    echo2: u16,
}

/// The portal's config. `side_to` is where rule for inbound `side` sends it; `added` adds an inbound.
fn portal_config(p: &Ports, side_to: &str, added: bool) -> String {
    let extra_inbound = if added {
        format!(
            r#",
    {{"tag": "added", "listen": "127.0.0.1", "port": {}, "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1", "port": {}, "network": "tcp"}}}}"#,
            p.added, p.echo2
        )
    } else {
        String::new()
    };
    let extra_rule = if added {
        r#",
    {"type": "field", "inboundTag": ["added"], "outboundTag": "direct"}"#
    } else {
        ""
    };
    format!(
        r#"{{
  "log": {{"loglevel": "info"}},
  "ops": {{"listen": "127.0.0.1:{ops}"}},
  "reverse": {{"portals": [{{"tag": "portal", "domain": "test.v2fly.org", "heartbeatSeconds": 1}}]}},
  "inbounds": [
    {{"tag": "external", "listen": "127.0.0.1", "port": {external}, "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1", "port": 80, "network": "tcp"}}}},
    {{"tag": "interconn", "listen": "127.0.0.1", "port": {interconn}, "protocol": "vmess",
      "settings": {{"clients": [{{"id": "{UUID}"}}]}}}},
    {{"tag": "side", "listen": "127.0.0.1", "port": {side}, "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1", "port": {echo2}, "network": "tcp"}}}}{extra_inbound}
  ],
  "outbounds": [
    {{"tag": "block", "protocol": "blackhole"}},
    {{"tag": "direct", "protocol": "freedom"}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["external"], "outboundTag": "portal"}},
    {{"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"}},
    {{"type": "field", "inboundTag": ["side"], "outboundTag": "{side_to}"}}{extra_rule}
  ]}}
}}"#,
        ops = p.ops,
        external = p.external,
        interconn = p.interconn,
        side = p.side,
        echo2 = p.echo2,
    )
}

fn bridge_config(interconn: u16, service: u16) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "info"}},
  "reverse": {{"bridges": [{{"tag": "bridge", "domain": "test.v2fly.org", "heartbeatSeconds": 1}}]}},
  "outbounds": [
    {{"tag": "out", "protocol": "freedom", "settings": {{"redirect": "127.0.0.1:{service}"}}}},
    {{"protocol": "vmess", "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {interconn}, "users": [{{"id": "{UUID}"}}]}}]}},
      "tag": "interconn"}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["bridge"], "domain": ["full:test.v2fly.org"], "outboundTag": "interconn"}},
    {{"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"}}
  ]}}
}}"#
    )
}

async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await.unwrap().unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_string())
}

async fn status(ops: SocketAddr) -> Value {
    let (code, body) = http(ops, "GET", "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn hup(proc: &Proc) {
    // SAFETY: kill(2) on the PID of the child this test started.
    let r = unsafe { libc::kill(proc.pid() as i32, libc::SIGHUP) };
    assert_eq!(r, 0, "SIGHUP {}", proc.pid());
}

/// Waits until `needle` occurs at least `n` times in the process's log.
async fn log_count(proc: &Proc, needle: &str, n: usize) -> bool {
    wait_until(DEADLINE, || async { proc.log_text().matches(needle).count() >= n }).await
}

/// One XOR round trip on a fresh connection: Ok when `data` comes back XORed.
async fn roundtrip(port: u16) -> Result<(), String> {
    tokio::time::timeout(Duration::from_secs(3), xor_exchange(local(port), b"reload-probe", false))
        .await
        .map_err(|_| "timed out".to_string())?
}

/// A visitor connection through the tunnel that sends 16 KiB, checks the echo, and repeats until
/// stopped. Counts verified bytes; any mismatch or error ends it with the reason.
struct Visitor {
    verified: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

impl Visitor {
    async fn start(external: u16) -> Visitor {
        let mut s = TcpStream::connect(local(external)).await.expect("visitor connects");
        let verified = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (v, st) = (verified.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut seed = 1;
            let mut back = vec![0u8; 16 * 1024];
            while !st.load(Ordering::Relaxed) {
                let data = payload(back.len(), seed);
                seed += 1;
                s.write_all(&data).await.map_err(|e| format!("write: {e}"))?;
                tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
                    .await
                    .map_err(|_| format!("no echo within 5 s after {} bytes", v.load(Ordering::Relaxed)))?
                    .map_err(|e| format!("read: {e}"))?;
                if back.iter().zip(&data).any(|(b, d)| *b != d ^ XOR) {
                    return Err(format!("corrupt echo after {} bytes", v.load(Ordering::Relaxed)));
                }
                v.fetch_add(data.len() as u64, Ordering::Relaxed);
                // Paced, so the test also sees the connection alive over time, not one burst.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(v.load(Ordering::Relaxed))
        });
        Visitor { verified, stop, task }
    }

    /// Waits until at least `more` bytes beyond now have been verified.
    async fn moves(&self, more: u64) -> bool {
        let from = self.verified.load(Ordering::Relaxed);
        wait_until(DEADLINE, || async { self.verified.load(Ordering::Relaxed) >= from + more }).await
    }
}

fn tunnel_ids(doc: &Value, role: &str) -> Vec<u64> {
    doc[role][0]["tunnels"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect()
}

fn listeners(doc: &Value) -> Vec<String> {
    doc["listeners"].as_array().unwrap().iter().map(|l| l["tag"].as_str().unwrap_or("").to_string()).collect()
}

/// One checked XOR exchange of 4 KiB on an open connection.
async fn exchange(s: &mut TcpStream, seed: u64) {
    let data = payload(4096, seed);
    s.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await.expect("echo in time").unwrap();
    assert!(back.iter().zip(&data).all(|(b, d)| *b == d ^ XOR), "echo bytes");
}

/// 1-based line and column of the first occurrence of `needle` in `text`.
fn line_col(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("needle in text");
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    (text[..at].matches('\n').count() + 1, at - line_start + 1)
}

/// Reads sd_notify datagrams until one contains `needle`.
async fn notified(sock: &tokio::net::UnixDatagram, needle: &str) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let n = tokio::time::timeout_at(end, sock.recv(&mut buf)).await.ok()?.ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.contains(needle) {
            return Some(text);
        }
    }
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_tunnels_and_sessions_and_applies_changes() {
    let (echo, _echo_task) = xor_echo_server().await;
    let (echo2, _echo2_task) = xor_echo_server().await;
    let p = Ports {
        external: free_port(),
        interconn: free_port(),
        side: free_port(),
        added: free_port(),
        ops: free_port(),
        echo2: echo2.port(),
    };
    let (bridge_ops, portal_ops) = (free_port(), local(p.ops));
    let dir = temp_dir("reload");
    let notify_path = dir.join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let portal_file = write_file(&dir, "portal.json", &portal_config(&p, "block", false));
    let notify_env = notify_path.to_str().unwrap().to_string();
    let portal = Proc::spawn(
        "portal",
        &oxray_bin(),
        &["run", "-c", portal_file.to_str().unwrap()],
        &dir.join("portal.log"),
        &[("NOTIFY_SOCKET", &notify_env)],
    );
    let bridge_file = write_file(&dir, "bridge.json", &bridge_config(p.interconn, echo.port()));
    let bops = format!("127.0.0.1:{bridge_ops}");
    let bridge = Proc::spawn(
        "bridge",
        &oxray_bin(),
        &["run", "-c", bridge_file.to_str().unwrap(), "--ops", &bops],
        &dir.join("bridge.log"),
        &[],
    );
    assert!(notified(&notify, "READY=1").await.is_some(), "no READY=1: {}", portal.log_text());
    until_traffic(local(p.external), DEADLINE).await.expect("traffic through the tunnel");
    assert!(wait_port_async(local(bridge_ops), DEADLINE).await, "no ops listener on {bridge_ops}");

    // Before: the side inbound is routed to the blackhole, the added port is not open.
    assert!(roundtrip(p.side).await.is_err(), "side must be blackholed before the reload");
    assert!(port_free(p.added));
    let visitor = Visitor::start(p.external).await;
    assert!(visitor.moves(64 * 1024).await, "visitor moves bytes");
    let before = status(portal_ops).await;
    let tunnels = tunnel_ids(&before, "portals");
    assert_eq!(tunnels.len(), 1, "{before}");
    let bridge_tunnels = tunnel_ids(&status(local(bridge_ops)).await, "bridges");
    assert_eq!(bridge_tunnels.len(), 1);
    let fds_before = fd_count(portal.pid());

    // Reload 1 (SIGHUP): the side rule now goes to `direct`, and inbound `added` is new.
    write_file(&dir, "portal.json", &portal_config(&p, "direct", true));
    hup(&portal);
    let reloading = notified(&notify, "RELOADING=1").await.expect("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready = notified(&notify, "READY=1").await.expect("READY=1 after the reload");
    assert!(ready.contains("STATUS=reloaded"), "{ready}");
    assert!(log_count(&portal, "reload: inbound added added", 1).await, "{}", portal.log_text());
    let log = portal.log_text();
    assert!(log.contains("routing rules replaced") && log.contains("unchanged"), "{log}");
    roundtrip(p.side).await.expect("the changed rule sends side to direct");
    roundtrip(p.added).await.expect("the new inbound serves");
    assert!(visitor.moves(64 * 1024).await, "the visitor keeps moving bytes across the reload");
    let after = status(portal_ops).await;
    assert_eq!(tunnel_ids(&after, "portals"), tunnels, "the tunnel survives: {after}");
    assert_eq!(after["portals"][0]["sessions_now"].as_u64(), Some(1), "the visitor's session survives: {after}");
    assert_eq!(tunnel_ids(&status(local(bridge_ops)).await, "bridges"), bridge_tunnels);
    assert!(listeners(&after).contains(&"added".to_string()), "{after}");
    let (_, metrics) = http(portal_ops, "GET", "/metrics").await;
    assert!(metrics.contains(r#"oxray_inbound_connections_total{tag="added"} 1"#), "{metrics}");

    // Reload 2 (SIGHUP): a broken file changes nothing; the log names the error with path and position.
    let mut broken = portal_config(&p, "block", false);
    broken = broken.replace(&format!("\"port\": {}, \"protocol\"", p.side), "\"port\": \"sixty\", \"protocol\"");
    let (line, col) = line_col(&broken, "\"sixty\"");
    write_file(&dir, "portal.json", &broken);
    hup(&portal);
    assert!(notified(&notify, "STATUS=reload failed").await.is_some(), "READY=1 with the failure");
    assert!(log_count(&portal, "the running configuration is kept", 1).await);
    let log = portal.log_text();
    let expect = format!("portal.json:{line}:{col}: inbounds[2].port");
    assert!(log.contains(&expect), "log must name {expect}: {log}");
    roundtrip(p.side).await.expect("still routed to direct");
    roundtrip(p.added).await.expect("still serving");
    assert_eq!(listeners(&status(portal_ops).await), listeners(&after));
    // `oxray reload` gets the same answer, and exits 1.
    let out = std::process::Command::new(oxray_bin())
        .args(["reload", "--ops", &portal_ops.to_string()])
        .output()
        .expect("oxray reload");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&expect) && stderr.contains("kept"), "{stderr}");

    // Reload 3 (`oxray reload`): inbound `added` is removed: its port is free again; `side` is renamed
    // `side2` on the same port (the old listener closes before the new one binds), and a connection
    // the old `side` accepted goes on.
    let mut held = TcpStream::connect(local(p.side)).await.unwrap();
    exchange(&mut held, 100).await;
    write_file(&dir, "portal.json", &portal_config(&p, "direct", false).replace("\"side\"", "\"side2\""));
    let out = std::process::Command::new(oxray_bin())
        .args(["reload", "--ops", &portal_ops.to_string()])
        .output()
        .expect("oxray reload");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("inbound added removed"), "{stdout}");
    assert!(stdout.contains("inbound side removed") && stdout.contains("inbound side2 added"), "{stdout}");
    assert!(port_free(p.added), "the removed inbound's port is released");
    let names = listeners(&status(portal_ops).await);
    assert!(!names.contains(&"added".to_string()) && !names.contains(&"side".to_string()), "{names:?}");
    assert!(names.contains(&"side2".to_string()), "{names:?}");
    roundtrip(p.side).await.expect("side2 serves on side's port, routed to direct");
    exchange(&mut held, 101).await;
    drop(held);
    assert!(visitor.moves(64 * 1024).await, "the visitor still moves bytes");
    let last = status(portal_ops).await;
    assert_eq!(tunnel_ids(&last, "portals"), tunnels, "the same tunnel after three reloads: {last}");

    // The bridge reloads too; with its file unchanged, nothing changes and its tunnel stays.
    hup(&bridge);
    assert!(log_count(&bridge, "reload: nothing changed", 1).await, "{}", bridge.log_text());
    assert_eq!(tunnel_ids(&status(local(bridge_ops)).await, "bridges"), bridge_tunnels);

    // No socket left behind by the added-then-removed inbound or the replaced handlers (same
    // connections open as at the first count: the tunnel and the visitor).
    let settled = wait_until(DEADLINE, || async { fd_count(portal.pid()) <= fds_before }).await;
    assert!(settled, "portal fds: {} before, {} after", fds_before, fd_count(portal.pid()));
    println!("portal fds: {fds_before} before the reloads, {} after", fd_count(portal.pid()));

    visitor.stop.store(true, Ordering::Relaxed);
    let moved = visitor.task.await.unwrap().expect("the visitor's bytes all came back right");
    println!("visitor moved {moved} verified bytes across three reloads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_portal_drains_its_tunnels_to_the_new_one_and_sessions_finish_on_the_old() {
    let (echo, _echo_task) = xor_echo_server().await;
    let (echo2, _echo2_task) = xor_echo_server().await;
    let p = Ports {
        external: free_port(),
        interconn: free_port(),
        side: free_port(),
        added: free_port(),
        ops: free_port(),
        echo2: echo2.port(),
    };
    let portal_ops = local(p.ops);
    let dir = temp_dir("reload-portal");
    let config = portal_config(&p, "block", false);
    let portal = spawn_impl(Impl::Oxray, "portal", &dir, &config);
    let bridge_ops = free_port();
    let bridge_file = write_file(&dir, "bridge.json", &bridge_config(p.interconn, echo.port()));
    let bops = format!("127.0.0.1:{bridge_ops}");
    let _bridge = Proc::spawn(
        "bridge",
        &oxray_bin(),
        &["run", "-c", bridge_file.to_str().unwrap(), "--ops", &bops],
        &dir.join("bridge.log"),
        &[],
    );
    until_traffic(local(p.external), DEADLINE).await.expect("traffic through the tunnel");
    for ops in [portal_ops, local(bridge_ops)] {
        assert!(wait_port_async(ops, DEADLINE).await, "no ops listener on {ops}");
    }
    let visitor = Visitor::start(p.external).await;
    assert!(visitor.moves(64 * 1024).await);
    let old = tunnel_ids(&status(portal_ops).await, "portals");
    assert_eq!(old.len(), 1);

    // The portal entry changes (its heartbeat period): a new portal replaces it.
    write_file(&dir, "portal.json", &config.replace("\"heartbeatSeconds\": 1", "\"heartbeatSeconds\": 2"));
    hup(&portal);
    assert!(log_count(&portal, "reload: portal portal replaced", 1).await, "{}", portal.log_text());
    // The bridge got DRAIN and dialled a new tunnel, which the new portal took.
    let new_tunnel = wait_until(DEADLINE, || async {
        let s = status(portal_ops).await;
        s["portals"][0]["heartbeat_s"] == 2.0 && !tunnel_ids(&s, "portals").is_empty()
    })
    .await;
    assert!(new_tunnel, "the new portal has a tunnel: {}", status(portal_ops).await);
    roundtrip(p.external).await.expect("a new visitor goes through the new portal's tunnel");
    // The old visitor's session finishes on the old tunnel.
    assert!(visitor.moves(64 * 1024).await, "the old session keeps moving bytes");
    let b = status(local(bridge_ops)).await;
    assert_eq!(b["bridges"][0]["dials"]["ok"], 2, "{b}");
    visitor.stop.store(true, Ordering::Relaxed);
    visitor.task.await.unwrap().expect("the old session's bytes all came back right");
    // With its session done, the old tunnel closes: the bridge is left with the new one only.
    let one =
        wait_until(DEADLINE, || async { tunnel_ids(&status(local(bridge_ops)).await, "bridges").len() == 1 }).await;
    assert!(one, "the old tunnel closes once idle: {}", status(local(bridge_ops)).await);
    assert!(portal.log_text().contains("tunnel drained (the config was reloaded)"), "{}", portal.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_bridge_hands_over_to_the_new_one_without_refusing_a_visitor() {
    let (echo, _echo_task) = xor_echo_server().await;
    let (echo2, _echo2_task) = xor_echo_server().await;
    let p = Ports {
        external: free_port(),
        interconn: free_port(),
        side: free_port(),
        added: free_port(),
        ops: free_port(),
        echo2: echo2.port(),
    };
    let portal_ops = local(p.ops);
    let dir = temp_dir("reload-bridge");
    let _portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal_config(&p, "block", false));
    let bridge_ops = local(free_port());
    let config = bridge_config(p.interconn, echo.port());
    let bridge_file = write_file(&dir, "bridge.json", &config);
    let bops = bridge_ops.to_string();
    let bridge = Proc::spawn(
        "bridge",
        &oxray_bin(),
        &["run", "-c", bridge_file.to_str().unwrap(), "--ops", &bops],
        &dir.join("bridge.log"),
        &[],
    );
    until_traffic(local(p.external), DEADLINE).await.expect("traffic through the tunnel");
    for ops in [portal_ops, bridge_ops] {
        assert!(wait_port_async(ops, DEADLINE).await, "no ops listener on {ops}");
    }
    let visitor = Visitor::start(p.external).await;
    assert!(visitor.moves(64 * 1024).await);
    let old_tunnel = tunnel_ids(&status(portal_ops).await, "portals");
    assert_eq!(old_tunnel.len(), 1);
    let closed_on_old = |s: &Value| {
        s["portals"][0]["closed_sessions"].as_array().unwrap().iter().filter(|c| c["tunnel"] == old_tunnel[0]).count()
    };
    let probes = closed_on_old(&status(portal_ops).await);

    // The bridge entry changes (its heartbeat period): a new bridge dials; the old one hands over.
    write_file(&dir, "bridge.json", &config.replace("\"heartbeatSeconds\": 1", "\"heartbeatSeconds\": 2"));
    hup(&bridge);
    assert!(log_count(&bridge, "reload: bridge bridge replaced", 1).await, "{}", bridge.log_text());
    let two = wait_until(DEADLINE, || async {
        let b = status(bridge_ops).await;
        b["bridges"][0]["heartbeat_s"] == 2.0 && tunnel_ids(&b, "bridges").len() == 1
    })
    .await;
    assert!(two, "the new bridge has its tunnel: {}", status(bridge_ops).await);
    let on_portal =
        wait_until(DEADLINE, || async { tunnel_ids(&status(portal_ops).await, "portals").len() == 2 }).await;
    assert!(on_portal, "{}", status(portal_ops).await);
    // Two held visitors load the new tunnel, so the portal's picker sends the next one into the old
    // tunnel (fewer sessions): the old bridge still serves it.
    let mut held = Vec::new();
    for seed in 0..2 {
        let mut s = TcpStream::connect(local(p.external)).await.unwrap();
        exchange(&mut s, 200 + seed).await;
        held.push(s);
    }
    for _ in 0..3 {
        roundtrip(p.external).await.expect("no visitor is refused during the hand-over");
    }
    let served = closed_on_old(&status(portal_ops).await) - probes;
    assert!(served >= 1, "the old tunnel served new visitors after the reload: {}", status(portal_ops).await);
    println!("{served} of 3 new visitors went through the old bridge's tunnel during the hand-over");
    assert!(visitor.moves(64 * 1024).await, "the old session keeps moving bytes");
    for s in &mut held {
        exchange(s, 300).await;
    }
    drop(held);
    visitor.stop.store(true, Ordering::Relaxed);
    visitor.task.await.unwrap().expect("the old session's bytes all came back right");
    // Idle, the old bridge's tunnel closes: the portal is left with the new bridge's tunnel.
    let one = wait_until(DEADLINE, || async { tunnel_ids(&status(portal_ops).await, "portals").len() == 1 }).await;
    assert!(one, "the old tunnel closes once idle: {}", status(portal_ops).await);
}
