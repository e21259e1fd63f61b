//! Shared support for integration tests: real loopback servers, child processes killed by PID, waits
//! with deadlines, and the V2Ray locator (a missing V2Ray fails under CI=true and skips loudly elsewhere).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub mod pki;

/// The byte every echo server XORs with, so a test can tell echoed bytes from reflected ones.
pub const XOR: u8 = 0x5a;

/// A free loopback port for a server, from 20000–32767: below Linux's ephemeral range, so the source
/// ports of the tests' own client connections cannot take it between this check and the server's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread processes (test binaries) and calls over the range; probe until a port binds.
    let start = std::process::id().wrapping_mul(7919) ^ NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729);
    for i in 0..12_768u32 {
        let port = 20_000 + ((start.wrapping_add(i.wrapping_mul(613))) % 12_768) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-32767");
}

/// Starts an echo server on 127.0.0.1 that XORs every byte with [`XOR`] and half-closes after its
/// peer does. Returns its address and the task (abort it, or let the runtime drop it).
pub async fn xor_echo_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            buf[..n].iter_mut().for_each(|b| *b ^= XOR);
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// Deterministic test payload of `len` bytes, different per `seed`.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` through `addr`, half-closes, reads everything back and checks it is `data` XOR [`XOR`].
/// Writing and reading run concurrently so large payloads cannot deadlock on full buffers.
pub async fn xor_roundtrip(addr: SocketAddr, data: &[u8]) -> Result<(), String> {
    xor_exchange(addr, data, true).await
}

/// Like [`xor_roundtrip`]; with `half_close` false the client reads the whole answer before closing
/// (V2Ray 4.34's Mux client loses the answer of a half-closed session, so tests of V2Ray use this).
pub async fn xor_exchange(addr: SocketAddr, data: &[u8], half_close: bool) -> Result<(), String> {
    let s = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).ok();
    let (mut r, mut w) = s.into_split();
    let owned = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&owned).await?;
        if half_close {
            w.shutdown().await?;
        }
        Ok::<_, std::io::Error>(w)
    });
    let mut got = Vec::with_capacity(data.len());
    if half_close {
        r.read_to_end(&mut got).await.map_err(|e| format!("read: {e}"))?;
    } else {
        got.resize(data.len(), 0);
        r.read_exact(&mut got).await.map_err(|e| format!("read: {e}"))?;
    }
    let _w = writer.await.map_err(|e| e.to_string())?.map_err(|e| format!("write: {e}"))?;
    if got.len() != data.len() {
        return Err(format!("got {} bytes back, sent {}", got.len(), data.len()));
    }
    if let Some(i) = got.iter().zip(data).position(|(g, d)| *g != d ^ XOR) {
        return Err(format!("byte {i} differs"));
    }
    Ok(())
}

/// Polls `check` every 20 ms until it returns true or `deadline` passes.
pub async fn wait_until<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocks until something accepts on `addr` or the deadline passes. Polls every 2 ms, so a test can
/// also use the moment it returns as "the server is listening" (recovery timings).
pub fn wait_for_port(addr: SocketAddr, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if StdStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// The V2Ray binary, or None (after saying so loudly). Under CI=true a missing V2Ray is a failure.
pub fn v2ray() -> Option<PathBuf> {
    let candidates = [std::env::var_os("V2RAY_BIN").map(PathBuf::from), Some(PathBuf::from("/usr/bin/v2ray"))];
    if let Some(p) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but V2Ray is not installed (apt-get install v2ray): interop tests cannot run");
    }
    eprintln!(
        "\n*** SKIPPED: V2Ray not found (install it with `apt-get install v2ray`); interop test did not run ***\n"
    );
    None
}

/// A child process that is killed (by its PID) and reaped when dropped. Its output goes to a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    /// Spawns `program args...`, stdout+stderr to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[&str], log: &Path, envs: &[(&str, &str)]) -> Proc {
        let out = std::fs::File::create(log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child, log: log.to_path_buf(), name: name.to_string() }
    }

    /// The PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `deadline` for exit; returns the exit status if it exited.
    pub fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The log so far (for failure messages).
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log holds `needle`: a process writes its log in batches, shortly after the event.
    pub async fn log_shows(&self, needle: &str, deadline: Duration) -> bool {
        wait_until(deadline, || async { self.log_text().contains(needle) }).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh temporary directory for one test's files (configs, logs), under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("create temp dir");
    base
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("create file");
    f.write_all(text.as_bytes()).expect("write file");
    p
}

