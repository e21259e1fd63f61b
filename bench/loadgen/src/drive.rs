//! The driver: starts the service and, for each implementation, a bridge and a portal with the
//! same configs; runs every measurement as a separate `loadgen` process (so the driver's own
//! work never shares a runtime with the load); prints and writes the comparison table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::client;
use crate::proto::err;

/// Every long-running process this run started, by PID. Only these are ever killed.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Handle to a registered child; dropping it kills (SIGKILL) and reaps that PID only.
struct Proc {
    pid: u32,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> io::Result<Proc> {
        let f = std::fs::File::create(log)?;
        let f2 = f.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
        let child = cmd.spawn().map_err(|e| err(format!("starting {name}: {e}")))?;
        let pid = child.id();
        lock_children().push(child);
        Ok(Proc { pid, name: name.into(), log: log.into() })
    }

    /// Error if the process has already exited (with the tail of its log, which says why).
    fn check_alive(&self) -> io::Result<()> {
        let mut cs = lock_children();
        if let Some(c) = cs.iter_mut().find(|c| c.id() == self.pid)
            && let Ok(Some(st)) = c.try_wait()
        {
            return Err(err(format!("{} exited ({st}); log tail:\n{}", self.name, tail(&self.log))));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let mut cs = lock_children();
        if let Some(i) = cs.iter().position(|c| c.id() == self.pid) {
            let mut c = cs.swap_remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn lock_children() -> std::sync::MutexGuard<'static, Vec<Child>> {
    // A poisoned lock only means another thread panicked mid-push; the Vec is still valid.
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills every registered child (signal path: destructors will not run after exit()).
fn kill_all() {
    for c in lock_children().iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub struct Opts {
    pub oxray: Option<PathBuf>,
    pub v2ray: Option<PathBuf>,
    pub rathole: Option<PathBuf>,
    /// JSON object deep-merged into both configs of the "ops on" variant (issue 15's cost row).
    pub ops_fragment: Option<PathBuf>,
    pub reps: usize,
    pub bulk_bytes: u64,
    pub ping_count: u32,
    pub connrate_secs: f64,
    pub hold_conns: u32,
    pub settle: Duration,
    pub out_dir: PathBuf,
    pub quick: bool,
    /// A/B rig: bulk steps only (of the reverse setup unless `--setups` says), no rathole or ops columns (compare two oxray
    /// builds with `--v2ray bench/oxray-as-v2ray.sh` and OXRAY_B=the other binary).
    pub rig: bool,
    /// `--setups reverse,wstls,ss,vless`: only these setups' columns (default: all; with `--rig`,
    /// the reverse setup only).
    pub setups: Option<Vec<String>>,
    /// The memory rows only (idle RSS, RSS per held connection, first byte) of the reverse setup,
    /// oxray and the V2Ray column (a second oxray build with `bench/oxray-as-v2ray.sh`): no
    /// baselines, no rathole or ops columns, no latency, rate or bulk steps.
    pub memory: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Oxray,
    V2ray,
    Rathole,
}

/// What the pair of processes is. "bridge" and "portal" name the two roles throughout: for the
/// forward setups the bridge is the server (inbound of the protocol, freedom out) and the portal the
/// client (dokodemo-door in, the protocol's outbound to the server).
#[derive(Clone, Copy, PartialEq)]
enum Setup {
    /// INTEROP.md §5: VMess + Mux over TCP (rathole: its own tunnel, plain TCP transport).
    Reverse,
    /// The same reverse pair, its interconn over WebSocket + TLS (issue 12).
    ReverseWsTls,
    /// dokodemo → Shadowsocks aes-128-gcm → freedom (issue 13).
    Shadowsocks,
    /// dokodemo → VLESS over plain TCP → freedom (issue 13).
    Vless,
}

impl Setup {
    /// Its name for `--setups`.
    fn short_name(self) -> &'static str {
        match self {
            Setup::Reverse => "reverse",
            Setup::ReverseWsTls => "wstls",
            Setup::Shadowsocks => "ss",
            Setup::Vless => "vless",
        }
    }

    fn runs(self, step: Step, ops: bool) -> bool {
        match (self, step) {
            (Setup::Reverse, Step::Bulk { .. }) => true,
            // The ops variant exists for bulk and CPU per GiB only (issue 15).
            (Setup::Reverse, _) => !ops,
            (Setup::ReverseWsTls, Step::Bulk { .. } | Step::ConnRate) => true,
            (Setup::Shadowsocks | Setup::Vless, Step::Bulk { .. }) => true,
            _ => false,
        }
    }
}

struct Impl {
    kind: Kind,
    /// The result column's key (`oxray`, `v2ray`, `rathole`, `oxray_wstls`, ...).
    name: &'static str,
    bin: PathBuf,
    setup: Setup,
    /// Ports of the ops listeners (bridge, portal): oxray with `--ops`, scraped once a second.
    ops: Option<(u16, u16)>,
}

impl Impl {
    /// The command that runs this implementation on `cfg`, started on CPU 0 only when `pinned`.
    /// `ops`: the ops listener's port for this process.
    fn command(&self, cfg: &Path, pinned: bool, role: Role, ops: Option<u16>) -> Command {
        let mut c = if pinned { on_cpu0(&self.bin) } else { Command::new(&self.bin) };
        match self.kind {
            Kind::Oxray => c.arg("run").arg("-c").arg(cfg),
            Kind::V2ray => c.arg("-config").arg(cfg),
            Kind::Rathole => c.arg(if role == Role::Bridge { "--client" } else { "--server" }).arg(cfg),
        };
        if let Some(p) = ops {
            c.arg("--ops").arg(format!("127.0.0.1:{p}"));
        }
        c
    }

    fn ext(&self) -> &'static str {
        if self.kind == Kind::Rathole { "toml" } else { "json" }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Bridge,
    Portal,
}

#[derive(Clone, Copy)]
enum Step {
    Ping,
    PingPinned,
    ConnRate,
    Bulk { up: bool, conns: u32 },
}

/// One implementation's progress through the run.
struct State {
    imp: Impl,
    ports: Ports,
    /// Ports of the pairs started on CPU 0 for the pinned round trips.
    pinned_ports: Ports,
    /// The long-lived (bridge, portal) pair used by the unpinned latency, rate and bulk steps.
    pair: Option<(Proc, Proc)>,
    samples: Samples,
    failed: Option<String>,
}

impl State {
    fn push(&mut self, k: &'static str, v: f64) {
        self.samples.entry(k).or_default().push(v);
    }

    fn ext(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.external))
    }
}

/// `program`, started on CPU 0 (taskset execs it: the PID stays the program's own).
fn on_cpu0(program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "0"]).arg(program);
    c
}

struct Ports {
    service: u16,
    external: u16,
    interconn: u16,
}

