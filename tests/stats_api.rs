//! V2Ray's stats API: the standard stats config (`stats`, `api`, policy stats flags, a dokodemo-door
//! inbound routed to the `api` tag) runs unchanged under oxray and under V2Ray 4.34, the same traffic
//! goes through both, and Debian's `v2ctl api` (a real process) reads both: same counter names, same
//! payload counters, reset semantics and errors. Bad gRPC input does not hurt oxray.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{Impl, connect_when_listening, free_port, local, spawn_impl, temp_dir, wait_port_async, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";
/// The HTTP request each client sends (its length is the uplink payload).
const REQUEST: &[u8] = b"GET /file HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: stats-test\r\nAccept: */*\r\n\r\n";
const BODY_LEN: usize = 1 << 20;

struct Ports {
    api: u16,
    din: u16,
    vin: u16,
    socks: u16,
}

/// The §7.1 stats config plus: dokodemo `din` → vmess `vout` → vmess `vin` (email a@b) → freedom
/// `direct`, a password SOCKS inbound (user `su`), a blackhole `bh`.
fn config(p: &Ports, target: SocketAddr) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "warning"}},
  "stats": {{}},
  "api": {{"tag": "api", "services": ["StatsService"]}},
  "policy": {{
    "levels": {{"0": {{"statsUserUplink": true, "statsUserDownlink": true}}}},
    "system": {{"statsInboundUplink": true, "statsInboundDownlink": true,
                "statsOutboundUplink": true, "statsOutboundDownlink": true}}}},
  "inbounds": [
    {{"tag": "api-in", "listen": "127.0.0.1", "port": {api}, "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1"}}}},
    {{"tag": "din", "listen": "127.0.0.1", "port": {din}, "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1", "port": {tport}, "network": "tcp"}}}},
    {{"tag": "vin", "listen": "127.0.0.1", "port": {vin}, "protocol": "vmess",
      "settings": {{"clients": [{{"id": "{ID}", "alterId": 0, "email": "a@b"}}]}}}},
    {{"tag": "socks", "listen": "127.0.0.1", "port": {socks}, "protocol": "socks",
      "settings": {{"auth": "password", "accounts": [{{"user": "su", "pass": "sp"}}]}}}}
  ],
  "outbounds": [
    {{"tag": "direct", "protocol": "freedom"}},
    {{"tag": "vout", "protocol": "vmess", "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {vin},
      "users": [{{"id": "{ID}", "alterId": 0, "security": "aes-128-gcm"}}]}}]}}}},
    {{"tag": "bh", "protocol": "blackhole"}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["api-in"], "outboundTag": "api"}},
    {{"type": "field", "inboundTag": ["din"], "outboundTag": "vout"}}
  ]}}
}}"#,
        api = p.api,
        din = p.din,
        vin = p.vin,
        socks = p.socks,
        tport = target.port(),
    )
}

/// One `v2ctl api` call: (exit code, stdout + stderr).
async fn ctl(bin: &PathBuf, api: u16, method: &str, request: &str) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(bin)
            .args(["api", &format!("--server=127.0.0.1:{api}"), method, request])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("v2ctl did not finish in 10 s")
    .expect("run v2ctl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Parses v2ctl's protobuf text output (`stat: < name: "…" value: N >`; a zero value is omitted).
fn parse_stats(text: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let mut name: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("name: ") {
            name = Some(n.trim_matches('"').to_string());
            out.insert(n.trim_matches('"').to_string(), 0);
        } else if let (Some(v), Some(n)) = (line.strip_prefix("value: "), &name) {
            out.insert(n.clone(), v.parse().expect("value is an integer"));
        }
    }
    out
}

async fn query(bin: &PathBuf, api: u16, pattern: &str, reset: bool) -> BTreeMap<String, i64> {
    let (code, text) =
        ctl(bin, api, "StatsService.QueryStats", &format!("pattern: \"{pattern}\" reset: {reset}")).await;
    assert_eq!(code, 0, "QueryStats failed: {text}");
    parse_stats(&text)
}

/// Sends [`REQUEST`] on `s` and reads the response to EOF; returns its length.
async fn fetch(mut s: TcpStream) -> usize {
    s.write_all(REQUEST).await.expect("write request");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got))
        .await
        .expect("response within 20 s")
        .expect("read response");
    got.len()
}