/// Path of the oxray binary built for these tests.
pub fn oxray_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_oxray"))
}

/// A typed oxray config builder for VMess tests: a VMess server (vmess inbound → freedom).
pub fn vmess_server_config(users: &[([u8; 16], u16)], handshake: Option<Duration>) -> oxray::config::Config {
    use oxray::config::*;
    let mut cfg = Config::default();
    let clients = users
        .iter()
        .enumerate()
        .map(|(i, (id, alter))| VmessClientConfig {
            id: SecretId(*id),
            alter_id: *alter,
            level: 0,
            email: Some(format!("user{i}@test")),
        })
        .collect();
    cfg.inbounds.push(InboundConfig {
        tag: Some("vmess-in".into()),
        listen: "127.0.0.1".parse().unwrap(),
        port: PortRange { first: 0, last: 0 },
        protocol: InboundProtocol::Vmess(VmessInboundConfig { clients, ..Default::default() }),
        stream: Default::default(),
        path: "inbounds[0]".into(),
        sniffing: None,
    });
    cfg.outbounds.push(OutboundConfig {
        tag: Some("direct".into()),
        protocol: OutboundProtocol::Freedom(FreedomConfig::default()),
        mux: None,
        send_through: None,
        stream: Default::default(),
        path: "outbounds[0]".into(),
    });
    if let Some(h) = handshake {
        cfg.policy.levels.insert(0, LevelPolicy { handshake: h, ..Default::default() });
    }
    cfg
}

/// A typed oxray config for a VMess client: dokodemo (to `target`) → vmess outbound to `server`.
pub fn vmess_client_config(
    target: SocketAddr,
    server: SocketAddr,
    id: [u8; 16],
    alter_id: u16,
    security: oxray::config::VmessSecurity,
) -> oxray::config::Config {
    use oxray::config::*;
    use oxray::session::Address;
    let mut cfg = Config::default();
    cfg.inbounds.push(InboundConfig {
        tag: Some("local".into()),
        listen: "127.0.0.1".parse().unwrap(),
        port: PortRange { first: 0, last: 0 },
        protocol: InboundProtocol::Dokodemo(DokodemoConfig {
            address: Some(Address::from(target.ip())),
            port: target.port(),
            network: NetworkList { tcp: true, udp: false },
            follow_redirect: false,
            timeout: None,
            user_level: 0,
        }),
        stream: Default::default(),
        path: "inbounds[0]".into(),
        sniffing: None,
    });
    cfg.outbounds.push(OutboundConfig {
        tag: Some("proxy".into()),
        protocol: OutboundProtocol::Vmess(VmessOutboundConfig {
            servers: vec![VmessServerConfig {
                address: oxray::session::Address::from(server.ip()),
                port: server.port(),
                users: vec![VmessUserConfig { id: SecretId(id), alter_id, security, level: 0, email: None }],
            }],
        }),
        mux: None,
        send_through: None,
        stream: Default::default(),
        path: "outbounds[0]".into(),
    });
    cfg
}

/// The UUID text form of 16 bytes.
pub fn uuid_text(id: &[u8; 16]) -> String {
    let h: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Waits (polling, with a deadline) until `addr` accepts TCP connections.
pub async fn wait_port_async(addr: SocketAddr, deadline: Duration) -> bool {
    wait_until(deadline, || async move { TcpStream::connect(addr).await.is_ok() }).await
}

/// Which implementation a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// This crate's binary.
    Oxray,
    /// The real V2Ray 4.34 (the caller has checked [`v2ray`]).
    V2ray,
}