/// Free loopback ports, picked below the kernel's ephemeral range (32768+): bridges re-listen on
/// the same ports after every restart, and a port in the ephemeral range can meanwhile become
/// the source port of some client connection on this shared machine (EADDRINUSE). Each pick is
/// checked by binding it.
fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let mut x = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        ^ ((std::process::id() as u64) << 32)
        | 1;
    let mut out: Vec<u16> = Vec::with_capacity(n);
    for _ in 0..10_000 {
        if out.len() == n {
            return Ok(out);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        if !out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    Err(err("no free loopback ports in 20000..32000"))
}

const UUID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";
const DOMAIN: &str = "test.v2fly.org";

/// INTEROP.md §5, loopback only, loglevel warning. `internalDomain` is oxray's key for pairing
/// with a V2Ray bridge; V2Ray ignores it, so both implementations read the very same files.
/// `interconn` is the streamSettings of the tunnel's inbound (empty: plain TCP).
fn portal_config(p: &Ports, interconn: &str) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "warning"}},
  "reverse": {{"portals": [{{"tag": "portal", "domain": "{DOMAIN}", "internalDomain": "reverse.internal.v2ray.com"}}]}},
  "inbounds": [
    {{"tag": "external", "listen": "127.0.0.1", "port": {ext}, "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1", "port": 80, "network": "tcp"}}}},
    {{"tag": "interconn", "listen": "127.0.0.1", "port": {ic}, "protocol": "vmess",
      "settings": {{"clients": [{{"id": "{UUID}"}}]}}{interconn}}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["external"], "outboundTag": "portal"}},
    {{"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"}}
  ]}}
}}
"#,
        ext = p.external,
        ic = p.interconn
    )
}

fn bridge_config(p: &Ports, interconn: &str) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "warning"}},
  "reverse": {{"bridges": [{{"tag": "bridge", "domain": "{DOMAIN}"}}]}},
  "outbounds": [
    {{"tag": "out", "protocol": "freedom", "settings": {{"redirect": "127.0.0.1:{svc}"}}}},
    {{"tag": "interconn", "protocol": "vmess",
      "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {ic}, "users": [{{"id": "{UUID}"}}]}}]}}{interconn}}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["bridge"], "domain": ["full:{DOMAIN}"], "outboundTag": "interconn"}},
    {{"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"}}
  ]}}
}}
"#,
        svc = p.service,
        ic = p.interconn
    )
}

/// The forward setups: the client side (portal role) is a dokodemo-door to the service through
/// `outbound`; the server side (bridge role) is `inbound` on the interconn port, then freedom.
fn forward_configs(p: &Ports, inbound: &str, outbound: &str) -> (String, String) {
    let server = format!(
        r#"{{
  "log": {{"loglevel": "warning"}},
  "inbounds": [{{"tag": "in", "listen": "127.0.0.1", "port": {ic}, {inbound}}}],
  "outbounds": [{{"tag": "direct", "protocol": "freedom"}}]
}}
"#,
        ic = p.interconn
    );
    let client = format!(
        r#"{{
  "log": {{"loglevel": "warning"}},
  "inbounds": [{{"tag": "external", "listen": "127.0.0.1", "port": {ext}, "protocol": "dokodemo-door",
    "settings": {{"address": "127.0.0.1", "port": {svc}, "network": "tcp"}}}}],
  "outbounds": [{{"tag": "out", {outbound}}}]
}}
"#,
        ext = p.external,
        svc = p.service
    );
    (server, client)
}

const SS_PASSWORD: &str = "oxray-bench-password";
const RATHOLE_TOKEN: &str = "oxray-bench-token";
/// Name in the test certificate of the ws+tls rows (the bridge checks nothing: `allowInsecure`).
const TLS_NAME: &str = "bench.oxray.test";

/// (bridge, portal) config files' contents for one implementation and setup.
fn configs(imp: &Impl, p: &Ports, dir: &Path, fragment: Option<&Value>) -> io::Result<(String, String)> {
    if imp.kind == Kind::Rathole {
        // rathole 0.5: the server (visitor side, the portal's place) binds the service port for
        // visitors; the client (the bridge's place) dials it and forwards to the service. TCP transport.
        let server = format!(
            "[server]\nbind_addr = \"127.0.0.1:{ic}\"\n\n[server.services.svc]\ntoken = \"{RATHOLE_TOKEN}\"\nbind_addr = \"127.0.0.1:{ext}\"\n",
            ic = p.interconn,
            ext = p.external
        );
        let client = format!(
            "[client]\nremote_addr = \"127.0.0.1:{ic}\"\n\n[client.services.svc]\ntoken = \"{RATHOLE_TOKEN}\"\nlocal_addr = \"127.0.0.1:{svc}\"\n",
            ic = p.interconn,
            svc = p.service
        );
        return Ok((client, server));
    }
    let (b, pt) = match imp.setup {
        Setup::Reverse => (bridge_config(p, ""), portal_config(p, "")),
        Setup::ReverseWsTls => {
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            let server = format!(
                r#",
      "streamSettings": {{"network": "ws", "security": "tls", "wsSettings": {{"path": "/tunnel"}},
        "tlsSettings": {{"certificates": [{{"certificateFile": "{}", "keyFile": "{}"}}]}}}}"#,
                cert.display(),
                key.display()
            );
            let client = format!(
                r#",
      "streamSettings": {{"network": "ws", "security": "tls", "wsSettings": {{"path": "/tunnel"}},
        "tlsSettings": {{"serverName": "{TLS_NAME}", "allowInsecure": true}}}}"#
            );
            (bridge_config(p, &client), portal_config(p, &server))
        }
        Setup::Shadowsocks => forward_configs(
            p,
            &format!(
                r#""protocol": "shadowsocks", "settings": {{"method": "aes-128-gcm", "password": "{SS_PASSWORD}", "network": "tcp"}}"#
            ),
            &format!(
                r#""protocol": "shadowsocks", "settings": {{"servers": [{{"address": "127.0.0.1", "port": {}, "method": "aes-128-gcm", "password": "{SS_PASSWORD}"}}]}}"#,
                p.interconn
            ),
        ),
        Setup::Vless => forward_configs(
            p,
            &format!(r#""protocol": "vless", "settings": {{"clients": [{{"id": "{UUID}"}}], "decryption": "none"}}"#),
            &format!(
                r#""protocol": "vless", "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {}, "users": [{{"id": "{UUID}", "encryption": "none"}}]}}]}}"#,
                p.interconn
            ),
        ),
    };
    match fragment {
        None => Ok((b, pt)),
        Some(f) => Ok((merged(&b, f)?, merged(&pt, f)?)),
    }
}

/// `base` (a JSON config) with `fragment` deep-merged in: objects merge key by key, anything else
/// in the fragment replaces what the base had.
fn merged(base: &str, fragment: &Value) -> io::Result<String> {
    fn merge(into: &mut Value, from: &Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b.clone(),
        }
    }
    let mut v: Value = serde_json::from_str(base).map_err(|e| err(format!("bench config: {e}")))?;
    merge(&mut v, fragment);
    serde_json::to_string_pretty(&v).map_err(|e| err(e.to_string()))
}

