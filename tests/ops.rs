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

/// Heartbeat period of the test pair; the health bound is 3 periods.
const HEARTBEAT_S: u64 = 1;

/// The reverse pair's portal with the ops listener in its config; both sides beat every HEARTBEAT_S.
fn ops_portal_config(external: u16, interconn: u16, ops: u16) -> String {
    let top = format!(r#""ops": {{"listen": "127.0.0.1:{ops}"}},"#);
    let entry = format!(r#""heartbeatSeconds": {HEARTBEAT_S}, "#);
    portal_config(external, interconn, Rev { entry: &entry, top: &top, ..Rev::new("info") })
}

fn ops_bridge_config(interconn: u16, service: u16) -> String {
    let entry = format!(r#""heartbeatSeconds": {HEARTBEAT_S}, "#);
    bridge_config(local(interconn), service, Rev { entry: &entry, ..Rev::new("info") })
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
        let portal = spawn_impl(Impl::Oxray, "portal", &dir, &ops_portal_config(external, interconn, pops));
        let cfg = write_file(&dir, "bridge.json", &ops_bridge_config(interconn, echo.port()));
        let bops_arg = format!("127.0.0.1:{bops}");
        let args = ["run", "-c", cfg.to_str().unwrap(), "--ops", &bops_arg];
        let bridge = Proc::spawn("bridge", &oxray_bin(), &args, &dir.join("bridge.log"), bridge_env);
        until_traffic(local(external), Duration::from_secs(15)).await.expect("first traffic");
        // Traffic proves the inbounds only: each ops listener is its own port.
        for ops in [pops, bops] {
            assert!(wait_port_async(local(ops), Duration::from_secs(10)).await, "no ops listener on {ops}");
        }
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
    let _alone = spawn_impl(Impl::Oxray, "portal", &dir, &ops_portal_config(free_port(), free_port(), ops));
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
    // Under a loaded CI machine the first tunnel may be replaced (1 s heartbeats) just after the first
    // traffic: wait for both sides to report ready, then assert once.
    let code = |ops, path| async move { get(ops, path, None).await.map(|(c, _)| c).unwrap_or(0) };
    let ready = wait_until(Duration::from_secs(10), || async {
        code(pair.portal_ops, "/readyz?tunnels=1").await == 200 && code(pair.bridge_ops, "/readyz").await == 200
    })
    .await;
    assert!(
        ready,
        "not ready 10 s after the first traffic: portal {:?}, bridge {:?}\nportal log:\n{}\nbridge log:\n{}",
        get(pair.portal_ops, "/readyz?tunnels=1", None).await,
        get(pair.bridge_ops, "/readyz", None).await,
        pair.portal.log_text(),
        pair.bridge.log_text()
    );
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

/// Chrome DevTools Protocol over `--remote-debugging-pipe` (fd 3: commands in, fd 4: replies out,
/// NUL-terminated JSON): no websocket client needed.
struct Chromium {
    proc: std::process::Child,
    to: std::io::PipeWriter,
    from: std::sync::mpsc::Receiver<Value>,
    next: u64,
}

impl Chromium {
    fn start(bin: &Path, profile: &Path, log: &Path) -> Chromium {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (cmd_r, cmd_w) = std::io::pipe().unwrap();
        let (out_r, out_w) = std::io::pipe().unwrap();
        // Copies above fd 10, so placing them at 3 and 4 in the child cannot clobber each other.
        // SAFETY: fcntl on fds we own.
        let (a, b) = unsafe {
            (
                libc::fcntl(cmd_r.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10),
                libc::fcntl(out_w.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10),
            )
        };
        assert!(a >= 10 && b >= 10);
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
        // SAFETY: only async-signal-safe dup2 calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let proc = cmd.spawn().expect("spawn chromium");
        // SAFETY: closing our copies; the child has its own.
        unsafe {
            libc::close(a);
            libc::close(b);
        }
        drop((cmd_r, out_w));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(out_r);
            let mut buf = Vec::new();
            while std::io::BufRead::read_until(&mut r, 0, &mut buf).is_ok_and(|n| n > 0) {
                buf.pop();
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    return;
                }
                buf.clear();
            }
        });
        Chromium { proc, to: cmd_w, from: rx, next: 1 }
    }

    /// Sends one command and waits (bounded) for its reply.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        std::io::Write::write_all(&mut self.to, &bytes).unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let v = self.from.recv_timeout(left).unwrap_or_else(|_| panic!("no reply to {method}"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().fold(0u32, |acc, c| (acc << 6) | u32::from(val(*c))) << (6 * (4 - chunk.len()));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

/// What the page shows, read from the live DOM.
const DOM_PROBE: &str = r#"JSON.stringify({
  tags: [...document.querySelectorAll("section.tag")].map(e => e.dataset.role + "/" + e.dataset.tag),
  tunnels: document.querySelectorAll("tr.tunnel").length,
  sessions: [...document.querySelectorAll("tr.session")].map(e => Number(e.dataset.id)),
  banner: document.getElementById("banner").className,
  bannerText: document.getElementById("banner").textContent,
  ready: document.getElementById("ready").textContent,
  sparks: document.querySelectorAll("svg.spark polyline").length
})"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_tunnels_sessions_and_the_banner_in_chromium() {
    let Some(bin) = tool("chromium", "chromium") else { return };
    let mut pair = Pair::start("ops-page", &[]).await;
    let v = visitor(pair.external, 20_000).await;
    settle(&pair).await;
    let portal = status(pair.portal_ops).await;
    let session_id = portal["portals"][0]["tunnels"][0]["sessions"][0]["id"].as_u64().unwrap();

    let out_dir = pair.dir.clone();
    let url = format!("http://{}/", pair.portal_ops);
    let mut chrome = Chromium::start(&bin, &out_dir.join("chromium-profile"), &out_dir.join("chromium.log"));
    let target = chrome.call(None, "Target.createTarget", serde_json::json!({"url": url}));
    let attached = chrome.call(
        None,
        "Target.attachToTarget",
        serde_json::json!({"targetId": target["targetId"], "flatten": true}),
    );
    let sid = attached["sessionId"].as_str().unwrap().to_string();
    let probe = |chrome: &mut Chromium| -> Value {
        let r = chrome.call(
            Some(&sid),
            "Runtime.evaluate",
            serde_json::json!({"expression": DOM_PROBE, "returnByValue": true}),
        );
        r["result"]["value"].as_str().and_then(|s| serde_json::from_str(s).ok()).unwrap_or(Value::Null)
    };

    // Live: the portal, its tunnel and the visitor's session, fed by the event stream.
    let end = Instant::now() + Duration::from_secs(15);
    let mut dom = probe(&mut chrome);
    while !(dom["tunnels"] == 1 && dom["sessions"].as_array().is_some_and(|s| s.contains(&session_id.into())))
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(100));
        dom = probe(&mut chrome);
    }
    assert_eq!(dom["tags"], serde_json::json!(["portal/portal"]), "{dom}");
    assert_eq!(dom["tunnels"], 1, "{dom}");
    assert!(dom["sessions"].as_array().unwrap().contains(&session_id.into()), "{dom}");
    assert_eq!(dom["banner"], "", "{dom}");
    assert_eq!(dom["ready"], "ready", "{dom}");
    assert_eq!(dom["sparks"], 2, "{dom}");
    let shot = chrome.call(Some(&sid), "Page.captureScreenshot", serde_json::json!({"format": "png"}));
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::write(out_dir.join("page-live.png"), &png).unwrap();
    println!("screenshot: {}", out_dir.join("page-live.png").display());

    // The bridge stops: after the health bound (3 heartbeat periods) the red banner names the portal.
    drop(v);
    pair.bridge.kill();
    let killed = Instant::now();
    let bound = Duration::from_secs(3 * HEARTBEAT_S);
    let end = killed + bound + Duration::from_secs(5);
    dom = probe(&mut chrome);
    while dom["banner"] != "on" && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        dom = probe(&mut chrome);
    }
    let took = killed.elapsed();
    assert_eq!(dom["banner"], "on", "no banner {took:?} after the bridge was killed: {dom}");
    assert!(dom["bannerText"].as_str().unwrap().contains("portal portal: no tunnel"), "{dom}");
    assert_eq!(dom["tunnels"], 0, "{dom}");
    assert!(took >= bound - Duration::from_millis(1100), "banner after {took:?}, before several periods");
    println!("banner shown {took:?} after the bridge was killed (bound {bound:?})");
    let shot = chrome.call(Some(&sid), "Page.captureScreenshot", serde_json::json!({"format": "png"}));
    std::fs::write(out_dir.join("page-banner.png"), base64_decode(shot["data"].as_str().unwrap())).unwrap();
    println!("screenshot: {}", out_dir.join("page-banner.png").display());
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = temp_dir("ops-notify");
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let port = free_port();
    let cfg = format!(
        r#"{{"inbounds": [{{"tag": "in", "listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
             "settings": {{"address": "127.0.0.1", "port": 9}}}}], "outbounds": [{{"protocol": "blackhole"}}]}}"#
    );
    let cfg = write_file(&dir, "c.json", &cfg);
    let notify = sock_path.to_str().unwrap();
    let mut p = Proc::spawn(
        "oxray",
        &oxray_bin(),
        &["run", "-c", cfg.to_str().unwrap()],
        &dir.join("oxray.log"),
        &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")],
    );
    let mut buf = [0u8; 512];
    let recv = |buf: &mut [u8]| -> String {
        let n = sock.recv(buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let first = recv(&mut buf);
    assert!(first.starts_with("READY=1\n"), "{first}");
    assert!(first.contains(&format!("MAINPID={}", p.pid())), "{first}");
    // READY comes after the listeners are bound.
    assert!(std::net::TcpStream::connect(local(port)).is_ok(), "READY before the listener was bound");
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while !seen.iter().any(|m: &String| m == "WATCHDOG=1") && Instant::now() < end {
        seen.push(recv(&mut buf));
    }
    assert!(seen.iter().any(|m| m == "WATCHDOG=1"), "{seen:?}");
    let _ = std::process::Command::new("kill").arg("-TERM").arg(p.pid().to_string()).status();
    let end = Instant::now() + Duration::from_secs(5);
    let mut stopping = false;
    while !stopping && Instant::now() < end {
        stopping = recv(&mut buf).starts_with("STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    assert_eq!(p.terminate(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));

    // A bad config exits 23 (the unit's RestartPreventExitStatus) and never says READY.
    let bad = write_file(&dir, "bad.json", r#"{"inbounds": [{"port": "x"}]}"#);
    let st = std::process::Command::new(oxray_bin())
        .args(["run", "-c", bad.to_str().unwrap()])
        .env("NOTIFY_SOCKET", notify)
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(23));
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut more = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        more.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(!more.iter().any(|m| m.starts_with("READY=1")), "{more:?}");
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd/oxray.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("RestartPreventExitStatus=23"));
}

#[test]
fn json_log_lines_are_json() {
    let dir = temp_dir("ops-jsonlog");
    let port = free_port();
    let cfg = format!(
        r#"{{"log": {{"loglevel": "info", "access": "none"}}, "inbounds": [{{"tag": "in", "listen": "127.0.0.1", "port": {port},
             "protocol": "dokodemo-door", "settings": {{"address": "127.0.0.1", "port": 9}}}}],
             "outbounds": [{{"protocol": "blackhole"}}]}}"#
    );
    let cfg = write_file(&dir, "c.json", &cfg);
    let mut p = Proc::spawn(
        "oxray",
        &oxray_bin(),
        &["run", "-c", cfg.to_str().unwrap(), "--log-format", "json"],
        &dir.join("oxray.log"),
        // Whatever the environment running the tests says: this test checks the release.
        &[("OXRAY_KEEP_STARTUP_TEXT", "0")],
    );
    assert!(wait_for_port(local(port), Duration::from_secs(10)));
    assert_eq!(p.terminate(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
    let text = p.log_text();
    let lines: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect();
    let ready = lines.iter().find(|l| l["message"] == "ready").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(ready["level"], "info");
    assert_eq!(ready["listeners"], 1);
    // The start-up-only code was laid out between its markers (link/hot-symbols.txt) and dropped.
    assert!(ready["startup_text_kib"].as_u64().is_some_and(|k| k > 0), "{ready}");
    assert!(ready["time"].as_f64().is_some_and(|t| t > 1.7e9));
    assert!(lines.iter().any(|l| l["message"] == "stopped"), "{text}");
}

/// `OXRAY_KEEP_STARTUP_TEXT=1` keeps the start-up pages: the ready line reports none released.
#[test]
fn keep_startup_text_releases_nothing() {
    let dir = temp_dir("ops-keep-text");
    let port = free_port();
    let cfg = format!(
        r#"{{"log": {{"loglevel": "info", "access": "none"}}, "inbounds": [{{"listen": "127.0.0.1", "port": {port},
             "protocol": "dokodemo-door", "settings": {{"address": "127.0.0.1", "port": 9}}}}],
             "outbounds": [{{"protocol": "blackhole"}}]}}"#
    );
    let cfg = write_file(&dir, "c.json", &cfg);
    let mut p = Proc::spawn(
        "oxray",
        &oxray_bin(),
        &["run", "-c", cfg.to_str().unwrap(), "--log-format", "json"],
        &dir.join("oxray.log"),
        &[("OXRAY_KEEP_STARTUP_TEXT", "1")],
    );
    assert!(wait_for_port(local(port), Duration::from_secs(10)));
    assert_eq!(p.terminate(Duration::from_secs(10)).and_then(|s| s.code()), Some(0));
    let text = p.log_text();
    let ready = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "ready")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(ready["startup_text_kib"], 0, "{ready}");
}