/// Writes `config` to `dir/<name>.json` and runs it with `which`, logging to `dir/<name>.log`.
pub fn spawn_impl(which: Impl, name: &str, dir: &Path, config: &str) -> Proc {
    let cfg = write_file(dir, &format!("{name}.json"), config);
    let log = dir.join(format!("{name}.log"));
    let cfg = cfg.to_str().expect("utf-8 temp path");
    match which {
        Impl::Oxray => Proc::spawn(name, &oxray_bin(), &["run", "-c", cfg], &log, &[]),
        Impl::V2ray => {
            let bin = v2ray().expect("caller checked for V2Ray");
            Proc::spawn(name, &bin, &["-config", cfg], &log, &[])
        }
    }
}

/// 127.0.0.1:`port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls until one XOR round trip through `entry` works (without half-close, which V2Ray's mux client
/// mishandles); returns how long that took, or None at the deadline.
pub async fn until_traffic(entry: SocketAddr, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let r = tokio::time::timeout(Duration::from_secs(2), xor_exchange(entry, b"ping", false)).await;
        if r.is_ok_and(|r| r.is_ok()) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// A UDP server that sends every datagram back XORed with [`XOR`].
pub async fn udp_xor_echo() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            buf[..n].iter_mut().for_each(|b| *b ^= XOR);
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

pub const DATAGRAMS: [usize; 6] = [1, 16, 17, 500, 1400, 1900];

/// Datagrams through a VMess UDP session (command 2) come back XORed, one for one.
pub async fn check_udp_outbound(outbound: &oxray::proxy::vmess::VmessOutbound, echo: SocketAddr, what: &str) {
    use oxray::proxy::Outbound;
    use oxray::session::{Address, Destination, Session};
    let session = Session::new(None, None, Destination::udp(Address::from(echo.ip()), echo.port()));
    let conn = outbound.connect_packet(&session).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    for (i, &n) in DATAGRAMS.iter().enumerate() {
        let data = payload(n, 300 + i as u64);
        conn.send(bytes::Bytes::from(data.clone())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), conn.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: datagram {n} timed out"))
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: UDP session ended"));
        assert_eq!(got.len(), n, "{what}");
        assert!(got.iter().zip(&data).all(|(g, d)| *g == d ^ XOR), "{what}: datagram {n} differs");
    }
}

pub fn udp_outbound(
    server: SocketAddr,
    id: [u8; 16],
    alter_id: u16,
    security: oxray::config::VmessSecurity,
) -> oxray::proxy::vmess::VmessOutbound {
    use oxray::config::*;
    oxray::proxy::vmess::VmessOutbound::new(
        VmessOutboundConfig {
            servers: vec![VmessServerConfig {
                address: oxray::session::Address::from(server.ip()),
                port: server.port(),
                users: vec![VmessUserConfig { id: SecretId(id), alter_id, security, level: 0, email: None }],
            }],
        },
        &Default::default(),
        None,
    )
}

/// Which way a [`FreezableRelay`] stops forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freeze {
    /// Bytes from the connecting side (the client, e.g. a bridge) to the target.
    Up,
    /// Bytes from the target (e.g. a portal) back to the client.
    Down,
    /// Both directions.
    Both,
}

/// Per relayed connection: (up frozen, down frozen).
type FreezeSwitch = tokio::sync::watch::Sender<(bool, bool)>;

/// A TCP relay on 127.0.0.1 that can go silent the way a dead NAT box does: on command it stops
/// forwarding the connections it carries, in one or both directions, and keeps both sockets open (no
/// FIN, no RST). Connections made after a freeze are forwarded normally.
pub struct FreezableRelay {
    pub addr: SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<FreezeSwitch>>>,
    task: JoinHandle<()>,
}