/// A throw-away self-signed certificate for the ws+tls rows (openssl, P-256).
fn make_cert(dir: &Path) -> io::Result<()> {
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .args(["-subj", &format!("/CN={TLS_NAME}"), "-addext", &format!("subjectAltName=DNS:{TLS_NAME}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| err(format!("openssl (for the ws+tls certificate): {e}")))?;
    if !st.success() {
        return Err(err(format!("openssl req failed ({st}) making the ws+tls certificate")));
    }
    Ok(())
}

/// Once a second, GET /metrics and /status from each ops listener (what a Prometheus scraper and a
/// dashboard would do). Counts answers that were not `200`.
async fn scrape(
    ports: Vec<u16>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bad: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for &port in &ports {
            for path in ["/metrics", "/status"] {
                let r = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                    s.write_all(
                        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
                    )
                    .await?;
                    let mut v = Vec::new();
                    s.read_to_end(&mut v).await?;
                    io::Result::Ok(v.starts_with(b"HTTP/1.1 200") || v.starts_with(b"HTTP/1.0 200"))
                })
                .await;
                match r {
                    Ok(Ok(true)) => ok.fetch_add(1, Relaxed),
                    _ => bad.fetch_add(1, Relaxed),
                };
            }
        }
    }
}

fn rss_kib(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| err(format!("no VmRSS for pid {pid}")))
}

/// utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces: fields are counted after its closing ')'.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    match (get(11), get(12)) {
        (Some(u), Some(st)) => Ok(u + st),
        _ => Err(err(format!("cannot parse /proc/{pid}/stat"))),
    }
}

/// Waits until `pids` together used no CPU tick for a whole [`QUIET_WINDOW`] (at most [`QUIET_MAX`]).
/// The implementations alternate, and V2Ray keeps working for a second or two after a run (sessions
/// lingering on its `uplinkOnly`/`downlinkOnly` timers, its GC): measured right after it, oxray's
/// connection rate read ~15 % low. Each measurement starts on a quiet machine instead.
async fn quiesce(pids: &[u32]) {
    let start = Instant::now();
    let total = || pids.iter().map(|&p| cpu_ticks(p).unwrap_or(0)).sum::<u64>();
    let mut last = total();
    while start.elapsed() < QUIET_MAX {
        tokio::time::sleep(QUIET_WINDOW).await;
        let now = total();
        if now == last {
            return;
        }
        last = now;
    }
    eprintln!("[all] note: the tunnels were still busy after {QUIET_MAX:?}; measuring anyway");
}