/// The SOCKS5 handshake with user `su`/`sp` to `target`. Returns the stream and the handshake's bytes
/// (sent, received), which V2Ray's inbound counters include and oxray's do not.
async fn socks_connect(proxy: SocketAddr, target: SocketAddr) -> (TcpStream, usize, usize) {
    let mut s = TcpStream::connect(proxy).await.expect("connect socks");
    let mut sent = 0;
    let mut recv = 0;
    let greet = [5u8, 1, 2];
    s.write_all(&greet).await.expect("greet");
    sent += greet.len();
    let mut r = [0u8; 2];
    s.read_exact(&mut r).await.expect("method");
    recv += 2;
    assert_eq!(r, [5, 2], "password method chosen");
    let auth = [&[1u8, 2][..], b"su", &[2], b"sp"].concat();
    s.write_all(&auth).await.expect("auth");
    sent += auth.len();
    s.read_exact(&mut r).await.expect("auth reply");
    recv += 2;
    assert_eq!(r, [1, 0], "password accepted");
    let SocketAddr::V4(t) = target else { panic!("ipv4 target") };
    let req = [&[5u8, 1, 0, 1][..], &t.ip().octets(), &t.port().to_be_bytes()].concat();
    s.write_all(&req).await.expect("connect request");
    sent += req.len();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.expect("connect reply");
    assert_eq!(head[..2], [5, 0], "connect succeeded");
    let rest = match head[3] {
        1 => 6,
        4 => 18,
        other => panic!("unexpected address type {other}"),
    };
    let mut tail = vec![0u8; rest];
    s.read_exact(&mut tail).await.expect("bound address");
    recv += 4 + rest;
    (s, sent, recv)
}

/// What one implementation reported.
struct Run {
    before: BTreeMap<String, i64>,
    after: BTreeMap<String, i64>,
    socks_handshake: (usize, usize),
}

const USER_NAMES: [&str; 4] = [
    "user>>>a@b>>>traffic>>>downlink",
    "user>>>a@b>>>traffic>>>uplink",
    "user>>>su>>>traffic>>>downlink",
    "user>>>su>>>traffic>>>uplink",
];

