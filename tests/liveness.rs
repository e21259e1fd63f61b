//! The tunnel under the faults real networks have: a link that goes silent without FIN or RST (a
//! freezing relay between bridge and portal), a portal whose SYNs are black-holed, and SIGTERM with
//! live transfers. Every pairing with V2Ray 4.34 that can recover is measured too.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The issue's bar: a visitor is served again within 10 s of the tunnel going silent.
const RECOVERY_BAR: Duration = Duration::from_secs(10);

/// Tests that time recovery run one at a time, so they do not slow each other down on 2 CPUs.
static TIMED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Portal and bridge (of the given implementations) with a freezable relay on the tunnel's path.
struct FrozenPair {
    relay: FreezableRelay,
    external: u16,
    portal: Proc,
    bridge: Proc,
    _echo: tokio::task::JoinHandle<()>,
}

impl FrozenPair {
    async fn start(name: &str, bridge_impl: Impl, portal_impl: Impl) -> FrozenPair {
        Self::start_with(name, bridge_impl, portal_impl, None).await
    }

    async fn start_with(name: &str, bridge_impl: Impl, portal_impl: Impl, rcvbuf: Option<u32>) -> FrozenPair {
        let (echo, task) = xor_echo_server().await;
        let (external, interconn) = (free_port(), free_port());
        let relay = FreezableRelay::start_with(local(interconn), rcvbuf).await;
        let dir = temp_dir(name);
        let level = |i: Impl| if i == Impl::Oxray { "info" } else { "warning" };
        let portal =
            spawn_impl(portal_impl, "portal", &dir, &portal_config(external, interconn, Rev::new(level(portal_impl))));
        let bridge = spawn_impl(
            bridge_impl,
            "bridge",
            &dir,
            &bridge_config(relay.addr, echo.port(), Rev::new(level(bridge_impl))),
        );
        let pair = FrozenPair { relay, external, portal, bridge, _echo: task };
        until_traffic(pair.public(), Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("no traffic\n{}", pair.logs()));
        pair
    }

    fn public(&self) -> SocketAddr {
        local(self.external)
    }

    fn logs(&self) -> String {
        format!("--- bridge\n{}\n--- portal\n{}", self.bridge.log_text(), self.portal.log_text())
    }

    /// Waits until an oxray bridge has measured the portal's heartbeat period (two heartbeats seen), so
    /// the silence timeout in force is the one for that period.
    async fn wait_period_known(&self) {
        let known = wait_until(Duration::from_secs(10), || {
            let t = self.bridge.log_text().contains("sends a heartbeat every");
            async move { t }
        })
        .await;
        assert!(known, "the bridge never measured the heartbeat period\n{}", self.logs());
    }

    /// Freezes the tunnel and measures the time until a fresh visitor is served again. With `waiting`,
    /// one visitor sits on the dead tunnel meanwhile (as real visitors do, for their 30 s or so).
    async fn freeze_and_measure(&self, which: Freeze, what: &str, waiting: bool) -> Duration {
        let frozen = self.relay.freeze(which);
        assert_eq!(frozen, 1, "one tunnel connection expected through the relay");
        let t0 = Instant::now();
        let _waiting = if waiting {
            let mut s = tokio::net::TcpStream::connect(self.public()).await.expect("visitor connects");
            s.write_all(b"ping").await.expect("visitor writes");
            Some(s)
        } else {
            None
        };
        let served = until_served(self.public(), Duration::from_millis(1500), Duration::from_secs(30)).await;
        let took = served.unwrap_or_else(|| panic!("{what}: no visitor served 30 s after the freeze\n{}", self.logs()));
        eprintln!("{what}: visitor served again {:.2} s after the tunnel went silent", took.as_secs_f64());
        assert!(self.relay.connections() >= 2, "{what}: the bridge did not dial a new tunnel\n{}", self.logs());
        assert!(t0.elapsed() >= took);
        took
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tunnel_oxray_both_sides() {
    let _t = TIMED.lock().await;
    let pair = FrozenPair::start("live-silent-oo", Impl::Oxray, Impl::Oxray).await;
    pair.wait_period_known().await;
    let took = pair.freeze_and_measure(Freeze::Both, "oxray bridge, oxray portal, both directions frozen", false).await;
    assert!(took <= RECOVERY_BAR, "recovery took {took:?}\n{}", pair.logs());
    let said = pair.bridge.log_shows("the link is dead", Duration::from_secs(5)).await;
    assert!(said, "{}", pair.logs());
}

/// Only the portal-to-bridge direction dies: the bridge still gets its bytes through, hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_downlink_oxray_both_sides() {
    let _t = TIMED.lock().await;
    let pair = FrozenPair::start("live-silent-down", Impl::Oxray, Impl::Oxray).await;
    pair.wait_period_known().await;
    let took = pair.freeze_and_measure(Freeze::Down, "oxray bridge, oxray portal, portal->bridge frozen", false).await;
    assert!(took <= RECOVERY_BAR, "recovery took {took:?}\n{}", pair.logs());
}

/// A V2Ray 4.34 portal's 2 s heartbeats are heard the same way; the bridge re-dials. V2Ray's picker
/// gives ties to its oldest worker and never sees the dead one close, so a lone visitor keeps landing
/// on the dead tunnel; visitors that come while another waits there are served by the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tunnel_v2ray_portal() {
    if v2ray().is_none() {
        return;
    }
    let _t = TIMED.lock().await;
    let pair = FrozenPair::start("live-silent-vp", Impl::Oxray, Impl::V2ray).await;
    pair.wait_period_known().await;
    let took = pair.freeze_and_measure(Freeze::Both, "oxray bridge, V2Ray portal, both directions frozen", true).await;
    assert!(took <= RECOVERY_BAR, "recovery took {took:?}\n{}", pair.logs());
}

