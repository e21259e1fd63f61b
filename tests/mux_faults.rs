//! Mux.Cool under hostile or broken visitors, on real processes: one visitor that never reads must not
//! stall the others on its tunnel (reverse tunnel, and a mux outbound against V2Ray 4.34), and a reverse
//! tunnel is replaced before its VMess nonces run out, serving visitors until its replacement is up.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use common::*;

/// Process tests run one at a time: their timings must not compete on a 2-core machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal_config(external, interconn, Rev::new("info")));
    let bridge =
        spawn_impl(Impl::Oxray, "bridge", &dir, &bridge_config(local(interconn), echo.port(), Rev::new("info")));
    let logs = || format!("--- portal\n{}\n--- bridge\n{}", portal.log_text(), bridge.log_text());
    until_traffic(local(external), Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no traffic: {}", logs()));
    head_of_line_case(local(external), true, &logs).await;
    let said = portal.log_shows("stopped taking data", Duration::from_secs(5)).await;
    assert!(said, "the portal did not say why:\n{}", logs());
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

/// Ping-pong visitors through an oxray portal and bridge: every message is at most one VMess chunk each
/// way, so the tunnel crosses 3/4 of its 65,536 nonces in ~49,000 round trips. The portal must drain it and
/// the bridge dial a replacement, with no visitor failing, and traffic must go on over the new tunnel.
/// Four concurrent visitors may share one chunk per write, so each visitor is long (1,000 round trips):
/// even fully coalesced, 256 sessions (the session-count drain) carry more chunks than the wear mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worn_reverse_tunnel_is_replaced_before_its_nonces_run_out() {
    let _heavy = HEAVY.lock().await;
    let (echo, _task) = xor_echo_server().await;
    let (external, interconn) = (free_port(), free_port());
    let dir = temp_dir("mux-faults-wear");
    let portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal_config(external, interconn, Rev::new("info")));
    let bridge =
        spawn_impl(Impl::Oxray, "bridge", &dir, &bridge_config(local(interconn), echo.port(), Rev::new("info")));
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
                for i in 0..1000u64 {
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

/// A relay to the portal that passes the first connection at once and holds every later one for
/// `hold` before connecting it: the bridge's replacement tunnel then reaches the portal late, by a
/// known amount, instead of at whatever phase the bridge's 2 s monitor tick happens to be.
async fn late_replacement_relay(portal: SocketAddr, hold: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let delay = if n == 0 { Duration::ZERO } else { hold };
            n += 1;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut out) = tokio::net::TcpStream::connect(portal).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (addr, task)
}