async fn run(which: Impl, bin: &PathBuf, target: SocketAddr, response_len: usize) -> Run {
    let p = Ports { api: free_port(), din: free_port(), vin: free_port(), socks: free_port() };
    let dir = temp_dir(&format!("stats-api-{which:?}"));
    let proc = spawn_impl(which, &format!("{which:?}"), &dir, &config(&p, target));
    // Not din: a probe there would be a (payload-less) flow through vout to vin, and oxray's VMess
    // client dials at once (registering user a@b at 0) where V2Ray's waits for the first payload.
    for port in [p.api, p.vin, p.socks] {
        assert!(
            wait_port_async(local(port), Duration::from_secs(20)).await,
            "{which:?}: port {port}: {}",
            proc.log_text()
        );
    }
    let before = query(bin, p.api, "", false).await;

    // din may start after the api (4.34 starts tagged inbounds in map order); no probe flow before the counts.
    let din = connect_when_listening(local(p.din), Duration::from_secs(20)).await.expect("connect din");
    assert_eq!(fetch(din).await, response_len);
    let (s, hs_sent, hs_recv) = socks_connect(local(p.socks), target).await;
    assert_eq!(fetch(s).await, response_len);

    // The flows have ended at the client; wait for the counters to show both (each implementation
    // updates them on its own schedule), then take one snapshot.
    let want_down = response_len as i64;
    let settled = wait_until(Duration::from_secs(15), || async {
        let q = query(bin, p.api, "user>>>", false).await;
        USER_NAMES.iter().all(|n| q.get(*n).copied().unwrap_or(0) > 0)
            && q.get("user>>>a@b>>>traffic>>>downlink") == Some(&want_down)
            && q.get("user>>>su>>>traffic>>>downlink") == Some(&want_down)
    })
    .await;
    assert!(settled, "{which:?}: user counters never settled: {:?}", query(bin, p.api, "", false).await);
    let after = query(bin, p.api, "", false).await;

    // Reset: the values before are returned, then every matching counter reads 0 (v2ctl omits zero).
    let reset = query(bin, p.api, "user>>>", true).await;
    for n in USER_NAMES {
        assert_eq!(reset.get(n), after.get(n), "{which:?}: reset returns the value before ({n})");
    }
    let zeroed = query(bin, p.api, "user", false).await;
    assert_eq!(zeroed.keys().collect::<Vec<_>>(), USER_NAMES.iter().collect::<Vec<_>>(), "{which:?}");
    assert!(zeroed.values().all(|v| *v == 0), "{which:?}: after reset: {zeroed:?}");

    // GetStats with reset, and the error for an unknown name (exit 255, 4.34's text).
    let din_down = "inbound>>>din>>>traffic>>>downlink";
    let (code, text) = ctl(bin, p.api, "StatsService.GetStats", &format!("name: \"{din_down}\" reset: true")).await;
    assert_eq!(code, 0, "{text}");
    assert_eq!(parse_stats(&text).get(din_down), after.get(din_down), "{which:?}: GetStats");
    let (_, text) = ctl(bin, p.api, "StatsService.GetStats", &format!("name: \"{din_down}\"")).await;
    assert_eq!(parse_stats(&text).get(din_down), Some(&0), "{which:?}: GetStats after reset");
    let (code, text) = ctl(bin, p.api, "StatsService.GetStats", "name: \"nope\"").await;
    assert_eq!(code, 255, "{which:?}: {text}");
    assert!(
        text.contains("code = Unknown desc = v2ray.com/core/app/stats/command: nope not found."),
        "{which:?}: {text}"
    );
    let (code, text) = ctl(bin, p.api, "StatsService.GetSysStats", "").await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Uptime:") || text.trim().is_empty() || text.contains("NumGoroutine"), "{which:?}: {text}");
    drop(proc);
    Run { before, after, socks_handshake: (hs_sent, hs_recv) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2ctl_reads_the_same_counters_from_oxray_as_from_v2ray() {
    let Some(ctl_bin) = common::tool("v2ctl", "v2ray") else { return };
    let Some(_) = common::v2ray() else { return };
    let target = common::http_server(common::payload(BODY_LEN, 7)).await;
    let response_len =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY_LEN}\r\nConnection: close\r\n\r\n").len() + BODY_LEN;

    let v = run(Impl::V2ray, &ctl_bin, target, response_len).await;
    let o = run(Impl::Oxray, &ctl_bin, target, response_len).await;

    // Names: registered at start, identical sets before and after traffic.
    let names = |m: &BTreeMap<String, i64>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&o.before), names(&v.before), "names before traffic");
    assert_eq!(o.before.len(), 14, "7 tagged handlers × 2: {:?}", o.before);
    assert_eq!(names(&o.after), names(&v.after), "names after traffic");
    assert_eq!(o.after.len(), 18, "{:?}", o.after);
    for (n, val) in &o.before {
        if !n.contains("api-in") {
            assert_eq!(*val, 0, "{n} before traffic");
        }
    }

    let up = REQUEST.len() as i64;
    let down = response_len as i64;
    let g = |m: &BTreeMap<String, i64>, n: &str| m.get(n).copied().unwrap_or_else(|| panic!("{n} missing"));
    eprintln!("counter: v2ray / oxray");
    for n in o.after.keys() {
        eprintln!("  {n}: {} / {}", g(&v.after, n), g(&o.after, n));
    }
    // Payload counters: exactly the bytes moved, in both.
    for (n, want) in [
        ("user>>>a@b>>>traffic>>>uplink", up),
        ("user>>>a@b>>>traffic>>>downlink", down),
        ("user>>>su>>>traffic>>>uplink", up),
        ("user>>>su>>>traffic>>>downlink", down),
        ("inbound>>>din>>>traffic>>>uplink", up),
        ("inbound>>>din>>>traffic>>>downlink", down),
        ("outbound>>>direct>>>traffic>>>uplink", 2 * up),
        ("outbound>>>direct>>>traffic>>>downlink", 2 * down),
        ("outbound>>>bh>>>traffic>>>uplink", 0),
        ("outbound>>>bh>>>traffic>>>downlink", 0),
    ] {
        assert_eq!(g(&v.after, n), want, "V2Ray {n}");
        assert_eq!(g(&o.after, n), want, "oxray {n}");
    }
    // SOCKS inbound: V2Ray counts the handshake on the client connection, oxray the payload only.
    let (hs_up, hs_down) = (v.socks_handshake.0 as i64, v.socks_handshake.1 as i64);
    assert_eq!(g(&o.after, "inbound>>>socks>>>traffic>>>uplink"), up);
    assert_eq!(g(&o.after, "inbound>>>socks>>>traffic>>>downlink"), down);
    assert_eq!(g(&v.after, "inbound>>>socks>>>traffic>>>uplink"), up + hs_up, "V2Ray socks up = payload + handshake");
    assert_eq!(g(&v.after, "inbound>>>socks>>>traffic>>>downlink"), down + hs_down);
    // VMess: V2Ray counts the encrypted stream (header, chunk lengths, tags, padding); oxray the payload.
    for n in ["vin", "vout"].iter().flat_map(|t| [format!("inbound>>>{t}"), format!("outbound>>>{t}")]) {
        for (dir, payload) in [("uplink", up), ("downlink", down)] {
            let name = format!("{n}>>>traffic>>>{dir}");
            let Some(&vv) = v.after.get(&name) else { continue };
            assert_eq!(g(&o.after, &name), payload, "oxray {name}");
            assert!(vv >= payload && vv <= payload + payload / 20 + 512, "V2Ray {name} = {vv}, payload {payload}");
        }
    }
    // The API's own inbound: both count the gRPC connections (values differ with each side's HTTP/2).
    assert!(g(&o.after, "inbound>>>api-in>>>traffic>>>uplink") > 0);
    assert!(g(&o.after, "inbound>>>api-in>>>traffic>>>downlink") > 0);
}