/// A V2Ray 4.34 bridge never notices a dead tunnel. The oxray portal does, from its unacknowledged
/// data (TCP_USER_TIMEOUT on the tunnel socket: a relay with a small receive window stops
/// acknowledging once frozen), drops the tunnel, and refuses visitors at once instead of hanging them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tunnel_v2ray_bridge_is_dropped_by_the_portal() {
    if v2ray().is_none() {
        return;
    }
    let _t = TIMED.lock().await;
    let pair = FrozenPair::start_with("live-silent-vb", Impl::V2ray, Impl::Oxray, Some(4096)).await;
    pair.relay.freeze(Freeze::Both);
    let t0 = Instant::now();
    // Visitors fill the frozen relay's window; then the portal's data stays unacknowledged.
    let dropped = wait_until(Duration::from_secs(30), || async {
        let _ = tokio::time::timeout(Duration::from_millis(500), xor_exchange(pair.public(), &payload(8192, 1), false))
            .await;
        pair.portal.log_text().contains("tunnel closed")
    })
    .await;
    let took = t0.elapsed();
    assert!(dropped, "the portal kept the dead tunnel\n{}", pair.logs());
    eprintln!(
        "V2Ray bridge, oxray portal: the portal dropped the silent tunnel {:.2} s after the freeze",
        took.as_secs_f64()
    );
    assert!(took <= RECOVERY_BAR + Duration::from_secs(2), "the portal took {took:?}");
    // No tunnel now: a visitor is refused within the portal's 2 s wait for one, not hung.
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), xor_exchange(pair.public(), b"ping", false)).await;
    let r = r.expect("a visitor hangs on the dropped tunnel");
    assert!(r.is_err(), "served without a tunnel?");
    eprintln!("then a visitor is refused after {:.2} s", start.elapsed().as_secs_f64());
}

/// A listener that never accepts and whose accept queue is full: the kernel drops further SYNs, so a
/// connect to it hangs as toward a black-holed host. Returns the listener and the connection filling it.
fn black_hole() -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
    let hole = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hole.set_reuse_address(true).unwrap();
    let port = free_port();
    hole.bind(&local(port).into()).unwrap();
    hole.listen(0).unwrap();
    let filler = std::net::TcpStream::connect(local(port)).unwrap();
    (hole, filler, local(port))
}

