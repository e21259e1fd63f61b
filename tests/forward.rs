//! End-to-end: the `oxray` binary as a port forwarder (dokodemo-door → freedom), on real loopback sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn start_oxray(name: &str, config: &str) -> (Proc, std::path::PathBuf) {
    let dir = temp_dir(name);
    let cfg = write_file(&dir, "config.json", config);
    let proc = Proc::spawn(
        name,
        &oxray_bin(),
        &["run", "-c", cfg.to_str().unwrap()],
        &dir.join("oxray.log"),
        &[("OXRAY_LOG", "info")],
    );
    (proc, dir)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_32_concurrent_10mib_streams_byte_exact() {
    let (echo, _task) = xor_echo_server().await;
    let port = free_port();
    let config = format!(
        r#"{{
  // comments are fine
  "inbounds": [{{"tag": "in", "listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
                 "settings": {{"address": "127.0.0.1", "port": {echo_port}, "network": "tcp"}}}}],
  "outbounds": [{{"protocol": "freedom"}}]
}}"#,
        echo_port = echo.port()
    );
    let (proc, _dir) = start_oxray("forward32", &config);
    assert!(wait_for_port(addr(port), Duration::from_secs(10)), "oxray did not listen: {}", proc.log_text());

    // Payloads are made before any connection opens: generating them inside the tasks would starve the
    // echo server long enough to trip the 1 s downlinkOnly idle limit.
    let payloads: Vec<Vec<u8>> = (0..32u64).map(|i| payload(10 << 20, i)).collect();
    let mut tasks = Vec::new();
    for data in payloads {
        tasks.push(tokio::spawn(async move { xor_roundtrip(addr(port), &data).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        t.await.unwrap().unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
}

/// A server that reads the whole request until EOF and only then answers: it proves half-close crosses.
async fn answer_after_eof_server(reply: Vec<u8>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                if s.read_to_end(&mut req).await.is_ok() {
                    let mut out = (req.len() as u64).to_be_bytes().to_vec();
                    out.extend_from_slice(&reply);
                    let _ = s.write_all(&out).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_still_receives_the_whole_reply() {
    let reply = payload(1 << 20, 7);
    let server = answer_after_eof_server(reply.clone()).await;
    let port = free_port();
    let config = format!(
        r#"{{"inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
             "settings": {{"address": "127.0.0.1", "port": {sp}}}}}],
           "outbounds": [{{"protocol": "freedom"}}]}}"#,
        sp = server.port()
    );
    let (proc, _dir) = start_oxray("halfclose", &config);
    assert!(wait_for_port(addr(port), Duration::from_secs(10)), "{}", proc.log_text());
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr(port)).await.unwrap();
        s.write_all(b"GET / please").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await.unwrap().unwrap();
        assert_eq!(got.len(), 8 + reply.len(), "reply truncated after half-close");
        assert_eq!(&got[..8], &12u64.to_be_bytes(), "server did not see the whole request");
        assert!(got[8..] == reply[..], "reply bytes differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_inbound_tag_port_and_domain() {
    let (echo, _task) = xor_echo_server().await;
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let dir = temp_dir("routing");
    let access = dir.join("access.log");
    let config = format!(
        r#"{{
  "log": {{"loglevel": "info", "access": "{access}"}},
  "inbounds": [
    {{"tag": "a", "listen": "127.0.0.1", "port": {pa}, "protocol": "dokodemo-door", "settings": {{"address": "127.0.0.1", "port": {ep}}}}},
    {{"tag": "b", "listen": "127.0.0.1", "port": {pb}, "protocol": "dokodemo-door", "settings": {{"address": "echo.invalid", "port": 4242}}}},
    {{"tag": "c", "listen": "127.0.0.1", "port": {pc}, "protocol": "dokodemo-door", "settings": {{"address": "127.0.0.1", "port": 9}}}}
  ],
  "outbounds": [
    {{"tag": "direct", "protocol": "freedom"}},
    {{"tag": "block", "protocol": "blackhole"}},
    {{"tag": "redir", "protocol": "freedom", "settings": {{"redirect": "127.0.0.1:{ep}"}}}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["a"], "outboundTag": "direct"}},
    {{"type": "field", "domain": ["full:echo.invalid"], "outboundTag": "redir"}},
    {{"type": "field", "port": "1-10", "outboundTag": "block"}}
  ]}}
}}"#,
        access = access.display(),
        ep = echo.port()
    );
    let cfg = write_file(&dir, "config.json", &config);
    // Five hours east of UTC (POSIX TZ signs are inverted): the logs' local time stamps must show it.
    let envs = [("TZ", "OXT-5")];
    let proc =
        Proc::spawn("routing", &oxray_bin(), &["run", "-c", cfg.to_str().unwrap()], &dir.join("oxray.log"), &envs);
    for port in [pa, pb, pc] {
        assert!(wait_for_port(addr(port), Duration::from_secs(10)), "did not listen on {port}: {}", proc.log_text());
    }

    xor_roundtrip(addr(pa), b"via direct").await.expect("inbound a goes direct to the echo server");
    // echo.invalid cannot resolve: only the redirect outbound can have carried it.
    xor_roundtrip(addr(pb), b"via redirect").await.expect("domain rule sends b through the redirect");
    // Port 9 is blackholed: the connection ends with no byte back.
    let mut s = TcpStream::connect(addr(pc)).await.unwrap();
    let _ = s.write_all(b"blocked?").await;
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("blackhole hangs");
    assert!(r.is_err() || got.is_empty(), "blackhole answered {got:?}");

    let ok = wait_until(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&access).unwrap_or_default();
        async move {
            text.contains(&format!("tcp:127.0.0.1:{} [a -> direct]", echo.port()))
                && text.contains("tcp:echo.invalid:4242 [b -> redir]")
                && text.contains("tcp:127.0.0.1:9 [c -> block]")
        }
    })
    .await;
    assert!(
        ok,
        "access log does not show the expected routes:\n{}",
        std::fs::read_to_string(&access).unwrap_or_default()
    );
    // V2Ray's layout, `2006/01/02 15:04:05 <from> accepted <to> [<route>]`, in both logs.
    let utc = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let access_text = std::fs::read_to_string(&access).unwrap();
    for line in access_text.lines() {
        check_stamp(line, utc + 5 * 3600);
        assert!(line[20..].starts_with("127.0.0.1:") && line.contains(" accepted tcp:"), "{line:?}");
    }
    // The process writes its log in batches: the start line may trail the first routed connections.
    proc.log_shows("started", Duration::from_secs(5)).await;
    let started = proc.log_text();
    let line = started.lines().find(|l| l.contains("started")).unwrap_or_else(|| panic!("no start line:\n{started}"));
    check_stamp(line, utc + 5 * 3600);
    assert!(line[20..].starts_with("[Warning] oxray "), "{line:?}");
}

