//! The operations listener on real processes: `/status` against the tunnels and sessions the test
//! creates, `/metrics` names/types/labels against a golden list and `promtool check metrics`,
//! `/readyz` turning 503 when the bridge is killed, `oxray status`, and the live page in headless Chromium.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const UUID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";
/// Heartbeat period of the test pair; the health bound is 3 periods.
const HEARTBEAT_S: u64 = 1;

fn portal_config(external: u16, interconn: u16, ops: u16) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "info"}},
  "ops": {{"listen": "127.0.0.1:{ops}"}},
  "reverse": {{"portals": [{{"tag": "portal", "domain": "test.v2fly.org", "heartbeatSeconds": {HEARTBEAT_S}}}]}},
  "inbounds": [
    {{"tag": "external", "listen": "127.0.0.1", "port": {external}, "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1", "port": 80, "network": "tcp"}}}},
    {{"tag": "interconn", "listen": "127.0.0.1", "port": {interconn}, "protocol": "vmess",
      "settings": {{"clients": [{{"id": "{UUID}"}}]}}}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["external"], "outboundTag": "portal"}},
    {{"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"}}
  ]}}
}}"#
    )
}

fn bridge_config(interconn: u16, service: u16) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "info"}},
  "reverse": {{"bridges": [{{"tag": "bridge", "domain": "test.v2fly.org", "heartbeatSeconds": {HEARTBEAT_S}}}]}},
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

/// A portal (ops in its config) and a bridge (ops from `--ops`) in front of an XOR echo service.
struct Pair {
    dir: PathBuf,
    external: u16,
    portal_ops: SocketAddr,
    bridge_ops: SocketAddr,
    portal: Proc,
    bridge: Proc,
    _echo: tokio::task::JoinHandle<()>,
}

impl Pair {
    async fn start(name: &str, bridge_env: &[(&str, &str)]) -> Pair {
        let (echo, task) = xor_echo_server().await;
        let (external, interconn, pops, bops) = (free_port(), free_port(), free_port(), free_port());
        let dir = temp_dir(name);
        let portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal_config(external, interconn, pops));
        let cfg = write_file(&dir, "bridge.json", &bridge_config(interconn, echo.port()));
        let bops_arg = format!("127.0.0.1:{bops}");
        let args = ["run", "-c", cfg.to_str().unwrap(), "--ops", &bops_arg];
        let bridge = Proc::spawn("bridge", &oxray_bin(), &args, &dir.join("bridge.log"), bridge_env);
        until_traffic(local(external), Duration::from_secs(15)).await.expect("first traffic");
        Pair { dir, external, portal_ops: local(pops), bridge_ops: local(bops), portal, bridge, _echo: task }
    }
}

/// One GET; returns status code and body.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await??;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// The start-up probe's session may still be ending: waits until only the one visitor's is open.
async fn settle(pair: &Pair) {
    let settled = wait_until(Duration::from_secs(5), || async {
        status(pair.portal_ops).await["portals"][0]["sessions_now"] == 1
            && status(pair.bridge_ops).await["bridges"][0]["sessions_now"] == 1
    })
    .await;
    assert!(settled, "the probe's session did not end");
}

async fn status(addr: SocketAddr) -> Value {
    let (code, body) = get(addr, "/status", None).await.expect("GET /status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status is JSON")
}

/// A tool from PATH, or None after a loud SKIPPED line; under CI=true a missing tool fails the test.
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
        .unwrap_or_default();
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but {name} is not installed (apt-get install {package})");
        }
        eprintln!("\n*** SKIPPED: {name} not found (apt-get install {package}); that part did not run ***\n");
    }
    found
}

