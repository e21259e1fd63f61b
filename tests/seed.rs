//! The seed (V2Ray's reverse-proxy page) end to end: its example configs exactly as shipped in
//! examples/ (ports adapted), `oxray demo --check`, one instance in both roles, and several bridges
//! serving one portal.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// examples/portal.json and bridge.json with only their ports adapted: public entry `external`, tunnel
/// port `interconn`, private service `service`. Comments, Chinese text and key order stay as shipped.
fn seed_configs(external: u16, interconn: u16, service: std::net::SocketAddr) -> (String, String) {
    let portal = example("portal.json")
        .replace("\"port\": 10080,", &format!("\"port\": {external},"))
        .replace("\"port\": 10024,", &format!("\"port\": {interconn},"));
    let bridge = example("bridge.json")
        .replace("\"port\": 10024,", &format!("\"port\": {interconn},"))
        .replace("127.0.0.1:8080", &service.to_string());
    (portal, bridge)
}

/// The page's portal and bridge (ports adapted) in front of a fresh XOR echo service, carrying traffic.
/// Returns the portal, the bridge and the echo task (keep it alive).
async fn seed_pair(name: &str) -> (Proc, Proc, tokio::task::JoinHandle<()>) {
    let (echo, task) = xor_echo_server().await;
    let (external, interconn) = (free_port(), free_port());
    let (portal, bridge) = seed_configs(external, interconn, echo);
    let dir = temp_dir(name);
    let portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal);
    let bridge = spawn_impl(Impl::Oxray, "bridge", &dir, &bridge);
    assert!(until_traffic(local(external), Duration::from_secs(15)).await.is_some());
    (portal, bridge, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_configs_carry_traffic() {
    let (echo, _task) = xor_echo_server().await;
    let (external, interconn) = (free_port(), free_port());
    // Only ports change: the files keep the page's comments, Chinese text and key order.
    let (portal, bridge) = seed_configs(external, interconn, echo);
    assert!(portal.contains("// 必须和 bridge 的配置一样") && bridge.contains("// 将所有流量转发到网页服务器"));

    let dir = temp_dir("seed");
    let bridge = spawn_impl(Impl::Oxray, "bridge", &dir, &bridge);
    let portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal);
    let public = local(external);
    assert!(
        until_traffic(public, Duration::from_secs(15)).await.is_some(),
        "no traffic\n--- bridge\n{}\n--- portal\n{}",
        bridge.log_text(),
        portal.log_text()
    );
    for i in 0..8u64 {
        xor_roundtrip(public, &payload(1 << 20, i)).await.unwrap();
    }
}