/// A window this long without a CPU tick (10 ms each) means under 5 % of one CPU.
const QUIET_WINDOW: Duration = Duration::from_millis(200);
/// Longest wait for quiet before a measurement.
const QUIET_MAX: Duration = Duration::from_secs(10);

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs `loadgen <args>` (optionally under `taskset -c 0`) with a hard time limit and returns
/// its last stdout line parsed as JSON.
async fn run_json(pinned: bool, args: &[String], limit: Duration) -> io::Result<Value> {
    let exe = std::env::current_exe()?;
    let mut c = if pinned {
        let mut c = tokio::process::Command::new("taskset");
        c.arg("-c").arg("0").arg(&exe);
        c
    } else {
        tokio::process::Command::new(&exe)
    };
    c.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = c.spawn()?;
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(r) => r?,
        Err(_) => return Err(err(format!("loadgen {} exceeded {limit:?}", args.join(" ")))),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(err(format!(
            "loadgen {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    serde_json::from_str(line).map_err(|e| err(format!("loadgen {}: bad output {line:?}: {e}", args.join(" "))))
}

fn num(v: &Value, k: &str) -> io::Result<f64> {
    v.get(k).and_then(Value::as_f64).ok_or_else(|| err(format!("missing {k} in {v}")))
}

type Samples = BTreeMap<&'static str, Vec<f64>>;

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

struct Ctx {
    opts: Opts,
    ops_fragment: Option<Value>,
    dir: PathBuf,
    service_pid: u32,
    ticks: f64,
}

impl Ctx {
    fn args(&self, a: &[&str], addr: SocketAddr) -> Vec<String> {
        let mut v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        v.push("--addr".into());
        v.push(addr.to_string());
        v
    }

    async fn pingpong(&self, addr: SocketAddr, pinned: bool) -> io::Result<(f64, f64)> {
        let n = self.opts.ping_count.to_string();
        let v =
            run_json(pinned, &self.args(&["pingpong", "--count", &n, "--size", "64"], addr), Duration::from_secs(120))
                .await?;
        Ok((num(&v, "p50_us")?, num(&v, "p99_us")?))
    }

    /// Starts bridge then portal immediately (same instant for the clock), and polls until
    /// the first round trip through the tunnel succeeds.
    /// `pinned`: both processes start on CPU 0.
    async fn start_pair(&self, imp: &Impl, ports: &Ports, pinned: bool) -> io::Result<(Proc, Proc, f64)> {
        let name = if pinned { format!("{}-pinned", imp.name) } else { imp.name.to_string() };
        let x = imp.ext();
        let bcfg = self.dir.join(format!("{name}-bridge.{x}"));
        let pcfg = self.dir.join(format!("{name}-portal.{x}"));
        let fragment = if imp.ops.is_some() { self.ops_fragment.as_ref() } else { None };
        let (bc, pc) = configs(imp, ports, &self.dir, fragment)?;
        std::fs::write(&bcfg, bc)?;
        std::fs::write(&pcfg, pc)?;
        // Pinned pairs carry no ops listener: that variant only runs bulk.
        let (bops, pops) = match imp.ops {
            Some((b, p)) if !pinned => (Some(b), Some(p)),
            _ => (None, None),
        };
        let spawn = |role: Role| {
            let (r, cfg, ops) = match role {
                Role::Bridge => ("bridge", &bcfg, bops),
                Role::Portal => ("portal", &pcfg, pops),
            };
            Proc::spawn(
                &format!("{name} {r}"),
                imp.command(cfg, pinned, role, ops),
                &self.dir.join(format!("{name}-{r}.log")),
            )
        };
        let t0 = Instant::now();
        // Both started at once. rathole's client (bridge role) retries a refused dial only after a
        // second, so its server goes first; V2Ray and oxray bridges start first as in INTEROP.md §5.
        let (b, p) = if imp.kind == Kind::Rathole {
            let p = spawn(Role::Portal)?;
            (spawn(Role::Bridge)?, p)
        } else {
            let b = spawn(Role::Bridge)?;
            (b, spawn(Role::Portal)?)
        };
        let ext = SocketAddr::from(([127, 0, 0, 1], ports.external));
        // Poll every 5 ms; stop at once if either process dies (a config error, say).
        let mut last = String::from("never tried");
        while t0.elapsed() < Duration::from_secs(20) {
            b.check_alive()?;
            p.check_alive()?;
            match tokio::time::timeout(Duration::from_secs(1), client::echo_roundtrip(ext, b"f")).await {
                Ok(Ok(_)) => return Ok((b, p, t0.elapsed().as_secs_f64())),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "round trip timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(err(format!(
            "no round trip through {ext} within 20 s (last: {last})\nbridge log:\n{}\nportal log:\n{}",
            tail(&b.log),
            tail(&p.log)
        )))
    }

    async fn settle_rss(&self, pids: &[u32]) -> io::Result<u64> {
        tokio::time::sleep(self.opts.settle).await;
        pids.iter().map(|&p| rss_kib(p)).sum()
    }

    fn cpu(&self, pids: &[u32]) -> io::Result<f64> {
        Ok(pids.iter().map(|&p| cpu_ticks(p)).sum::<io::Result<u64>>()? as f64 / self.ticks)
    }

    /// One startup repetition on a fresh pair: start-to-first-byte, idle RSS, RSS with N held.
    async fn startup_rep(&self, st: &mut State) -> io::Result<()> {
        let (b, p, fb) = self.start_pair(&st.imp, &st.ports, false).await?;
        st.push("first_byte_ms", fb * 1e3);
        let ext = st.ext();
        // First traffic: a few fresh sessions and one small verified transfer each way.
        for _ in 0..10 {
            client::echo_roundtrip(ext, b"w").await?;
        }
        client::bulk(ext, 1, 1 << 20, true).await?;
        client::bulk(ext, 1, 1 << 20, false).await?;
        let pids = [b.pid, p.pid];
        let idle = self.settle_rss(&pids).await?;
        st.push("idle_rss_mib", idle as f64 / 1024.0);
        let (per, alive) = self.hold(ext, &pids, idle).await?;
        st.push("rss_per_conn_kib", per);
        st.push("hold_alive", alive as f64);
        if alive < self.opts.hold_conns {
            eprintln!(
                "[{}] WARNING: only {alive} of {} held connections still echoed after the hold",
                st.imp.name, self.opts.hold_conns
            );
        }
        b.check_alive()?;
        p.check_alive()
    }

    /// One repetition of one measurement on the implementation's long-lived pair.
    async fn measure(&self, step: Step, st: &mut State, direct: &Samples) -> io::Result<()> {
        let ext = st.ext();
        let (bpid, ppid) = match &st.pair {
            Some((b, p)) => (b.pid, p.pid),
            None => return Err(err("no running pair")),
        };
        let pids = [bpid, ppid];
        let dm = |k: &str| median(direct.get(k).map_or(&[][..], |v| v)).unwrap_or(0.0);
        match step {
            Step::Ping => {
                let (p50, p99) = self.pingpong(ext, false).await?;
                st.push("rtt_p50", p50);
                st.push("rtt_p99", p99);
                st.push("rtt_p50_added", p50 - dm("rtt_p50"));
            }
            Step::PingPinned => {
                // Everything on CPU 0, where cross-CPU wake-ups add no noise: a fresh pair started
                // there, so each implementation sizes its runtime for the one CPU it has. Pinning the
                // long-lived pair instead would leave V2Ray's Go runtime with GOMAXPROCS=2 on one
                // CPU, which measured 35-46 us added run to run where started on CPU 0 it steadily adds 38 us.
                let (b, p, _) = self.start_pair(&st.imp, &st.pinned_ports, true).await?;
                let r = self.pingpong(SocketAddr::from(([127, 0, 0, 1], st.pinned_ports.external)), true).await;
                drop((b, p));
                let (p50, p99) = r?;
                st.push("rtt1_p50", p50);
                st.push("rtt1_p99", p99);
                st.push("rtt1_p50_added", p50 - dm("rtt1_p50"));
            }
            Step::ConnRate => {
                let secs = self.opts.connrate_secs.to_string();
                let v = run_json(false, &self.args(&["connrate", "--seconds", &secs], ext), Duration::from_secs(120))
                    .await?;
                st.push("connrate", num(&v, "conns_per_s")?);
                let failed = num(&v, "failed")?;
                if failed > 0.0 {
                    eprintln!("[{}] connrate: {failed} failed connections (last: {})", st.imp.name, v["last_error"]);
                }
                st.push("connrate_failed", failed);
            }
            Step::Bulk { up, conns } => {
                let key: &'static str = match (up, conns) {
                    (true, 1) => "bulk_up_1",
                    (true, _) => "bulk_up_8",
                    (false, 1) => "bulk_down_1",
                    (false, _) => "bulk_down_8",
                };
                let bytes = self.opts.bulk_bytes;
                let (bs, cs) = (bytes.to_string(), conns.to_string());
                let a = ["bulk", "--conns", &cs, "--bytes", &bs, "--dir", if up { "up" } else { "down" }];
                let c0 = self.cpu(&pids)?;
                let v = run_json(false, &self.args(&a, ext), Duration::from_secs(300)).await?;
                let c1 = self.cpu(&pids)?;
                st.push(key, num(&v, "mb_per_s")?);
                st.push("cpu_per_gib", (c1 - c0) / (bytes as f64 / (1u64 << 30) as f64));
            }
        }
        if let Some((b, p)) = &st.pair {
            b.check_alive()?;
            p.check_alive()?;
        }
        Ok(())
    }

    /// Opens N connections in a `loadgen hold` process, measures RSS growth of bridge+portal.
    async fn hold(&self, ext: SocketAddr, pids: &[u32], before_kib: u64) -> io::Result<(f64, u32)> {
        let n = self.opts.hold_conns;
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args(self.args(&["hold", "--conns", &n.to_string(), "--max-secs", "120"], ext))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| err("hold: no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
        match ready {
            Ok(Ok(Some(l))) if l.contains("ready") => {}
            other => return Err(err(format!("hold: no ready line ({other:?}); is ulimit -n high enough?"))),
        }
        let with = self.settle_rss(pids).await?;
        // Closing stdin releases the connections; the process then checks they still echo.
        drop(child.stdin.take());
        let last = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        let alive = match last {
            Ok(Ok(Some(l))) => {
                serde_json::from_str::<Value>(&l).ok().and_then(|v| v["alive_after"].as_u64()).unwrap_or(0)
            }
            _ => 0,
        };
        Ok(((with as f64 - before_kib as f64) / n as f64, alive as u32))
    }
}

pub async fn drive(opts: Opts) -> io::Result<()> {
    // Ctrl-C / SIGTERM: kill only the PIDs this run started, then exit.
    tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut i), Ok(mut t)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        tokio::select! { _ = i.recv() => {}, _ = t.recv() => {} }
        kill_all();
        eprintln!("interrupted: stopped the processes this run started");
        std::process::exit(130);
    });

    // Every column of the run. The reverse setup has oxray, V2Ray and rathole; the other setups
    // oxray and V2Ray (rathole has neither a TLS+WebSocket transport of this kind nor these protocols).
    let mut impls = Vec::new();
    let push = |impls: &mut Vec<Impl>, kind, name, bin: &PathBuf, setup| {
        impls.push(Impl { kind, name, bin: bin.clone(), setup, ops: None })
    };
    let columns = [
        (Setup::Reverse, "oxray", "v2ray"),
        (Setup::ReverseWsTls, "oxray_wstls", "v2ray_wstls"),
        (Setup::Shadowsocks, "oxray_ss", "v2ray_ss"),
        (Setup::Vless, "oxray_vless", "v2ray_vless"),
    ];
    if opts.oxray.is_none() {
        eprintln!(
            "\n!!!!!!!! oxray binary not given or missing: measuring the others only; the oxray columns will read \"pending\" !!!!!!!!\n"
        );
    }
    if opts.v2ray.is_none() {
        eprintln!("\n!!!!!!!! v2ray not installed: no V2Ray columns, no oxray/V2Ray ratios !!!!!!!!\n");
    }
    for (setup, ox, v2) in columns {
        let wanted = match &opts.setups {
            Some(list) => list.iter().any(|n| n == setup.short_name()),
            None => !(opts.rig || opts.memory) || setup == Setup::Reverse,
        };
        if !wanted {
            continue;
        }
        if let Some(b) = &opts.oxray {
            push(&mut impls, Kind::Oxray, ox, b, setup);
        }
        if let Some(b) = &opts.v2ray {
            push(&mut impls, Kind::V2ray, v2, b, setup);
        }
        if setup == Setup::Reverse && !opts.rig && !opts.memory {
            match &opts.rathole {
                Some(b) => push(&mut impls, Kind::Rathole, "rathole", b, setup),
                None => eprintln!("\n!!!!!!!! rathole not available: no rathole column !!!!!!!!\n"),
            }
            // The ops listener's cost (issue 15): the same oxray reverse pair with `--ops` on both
            // processes and a scraper, alternating with the plain one.
            if let Some(b) = &opts.oxray {
                push(&mut impls, Kind::Oxray, "oxray_ops", b, setup);
            }
        }
    }
    if impls.is_empty() {
        return Err(err("no implementation available: nothing to measure"));
    }
    let ops_fragment = match &opts.ops_fragment {
        None => None,
        Some(f) => {
            let t = std::fs::read_to_string(f).map_err(|e| err(format!("{}: {e}", f.display())))?;
            let v: Value = serde_json::from_str(&t).map_err(|e| err(format!("{}: {e}", f.display())))?;
            if !v.is_object() {
                return Err(err(format!("{}: the ops fragment must be a JSON object", f.display())));
            }
            Some(v)
        }
    };

    let dir = std::env::temp_dir().join(format!("oxray-bench.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if impls.iter().any(|i| i.setup == Setup::ReverseWsTls) {
        make_cert(&dir)?;
    }
    // All ports in one pick, so no two roles can draw the same one: the service, the service on
    // CPU 0 (pinned pairs and baselines), the floor's two relays; then four per column (external and
    // interconn, unpinned and pinned), and two ops listeners.
    let all_ports = free_ports(6 + 4 * impls.len())?;
    let [sp, pinned_sp, relay1, relay2] = [all_ports[0], all_ports[1], all_ports[2], all_ports[3]];
    let ops_ports = (all_ports[4], all_ports[5]);
    for i in impls.iter_mut().filter(|i| i.name == "oxray_ops") {
        i.ops = Some(ops_ports);
    }
    let exe = std::env::current_exe()?;
    let mut svc_cmd = Command::new(&exe);
    svc_cmd.args(["serve", "--port", &sp.to_string()]);
    let svc = Proc::spawn("service", svc_cmd, &dir.join("service.log"))?;
    let service = SocketAddr::from(([127, 0, 0, 1], sp));
    let mut pinned_cmd = on_cpu0(&exe);
    pinned_cmd.args(["serve", "--port", &pinned_sp.to_string()]);
    let pinned_svc = Proc::spawn("service on CPU 0", pinned_cmd, &dir.join("service-pinned.log"))?;
    let pinned_addr = SocketAddr::from(([127, 0, 0, 1], pinned_sp));
    // Readiness by polling, not sleeping.
    for a in [service, pinned_addr] {
        client::first_byte(a, Instant::now(), Duration::from_millis(5), Duration::from_secs(10)).await?;
    }
    let ctx = Ctx { service_pid: svc.pid, opts, ops_fragment, dir: dir.clone(), ticks: clk_tck() };

    let mut direct = Samples::new();
    // The memory rows need none of the baselines.
    if !ctx.opts.memory {
        eprintln!("[direct] baseline round trips straight to the service ({} x 64 B)", ctx.opts.ping_count);
        for _ in 0..ctx.opts.reps {
            let (p50, p99) = ctx.pingpong(service, false).await?;
            direct.entry("rtt_p50").or_default().push(p50);
            direct.entry("rtt_p99").or_default().push(p99);
        }
        for _ in 0..ctx.opts.reps {
            let (p50, p99) = ctx.pingpong(pinned_addr, true).await?;
            direct.entry("rtt1_p50").or_default().push(p50);
            direct.entry("rtt1_p99").or_default().push(p99);
        }
        // The floor under the pinned row: the same four process hops as a tunnel (two relays, each
        // crossed both ways) with no protocol at all, through the plainest relay there is.
        eprintln!("[floor] round trips through two plain relays on CPU 0 ({} x 64 B)", ctx.opts.ping_count);
        {
            let relay = |name: &str, from: u16, to: u16| {
                let mut c = on_cpu0(&exe);
                c.args(["relay", "--addr", &format!("127.0.0.1:{from}")]);
                c.args(["--to", &format!("127.0.0.1:{to}")]);
                Proc::spawn(name, c, &dir.join(format!("{name}.log")))
            };
            let _second = relay("relay-2", relay2, pinned_sp)?;
            let _first = relay("relay-1", relay1, relay2)?;
            let entry = SocketAddr::from(([127, 0, 0, 1], relay1));
            client::first_byte(entry, Instant::now(), Duration::from_millis(5), Duration::from_secs(10)).await?;
            for _ in 0..ctx.opts.reps {
                let (p50, _) = ctx.pingpong(entry, true).await?;
                direct.entry("rtt1_floor_p50").or_default().push(p50);
            }
        }
        // The load generator's own ceiling: a tunnel near this figure is limited by loadgen+service.
        let bs = ctx.opts.bulk_bytes.to_string();
        for _ in 0..ctx.opts.reps {
            for (dir, key) in [("up", "bulk_up_1"), ("down", "bulk_down_1")] {
                let a = ["bulk", "--conns", "1", "--bytes", &bs, "--dir", dir];
                let v = run_json(false, &ctx.args(&a, service), Duration::from_secs(300)).await?;
                direct.entry(key).or_default().push(num(&v, "mb_per_s")?);
            }
        }
    }

    let load_start = loadavg();
    if load_start.split_whitespace().next().and_then(|l| l.parse::<f64>().ok()).unwrap_or(0.0) > 0.5 {
        eprintln!(
            "bench: NOTE load average is {load_start} before the run: other work shares these CPUs, expect noise"
        );
    }
    let started = Instant::now();
    let mut states: Vec<State> = Vec::new();
    for (i, imp) in impls.into_iter().enumerate() {
        let ports = Ports { service: sp, external: all_ports[6 + 4 * i], interconn: all_ports[7 + 4 * i] };
        let pinned_ports =
            Ports { service: pinned_sp, external: all_ports[8 + 4 * i], interconn: all_ports[9 + 4 * i] };
        states.push(State { imp, ports, pinned_ports, pair: None, samples: Samples::new(), failed: None });
    }
    let reps = ctx.opts.reps;
    let fail = |st: &mut State, e: io::Error| {
        eprintln!("\n!!!!!!!! {} FAILED: {e} !!!!!!!!\n(configs and logs in {})\n", st.imp.name, dir.display());
        st.pair = None;
        st.failed = Some(e.to_string());
    };
    // Implementations alternate inside every repetition, so a burst of background load (this
    // machine is shared) hits both columns alike instead of skewing one of them.
    for r in 0..if ctx.opts.rig { 0 } else { reps } {
        for st in
            states.iter_mut().filter(|s| s.failed.is_none() && s.imp.setup == Setup::Reverse && s.imp.ops.is_none())
        {
            eprintln!(
                "[{}] startup {}/{reps}: first byte, idle RSS, {} held connections",
                st.imp.name,
                r + 1,
                ctx.opts.hold_conns
            );
            if let Err(e) = ctx.startup_rep(st).await {
                fail(st, e);
            }
        }
    }
    for st in states.iter_mut().filter(|s| s.failed.is_none() && !ctx.opts.memory) {
        match ctx.start_pair(&st.imp, &st.ports, false).await {
            Ok((b, p, _)) => st.pair = Some((b, p)),
            Err(e) => fail(st, e),
        }
    }
    // The scraper of the ops variant, for as long as its pair runs.
    let scrapes = (
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let scraper = states
        .iter()
        .find(|s| s.pair.is_some() && s.imp.ops.is_some())
        .map(|_| tokio::spawn(scrape(vec![ops_ports.0, ops_ports.1], scrapes.0.clone(), scrapes.1.clone())));
    let pair_pids = |s: &State| s.pair.as_ref().map(|(b, p)| vec![b.pid, p.pid]).unwrap_or_default();
    // Tunnel processes whose work could still spill into the next measurement: the column measured
    // last (V2Ray works on for ~2 s after a run), and the one about to be.
    let mut last_pids: Vec<u32> = Vec::new();
    let mut steps = vec![
        (Step::Ping, "64 B ping-pong"),
        (Step::PingPinned, "64 B ping-pong on CPU 0"),
        (Step::ConnRate, "connection rate"),
    ];
    if ctx.opts.rig || ctx.opts.memory {
        steps.clear();
    }
    for up in if ctx.opts.memory { &[][..] } else { &[true, false][..] } {
        let up = *up;
        for conns in [1, 8] {
            steps.push((Step::Bulk { up, conns }, if up { "bulk upload" } else { "bulk download" }));
        }
    }
    for (step, what) in steps {
        if let Step::Bulk { conns, .. } = step {
            eprintln!("[all] {what}, {conns} conn(s), {} MiB x {reps}", ctx.opts.bulk_bytes >> 20);
        } else {
            eprintln!("[all] {what} x {reps}");
        }
        for _ in 0..reps {
            for st in states.iter_mut().filter(|s| s.failed.is_none() && s.imp.setup.runs(step, s.imp.ops.is_some())) {
                let next = pair_pids(st);
                let busy: Vec<u32> = last_pids.iter().chain(&next).copied().chain([ctx.service_pid]).collect();
                quiesce(&busy).await;
                if let Err(e) = ctx.measure(step, st, &direct).await {
                    fail(st, e);
                }
                last_pids = next;
            }
        }
    }
    if let Some(t) = scraper {
        t.abort();
    }
    let scrapes =
        (scrapes.0.load(std::sync::atomic::Ordering::Relaxed), scrapes.1.load(std::sync::atomic::Ordering::Relaxed));
    let results: Vec<(&'static str, Result<Samples, String>)> = states
        .into_iter()
        .map(|st| {
            (
                st.imp.name,
                match st.failed {
                    Some(e) => Err(e),
                    None => Ok(st.samples),
                },
            )
        })
        .collect();
    drop(svc);
    drop(pinned_svc);

    let report = render(&ctx.opts, &direct, &results, started.elapsed(), &load_start, scrapes);
    println!("{}", report.table);
    std::fs::create_dir_all(&ctx.opts.out_dir)?;
    let md = ctx.opts.out_dir.join("latest.md");
    std::fs::write(&md, &report.markdown)?;
    std::fs::write(ctx.opts.out_dir.join("latest.json"), &report.json)?;
    eprintln!("wrote {} and latest.json", md.display());
    if results.iter().all(|(_, r)| r.is_ok()) {
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    } else {
        Err(err(format!("some implementation failed; configs and logs kept in {}", dir.display())))
    }
}

/// How to judge a ratio (and the numerator's own value) against the issues' targets.
#[derive(Clone, Copy)]
enum Target {
    None,
    AtLeast(f64),
    AtMost(f64),
    /// Ratio at most `.0` and the numerator's own value at most `.1` (unit of the row).
    AtMostAbs(f64, f64),
    /// Only an absolute cap on the numerator's value.
    Abs(f64),
    /// Ratio within 1 ± `.0` (a cost that should not show).
    Within(f64),
}

impl Target {
    fn judge(self, ratio: Option<f64>, value: Option<f64>) -> String {
        let mark = |ok: bool| if ok { "✅" } else { "❌" };
        match (self, ratio, value) {
            (Target::None, _, _) => String::new(),
            (Target::AtLeast(t), Some(r), _) => format!("≥ {t}× {}", mark(r >= t)),
            (Target::AtMost(t), Some(r), _) => format!("≤ {t}× {}", mark(r <= t)),
            (Target::AtMostAbs(t, a), Some(r), Some(o)) => format!("≤ {t}×, ≤ {a} {}", mark(r <= t && o <= a)),
            (Target::Abs(a), _, Some(o)) => format!("≤ {a} {}", mark(o <= a)),
            (Target::Within(t), Some(r), _) => format!("1 ± {t} {}", mark((r - 1.0).abs() <= t)),
            (Target::AtLeast(t), None, _) => format!("≥ {t}× (pending)"),
            (Target::AtMost(t), None, _) => format!("≤ {t}× (pending)"),
            (Target::AtMostAbs(t, a), _, _) => format!("≤ {t}×, ≤ {a} (pending)"),
            (Target::Abs(a), _, None) => format!("≤ {a} (pending)"),
            (Target::Within(t), None, _) => format!("1 ± {t} (pending)"),
        }
    }
}

/// One row of a table: a sample key, its label, and one target per ratio column of the table.
struct Row {
    key: &'static str,
    label: &'static str,
    decimals: usize,
    targets: &'static [Target],
}

/// One table of the report: value columns (result names) and ratio columns (numerator,
/// denominator, header), each ratio followed by its target column.
struct Table {
    title: &'static str,
    cols: &'static [(&'static str, &'static str)],
    ratios: &'static [(&'static str, &'static str, &'static str)],
    rows: &'static [Row],
}

