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
    pub reps: usize,
    pub bulk_bytes: u64,
    pub ping_count: u32,
    pub connrate_secs: f64,
    pub hold_conns: u32,
    pub settle: Duration,
    pub out_dir: PathBuf,
    pub quick: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Oxray,
    V2ray,
}

struct Impl {
    kind: Kind,
    name: &'static str,
    bin: PathBuf,
}

impl Impl {
    /// The command that runs this implementation on `cfg`, started on CPU 0 only when `pinned`.
    fn command(&self, cfg: &Path, pinned: bool) -> Command {
        let mut c = if pinned { on_cpu0(&self.bin) } else { Command::new(&self.bin) };
        match self.kind {
            Kind::Oxray => c.arg("run").arg("-c").arg(cfg),
            Kind::V2ray => c.arg("-config").arg(cfg),
        };
        c
    }
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
fn portal_config(p: &Ports) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "warning"}},
  "reverse": {{"portals": [{{"tag": "portal", "domain": "{DOMAIN}", "internalDomain": "reverse.internal.v2ray.com"}}]}},
  "inbounds": [
    {{"tag": "external", "listen": "127.0.0.1", "port": {ext}, "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1", "port": 80, "network": "tcp"}}}},
    {{"tag": "interconn", "listen": "127.0.0.1", "port": {ic}, "protocol": "vmess",
      "settings": {{"clients": [{{"id": "{UUID}"}}]}}}}
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