impl FreezableRelay {
    /// Listens on a free port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> FreezableRelay {
        Self::start_with(target, None).await
    }

    /// Like [`FreezableRelay::start`]; with `target_rcvbuf` the relay's socket toward the target gets that
    /// receive buffer, so once frozen the target's data soon stops being acknowledged (a zero window):
    /// the nearest a relay on loopback comes to a link that drops packets.
    pub async fn start_with(target: SocketAddr, target_rcvbuf: Option<u32>) -> FreezableRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let list = conns.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else { continue };
                if let Some(size) = target_rcvbuf {
                    socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
                }
                let Ok(server) = socket.connect(target).await else { continue };
                let (tx, rx) = tokio::sync::watch::channel((false, false));
                list.lock().unwrap().push(tx);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                held.push(tokio::spawn(pump(cr, sw, rx.clone(), true)));
                held.push(tokio::spawn(pump(sr, cw, rx, false)));
            }
        });
        FreezableRelay { addr, conns, task }
    }

    /// Stops forwarding on every connection carried so far; returns how many.
    pub fn freeze(&self, which: Freeze) -> usize {
        let conns = self.conns.lock().unwrap();
        for c in conns.iter() {
            c.send_modify(|(up, down)| {
                *up |= which != Freeze::Down;
                *down |= which != Freeze::Up;
            });
        }
        conns.len()
    }

    /// Connections carried so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }
}

impl Drop for FreezableRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One direction of a relayed connection: copies until EOF, or stops reading for good once frozen (the
/// sockets stay open until the relay's test ends).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<(bool, bool)>,
    up: bool,
) {
    let is_frozen = |s: &(bool, bool)| if up { s.0 } else { s.1 };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let r = tokio::select! {
            biased;
            _ = frozen.wait_for(|s| is_frozen(s)) => None,
            r = from.read(&mut buf) => Some(r),
        };
        // Frozen: hold both halves open, forwarding nothing, until the test's runtime ends.
        let Some(r) = r.filter(|_| !is_frozen(&frozen.borrow())) else {
            return std::future::pending::<()>().await;
        };
        match r {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Polls single-shot round trips through `entry` (each bounded by `attempt`, without half-close) until
/// one works; returns how long that took, or None at `deadline`. Each attempt is a fresh visitor.
pub async fn until_served(entry: SocketAddr, attempt: Duration, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let r = tokio::time::timeout(attempt, xor_exchange(entry, b"ping", false)).await;
        if r.is_ok_and(|r| r.is_ok()) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A real tool the test drives (curl, nginx, v2ctl, promtool, chromium): `$<NAME>_BIN`, else PATH, else
/// /usr/sbin and /usr/bin; or None after a loud SKIPPED line. Under CI=true (where .ci/run installs
/// `package`) a missing tool fails the test.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let var = format!("{}_BIN", name.to_ascii_uppercase());
    let from_env = std::env::var_os(&var).map(PathBuf::from);
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()));
    let usual = ["/usr/sbin", "/usr/bin"].iter().map(|d| Path::new(d).join(name)).find(|c| c.is_file());
    let found = from_env.filter(|p| p.is_file()).or(on_path).or(usual);
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but {name} is not installed (apt-get install {package})");
        }
        eprintln!("\n*** SKIPPED: {name} not found (apt-get install {package}); that test did not run ***\n");
    }
    found
}

/// The curl binary, or None (loudly; a failure under CI=true).
pub fn curl() -> Option<PathBuf> {
    tool("curl", "curl")
}