#[test]
fn demo_check_succeeds() {
    let start = Instant::now();
    let out = std::process::Command::new(oxray_bin()).args(["demo", "--check"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo --check failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("check OK") && stdout.contains("Hello from the service behind the bridge"), "{stdout}");
    // The printed configs are real: `oxray test` accepts them as files.
    let portal =
        stdout.split("--- portal.json (public host) ---\n").nth(1).and_then(|r| r.split("\n--- bridge.json").next());
    let bridge = stdout.split("--- bridge.json (private host) ---\n").nth(1).and_then(|r| r.split("\ncheck OK").next());
    let dir = temp_dir("demo-configs");
    for (name, text) in [("portal.json", portal), ("bridge.json", bridge)] {
        let text = text.unwrap_or_else(|| panic!("{name} not printed:\n{stdout}"));
        let file = write_file(&dir, name, text);
        let out =
            std::process::Command::new(oxray_bin()).args(["test", "-c", file.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "printed {name} does not load: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(start.elapsed() < Duration::from_secs(20));
}

/// examples/both.json is a portal for one domain and a bridge for another; a second instance plays the
/// opposite roles. Traffic crosses both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_is_portal_and_bridge() {
    let (echo_x, _t1) = xor_echo_server().await;
    let (echo_y, _t2) = xor_echo_server().await;
    let (ext_a, ic_a, ext_b, ic_b) = (free_port(), free_port(), free_port(), free_port());
    let x = example("both.json")
        .replace("\"port\": 10180,", &format!("\"port\": {ext_a},"))
        .replace("\"port\": 10124,", &format!("\"port\": {ic_a},"))
        .replace("\"port\": 10224,", &format!("\"port\": {ic_b},"))
        .replace("127.0.0.1:8080", &echo_x.to_string());
    let y = format!(
        r#"{{
  "reverse": {{"bridges": [{{"tag": "bridge-a", "domain": "a.example.internal"}}],
               "portals": [{{"tag": "portal-b", "domain": "b.example.internal"}}]}},
  "inbounds": [
    {{"tag": "external-b", "listen": "127.0.0.1", "port": {ext_b}, "protocol": "dokodemo-door", "settings": {{"address": "127.0.0.1", "port": 80}}}},
    {{"tag": "interconn-b", "listen": "127.0.0.1", "port": {ic_b}, "protocol": "vmess", "settings": {{"clients": [{{"id": "b831381d-6324-4d53-ad4f-8cda48b30811"}}]}}}}
  ],
  "outbounds": [
    {{"tag": "web", "protocol": "freedom", "settings": {{"redirect": "{echo_y}"}}}},
    {{"tag": "to-a", "protocol": "vmess", "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {ic_a}, "users": [{{"id": "27848739-7e62-4138-9fd3-098a63964b6b"}}]}}]}}}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["external-b", "interconn-b"], "outboundTag": "portal-b"}},
    {{"type": "field", "inboundTag": ["bridge-a"], "domain": ["full:a.example.internal"], "outboundTag": "to-a"}},
    {{"type": "field", "inboundTag": ["bridge-a"], "outboundTag": "web"}}
  ]}}
}}"#
    );
    let dir = temp_dir("both-roles");
    let px = spawn_impl(Impl::Oxray, "x", &dir, &x);
    let py = spawn_impl(Impl::Oxray, "y", &dir, &y);
    let logs = || format!("--- x\n{}\n--- y\n{}", px.log_text(), py.log_text());
    // Public on X reaches Y's service through tunnel a, and public on Y reaches X's through tunnel b.
    assert!(until_traffic(local(ext_a), Duration::from_secs(15)).await.is_some(), "a: {}", logs());
    assert!(until_traffic(local(ext_b), Duration::from_secs(15)).await.is_some(), "b: {}", logs());
    xor_roundtrip(local(ext_a), &payload(1 << 20, 1)).await.unwrap();
    xor_roundtrip(local(ext_b), &payload(1 << 20, 2)).await.unwrap();
}

/// Two bridges (two processes) serve one portal; when one dies, the other carries everything at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_serve_one_portal() {
    let (echo, _task) = xor_echo_server().await;
    let (external, interconn) = (free_port(), free_port());
    let (portal, bridge) = seed_configs(external, interconn, echo);
    let portal = portal.replace("\"reverse\": {", "\"log\": {\"loglevel\": \"info\"},\n    \"reverse\": {");
    let dir = temp_dir("two-bridges");
    let portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal);
    let mut b1 = spawn_impl(Impl::Oxray, "bridge1", &dir, &bridge);
    let b2 = spawn_impl(Impl::Oxray, "bridge2", &dir, &bridge);
    let public = local(external);
    assert!(until_traffic(public, Duration::from_secs(15)).await.is_some(), "{}", portal.log_text());
    let both = wait_until(Duration::from_secs(10), || {
        let n = portal.log_text().matches("bridge connected").count();
        async move { n >= 2 }
    })
    .await;
    assert!(both, "the portal did not see two bridges:\n{}", portal.log_text());
    for i in 0..16u64 {
        xor_roundtrip(public, &payload(64 << 10, i)).await.unwrap();
    }
    b1.kill();
    // Once the portal has seen the tunnel end, the survivor takes every session: no request may fail.
    let noticed = wait_until(Duration::from_secs(5), || {
        let closed = portal.log_text().contains("tunnel closed");
        async move { closed }
    })
    .await;
    assert!(noticed, "the portal did not notice the dead bridge:\n{}", portal.log_text());
    for i in 0..50u64 {
        xor_roundtrip(public, &payload(4096, 100 + i)).await.unwrap_or_else(|e| {
            panic!("request {i} after one bridge died: {e}\n{}\n{}", portal.log_text(), b2.log_text())
        });
    }
}

/// SIGTERM on a portal with a connected bridge exits promptly: an idle tunnel does not hold the grace
/// period (5 s) open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_with_a_bridge_stops_promptly_on_sigterm() {
    let (mut portal, _bridge, _echo) = seed_pair("sigterm-portal").await;
    let start = Instant::now();
    let status = portal.terminate(Duration::from_secs(10)).expect("portal did not exit");
    assert!(status.success(), "{status:?}\n{}", portal.log_text());
    assert!(start.elapsed() < Duration::from_secs(2), "shutdown took {:?}", start.elapsed());
}

/// `kill -USR1` makes a running oxray log its tunnels at the default log level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_logs_tunnel_status() {
    let (portal, bridge, _echo) = seed_pair("sigusr1").await;
    for p in [&portal, &bridge] {
        std::process::Command::new("kill").args(["-USR1", &p.pid().to_string()]).status().unwrap();
    }
    let shown = wait_until(Duration::from_secs(5), || {
        let (pl, bl) = (portal.log_text(), bridge.log_text());
        async move {
            // The session count may still include the readiness probe's session, closing as we look.
            pl.contains("status: portal portal: 1 tunnel(s) [#1: ")
                && bl.contains("status: bridge bridge: 1 tunnel(s) [#1: ")
        }
    })
    .await;
    assert!(shown, "no status in the logs\n--- portal\n{}\n--- bridge\n{}", portal.log_text(), bridge.log_text());
}