/// SIGTERM the moment the listener accepts a connection is a clean stop (exit 0, "stopped"): the
/// handlers are in place before anything binds, so a script or service manager that signals early
/// does not get the default action (death by signal, no drain).
#[test]
fn sigterm_as_soon_as_the_listener_binds_is_a_clean_stop() {
    let dir = temp_dir("ops-early-term");
    for round in 0..5 {
        let port = free_port();
        let cfg = format!(
            r#"{{"log": {{"loglevel": "info", "access": "none"}}, "inbounds": [{{"listen": "127.0.0.1", "port": {port},
                 "protocol": "dokodemo-door", "settings": {{"address": "127.0.0.1", "port": 9}}}}],
                 "outbounds": [{{"protocol": "blackhole"}}]}}"#
        );
        let cfg = write_file(&dir, &format!("c{round}.json"), &cfg);
        let mut p = Proc::spawn(
            "oxray",
            &oxray_bin(),
            &["run", "-c", cfg.to_str().unwrap()],
            &dir.join(format!("oxray{round}.log")),
            &[],
        );
        // Polled without pauses, so the signal lands as close to the bind as a client can see it.
        let end = Instant::now() + Duration::from_secs(10);
        let mut bound = false;
        while !bound && Instant::now() < end {
            bound = std::net::TcpStream::connect(local(port)).is_ok();
        }
        assert!(bound, "round {round}: listener never bound\n{}", p.log_text());
        let code = p.terminate(Duration::from_secs(10)).and_then(|s| s.code());
        assert_eq!(code, Some(0), "round {round}: SIGTERM right after the bind\n{}", p.log_text());
        assert!(p.log_text().contains("stopped"), "round {round}\n{}", p.log_text());
    }
}