/// A bridge process with two bridges: one whose portal's SYNs are black-holed, one whose portal works.
/// The healthy one carries traffic from the start, and keeps carrying it while the other's dial hangs;
/// the stuck dial gives up per attempt after the connect deadline (4 s) instead of the kernel's 2 min,
/// and once the portal is back it is reached at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_portal_does_not_stall_the_bridge() {
    let _t = TIMED.lock().await;
    let (echo, _task) = xor_echo_server().await;
    let (hole, filler, hole_addr) = black_hole();
    let probe = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(hole_addr)).await;
    assert!(probe.is_err(), "the black hole accepted a connection: the test cannot see what it claims");

    let dir = temp_dir("live-blackhole");
    let (ext1, ext2, ic2) = (free_port(), free_port(), free_port());
    let portal2 = spawn_impl(
        Impl::Oxray,
        "portal2",
        &dir,
        &portal_config(ext2, ic2, Rev { domain: "b2.test", ..Rev::new("info") }),
    );
    let parts = [
        bridge_parts("1", hole_addr, echo.port(), Rev { domain: "b1.test", ..Rev::new("info") }),
        bridge_parts("2", local(ic2), echo.port(), Rev { domain: "b2.test", ..Rev::new("info") }),
    ];
    let started = Instant::now();
    let bridge = spawn_impl(Impl::Oxray, "bridge", &dir, &bridges_config(&parts, Rev::new("info")));
    let logs = || format!("--- bridge\n{}\n--- portal2\n{}", bridge.log_text(), portal2.log_text());
    let first =
        until_traffic(local(ext2), Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no traffic\n{}", logs()));
    eprintln!("healthy bridge served {:.2} s after start, its sibling's dial hanging", started.elapsed().as_secs_f64());
    assert!(first <= Duration::from_secs(5), "{first:?}");

    // While the stuck dial runs its attempts out, the healthy bridge keeps serving, each visitor fast.
    let mut slowest = Duration::ZERO;
    let gave_up = loop {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), xor_exchange(local(ext2), b"ping", false)).await;
        assert!(r.is_ok_and(|r| r.is_ok()), "the healthy bridge stalled\n{}", logs());
        slowest = slowest.max(t.elapsed());
        if bridge.log_text().contains("cannot reach the portal") {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the stuck dial never gave up\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let text = bridge.log_text();
    assert!(text.contains("timed out after 4s"), "the connect deadline did not apply\n{text}");
    eprintln!(
        "stuck dial gave up after {:.1} s (4 attempts of 4 s); slowest healthy visitor {slowest:?}",
        gave_up.as_secs_f64()
    );

    // The portal comes back on the black-holed port.
    drop((hole, filler));
    let portal1 = spawn_impl(
        Impl::Oxray,
        "portal1",
        &dir,
        &portal_config(ext1, hole_addr.port(), Rev { domain: "b1.test", ..Rev::new("info") }),
    );
    assert!(wait_for_port(hole_addr, Duration::from_secs(10)), "{}", portal1.log_text());
    let back = Instant::now();
    let took = until_served(local(ext1), Duration::from_secs(2), Duration::from_secs(10)).await;
    let took = took.unwrap_or_else(|| panic!("the portal came back but is not used\n{}", logs()));
    let took = took.min(back.elapsed());
    eprintln!("portal back: visitor served {:.2} s after it listened", took.as_secs_f64());
    assert!(took <= Duration::from_secs(3), "recovery took {took:?}\n{}", logs());
}