/// `line` starts with a `YYYY/MM/DD hh:mm:ss ` stamp whose time of day is within 2 minutes of `local`
/// (seconds since the epoch, shifted into the zone the process runs in).
fn check_stamp(line: &str, local: u64) {
    let of_day =
        oxray::testing::log_stamp_seconds(line).unwrap_or_else(|| panic!("not V2Ray's time stamp layout: {line:?}"));
    let diff = (of_day + 86_400 - local % 86_400) % 86_400;
    assert!(
        diff <= 120 || diff >= 86_400 - 120,
        "stamp {of_day} s into the day, expected ~{}: {line:?}",
        local % 86_400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_listeners_and_exits_cleanly() {
    let (echo, _task) = xor_echo_server().await;
    let port = free_port();
    let config = format!(
        r#"{{"inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
             "settings": {{"address": "127.0.0.1", "port": {ep}}}}}], "outbounds": [{{"protocol": "freedom"}}]}}"#,
        ep = echo.port()
    );
    let (mut proc, _dir) = start_oxray("sigterm", &config);
    assert!(wait_for_port(addr(port), Duration::from_secs(10)), "{}", proc.log_text());
    xor_roundtrip(addr(port), b"alive").await.unwrap();
    let status = proc.terminate(Duration::from_secs(10)).expect("oxray did not exit on SIGTERM");
    assert!(status.success(), "exit status {status:?}: {}", proc.log_text());
    assert!(TcpStream::connect(addr(port)).await.is_err(), "listener still open after exit");
}

#[test]
fn cli_test_reports_ok_and_errors_with_paths() {
    let dir = temp_dir("clitest");
    let good = write_file(
        &dir,
        "good.json",
        r#"{"inbounds": [{"port": 1080, "listen": "127.0.0.1", "protocol": "dokodemo-door", "settings": {"address": "1.1.1.1", "port": 53}}], "outbounds": [{"protocol": "freedom"}]}"#,
    );
    let out = std::process::Command::new(oxray_bin()).args(["test", "-c", good.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Configuration OK"));

    // V2Ray 4's spelling works too.
    let out =
        std::process::Command::new(oxray_bin()).args(["-test", "-config", good.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());

    let bad = write_file(&dir, "bad.json", "{\n  \"outbounds\": [{\"protocol\": \"socks\"}]\n}\n");
    let out = std::process::Command::new(oxray_bin()).args(["test", "-c", bad.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json") && err.contains("outbounds[0]") && err.contains("socks"), "{err}");
}

#[test]
fn cli_version_and_uuid() {
    let out = std::process::Command::new(oxray_bin()).arg("version").output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("oxray "));
    let out = std::process::Command::new(oxray_bin()).arg("-version").output().unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(oxray_bin()).arg("uuid").output().unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success() && id.len() == 36 && id.chars().filter(|&c| c == '-').count() == 4, "{id}");
    let out2 = std::process::Command::new(oxray_bin()).arg("uuid").output().unwrap();
    assert_ne!(id, String::from_utf8_lossy(&out2.stdout).trim(), "uuid must be random");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_conn_idle_of_the_freedom_user_level_applies() {
    let (echo, _task) = xor_echo_server().await;
    let port = free_port();
    let config = format!(
        r#"{{"policy": {{"levels": {{"1": {{"connIdle": 1}}}}}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door", "settings": {{"address": "127.0.0.1", "port": {ep}}}}}],
  "outbounds": [{{"protocol": "freedom", "settings": {{"userLevel": 1}}}}]}}"#,
        ep = echo.port()
    );
    let (proc, _dir) = start_oxray("policy-idle", &config);
    assert!(wait_for_port(addr(port), Duration::from_secs(10)), "{}", proc.log_text());
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
    let idle_from = std::time::Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    let waited = idle_from.elapsed();
    assert!(r.is_ok(), "an idle connection outlived connIdle = 1 s of level 1");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "closed after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_http_answers_403_then_closes() {
    let port = free_port();
    let config = format!(
        r#"{{"inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door", "settings": {{"address": "example.invalid", "port": 80}}}}],
  "outbounds": [{{"protocol": "blackhole", "settings": {{"response": {{"type": "http"}}}}}}]}}"#
    );
    let (proc, _dir) = start_oxray("blackhole-http", &config);
    assert!(wait_for_port(addr(port), Duration::from_secs(10)), "{}", proc.log_text());
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("not closed").unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n") && text.contains("Connection: close"), "{text}");
}