/// A V2Ray bridge knows nothing of nonce wear: it dials a replacement only after the portal's DRAIN, at
/// its next 2 s monitor tick. Visitors who arrive before the replacement is up must be served at once on
/// the worn tunnel (it has a quarter of its nonces left), not held for a tunnel and then refused. The
/// relay makes the replacement 4 s late, twice as long as the portal waits for a tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worn_tunnel_to_a_v2ray_bridge_serves_visitors_until_its_replacement_is_up() {
    if v2ray().is_none() {
        return;
    }
    let _heavy = HEAVY.lock().await;
    let (echo, _task) = xor_echo_server().await;
    let (external, interconn) = (free_port(), free_port());
    let dir = temp_dir("mux-faults-wear-v2ray");
    let portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal_config(external, interconn, Rev::new("info")));
    let (relay, _relay_task) = late_replacement_relay(local(interconn), Duration::from_secs(4)).await;
    let bridge = spawn_impl(Impl::V2ray, "bridge", &dir, &bridge_config(relay, echo.port(), Rev::new("warning")));
    let logs = || format!("--- portal\n{}\n--- bridge\n{}", portal.log_text(), bridge.log_text());
    let public = local(external);
    until_traffic(public, Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no traffic: {}", logs()));
    let worn = || portal.log_text().contains("tunnel drained (most of its VMess nonces used)");
    let tunnels = || portal.log_text().matches("bridge connected from").count();

    // V2Ray answers in chunks of a few KiB: some hundred MiB each way wear the tunnel. Bounded rounds.
    let mut round = 0u64;
    while !worn() {
        assert!(round < 16, "the tunnel was not worn after {round} rounds of 8 x 10 MiB:\n{}", logs());
        let mut tasks = Vec::new();
        for i in 0..8 {
            let data = payload(10 << 20, round * 8 + i);
            tasks.push(tokio::spawn(async move { xor_exchange(public, &data, false).await }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let r = tokio::time::timeout(Duration::from_secs(60), t).await;
            let r = r.unwrap_or_else(|_| panic!("bulk {round}/{i} timed out\n{}", logs())).unwrap();
            r.unwrap_or_else(|e| panic!("bulk {round}/{i}: {e}\n{}", logs()));
        }
        round += 1;
    }

    // Visitors every 20 ms until the replacement has been up for 0.5 s (at most 10 s).
    let t0 = Instant::now();
    let (mut before_replacement, mut slowest, mut replaced_at) = (0u32, Duration::ZERO, None);
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for i in 0..500u64 {
        pace.tick().await;
        if replaced_at.is_none() && tunnels() >= 2 {
            replaced_at = Some(Instant::now());
        }
        if replaced_at.is_some_and(|at| at.elapsed() > Duration::from_millis(500))
            || t0.elapsed() > Duration::from_secs(10)
        {
            break;
        }
        let started = Instant::now();
        let r =
            tokio::time::timeout(Duration::from_secs(5), xor_exchange(public, &payload(1024, 5000 + i), false)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("visitor {i} ({:?} after the wear drain): {e}\n{}", t0.elapsed(), logs()),
            Err(_) => panic!("visitor {i} timed out\n{}", logs()),
        }
        slowest = slowest.max(started.elapsed());
        before_replacement += u32::from(replaced_at.is_none());
    }
    eprintln!("{before_replacement} visitors served before the replacement tunnel, the slowest in {slowest:?}");
    assert!(replaced_at.is_some(), "the V2Ray bridge never dialled a replacement:\n{}", logs());
    assert!(before_replacement >= 10, "only {before_replacement} visitors came before the replacement:\n{}", logs());
    // The portal waits up to 2 s for a tunnel before refusing: a visitor held for one is a regression.
    assert!(slowest < Duration::from_secs(1), "a visitor took {slowest:?}:\n{}", logs());
}

fn uuid_bytes() -> [u8; 16] {
    let hex: String = UUID.chars().filter(|c| *c != '-').collect();
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    id
}

/// Resident memory of a process, from /proc (the test fails if it cannot be read: no vacuous bound).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

/// A VMess connection to `server` carrying Mux.Cool, for raw frames.
async fn raw_mux(server: SocketAddr) -> oxray::proxy::vmess::VmessStream<tokio::net::TcpStream> {
    use oxray::session::{Address, Destination};
    let tcp = tokio::net::TcpStream::connect(server).await.unwrap();
    let user = oxray::proxy::vmess::ClientUser::new(&uuid_bytes(), 0, oxray::config::VmessSecurity::Aes128Gcm);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut s = user.handshake(tcp, &Destination::tcp(Address::parse("v1.mux.cool"), 9527), now).unwrap();
    s.flush().await.unwrap();
    s
}

fn frame_bytes(f: oxray::mux::frame::Frame) -> Vec<u8> {
    let mut v = Vec::new();
    f.encode(&mut v).unwrap();
    v
}

/// Counts connections a server holds open (it XOR-echoes, so a session can be seen to work).
async fn counting_echo() -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (live, total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (l2, t2) = (live.clone(), total.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            l2.fetch_add(1, Ordering::SeqCst);
            t2.fetch_add(1, Ordering::SeqCst);
            let l3 = l2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    buf[..n].iter_mut().for_each(|b| *b ^= XOR);
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                l3.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, live, total)
}

/// A raw Mux peer that floods New frames past the session cap, reuses live ids, nests `v1.mux.cool`
/// and never reads: the oxray process stays within a memory bound and keeps serving an honest client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_mux_peer_is_bounded_and_others_are_served() {
    use oxray::mux::frame::Frame;
    use oxray::session::{Address, Destination};
    let _heavy = HEAVY.lock().await;
    let (echo, live, total) = counting_echo().await;
    let port = free_port();
    let dir = temp_dir("mux-faults-abuse");
    let server = spawn_impl(Impl::Oxray, "server", &dir, &vmess_server_config(port));
    let addr = local(port);
    assert!(wait_port_async(addr, Duration::from_secs(10)).await, "server did not start:\n{}", server.log_text());
    let echo_target = Destination::tcp(Address::from(echo.ip()), echo.port());
    let honest = |seed: u64| {
        let target = echo_target.clone();
        async move {
            let t0 = Instant::now();
            let mut s = raw_mux(addr).await;
            let data = payload(4096, seed);
            s.write_all(&frame_bytes(Frame::new_session(1, target, Some(data.clone().into())))).await.unwrap();
            s.flush().await.unwrap();
            let mut buf = bytes::BytesMut::new();
            let mut got = Vec::new();
            while got.len() < data.len() {
                match oxray::mux::frame::decode(&mut buf).unwrap() {
                    Some(f) => got.extend_from_slice(f.data.as_deref().unwrap_or_default()),
                    None => assert!(s.read_buf(&mut buf).await.unwrap() > 0, "honest client cut off"),
                }
            }
            assert!(got.iter().zip(&data).all(|(g, d)| *g == d ^ XOR), "honest bytes differ");
            t0.elapsed()
        }
    };
    let baseline = honest(1).await;
    let rss0 = rss_kib(server.pid());

    // 1. Reused ids: New for id 1 again and again, each once the previous one reached the echo; each
    // aborts the session before it, so the echo never holds more than a couple of those connections.
    let mut a = raw_mux(addr).await;
    for i in 0..50u64 {
        a.write_all(&frame_bytes(Frame::new_session(1, echo_target.clone(), Some(payload(64, i).into()))))
            .await
            .unwrap();
        a.flush().await.unwrap();
        let want = i + 2; // the honest client's connection, then one per New
        assert!(wait_until(Duration::from_secs(10), || async { total.load(Ordering::SeqCst) >= want }).await);
    }
    assert!(
        wait_until(Duration::from_secs(10), || async { live.load(Ordering::SeqCst) <= 2 }).await,
        "{} upstream connections still open after reusing one id",
        live.load(Ordering::SeqCst)
    );

    // 2. Nesting: a sub-session to v1.mux.cool is dispatched plainly (freedom cannot reach such a host),
    // so the Mux frames inside it never open anything: the session ends, and the echo sees no one new.
    let before = total.load(Ordering::SeqCst);
    let inner = frame_bytes(Frame::new_session(1, echo_target.clone(), Some(payload(64, 7).into())));
    let nest = Destination::tcp(Address::parse("v1.mux.cool"), 9527);
    a.write_all(&frame_bytes(Frame::new_session(2, nest, Some(inner.into())))).await.unwrap();
    a.flush().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let nested_end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match oxray::mux::frame::decode(&mut buf).unwrap() {
                Some(f) if f.id == 2 && f.status == oxray::mux::frame::Status::End => return,
                Some(_) => {}
                None => assert!(a.read_buf(&mut buf).await.unwrap() > 0, "connection closed"),
            }
        }
    })
    .await;
    eprintln!("nested v1.mux.cool session ended: {}", nested_end.is_ok());
    assert_eq!(total.load(Ordering::SeqCst), before, "the frames inside a nested v1.mux.cool session were served");

    // 3. Flood: New frames past the session cap, each with data, on a connection that never reads.
    let mut b = raw_mux(addr).await;
    let flood = async {
        for id in 1..=2000u16 {
            b.write_all(&frame_bytes(Frame::new_session(
                id,
                echo_target.clone(),
                Some(payload(8192, id.into()).into()),
            )))
            .await?;
        }
        b.flush().await
    };
    // It either errors (the connection is closed for abuse) or stalls (the server stopped reading).
    let flood = tokio::time::timeout(Duration::from_secs(15), flood).await;
    eprintln!("flood past the session cap ended with {flood:?}");

    // 4. Never reads, much data: sessions whose echoes come back to a peer that does not read.
    let mut c = raw_mux(addr).await;
    let big = payload(60_000, 3);
    let push = async {
        for round in 0..64u16 {
            for id in 1..=64u16 {
                let f = if round == 0 {
                    Frame::new_session(id, echo_target.clone(), Some(big.clone().into()))
                } else {
                    Frame::keep(id, big.clone().into())
                };
                c.write_all(&frame_bytes(f)).await?;
            }
        }
        c.flush().await
    };
    let pushed = tokio::time::timeout(Duration::from_secs(15), push).await;
    let rss1 = rss_kib(server.pid());
    let during = honest(2).await;
    eprintln!(
        "RSS {} KiB before the abuse, {} KiB during; honest round trip {baseline:?} before, {during:?} during \
         (bulk push {})",
        rss0,
        rss1,
        if pushed.is_ok() { "went through" } else { "was stalled" }
    );
    assert!(during < Duration::from_secs(2), "honest client took {during:?} beside the abusers");
    // The bound: one connection queues at most 96 MiB for its sessions; measured ~15 MiB of growth.
    assert!(rss1 < rss0 + 96 * 1024, "RSS grew from {rss0} to {rss1} KiB");
    let text = server.log_text();
    assert!(!text.contains("panicked"), "{text}");
    drop((a, b, c));
    assert!(
        wait_until(Duration::from_secs(10), || async { live.load(Ordering::SeqCst) == 0 }).await,
        "{} upstream connections left after the abusers went away",
        live.load(Ordering::SeqCst)
    );
}