const fn row(key: &'static str, label: &'static str, decimals: usize, targets: &'static [Target]) -> Row {
    Row { key, label, decimals, targets }
}

const N: Target = Target::None;

fn bulk_rows(t: &'static [Target], cpu: &'static [Target]) -> [Row; 5] {
    [
        row("bulk_up_1", "Bulk upload, 1 conn (MB/s)", 0, t),
        row("bulk_up_8", "Bulk upload, 8 conns (MB/s)", 0, t),
        row("bulk_down_1", "Bulk download, 1 conn (MB/s)", 0, t),
        row("bulk_down_8", "Bulk download, 8 conns (MB/s)", 0, t),
        row("cpu_per_gib", "CPU-seconds per GiB (both processes)", 2, cpu),
    ]
}

/// Issue 16's targets (vs V2Ray, then vs rathole), issue 12's (ws+tls), 13's (Shadowsocks, VLESS)
/// and 15's (ops listener on vs off).
fn tables() -> Vec<Table> {
    const REVERSE: &[Row] = &[
        row("bulk_up_1", "Bulk upload, 1 conn (MB/s)", 0, &[Target::AtLeast(3.0), Target::AtLeast(1.0)]),
        row("bulk_up_8", "Bulk upload, 8 conns (MB/s)", 0, &[Target::AtLeast(3.0), Target::AtLeast(1.0)]),
        row("bulk_down_1", "Bulk download, 1 conn (MB/s)", 0, &[Target::AtLeast(3.0), Target::AtLeast(1.0)]),
        row("bulk_down_8", "Bulk download, 8 conns (MB/s)", 0, &[Target::AtLeast(3.0), Target::AtLeast(1.0)]),
        row(
            "cpu_per_gib",
            "Tunnel CPU-seconds per GiB (bridge+portal)",
            2,
            &[Target::AtMost(0.3), Target::AtMost(1.0)],
        ),
        // Unpinned latency is bimodal on a busy 2-core box (even the direct baseline): shown, not judged.
        row("rtt_p50_added", "64 B RTT p50 added by tunnel (µs)", 1, &[N, N]),
        row("rtt_p50", "64 B RTT p50 (µs)", 1, &[N, N]),
        row("rtt_p99", "64 B RTT p99 (µs)", 1, &[N, N]),
        row("rtt1_p50_added", "64 B RTT p50 added, all on CPU 0 (µs)", 1, &[Target::AtMost(0.3), Target::AtMost(1.0)]),
        row("rtt1_p50", "64 B RTT p50, all on CPU 0 (µs)", 1, &[N, N]),
        row("rtt1_p99", "64 B RTT p99, all on CPU 0 (µs)", 1, &[N, N]),
        row("connrate", "Sequential connections/s", 0, &[Target::AtLeast(3.5), Target::AtLeast(1.0)]),
        row("rss_per_conn_kib", "RSS per held idle conn (KiB, 2,000 held)", 1, &[Target::AtMostAbs(0.15, 8.0), N]),
        row("idle_rss_mib", "Idle RSS, bridge+portal (MiB)", 1, &[Target::Abs(8.0), N]),
        row("first_byte_ms", "Start to first byte (ms)", 0, &[N, N]),
    ];
    // Leaked once per run: the tables are built once, at the end.
    let leak = |r: Vec<Row>| -> &'static [Row] { Box::leak(r.into_boxed_slice()) };
    let mut wstls: Vec<Row> = bulk_rows(&[Target::AtLeast(2.0)], &[Target::AtMost(0.5)]).into();
    wstls.push(row("connrate", "Sequential connections/s", 0, &[N]));
    vec![
        Table {
            title: "Reverse tunnel (VMess + Mux over TCP; rathole: plain TCP, no encryption)",
            cols: &[("oxray", "oxray"), ("v2ray", "V2Ray 4.34"), ("rathole", "rathole 0.5")],
            ratios: &[("oxray", "v2ray", "oxray/V2Ray"), ("oxray", "rathole", "oxray/rathole")],
            rows: REVERSE,
        },
        Table {
            title: "Reverse tunnel over WebSocket + TLS (issue 12)",
            cols: &[("oxray_wstls", "oxray"), ("v2ray_wstls", "V2Ray 4.34")],
            ratios: &[("oxray_wstls", "v2ray_wstls", "oxray/V2Ray")],
            rows: leak(wstls),
        },
        Table {
            title: "Shadowsocks aes-128-gcm over TCP, dokodemo-door → server → freedom (issue 13)",
            cols: &[("oxray_ss", "oxray"), ("v2ray_ss", "V2Ray 4.34")],
            ratios: &[("oxray_ss", "v2ray_ss", "oxray/V2Ray")],
            rows: leak(bulk_rows(&[Target::AtLeast(2.0)], &[N]).into()),
        },
        Table {
            title: "VLESS over TCP (no TLS), dokodemo-door → server → freedom (issue 13)",
            cols: &[("oxray_vless", "oxray"), ("v2ray_vless", "V2Ray 4.34")],
            ratios: &[("oxray_vless", "v2ray_vless", "oxray/V2Ray")],
            rows: leak(bulk_rows(&[Target::AtLeast(2.0)], &[N]).into()),
        },
        Table {
            title: "Cost of the ops listener: oxray reverse pair with `--ops` + a scraper of /metrics and /status once a second (issue 15)",
            cols: &[("oxray", "ops off"), ("oxray_ops", "ops on")],
            ratios: &[("oxray_ops", "oxray", "on/off")],
            rows: leak(bulk_rows(&[Target::Within(0.02)], &[Target::Within(0.02)]).into()),
        },
    ]
}