/// A service for shutdown tests: `ping` is echoed XORed (readiness probes); `slow` + one byte n sends n
/// chunks of 16 KiB, one every 100 ms, then closes.
async fn paced_service() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut hello = [0u8; 4];
                if s.read_exact(&mut hello).await.is_err() {
                    return;
                }
                if &hello != b"slow" {
                    let echo: Vec<u8> = hello.iter().map(|b| b ^ XOR).collect();
                    let _ = s.write_all(&echo).await;
                    return;
                }
                let mut n = [0u8; 1];
                if s.read_exact(&mut n).await.is_err() {
                    return;
                }
                let chunk = vec![7u8; 16 << 10];
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                for _ in 0..n[0] {
                    tick.tick().await;
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

fn sigterm(p: &Proc) {
    std::process::Command::new("kill").args(["-TERM", &p.pid().to_string()]).status().unwrap();
}

async fn exit_within(p: &mut Proc, deadline: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Ok(Some(st)) = p.child.try_wait() {
            return Some(st);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The grace period of `oxray run` (src/main.rs).
const GRACE: Duration = Duration::from_secs(5);

/// SIGTERM to the bridge (`bridge_side`) or the portal while a visitor downloads `chunks` × 16 KiB at
/// 160 KiB/s: a transfer shorter than the grace completes whole and the process exits right after it;
/// a longer one is cut when the grace ends.
async fn sigterm_with_live_transfer(name: &str, bridge_side: bool, chunks: u8) {
    let _t = TIMED.lock().await;
    let (service, _task) = paced_service().await;
    let (external, interconn) = (free_port(), free_port());
    let dir = temp_dir(name);
    let mut portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal_config(external, interconn, Rev::new("info")));
    let mut bridge =
        spawn_impl(Impl::Oxray, "bridge", &dir, &bridge_config(local(interconn), service.port(), Rev::new("info")));
    until_traffic(local(external), Duration::from_secs(15)).await.expect("first traffic");

    let mut visitor = tokio::net::TcpStream::connect(local(external)).await.unwrap();
    visitor.write_all(&[b's', b'l', b'o', b'w', chunks]).await.unwrap();
    let total = usize::from(chunks) * (16 << 10);
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0usize;
    while got < 16 << 10 {
        let n = tokio::time::timeout(Duration::from_secs(5), visitor.read(&mut buf)).await.expect("download starts");
        got += n.unwrap();
    }
    let target = if bridge_side { &mut bridge } else { &mut portal };
    sigterm(target);
    let signalled = Instant::now();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(15), visitor.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break signalled.elapsed(),
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the download hangs after SIGTERM"),
        }
    };
    let status = exit_within(target, Duration::from_secs(10)).await;
    let exited = signalled.elapsed();
    let side = if bridge_side { "bridge" } else { "portal" };
    eprintln!(
        "SIGTERM to the {side}: {got} of {total} bytes, transfer ended {:.2} s after it, process exited after {:.2} s",
        ended.as_secs_f64(),
        exited.as_secs_f64()
    );
    let status = status.unwrap_or_else(|| panic!("the {side} did not exit"));
    assert!(status.success(), "{status:?}\n{}", target.log_text());
    assert!(!target.log_text().contains("still running"), "owned tasks outlived the hard stop\n{}", target.log_text());
    let full = Duration::from_millis(100) * u32::from(chunks);
    if full + Duration::from_secs(1) < GRACE {
        assert_eq!(got, total, "the {side} cut a transfer shorter than the grace\n{}", target.log_text());
        assert!(ended < full + Duration::from_secs(1), "transfer took {ended:?}");
        assert!(
            exited < ended + Duration::from_millis(1500),
            "the {side} lingered after its last transfer: {exited:?}"
        );
    } else {
        assert!(got < total, "a transfer longer than the grace was not cut");
        let (lo, hi) = (GRACE - Duration::from_millis(500), GRACE + Duration::from_millis(2500));
        assert!(ended >= lo && ended <= hi, "cut {ended:?} after SIGTERM, grace {GRACE:?}\n{}", target.log_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_bridge_lets_a_live_transfer_finish() {
    sigterm_with_live_transfer("live-term-bridge-short", true, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_bridge_cuts_a_transfer_longer_than_the_grace() {
    sigterm_with_live_transfer("live-term-bridge-long", true, 120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_portal_lets_a_live_transfer_finish() {
    sigterm_with_live_transfer("live-term-portal-short", false, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_portal_cuts_a_transfer_longer_than_the_grace() {
    sigterm_with_live_transfer("live-term-portal-long", false, 120).await;
}

/// A client with `mux` on keeps an idle carrier connection (closed by Mux's 16 s idle tick): its tasks
/// are owned by the instance, so SIGTERM ends them at once instead of leaving them to the runtime, and
/// they do not hold the grace period open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_idle_mux_carrier_exits_promptly() {
    let (echo, _task) = xor_echo_server().await;
    let (cport, sport) = (free_port(), free_port());
    let dir = temp_dir("live-term-mux");
    let server = format!(
        r#"{{"inbounds": [{{"listen": "127.0.0.1", "port": {sport}, "protocol": "vmess",
             "settings": {{"clients": [{{"id": "{UUID}"}}]}}}}], "outbounds": [{{"protocol": "freedom"}}]}}"#
    );
    let client = format!(
        r#"{{"log": {{"loglevel": "debug"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {cport}, "protocol": "dokodemo-door",
                 "settings": {{"address": "127.0.0.1", "port": {ep}, "network": "tcp"}}}}],
  "outbounds": [{{"protocol": "vmess", "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {sport}, "users": [{{"id": "{UUID}"}}]}}]}},
                  "mux": {{"enabled": true}}}}]}}"#,
        ep = echo.port()
    );
    let _server = spawn_impl(Impl::Oxray, "server", &dir, &server);
    let mut client = spawn_impl(Impl::Oxray, "client", &dir, &client);
    until_traffic(local(cport), Duration::from_secs(15)).await.expect("no traffic through the mux client");
    let start = Instant::now();
    sigterm(&client);
    let status = exit_within(&mut client, Duration::from_secs(10)).await.expect("the client did not exit");
    eprintln!("mux client with an idle carrier exited {:.2} s after SIGTERM", start.elapsed().as_secs_f64());
    assert!(status.success(), "{status:?}\n{}", client.log_text());
    assert!(start.elapsed() < Duration::from_secs(3), "exit took {:?}", start.elapsed());
    assert!(!client.log_text().contains("still running"), "{}", client.log_text());
}