/// A visitor connection held open through the portal's public entry.
async fn visitor(external: u16, bytes: usize) -> TcpStream {
    let mut s = TcpStream::connect(local(external)).await.expect("connect visitor");
    let data = payload(bytes, 7);
    s.write_all(&data).await.unwrap();
    let mut back = vec![0u8; bytes];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await.expect("echo in time").unwrap();
    assert!(back.iter().zip(&data).all(|(b, d)| *b == d ^ XOR));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_tunnels_and_sessions() {
    let pair = Pair::start("ops-status", &[]).await;
    let v = visitor(pair.external, 1000).await;
    let visitor_addr = v.local_addr().unwrap().to_string();
    settle(&pair).await;

    let p = status(pair.portal_ops).await;
    assert_eq!(p["version"], 1);
    let portal = &p["portals"][0];
    assert_eq!(portal["tag"], "portal");
    assert_eq!(portal["healthy"], true, "{portal}");
    let tunnels = portal["tunnels"].as_array().unwrap();
    assert_eq!(tunnels.len(), 1, "{portal}");
    let t = &tunnels[0];
    assert_eq!(t["state"], "active");
    assert_eq!(t["transport"], "tcp");
    assert!(t["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{t}");
    assert!(t["last_heartbeat_sent"].is_number(), "{t}");
    assert!(t["rtt_ms"].as_f64().is_some_and(|r| r > 0.0), "TCP_INFO rtt of the tunnel: {t}");
    let sessions = t["sessions"].as_array().unwrap();
    let s = sessions.iter().find(|s| s["source"] == visitor_addr.as_str()).unwrap_or_else(|| panic!("{t}"));
    assert_eq!(s["inbound"], "external");
    assert_eq!(s["target"], "tcp:127.0.0.1:80");
    assert_eq!(s["uplink"], 1000, "live bytes are flushed by the relay: {s}");
    assert_eq!(s["downlink"], 1000, "{s}");
    let id = s["id"].as_u64().unwrap();

    let b = status(pair.bridge_ops).await;
    let bridge = &b["bridges"][0];
    assert_eq!(bridge["tag"], "bridge");
    assert_eq!(bridge["dials"]["ok"], 1, "{bridge}");
    let bt = &bridge["tunnels"][0];
    assert!(bt["last_heartbeat_received"].is_number(), "{bt}");
    let bs = bt["sessions"].as_array().unwrap();
    assert_eq!(bs.len(), 1, "{bt}");
    assert_eq!(bs[0]["inbound"], "bridge");
    assert_eq!(bs[0]["uplink"], 1000, "{bt}");

    // The visitor leaves: its session moves to the closed list with its reason and totals.
    drop(v);
    let closed = wait_until(Duration::from_secs(5), || async {
        let p = status(pair.portal_ops).await;
        p["portals"][0]["closed_sessions"].as_array().unwrap().iter().any(|c| c["id"] == id)
    })
    .await;
    assert!(closed, "session {id} never showed as closed");
    let p = status(pair.portal_ops).await;
    let c = p["portals"][0]["closed_sessions"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap().clone();
    assert_eq!(c["reason"], "done", "{c}");
    assert_eq!(c["uplink"], 1000);
    assert_eq!(c["tunnel"], t["id"]);
    assert!(p["portals"][0]["sessions_total"].as_u64().unwrap() >= 2, "the probe and the visitor");
    // No secret in the document.
    assert!(!p.to_string().contains(UUID));

    // `oxray status` prints the same tree and exits 0 when ready.
    let out = std::process::Command::new(oxray_bin())
        .args(["status", "--ops", &pair.portal_ops.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("portal portal [healthy]") && text.contains("tunnel #1 active tcp"), "{text}");
    let out = std::process::Command::new(oxray_bin())
        .args(["status", "--json", "--ops", &pair.bridge_ops.to_string()])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).expect("--json prints the document");
    assert_eq!(doc["bridges"][0]["tag"], "bridge");
    drop(pair);
}

/// `name type label,label` for every sample of a scrape.
fn shape(scrape: &str) -> BTreeSet<String> {
    let mut types = std::collections::HashMap::new();
    let mut out = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, _value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let keys: Vec<&str> =
                    l.trim_end_matches('}').split(',').map(|kv| kv.split('=').next().unwrap()).collect();
                (n, keys.join(","))
            }
            None => (series, String::new()),
        };
        let kind = types.get(name).unwrap_or_else(|| panic!("no TYPE for {name}"));
        out.insert(format!("{name} {kind} {labels}").trim_end().to_string());
    }
    out
}

fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

