//! Mux.Cool under hostile or broken visitors, on real processes: one visitor that never reads must not
//! stall the others on its tunnel (reverse tunnel, and a mux outbound against V2Ray 4.34), and a reverse
//! tunnel is replaced before its VMess nonces run out.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use common::*;

const UUID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";

/// Process tests run one at a time: their timings must not compete on a 2-core machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn portal_config(external: u16, interconn: u16) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "info"}},
  "reverse": {{"portals": [{{"tag": "portal", "domain": "test.v2fly.org", "internalDomain": "reverse.internal.v2ray.com"}}]}},
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
  "reverse": {{"bridges": [{{"tag": "bridge", "domain": "test.v2fly.org"}}]}},
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

fn vmess_server_config(port: u16) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"tag": "vmess-in", "listen": "127.0.0.1", "port": {port}, "protocol": "vmess",
                 "settings": {{"clients": [{{"id": "{UUID}"}}]}}}}],
  "outbounds": [{{"tag": "direct", "protocol": "freedom"}}]}}"#
    )
}

fn mux_client_config(port: u16, server: u16, echo: SocketAddr) -> String {
    // Concurrency 32: the stalled visitor and the 20 others share one carrier.
    format!(
        r#"{{"log": {{"loglevel": "info"}},
  "inbounds": [{{"tag": "local", "listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
                 "settings": {{"address": "{ip}", "port": {ep}, "network": "tcp"}}}}],
  "outbounds": [{{"protocol": "vmess",
                  "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {server}, "users": [{{"id": "{UUID}", "security": "aes-128-gcm"}}]}}]}},
                  "mux": {{"enabled": true, "concurrency": 32}}}}]}}"#,
        ip = echo.ip(),
        ep = echo.port()
    )
}