struct Report {
    table: String,
    markdown: String,
    json: String,
}

fn render(
    opts: &Opts,
    direct: &Samples,
    results: &[(&'static str, Result<Samples, String>)],
    took: Duration,
    load_start: &str,
    scrapes: (u64, u64),
) -> Report {
    let get = |name: &str, key: &str| -> Option<f64> {
        results.iter().find(|(n, _)| *n == name).and_then(|(_, r)| r.as_ref().ok()).and_then(|s| median(s.get(key)?))
    };
    let cell = |name: &str, key: &str, d: usize| -> String {
        match results.iter().find(|(n, _)| *n == name) {
            None => "pending".into(),
            Some((_, Err(_))) => "failed".into(),
            Some((_, Ok(_))) => get(name, key).map_or("–".into(), |v| format!("{v:.d$}")),
        }
    };
    let mut table = String::new();
    let mut md_tables = String::new();
    for t in tables() {
        let mut head: Vec<String> = vec!["metric (median)".into()];
        head.extend(t.cols.iter().map(|c| c.1.to_string()));
        for r in t.ratios {
            head.push(r.2.into());
            head.push("target".into());
        }
        let mut rows: Vec<Vec<String>> = Vec::new();
        for row in t.rows {
            let mut cells = vec![row.label.to_string()];
            cells.extend(t.cols.iter().map(|c| cell(c.0, row.key, row.decimals)));
            for (i, (num_k, den_k, _)) in t.ratios.iter().enumerate() {
                let (o, v) = (get(num_k, row.key), get(den_k, row.key));
                let ratio = match (o, v) {
                    (Some(o), Some(v)) if v != 0.0 => Some(o / v),
                    _ => None,
                };
                cells.push(ratio.map_or("–".into(), |r| format!("{r:.2}×")));
                cells.push(row.targets.get(i).copied().unwrap_or(N).judge(ratio, o));
            }
            rows.push(cells);
        }
        let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let pad = |s: &str, n: usize| format!("{s}{}", " ".repeat(n.saturating_sub(s.chars().count())));
        let line =
            |cells: &[String]| cells.iter().enumerate().map(|(i, c)| pad(c, w[i])).collect::<Vec<_>>().join(" | ");
        let _ = writeln!(table, "\n{}\n", t.title);
        let _ = writeln!(table, "{}", line(&head));
        let _ = writeln!(table, "{}", w.iter().map(|&n| "-".repeat(n)).collect::<Vec<_>>().join("-+-"));
        for r in &rows {
            let _ = writeln!(table, "{}", line(r));
        }
        let _ = writeln!(md_tables, "\n**{}**\n", t.title);
        let _ = writeln!(md_tables, "| {} |", head.join(" | "));
        let _ = writeln!(md_tables, "|{}", "---|".repeat(head.len()));
        for r in &rows {
            let _ = writeln!(md_tables, "| {} |", r.join(" | "));
        }
    }
    let dm = |k: &str| median(direct.get(k).map_or(&[][..], |v| v)).unwrap_or(f64::NAN);
    let floor_added = dm("rtt1_floor_p50") - dm("rtt1_p50");
    let vs_floor: Vec<String> = [("oxray", "oxray"), ("v2ray", "V2Ray"), ("rathole", "rathole")]
        .iter()
        .filter_map(|(k, label)| get(k, "rtt1_p50_added").map(|a| format!("{label} {:.2}×", a / floor_added)))
        .collect();
    let floor_ok = get("oxray", "rtt1_p50_added").map(|a| a / floor_added <= 1.15);
    let base = format!(
        "Direct to the service (no tunnel), 64 B RTT: p50 {:.1} µs, p99 {:.1} µs; all on CPU 0: p50 {:.1} µs, p99 {:.1} µs. \
         Direct bulk, 1 conn (the load generator's ceiling): upload {:.0} MB/s, download {:.0} MB/s.\n\n\
         Two plain relays (blocking, a thread per direction, no protocol), all on CPU 0: p50 {:.1} µs, added {:.1} µs: \
         the floor under the pinned rows, whose four process hops a tunnel also crosses (`bench/relay-floor.sh`). \
         Pinned RTT added ÷ this floor: {} (target for oxray ≤ 1.15× {}).\n\n\
         Ops listener scrapes during the run (2 listeners × /metrics + /status, once a second): {} answered 200, {} failed.",
        dm("rtt_p50"),
        dm("rtt_p99"),
        dm("rtt1_p50"),
        dm("rtt1_p99"),
        dm("bulk_up_1"),
        dm("bulk_down_1"),
        dm("rtt1_floor_p50"),
        floor_added,
        if vs_floor.is_empty() { "–".to_string() } else { vs_floor.join(", ") },
        match floor_ok {
            Some(true) => "✅",
            Some(false) => "❌",
            None => "(pending)",
        },
        scrapes.0,
        scrapes.1,
    );
    let _ = writeln!(table, "\n{base}");
    for (n, r) in results {
        if let Err(e) = r {
            let _ = writeln!(table, "{n} FAILED: {}", e.lines().next().unwrap_or(""));
        }
    }

    let machine = machine();
    let mut md = String::new();
    let _ = writeln!(md, "<!-- generated by bench/run.sh; do not edit by hand -->");
    let _ = writeln!(
        md,
        "Run: {}{} repetition(s) per figure, medians; bulk {} MiB per run; {} round trips per latency run; connection rate {} s per run; {} held connections; implementations alternate within each repetition. Took {:.0} s; load average before the run {load_start}.\n",
        if opts.quick { "**quick mode** (smaller, noisier), " } else { "" },
        opts.reps,
        opts.bulk_bytes >> 20,
        opts.ping_count,
        opts.connrate_secs,
        opts.hold_conns,
        took.as_secs_f64()
    );
    let _ = writeln!(md, "Machine: {machine}");
    md.push_str(&md_tables);
    let _ = writeln!(md, "\n{base}");
    for (n, r) in results {
        match r {
            Err(e) => {
                let _ = writeln!(md, "\n**{n} failed:**\n```\n{e}\n```");
            }
            Ok(s) => {
                let _ = writeln!(md, "\n<details><summary>{n}: every sample</summary>\n");
                for (k, v) in s {
                    let vs: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
                    let _ = writeln!(md, "- `{k}`: {}", vs.join(", "));
                }
                let _ = writeln!(md, "\n</details>");
            }
        }
    }
    if !results.iter().any(|(n, _)| *n == "oxray") {
        let _ = writeln!(md, "\n**oxray: pending** (the binary was not available for this run).");
    }

    let mut j = serde_json::Map::new();
    j.insert("machine".into(), Value::String(machine));
    j.insert("reps".into(), opts.reps.into());
    j.insert("bulk_bytes".into(), opts.bulk_bytes.into());
    j.insert("direct".into(), serde_json::to_value(direct).unwrap_or(Value::Null));
    j.insert("ops_scrapes".into(), serde_json::json!({"ok": scrapes.0, "failed": scrapes.1}));
    for (n, r) in results {
        let v = match r {
            Ok(s) => serde_json::to_value(s).unwrap_or(Value::Null),
            Err(e) => Value::String(format!("failed: {e}")),
        };
        j.insert((*n).into(), v);
    }
    Report { table, markdown: md, json: Value::Object(j).to_string() }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {model}, Linux {}, load average at the end {}", kernel.trim(), loadavg())
}

/// The 1, 5 and 15 minute load averages: how busy the shared machine was.
fn loadavg() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