/// A tiny HTTP/1.1 server on 127.0.0.1: every request gets `body` with a Content-Length, then the
/// connection closes. Returns its address.
pub async fn http_server(body: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let addr = listener.local_addr().expect("http addr");
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// Open file descriptors of a process (from /proc).
pub fn fd_count(pid: u32) -> usize {
    // An unreadable /proc must fail the test, not make a leak check vacuous.
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// The VMess id of every test's portal/bridge pair.
pub const UUID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";

/// What varies between the reverse tests' portal and bridge configs: configs V2Ray 4.34 runs, apart
/// from oxray extension keys a test puts in `entry` or `top`.
#[derive(Clone, Copy)]
pub struct Rev<'a> {
    pub loglevel: &'a str,
    /// The domain the portal and its bridge share.
    pub domain: &'a str,
    /// Extra keys of the portal or bridge entry, each followed by a comma (`"heartbeatSeconds": 1, `).
    pub entry: &'a str,
    /// Extra top-level members, each followed by a comma (`"ops": {"listen": "127.0.0.1:9"}, `).
    pub top: &'a str,
}

impl<'a> Rev<'a> {
    pub const fn new(loglevel: &'a str) -> Self {
        Rev { loglevel, domain: "test.v2fly.org", entry: "", top: "" }
    }
}

/// A portal tagged `portal`: dokodemo-door `external` (to 127.0.0.1:80, rewritten by the bridge) and
/// VMess `interconn`, both routed to it. internalDomain is 4.34's spelling, so a V2Ray bridge recognises
/// the control session.
pub fn portal_config(external: u16, interconn: u16, r: Rev) -> String {
    let Rev { loglevel, domain, entry, top } = r;
    format!(
        r#"{{
  "log": {{"loglevel": "{loglevel}"}}, {top}
  "reverse": {{"portals": [{{"tag": "portal", "domain": "{domain}", {entry}"internalDomain": "reverse.internal.v2ray.com"}}]}},
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

/// One bridge entry (`bridge{n}`), its two outbounds (`out{n}`: freedom to the service, `interconn{n}`:
/// VMess to the portal) and its two rules; several bridges can share a process.
pub struct BridgeParts {
    entry: String,
    outbounds: String,
    rules: String,
}

pub fn bridge_parts(n: &str, interconn: SocketAddr, service: u16, r: Rev) -> BridgeParts {
    let Rev { domain, entry, .. } = r;
    let (ip, port) = (interconn.ip(), interconn.port());
    BridgeParts {
        entry: format!(r#"{{"tag": "bridge{n}", {entry}"domain": "{domain}"}}"#),
        outbounds: format!(
            r#"{{"tag": "out{n}", "protocol": "freedom", "settings": {{"redirect": "127.0.0.1:{service}"}}}},
    {{"protocol": "vmess", "settings": {{"vnext": [{{"address": "{ip}", "port": {port}, "users": [{{"id": "{UUID}"}}]}}]}},
      "tag": "interconn{n}"}}"#
        ),
        rules: format!(
            r#"{{"type": "field", "inboundTag": ["bridge{n}"], "domain": ["full:{domain}"], "outboundTag": "interconn{n}"}},
    {{"type": "field", "inboundTag": ["bridge{n}"], "outboundTag": "out{n}"}}"#
        ),
    }
}

/// A bridge process with every entry of `parts`; `r` gives its log level and top-level extras.
pub fn bridges_config(parts: &[BridgeParts], r: Rev) -> String {
    let join = |f: fn(&BridgeParts) -> &String| parts.iter().map(f).cloned().collect::<Vec<_>>().join(",\n    ");
    let Rev { loglevel, top, .. } = r;
    format!(
        r#"{{
  "log": {{"loglevel": "{loglevel}"}}, {top}
  "reverse": {{"bridges": [{}]}},
  "outbounds": [
    {}
  ],
  "routing": {{"rules": [
    {}
  ]}}
}}"#,
        join(|p| &p.entry),
        join(|p| &p.outbounds),
        join(|p| &p.rules)
    )
}

/// The single bridge `bridge` for [`portal_config`], its service on 127.0.0.1:`service`.
pub fn bridge_config(interconn: SocketAddr, service: u16, r: Rev) -> String {
    bridges_config(&[bridge_parts("", interconn, service, r)], r)
}

/// XOR round trips of every size in `sizes` at once through `entry` (payload seed `seed + i`), each
/// within `timeout`, bytes checked; panics naming `what` and the size that failed.
pub async fn check_sizes(entry: SocketAddr, what: &str, sizes: &[usize], seed: u64, timeout: Duration) {
    let tasks: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            tokio::spawn(async move {
                let data = payload(size, seed + i as u64);
                (size, tokio::time::timeout(timeout, xor_roundtrip(entry, &data)).await)
            })
        })
        .collect();
    for t in tasks {
        match t.await.expect("join") {
            (_, Ok(Ok(()))) => {}
            (size, Ok(Err(e))) => panic!("{what}: {size} bytes: {e}"),
            (size, Err(_)) => panic!("{what}: {size} bytes: timed out"),
        }
    }
}

/// A fallback target (VLESS/Trojan `fallbacks`) that answers `FB-<name> got: <request head>` and closes.
pub async fn fallback_target(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut b = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&b[..n]),
                    }
                }
                let mut reply = format!("FB-{name} got: ").into_bytes();
                reply.extend_from_slice(&got);
                let _ = c.write_all(&reply).await;
                let _ = c.shutdown().await;
            });
        }
    });
    addr
}