fn promtool_check(scrape: &str, what: &str) {
    let Some(promtool) = tool("promtool", "prometheus") else { return };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), scrape.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && msg.trim().is_empty(), "promtool on the {what} scrape: {msg}");
    println!("promtool check metrics: {what} scrape clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_fixed_names_types_and_labels() {
    // Every configured tag is there at 0 before any tunnel: a portal alone.
    let dir = temp_dir("ops-metrics-alone");
    let ops = free_port();
    let _alone = spawn_impl(Impl::Oxray, "portal", &dir, &portal_config(free_port(), free_port(), ops));
    assert!(wait_port_async(local(ops), Duration::from_secs(10)).await);
    let (code, first) = get(local(ops), "/metrics", None).await.unwrap();
    assert_eq!(code, 200);
    for series in [
        r#"oxray_reverse_sessions_total{role="portal",tag="portal"}"#,
        r#"oxray_reverse_tunnels{role="portal",tag="portal",state="active"}"#,
        r#"oxray_reverse_bytes_total{role="portal",tag="portal",direction="downlink"}"#,
        r#"oxray_reverse_drains_total{tag="portal",reason="session_limit"}"#,
        r#"oxray_inbound_connections_total{tag="external"}"#,
        r#"oxray_inbound_bytes_total{tag="interconn",direction="uplink"}"#,
        r#"oxray_outbound_connections_total{tag="portal"}"#,
    ] {
        assert_eq!(sample(&first, series), Some(0.0), "{series} at 0 from the start:\n{first}");
    }

    let pair = Pair::start("ops-metrics", &[]).await;
    let v = visitor(pair.external, 5000).await;
    settle(&pair).await;
    let (_, portal) = get(pair.portal_ops, "/metrics", None).await.unwrap();
    let (_, bridge) = get(pair.bridge_ops, "/metrics", None).await.unwrap();
    drop(v);
    let mut got = shape(&portal);
    got.extend(shape(&bridge));
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ops_metrics.golden");
    let golden: BTreeSet<String> =
        std::fs::read_to_string(&golden_path).unwrap().lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    let missing: Vec<_> = golden.difference(&got).collect();
    let extra: Vec<_> = got.difference(&golden).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:#?}\nextra {extra:#?}");
    assert_eq!(sample(&portal, r#"oxray_reverse_tunnels{role="portal",tag="portal",state="active"}"#), Some(1.0));
    assert_eq!(sample(&portal, r#"oxray_reverse_sessions{role="portal",tag="portal"}"#), Some(1.0), "{portal}");
    assert_eq!(sample(&bridge, r#"oxray_reverse_dials_total{tag="bridge",result="ok"}"#), Some(1.0));
    assert!(
        sample(&bridge, r#"oxray_reverse_last_heartbeat_timestamp_seconds{role="bridge",tag="bridge"}"#)
            .is_some_and(|t| t > 1.7e9)
    );
    assert!(sample(&portal, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    // No label per session, address or user.
    assert!(!portal.contains("127.0.0.1") && !bridge.contains("127.0.0.1"));
    promtool_check(&first, "portal-alone");
    promtool_check(&portal, "portal");
    promtool_check(&bridge, "bridge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_bridge_turns_readyz_503_within_the_heartbeat_bound() {
    let mut pair = Pair::start("ops-ready", &[]).await;
    assert_eq!(get(pair.portal_ops, "/livez", None).await.unwrap(), (200, "ok\n".into()));
    assert_eq!(get(pair.portal_ops, "/readyz?tunnels=1", None).await.unwrap().0, 200);
    assert_eq!(get(pair.bridge_ops, "/readyz", None).await.unwrap().0, 200);
    // A portal without the tunnel requirement is ready once its listeners are bound.
    assert_eq!(get(pair.portal_ops, "/readyz", None).await.unwrap().0, 200);

    pair.bridge.kill();
    let killed = Instant::now();
    let bound = Duration::from_secs(3 * HEARTBEAT_S);
    let turned = wait_until(bound + Duration::from_secs(2), || async {
        get(pair.portal_ops, "/readyz?tunnels=1", None).await.is_ok_and(|(c, _)| c == 503)
    })
    .await;
    let took = killed.elapsed();
    assert!(turned, "readyz still 200 after {took:?}");
    println!("portal /readyz?tunnels=1 turned 503 {took:?} after the bridge was killed (bound {bound:?})");
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    let (code, body) = get(pair.portal_ops, "/readyz?tunnels=1", None).await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("portal portal: no bridge connected"), "{body}");
    let out = std::process::Command::new(oxray_bin())
        .args(["status", "--tunnels", "--ops", &pair.portal_ops.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "not ready: exit 1");

    // A bridge with no portal is not ready, and says why.
    pair.portal.kill();
    let cfg = pair.dir.join("bridge.json");
    let bops = free_port();
    let bops_arg = format!("127.0.0.1:{bops}");
    let args = ["run", "-c", cfg.to_str().unwrap(), "--ops", &bops_arg];
    let _lonely = Proc::spawn("lonely", &oxray_bin(), &args, &pair.dir.join("lonely.log"), &[]);
    assert!(wait_port_async(local(bops), Duration::from_secs(10)).await);
    let (code, body) = get(local(bops), "/readyz", None).await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("bridge bridge: no tunnel to the portal"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_when_configured() {
    let pair = Pair::start("ops-token", &[("OXRAY_OPS_TOKEN", "s3cret")]).await;
    let (code, _) = get(pair.bridge_ops, "/status", None).await.unwrap();
    assert_eq!(code, 401);
    let (code, _) = get(pair.bridge_ops, "/status", Some("wrong")).await.unwrap();
    assert_eq!(code, 401);
    let (code, body) = get(pair.bridge_ops, "/status", Some("s3cret")).await.unwrap();
    assert_eq!(code, 200);
    assert!(!body.contains("s3cret"));
    assert_eq!(get(pair.bridge_ops, "/metrics?token=s3cret", None).await.unwrap().0, 200);
}