fn bridge_config(p: &Ports) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "warning"}},
  "reverse": {{"bridges": [{{"tag": "bridge", "domain": "{DOMAIN}"}}]}},
  "outbounds": [
    {{"tag": "out", "protocol": "freedom", "settings": {{"redirect": "127.0.0.1:{svc}"}}}},
    {{"tag": "interconn", "protocol": "vmess",
      "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {ic}, "users": [{{"id": "{UUID}"}}]}}]}}}}
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
        let bcfg = self.dir.join(format!("{name}-bridge.json"));
        let pcfg = self.dir.join(format!("{name}-portal.json"));
        std::fs::write(&bcfg, bridge_config(ports))?;
        std::fs::write(&pcfg, portal_config(ports))?;
        let t0 = Instant::now();
        let b = Proc::spawn(
            &format!("{name} bridge"),
            imp.command(&bcfg, pinned),
            &self.dir.join(format!("{name}-bridge.log")),
        )?;
        let p = Proc::spawn(
            &format!("{name} portal"),
            imp.command(&pcfg, pinned),
            &self.dir.join(format!("{name}-portal.log")),
        )?;
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

    let mut impls = Vec::new();
    match &opts.oxray {
        Some(b) => impls.push(Impl { kind: Kind::Oxray, name: "oxray", bin: b.clone() }),
        None => eprintln!(
            "\n!!!!!!!! oxray binary not given or missing: measuring V2Ray only; the oxray column will read \"pending\" !!!!!!!!\n"
        ),
    }
    match &opts.v2ray {
        Some(b) => impls.push(Impl { kind: Kind::V2ray, name: "v2ray", bin: b.clone() }),
        None => eprintln!("\n!!!!!!!! v2ray not installed: no reference column, no ratios !!!!!!!!\n"),
    }
    if impls.is_empty() {
        return Err(err("neither oxray nor v2ray available: nothing to measure"));
    }

    let dir = std::env::temp_dir().join(format!("oxray-bench.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // All ports in one pick, so no two roles can draw the same one.
    let all_ports = free_ports(4 + 4 * impls.len())?;
    // The service, the service on CPU 0 (pinned pairs and baselines), the floor's two relays; then
    // four per implementation.
    let [sp, pinned_sp, relay1, relay2] = [all_ports[0], all_ports[1], all_ports[2], all_ports[3]];
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
    let ctx = Ctx { service_pid: svc.pid, opts, dir: dir.clone(), ticks: clk_tck() };

    eprintln!("[direct] baseline round trips straight to the service ({} x 64 B)", ctx.opts.ping_count);
    let mut direct = Samples::new();
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

    let load_start = loadavg();
    if load_start.split_whitespace().next().and_then(|l| l.parse::<f64>().ok()).unwrap_or(0.0) > 0.5 {
        eprintln!(
            "bench: NOTE load average is {load_start} before the run: other work shares these CPUs, expect noise"
        );
    }
    let started = Instant::now();
    let mut states: Vec<State> = Vec::new();
    for (i, imp) in impls.into_iter().enumerate() {
        let ports = Ports { service: sp, external: all_ports[4 + 4 * i], interconn: all_ports[5 + 4 * i] };
        let pinned_ports =
            Ports { service: pinned_sp, external: all_ports[6 + 4 * i], interconn: all_ports[7 + 4 * i] };
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
    for r in 0..reps {
        for st in states.iter_mut().filter(|s| s.failed.is_none()) {
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
    for st in states.iter_mut().filter(|s| s.failed.is_none()) {
        match ctx.start_pair(&st.imp, &st.ports, false).await {
            Ok((b, p, _)) => st.pair = Some((b, p)),
            Err(e) => fail(st, e),
        }
    }
    // Every long-lived process, of both implementations, and the service.
    let busy_pids: Vec<u32> = states
        .iter()
        .filter_map(|s| s.pair.as_ref().map(|(b, p)| [b.pid, p.pid]))
        .flatten()
        .chain([ctx.service_pid])
        .collect();
    let mut steps = vec![
        (Step::Ping, "64 B ping-pong"),
        (Step::PingPinned, "64 B ping-pong on CPU 0"),
        (Step::ConnRate, "connection rate"),
    ];
    for up in [true, false] {
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
            for st in states.iter_mut().filter(|s| s.failed.is_none()) {
                quiesce(&busy_pids).await;
                if let Err(e) = ctx.measure(step, st, &direct).await {
                    fail(st, e);
                }
            }
        }
    }
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

    let report = render(&ctx.opts, &direct, &results, started.elapsed(), &load_start);
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

/// How to judge the oxray/V2Ray ratio of a row against the issue's targets.
enum Target {
    None,
    AtLeast(f64),
    AtMost(f64),
    /// Ratio at most `.0` and oxray's own value at most `.1` (unit of the row).
    AtMostAbs(f64, f64),
    /// Only an absolute cap on oxray's value.
    Abs(f64),
}

struct Row {
    key: &'static str,
    label: &'static str,
    decimals: usize,
    target: Target,
}

const ROWS: &[Row] = &[
    Row { key: "bulk_up_1", label: "Bulk upload, 1 conn (MB/s)", decimals: 0, target: Target::AtLeast(2.0) },
    Row { key: "bulk_up_8", label: "Bulk upload, 8 conns (MB/s)", decimals: 0, target: Target::AtLeast(2.0) },
    Row { key: "bulk_down_1", label: "Bulk download, 1 conn (MB/s)", decimals: 0, target: Target::AtLeast(2.0) },
    Row { key: "bulk_down_8", label: "Bulk download, 8 conns (MB/s)", decimals: 0, target: Target::AtLeast(2.0) },
    Row {
        key: "cpu_per_gib",
        label: "Tunnel CPU-seconds per GiB (bridge+portal)",
        decimals: 2,
        target: Target::AtMost(0.35),
    },
    // Unpinned latency is bimodal on a busy 2-core box (even the direct baseline): shown, not judged.
    Row { key: "rtt_p50_added", label: "64 B RTT p50 added by tunnel (µs)", decimals: 1, target: Target::None },
    Row { key: "rtt_p50", label: "64 B RTT p50 (µs)", decimals: 1, target: Target::None },
    Row { key: "rtt_p99", label: "64 B RTT p99 (µs)", decimals: 1, target: Target::None },
    Row {
        key: "rtt1_p50_added",
        label: "64 B RTT p50 added, all on CPU 0 (µs)",
        decimals: 1,
        target: Target::AtMost(0.3),
    },
    Row { key: "rtt1_p50", label: "64 B RTT p50, all on CPU 0 (µs)", decimals: 1, target: Target::None },
    Row { key: "rtt1_p99", label: "64 B RTT p99, all on CPU 0 (µs)", decimals: 1, target: Target::None },
    Row { key: "connrate", label: "Sequential connections/s", decimals: 0, target: Target::AtLeast(3.0) },
    Row {
        key: "rss_per_conn_kib",
        label: "RSS per held idle conn (KiB, 2,000 held)",
        decimals: 1,
        target: Target::AtMostAbs(0.15, 8.0),
    },
    Row { key: "idle_rss_mib", label: "Idle RSS, bridge+portal (MiB)", decimals: 1, target: Target::Abs(8.0) },
    Row { key: "first_byte_ms", label: "Start to first byte (ms)", decimals: 0, target: Target::None },
];

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
    let mut rows: Vec<[String; 5]> = Vec::new();
    for row in ROWS {
        let (o, v) = (get("oxray", row.key), get("v2ray", row.key));
        let ratio = match (o, v) {
            (Some(o), Some(v)) if v != 0.0 => Some(o / v),
            _ => None,
        };
        let rs = ratio.map_or("–".into(), |r| format!("{r:.2}×"));
        let mark = |ok: bool| if ok { "✅" } else { "❌" };
        let tgt = match (&row.target, ratio, o) {
            (Target::None, _, _) => String::new(),
            (Target::AtLeast(t), Some(r), _) => format!("≥ {t}× {}", mark(r >= *t)),
            (Target::AtMost(t), Some(r), _) => format!("≤ {t}× {}", mark(r <= *t)),
            (Target::AtMostAbs(t, a), Some(r), Some(o)) => format!("≤ {t}×, ≤ {a} {}", mark(r <= *t && o <= *a)),
            (Target::Abs(a), _, Some(o)) => format!("≤ {a} {}", mark(o <= *a)),
            (Target::AtLeast(t), None, _) => format!("≥ {t}× (pending)"),
            (Target::AtMost(t), None, _) => format!("≤ {t}× (pending)"),
            (Target::AtMostAbs(t, a), _, _) => format!("≤ {t}×, ≤ {a} (pending)"),
            (Target::Abs(a), _, None) => format!("≤ {a} (pending)"),
        };
        rows.push([
            row.label.into(),
            cell("oxray", row.key, row.decimals),
            cell("v2ray", row.key, row.decimals),
            rs,
            tgt,
        ]);
    }
    let head = ["metric (median)", "oxray", "V2Ray 4.34", "oxray/V2Ray", "target"];
    let mut w = head.map(|h| h.chars().count());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let pad = |s: &str, n: usize| format!("{s}{}", " ".repeat(n.saturating_sub(s.chars().count())));
    let mut table = String::new();
    let line =
        |cells: &[String; 5]| cells.iter().enumerate().map(|(i, c)| pad(c, w[i])).collect::<Vec<_>>().join(" | ");
    let _ = writeln!(table, "{}", line(&head.map(String::from)));
    let _ = writeln!(table, "{}", w.iter().map(|&n| "-".repeat(n)).collect::<Vec<_>>().join("-+-"));
    for r in &rows {
        let _ = writeln!(table, "{}", line(r));
    }
    let dm = |k: &str| median(direct.get(k).map_or(&[][..], |v| v)).unwrap_or(f64::NAN);
    let base = format!(
        "Direct to the service (no tunnel), 64 B RTT: p50 {:.1} µs, p99 {:.1} µs; all on CPU 0: p50 {:.1} µs, p99 {:.1} µs. \
         Direct bulk, 1 conn (the load generator's ceiling): upload {:.0} MB/s, download {:.0} MB/s.\n\n\
         Two plain relays (blocking, a thread per direction, no protocol), all on CPU 0: p50 {:.1} µs, added {:.1} µs: \
         the floor under the pinned rows, whose four process hops a tunnel also crosses (`bench/relay-floor.sh`).",
        dm("rtt_p50"),
        dm("rtt_p99"),
        dm("rtt1_p50"),
        dm("rtt1_p99"),
        dm("bulk_up_1"),
        dm("bulk_down_1"),
        dm("rtt1_floor_p50"),
        dm("rtt1_floor_p50") - dm("rtt1_p50")
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
    let _ = writeln!(md, "Machine: {machine}\n");
    let _ = writeln!(md, "| {} |", head.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(5));
    for r in &rows {
        let _ = writeln!(md, "| {} |", r.join(" | "));
    }
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