/// Routing-decision probes (tests/dns*.rs): the implementations to compare, oxray always and V2Ray
/// 4.34 when installed (CI requires it).
pub fn impls() -> Vec<Impl> {
    let mut v = vec![Impl::Oxray];
    if v2ray().is_some() {
        v.push(Impl::V2ray);
    }
    v
}

/// The outbound tag of the access line for `target` (`tcp:host:port`), waiting for it with a deadline.
/// oxray writes `[in -> out]`, V2Ray `[out]`.
pub async fn decision(access: &Path, target: &str, deadline: Duration) -> Option<String> {
    let needle = format!(" accepted {target} ");
    let find = || {
        let text = std::fs::read_to_string(access).unwrap_or_default();
        text.lines().find(|l| l.contains(&needle)).map(|l| {
            let route = l.rsplit_once('[').map(|(_, r)| r.trim_end_matches(']')).unwrap_or("");
            route.rsplit(" -> ").next().unwrap_or("").to_string()
        })
    };
    wait_until(deadline, || async { find().is_some() }).await;
    find()
}

/// Connects to `addr`, trying again while it refuses (not yet listening) until `deadline`. A refused
/// connect sends nothing, so unlike a wait on the port it leaves no flow, lookup or log line behind;
/// V2Ray 4.34 starts its inbounds in Go map order, so another port being up says nothing of this one.
pub async fn connect_when_listening(addr: SocketAddr, deadline: Duration) -> std::io::Result<TcpStream> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tokio::time::Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            r => return r,
        }
    }
}

/// [`connect_when_listening`] for blocking tests.
pub fn connect_when_listening_blocking(addr: SocketAddr, deadline: Duration) -> std::io::Result<StdStream> {
    let end = Instant::now() + deadline;
    loop {
        match StdStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

/// Connects to a probe inbound, sends a byte, waits (bounded) for the outbound to close it.
pub async fn probe(port: u16) {
    let mut s = connect_when_listening(local(port), Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("probe port {port} never listened: {e}"));
    let _ = s.write_all(b"x").await;
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
}

/// One dokodemo probe inbound per host (tag `p<i>`, to `host:1000+i`) plus a `ready` inbound. `ready`
/// up means the process runs, not that the probes listen (V2Ray starts inbounds in map order):
/// [`probe`] connects when its port listens (waiting on a probe port would route a flow through it).
pub fn probe_inbounds(hosts: &[&str], ports: &[u16], ready: u16) -> String {
    let mut v: Vec<String> = hosts
        .iter()
        .zip(ports)
        .enumerate()
        .map(|(i, (host, port))| {
            format!(
                r#"{{"tag": "p{i}", "listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door",
                    "settings": {{"address": "{host}", "port": {}}}}}"#,
                1000 + i
            )
        })
        .collect();
    v.push(format!(
        r#"{{"tag": "ready", "listen": "127.0.0.1", "port": {ready}, "protocol": "dokodemo-door",
            "settings": {{"address": "127.0.0.1", "port": 9}}}}"#
    ));
    v.join(",\n")
}

/// A TCP target on `ip` (a free port) that answers `ok` to a 2-byte hello and reports the local
/// address each connection reached, so a test sees which address a dial went to.
pub async fn hit_recorder(ip: [u8; 4]) -> (u16, tokio::sync::mpsc::Receiver<SocketAddr>, JoinHandle<()>) {
    let port = free_port();
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), port)).await.unwrap();
    let (hit_tx, hit_rx) = tokio::sync::mpsc::channel::<SocketAddr>(8);
    let accept = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let local = s.local_addr().unwrap();
            let mut hi = [0u8; 2];
            // Read what the client sent before closing, so the close is a FIN and not a reset.
            if s.read_exact(&mut hi).await.is_ok() {
                let _ = s.write_all(b"ok").await;
                let _ = s.shutdown().await;
                let _ = s.read(&mut hi).await;
            }
            let _ = hit_tx.send(local).await;
        }
    });
    (port, hit_rx, accept)
}