/// A visitor that keeps sending and never reads (4 KiB receive buffer). Returns the bytes it got out
/// and how its connection ended (Err: reset or closed by the far end).
async fn stalled_visitor(entry: SocketAddr, sent: Arc<AtomicU64>) -> std::io::Result<()> {
    let sock = TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let mut s = sock.connect(entry).await?;
    let chunk = vec![0x33u8; 16 * 1024];
    loop {
        s.write_all(&chunk).await?;
        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

/// Starts the stalled visitor, waits until it has pushed enough to fill every buffer on its path (or
/// its writes stopped moving, or it was ended), then runs 20 visitors with 16 KiB round trips at once.
/// Each must finish within 1 s, byte for byte; the stalled visitor must be ended within 10 s.
async fn head_of_line_case(entry: SocketAddr, half_close: bool, logs: &dyn Fn() -> String) {
    let sent = Arc::new(AtomicU64::new(0));
    let stalled = tokio::spawn(stalled_visitor(entry, sent.clone()));
    let mut last = (0, Instant::now());
    let filled = wait_until(Duration::from_secs(20), || {
        let now = sent.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        let still = last.1.elapsed() > Duration::from_millis(500);
        let done = stalled.is_finished();
        async move { now >= 32 << 20 || (now > 0 && still) || done }
    })
    .await;
    assert!(filled, "the stalled visitor never got going:\n{}", logs());
    eprintln!("stalled visitor pushed {} KiB before the others started", sent.load(Ordering::Relaxed) >> 10);
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            xor_exchange(entry, &payload(16 * 1024, 500 + i), half_close).await.map(|()| t0.elapsed())
        }));
    }
    let mut slowest = Duration::ZERO;
    for (i, t) in tasks.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(10), t).await;
        let r = r.unwrap_or_else(|_| panic!("visitor {i} got nothing within 10 s:\n{}", logs())).unwrap();
        slowest = slowest.max(r.unwrap_or_else(|e| panic!("visitor {i}: {e}\n{}", logs())));
    }
    eprintln!("20 x 16 KiB round trips beside a visitor that never reads: slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "slowest visitor took {slowest:?}\n{}", logs());
    let ended = tokio::time::timeout(Duration::from_secs(10), stalled).await;
    let ended = ended.unwrap_or_else(|_| panic!("the stalled visitor was never ended:\n{}", logs())).unwrap();
    assert!(ended.is_err(), "the stalled visitor's writes cannot succeed forever");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_that_never_reads_does_not_stall_its_reverse_tunnel() {
    let _heavy = HEAVY.lock().await;
    let (echo, _task) = xor_echo_server().await;
    let (external, interconn) = (free_port(), free_port());
    let dir = temp_dir("mux-faults-hol-reverse");
    let portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal_config(external, interconn));
    let bridge = spawn_impl(Impl::Oxray, "bridge", &dir, &bridge_config(interconn, echo.port()));
    let logs = || format!("--- portal\n{}\n--- bridge\n{}", portal.log_text(), bridge.log_text());
    until_traffic(local(external), Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no traffic: {}", logs()));
    head_of_line_case(local(external), true, &logs).await;
    assert!(portal.log_text().contains("stopped taking data"), "the portal did not say why:\n{}", logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_that_never_reads_does_not_stall_a_mux_carrier_to_v2ray() {
    if v2ray().is_none() {
        return;
    }
    let _heavy = HEAVY.lock().await;
    let (echo, _task) = xor_echo_server().await;
    let (cport, sport) = (free_port(), free_port());
    let dir = temp_dir("mux-faults-hol-v2ray");
    let server = spawn_impl(Impl::V2ray, "server", &dir, &vmess_server_config(sport));
    let client = spawn_impl(Impl::Oxray, "client", &dir, &mux_client_config(cport, sport, echo));
    let logs = || format!("--- oxray client\n{}\n--- v2ray server\n{}", client.log_text(), server.log_text());
    until_traffic(local(cport), Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no traffic: {}", logs()));
    // V2Ray's mux client side is not involved: oxray is the Mux client; V2Ray's server writes the
    // answers, and its freedom never half-closes, so visitors read whole answers.
    head_of_line_case(local(cport), false, &logs).await;
}

/// Ping-pong visitors through an oxray portal and bridge: every message is one VMess chunk each way, so
/// the tunnel crosses 3/4 of its 65,536 nonces in ~49,000 round trips. The portal must drain it and the
/// bridge dial a replacement, with no visitor failing, and traffic must go on over the new tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worn_reverse_tunnel_is_replaced_before_its_nonces_run_out() {
    let _heavy = HEAVY.lock().await;
    let (echo, _task) = xor_echo_server().await;
    let (external, interconn) = (free_port(), free_port());
    let dir = temp_dir("mux-faults-wear");
    let portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal_config(external, interconn));
    let bridge = spawn_impl(Impl::Oxray, "bridge", &dir, &bridge_config(interconn, echo.port()));
    let logs = || format!("--- portal\n{}\n--- bridge\n{}", portal.log_text(), bridge.log_text());
    let public = local(external);
    until_traffic(public, Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no traffic: {}", logs()));
    let worn = || portal.log_text().contains("tunnel drained (most of its VMess nonces used)");

    let t0 = Instant::now();
    let round_trips = Arc::new(AtomicU64::new(0));
    let mut after_drain = 0;
    let mut conns = 0u64;
    // Bounded: ~60,000 round trips are enough to cross the mark several times over.
    while t0.elapsed() < Duration::from_secs(120) {
        let mut workers = Vec::new();
        for w in 0..4u64 {
            let rt = round_trips.clone();
            workers.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(public).await.map_err(|e| format!("connect: {e}"))?;
                s.set_nodelay(true).ok();
                let mut back = [0u8; 32];
                for i in 0..250u64 {
                    let msg = payload(32, conns * 4 + w + i);
                    s.write_all(&msg).await.map_err(|e| format!("write: {e}"))?;
                    s.read_exact(&mut back).await.map_err(|e| format!("read: {e}"))?;
                    if back.iter().zip(&msg).any(|(b, m)| *b != m ^ XOR) {
                        return Err("bytes differ".to_string());
                    }
                    rt.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        for (i, w) in workers.into_iter().enumerate() {
            let r = tokio::time::timeout(Duration::from_secs(20), w).await;
            let r = r.unwrap_or_else(|_| panic!("worker {i} hangs\n{}", logs())).unwrap();
            r.unwrap_or_else(|e| {
                panic!("worker {i} after {} round trips: {e}\n{}", round_trips.load(Ordering::Relaxed), logs())
            });
        }
        conns += 1;
        if worn() {
            after_drain += 1;
            // Some connections over the replacement tunnel, then stop.
            if after_drain >= 4 {
                break;
            }
        }
    }
    let n = round_trips.load(Ordering::Relaxed);
    eprintln!("{n} round trips in {:?}; tunnel worn: {}", t0.elapsed(), worn());
    assert!(worn(), "the tunnel was never drained for wear after {n} round trips:\n{}", logs());
    let bridge_log = bridge.log_text();
    assert!(bridge_log.matches("tunnel up").count() >= 2, "no replacement tunnel:\n{}", logs());
    assert!(!bridge_log.contains("would reuse a nonce") && !portal.log_text().contains("would reuse a nonce"));
    // New visitors keep being served.
    for i in 0..20u64 {
        xor_exchange(public, &payload(4096, 9000 + i), true).await.unwrap_or_else(|e| panic!("after: {e}\n{}", logs()));
    }
}