/// A no-`stats` config: the API answers with 4.34's errors; an api connection without a routing rule
/// is not served (v2ctl times out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stats_the_api_answers_with_4_34s_errors() {
    let Some(ctl_bin) = common::tool("v2ctl", "v2ray") else { return };
    let api = free_port();
    let dir = temp_dir("stats-api-nostats");
    let cfg = format!(
        r#"{{"api": {{"tag": "api", "services": ["StatsService"]}},
  "inbounds": [{{"tag": "api-in", "listen": "127.0.0.1", "port": {api}, "protocol": "dokodemo-door",
                 "settings": {{"address": "127.0.0.1"}}}}],
  "outbounds": [{{"protocol": "freedom"}}],
  "routing": {{"rules": [{{"type": "field", "inboundTag": ["api-in"], "outboundTag": "api"}}]}}}}"#
    );
    let proc = spawn_impl(Impl::Oxray, "nostats", &dir, &cfg);
    assert!(wait_port_async(local(api), Duration::from_secs(20)).await, "{}", proc.log_text());
    let (code, text) = ctl(&ctl_bin, api, "StatsService.QueryStats", "pattern: \"\"").await;
    assert_eq!(code, 255, "{text}");
    assert!(text.contains("QueryStats only works its own stats.Manager."), "{text}");
    let (code, text) = ctl(&ctl_bin, api, "StatsService.GetStats", "name: \"x\"").await;
    assert_eq!(code, 255, "{text}");
    assert!(text.contains("x not found."), "{text}");
}

/// Garbage, HTTP/1.1, a broken HTTP/2 preface, bad protobuf and an oversized gRPC frame: each is
/// refused, oxray stays up, and the next v2ctl call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_input_is_refused_without_harm() {
    let Some(ctl_bin) = common::tool("v2ctl", "v2ray") else { return };
    let api = free_port();
    let dir = temp_dir("stats-api-bad");
    let cfg = format!(
        r#"{{"stats": {{}}, "api": {{"tag": "api", "services": ["StatsService"]}},
  "policy": {{"system": {{"statsInboundUplink": true}}}},
  "inbounds": [{{"tag": "api-in", "listen": "127.0.0.1", "port": {api}, "protocol": "dokodemo-door",
                 "settings": {{"address": "127.0.0.1"}}}}],
  "outbounds": [{{"protocol": "freedom"}}],
  "routing": {{"rules": [{{"type": "field", "inboundTag": ["api-in"], "outboundTag": "api"}}]}}}}"#
    );
    let mut proc = spawn_impl(Impl::Oxray, "bad", &dir, &cfg);
    assert!(wait_port_async(local(api), Duration::from_secs(20)).await, "{}", proc.log_text());

    // Each raw input: the server closes the connection (or answers an error) within the deadline.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let inputs: Vec<Vec<u8>> = vec![
        (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
        b"GET /v2ray.core.app.stats.command.StatsService/QueryStats HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        [&preface[..], &[0xff; 64]].concat(),
        // A SETTINGS frame claiming 16 MiB of payload.
        [&preface[..], &[0xff, 0xff, 0xff, 4, 0, 0, 0, 0, 0]].concat(),
    ];
    for (i, input) in inputs.iter().enumerate() {
        let mut s = TcpStream::connect(local(api)).await.expect("connect api");
        let _ = s.write_all(input).await;
        let mut sink = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
        assert!(r.is_ok(), "input {i}: the connection was not closed within 10 s");
    }

    if let Some(curl) = common::curl() {
        let url = format!("http://127.0.0.1:{api}/v2ray.core.app.stats.command.StatsService/QueryStats");
        let cases: [(&str, Vec<u8>); 3] = [
            ("bad protobuf", vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff]),
            ("oversized frame", [&[0u8, 0x7f, 0xff, 0xff, 0xff][..], &[0; 100]].concat()),
            ("truncated frame", vec![0, 0, 0]),
        ];
        for (what, body) in cases {
            let file = common::write_file(&dir, "req.bin", "");
            std::fs::write(&file, &body).expect("write body");
            let out = tokio::process::Command::new(&curl)
                .args(["-s", "-m", "10", "--http2-prior-knowledge", "-H", "content-type: application/grpc"])
                .args(["-H", "te: trailers", "--data-binary"])
                .arg(format!("@{}", file.display()))
                .args(["-D", "-", "-o", "/dev/null", &url])
                .output()
                .await
                .expect("run curl");
            let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
            let status = head.lines().find_map(|l| l.strip_prefix("grpc-status: ")).map(str::trim).map(String::from);
            assert!(status.is_some_and(|s| s != "0"), "{what}: expected a gRPC error, got {head}");
        }
        // A well-formed request over curl gets grpc-status 0.
        let file = common::write_file(&dir, "ok.bin", "");
        std::fs::write(&file, [0u8, 0, 0, 0, 0]).expect("write body");
        let out = tokio::process::Command::new(&curl)
            .args(["-s", "-m", "10", "--http2-prior-knowledge", "-H", "content-type: application/grpc"])
            .args(["-H", "te: trailers", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .args(["-D", "-", "-o", "/dev/null", &url])
            .output()
            .await
            .expect("run curl");
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(head.contains("grpc-status: 0"), "{head}");
    }

    assert!(proc.child.try_wait().expect("try_wait").is_none(), "oxray exited: {}", proc.log_text());
    let q = query(&ctl_bin, api, "", false).await;
    assert_eq!(q.keys().collect::<Vec<_>>(), ["inbound>>>api-in>>>traffic>>>uplink"], "{q:?}");
    assert!(q["inbound>>>api-in>>>traffic>>>uplink"] > 0, "the bad connections were counted: {q:?}");
    assert!(!proc.log_text().contains("panicked"), "{}", proc.log_text());
}

/// A flow that stays open shows in the counters while it lives (4.34 counts every write; oxray adds a
/// live flow's bytes once a second), in both implementations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_flow_is_counted_before_it_ends() {
    let Some(ctl_bin) = common::tool("v2ctl", "v2ray") else { return };
    let Some(_) = common::v2ray() else { return };
    let (echo, _task) = common::xor_echo_server().await;
    for which in [Impl::V2ray, Impl::Oxray] {
        let (api, din) = (free_port(), free_port());
        let dir = temp_dir(&format!("stats-live-{which:?}"));
        let cfg = format!(
            r#"{{"stats": {{}}, "api": {{"tag": "api", "services": ["StatsService"]}},
  "policy": {{"system": {{"statsInboundUplink": true, "statsInboundDownlink": true}}}},
  "inbounds": [
    {{"tag": "api-in", "listen": "127.0.0.1", "port": {api}, "protocol": "dokodemo-door", "settings": {{"address": "127.0.0.1"}}}},
    {{"tag": "din", "listen": "127.0.0.1", "port": {din}, "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1", "port": {ep}, "network": "tcp"}}}}],
  "outbounds": [{{"protocol": "freedom"}}],
  "routing": {{"rules": [{{"type": "field", "inboundTag": ["api-in"], "outboundTag": "api"}}]}}}}"#,
            ep = echo.port()
        );
        let proc = spawn_impl(which, &format!("live-{which:?}"), &dir, &cfg);
        assert!(wait_port_async(local(api), Duration::from_secs(20)).await, "{}", proc.log_text());
        let mut s = connect_when_listening(local(din), Duration::from_secs(20)).await.expect("connect din");
        let data = common::payload(5000, 3);
        s.write_all(&data).await.expect("write");
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        // The connection stays open: wait (bounded) for both directions to show 5000.
        let shown = wait_until(Duration::from_secs(5), || async {
            let q = query(&ctl_bin, api, ">>>din>>>", false).await;
            q.get("inbound>>>din>>>traffic>>>uplink") == Some(&5000)
                && q.get("inbound>>>din>>>traffic>>>downlink") == Some(&5000)
        })
        .await;
        assert!(shown, "{which:?}: live flow not counted: {:?}", query(&ctl_bin, api, "", false).await);
        drop(s);
        drop(proc);
    }
}
