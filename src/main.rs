//! The `oxray` command line: run, test, lint, route, status, reload, demo, version, uuid.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod startup_text;
mod status;

/// Grace period for live connections after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(name = "oxray", version, about = "A V2Ray-compatible proxy core, built around the reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run with one or more config files (later files override earlier ones).
    Run {
        /// Config file (repeatable). V2Ray's `-config FILE` is accepted too.
        #[arg(short = 'c', long = "config", required = true)]
        config: Vec<PathBuf>,
        /// Serve /status, /metrics, /livez, /readyz and the live page on this loopback address
        /// (overrides the config's `ops.listen`; the token comes from `ops.token` or $OXRAY_OPS_TOKEN).
        #[arg(long = "ops", value_name = "HOST:PORT")]
        ops: Option<String>,
        /// Error-log layout: `v2ray` (default) or `json` (one object per line).
        #[arg(long = "log-format", value_name = "FORMAT", default_value = "v2ray")]
        log_format: LogFormat,
    },
    /// Show a running instance's portals, bridges, tunnels and sessions (from its ops listener).
    /// Exits 0 when it is ready, 1 when not ready, 2 when it cannot be reached.
    Status {
        /// The ops listener (default: `ops.listen` of --config, else 127.0.0.1:9090).
        #[arg(long = "ops", value_name = "HOST:PORT")]
        ops: Option<String>,
        /// Read the ops address and token from this config file.
        #[arg(short = 'c', long = "config")]
        config: Vec<PathBuf>,
        /// Print the raw /status JSON.
        #[arg(long)]
        json: bool,
        /// Redraw every second until interrupted.
        #[arg(long)]
        watch: bool,
        /// Also require each portal to have a tunnel to count as ready.
        #[arg(long)]
        tunnels: bool,
    },
    /// Make a running instance re-read its config files: `POST /reload` on its ops listener, which
    /// answers what changed or every error (or, with --pid, SIGHUP to that process, answer in its log).
    /// Exits 0 when applied, 1 when refused (the running config is kept), 2 when it cannot be reached.
    Reload {
        /// The ops listener (default: `ops.listen` of --config, else 127.0.0.1:9090).
        #[arg(long = "ops", value_name = "HOST:PORT")]
        ops: Option<String>,
        /// Read the ops address and token from this config file (it is checked first, too).
        #[arg(short = 'c', long = "config")]
        config: Vec<PathBuf>,
        /// Send SIGHUP to this process instead (no ops listener needed; the outcome is in its log).
        #[arg(long, value_name = "PID", conflicts_with = "ops")]
        pid: Option<i32>,
    },
    /// Validate config files: prints "Configuration OK." or every error found.
    Test {
        /// Config file (repeatable).
        #[arg(short = 'c', long = "config", required = true)]
        config: Vec<PathBuf>,
        /// Treat warnings (keys V2Ray ignores, dangling tags, reverse-proxy mistakes) as errors.
        #[arg(long)]
        strict: bool,
    },
    /// `test --strict`, for CI: every warning is an error.
    Lint {
        /// Config file (repeatable).
        #[arg(short = 'c', long = "config", required = true)]
        config: Vec<PathBuf>,
    },
    /// Show how one connection is routed: every rule tried, why it did not match, the outbound taken.
    Route {
        /// Config file (repeatable).
        #[arg(short = 'c', long = "config", required = true)]
        config: Vec<PathBuf>,
        /// The inbound (or bridge) tag the connection comes from.
        #[arg(long)]
        inbound: Option<String>,
        /// What a domain target resolves to, for IPOnDemand/IPIfNonMatch (repeatable; nothing is resolved).
        #[arg(long = "ip")]
        ip: Vec<std::net::IpAddr>,
        /// The target, as V2Ray logs it: tcp:HOST:PORT (or udp:…).
        target: String,
    },
    /// Run a portal, a bridge and a small web service in one process and print the URL to open.
    Demo {
        /// Make one request through the tunnel and exit (0 on success).
        #[arg(long)]
        check: bool,
    },
    /// Print the version.
    Version,
    /// Print a new random UUID (for VMess ids).
    Uuid,
}

/// Accepts V2Ray 4's spelling: `oxray -config f.json`, `oxray -test -config f.json`, `oxray -version`.
fn normalize_args(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut iter = args.into_iter();
    if let Some(bin) = iter.next() {
        out.push(bin);
    }
    let rest: Vec<String> = iter
        .map(|a| match a.as_str() {
            "-config" => "-c".to_string(),
            "-test" => "--test-flag".to_string(),
            "-version" => "version".to_string(),
            _ => a,
        })
        .collect();
    let known = [
        "run",
        "test",
        "lint",
        "route",
        "status",
        "reload",
        "demo",
        "version",
        "uuid",
        "help",
        "-h",
        "--help",
        "-V",
        "--version",
    ];
    let first = rest.first().map(String::as_str).unwrap_or("");
    if rest.iter().any(|a| a == "--test-flag") {
        out.push("test".into());
        out.extend(rest.into_iter().filter(|a| a != "--test-flag"));
    } else if !known.contains(&first) && rest.iter().any(|a| a == "-c" || a == "--config") {
        out.push("run".into());
        out.extend(rest);
    } else {
        out.extend(rest);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args().collect()));
    match cli.command {
        Command::Version => {
            println!("oxray {} (V2Ray 4.34 compatible)", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Uuid => {
            println!("{}", uuid::Uuid::new_v4());
            ExitCode::SUCCESS
        }
        Command::Test { config, strict } => test(&config, strict),
        Command::Lint { config } => test(&config, true),
        Command::Route { config, inbound, ip, target } => {
            let report = oxray::lint::parse_destination(&target).and_then(|dest| {
                let c = oxray::config::load_files(&config).map_err(|e| e.to_string())?;
                oxray::lint::route_report(&c, inbound.as_deref(), dest, (!ip.is_empty()).then_some(&ip[..]))
            });
            match report {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(23)
                }
            }
        }
        Command::Demo { check } => match demo(check) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oxray demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, ops, log_format } => match run(config, ops, log_format) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("oxray: {e:#}");
                ExitCode::from(23)
            }
        },
        Command::Status { ops, config, json, watch, tunnels } => status::main(ops, &config, json, watch, tunnels),
        Command::Reload { ops, config, pid } => status::reload(ops, &config, pid),
    }
}

/// `oxray test`: errors exit 23; warnings are printed and, under `--strict`, fail too.
fn test(files: &[PathBuf], strict: bool) -> ExitCode {
    let config = match oxray::config::load_files(files) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(23);
        }
    };
    let label = if strict { "error" } else { "warning" };
    for w in &config.warnings {
        eprintln!("{label}: {w}");
    }
    if let Err(e) = oxray::instance::Instance::new(&config) {
        eprintln!("{e}");
        return ExitCode::from(23);
    }
    if strict && !config.warnings.is_empty() {
        eprintln!("{} warning(s) treated as errors (--strict)", config.warnings.len());
        return ExitCode::from(23);
    }
    println!("Configuration OK.");
    ExitCode::SUCCESS
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// V2Ray's layout.
    V2ray,
    /// One JSON object per line.
    Json,
}

fn run(files: Vec<PathBuf>, ops: Option<String>, log_format: LogFormat) -> anyhow::Result<()> {
    let notifier = oxray::ops::systemd::Notifier::from_env();
    let (mut config, fingerprint) =
        oxray::config::load_files_fingerprinted(&files).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(addr) = ops {
        let listen = oxray::ops::parse_listen(&addr, false).map_err(|e| anyhow::anyhow!("--ops: {e}"))?;
        let token = config.ops.as_ref().and_then(|o| o.token.clone());
        config.ops = Some(oxray::config::OpsConfig { listen, token, allow_remote: false });
    }
    if let Some(o) = config.ops.as_mut()
        && o.token.is_none()
    {
        o.token = std::env::var("OXRAY_OPS_TOKEN").ok().filter(|t| !t.is_empty());
    }
    let log = oxray::log::init_with(&config.log, matches!(log_format, LogFormat::Json)).context("opening log files")?;
    for w in &config.warnings {
        tracing::warn!("config: {w}");
    }
    raise_fd_limit();
    let runtime = build_runtime().context("starting the runtime")?;
    runtime.block_on(async move {
        let instance = oxray::instance::Instance::with_access_log(&config, log.access())?.with_fingerprint(fingerprint);
        // Before the listeners bind: from then on a test, a script or a service manager may signal us,
        // and the default action of TERM, INT and HUP is to die without a clean shutdown.
        let signals = Signals::new()?;
        let mut running = instance.start().await?;
        tokio::spawn(trim_heap());
        tracing::warn!("oxray {} started", env!("CARGO_PKG_VERSION"));
        let listeners = running.local_addrs().len();
        // Start-up code is not run again until a reload: its pages need not stay resident.
        let startup_text_kib = startup_text::startup_done() / 1024;
        tracing::info!(
            listeners,
            startup_text_kib,
            portals = config.reverse.portals.len(),
            bridges = config.reverse.bridges.len(),
            "ready"
        );
        notifier
            .notify(&format!("READY=1\nMAINPID={}\nSTATUS=listening on {listeners} address(es)", std::process::id()));
        if let Some(every) = oxray::ops::systemd::Notifier::watchdog_interval()
            && notifier.enabled()
        {
            // Pinged from the runtime itself: a stuck runtime stops the pings and systemd restarts us.
            let n = oxray::ops::systemd::Notifier::from_env();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every / 2);
                loop {
                    tick.tick().await;
                    n.notify("WATCHDOG=1");
                }
            });
        }
        if notifier.enabled() {
            let n = oxray::ops::systemd::Notifier::from_env();
            let source = running.live_source();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tick.tick().await;
                    n.notify(&format!("STATUS={}", status_line(&source.snapshot())));
                }
            });
        }
        wait_for_signal_reporting(&mut running, &files, &notifier, signals).await?;
        tracing::warn!("shutting down");
        notifier.notify("STOPPING=1\nSTATUS=shutting down");
        running.shutdown(SHUTDOWN_GRACE).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// One line for systemd's STATUS=: tunnels and sessions per tag, or what is wrong.
fn status_line(s: &oxray::ops::Snapshot) -> String {
    let mut parts: Vec<String> = s
        .portals
        .iter()
        .chain(&s.bridges)
        .map(|t| {
            let sessions: usize = t.tunnels.iter().map(|x| x.sessions.len()).sum();
            format!("{} {}: {} tunnel(s), {sessions} session(s)", t.role.as_str(), t.tag, t.tunnels.len())
        })
        .collect();
    parts.extend(s.not_ready(false));
    if parts.is_empty() {
        parts.push(format!("{} listener(s)", s.listeners.len()));
    }
    parts.join("; ")
}

/// Raises the soft limit on open files to the hard one, as Go programs (V2Ray included) do at start:
/// under systemd's default soft limit of 1024, a few hundred connections would lock a bridge out.
fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit read and write only the struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            tracing::debug!("RLIMIT_NOFILE: cannot read it: {}", std::io::Error::last_os_error());
            return;
        }
        let before = lim.rlim_cur;
        if before >= lim.rlim_max {
            tracing::debug!("RLIMIT_NOFILE: {before} (already the hard limit)");
            return;
        }
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            tracing::debug!("RLIMIT_NOFILE: raised from {before} to {}", lim.rlim_cur);
        } else {
            tracing::debug!("RLIMIT_NOFILE: cannot raise {before}: {}", std::io::Error::last_os_error());
        }
    }
}

/// The runtime for `run`: one thread on machines with ≤ 2 CPUs, else one worker per CPU.
/// `OXRAY_THREADS=N` overrides (1 = single-threaded).
///
/// On 2 CPUs shared with the services being proxied, a single-threaded runtime measured 15% more
/// throughput, 17% less CPU per GiB and 19% more connections/s than two workers (docs/BENCHMARKS.md):
/// every hop of a tunnelled flow (socket → relay → Mux writer → VMess) is a task wake-up, and across
/// threads each one costs an eventfd write, a futex and a context switch.
fn build_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = std::env::var("OXRAY_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(if cpus <= 2 { 1 } else { cpus });
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
}

/// Once a second, hands heap pages freed since the last tick back to the kernel (glibc keeps them
/// resident otherwise: ~0.5 MiB per process after a burst of traffic, measured in the idle-RSS
/// benchmark). Costs a few microseconds per tick; pages reused later fault in again.
///
/// Because this tick returns memory, glibc's own trimming is turned down: by default it gave the top of
/// the heap back whenever 128 KiB+ were free and took it again for the next 64 KiB buffer (one `brk`
/// pair and ~30 page faults per 1.4 MB relayed). Fixed thresholds (which also stop glibc from moving
/// its mmap threshold) keep relay and Mux buffers on the heap between ticks: −8 % CPU per GiB.
async fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            safe fn malloc_trim(pad: usize) -> std::ffi::c_int;
            safe fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // Buffers up to 1 MiB come from the heap; up to 4 MiB free at its top stay until the next tick.
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
        mallopt(M_TRIM_THRESHOLD, 4 << 20);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The relay's pool is per thread: this reaches the one runtime thread of ≤ 2 CPUs (the
            // default) and, with more threads, the worker that runs this task.
            oxray::proxy::release_idle_buffers();
            malloc_trim(0);
        }
    }
}

fn demo(check: bool) -> anyhow::Result<()> {
    let _log = oxray::log::init(&oxray::config::LogConfig::default()).context("logging")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let mut signals = Signals::new()?;
        let demo = oxray::demo::Demo::start().await?;
        println!("oxray demo: a portal, a bridge and a web service, all on 127.0.0.1.\n");
        println!("--- portal.json (public host) ---\n{}", demo.portal_config);
        println!("--- bridge.json (private host) ---\n{}", demo.bridge_config);
        let result = demo.check(Duration::from_secs(10)).await;
        match (&result, check) {
            (Ok(body), true) => {
                let text = body.split("\r\n\r\n").nth(1).unwrap_or(body).trim_end();
                println!("check OK: {} answered through the tunnel: {text}", demo.url);
            }
            (Ok(_), false) => {
                println!("The service behind the bridge answers at {}", demo.url);
                println!("Try: curl {}    (Ctrl-C to stop)", demo.url);
                signals.stop().await;
            }
            (Err(_), _) => {}
        }
        demo.stop().await;
        result.map(|_| ()).map_err(anyhow::Error::from)
    })
}

/// Waits for SIGINT/SIGTERM; on SIGUSR1 logs the reverse proxy's tunnels (at warning, so the default
/// log level shows it): operators can see whether a bridge is connected without restarting anything.
/// SIGHUP, and `POST /reload` on the ops listener (`oxray reload`), reload the config files.
async fn wait_for_signal_reporting(
    running: &mut oxray::instance::Running,
    files: &[PathBuf],
    notifier: &oxray::ops::systemd::Notifier,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let mut asks = running.take_reload_requests();
    loop {
        tokio::select! {
            _ = signals.int.recv() => return Ok(()),
            _ = signals.term.recv() => return Ok(()),
            _ = signals.hup.recv() => {
                tracing::warn!("SIGHUP: reloading the configuration");
                reload(running, files, notifier).await;
                startup_text::release();
            }
            Some(reply) = async { match asks.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                tracing::warn!("reload requested on the ops listener");
                let answer = reload(running, files, notifier).await;
                startup_text::release();
                let _ = reply.send(answer);
            }
            _ = signals.usr1.recv() => {
                let (portals, bridges) = running.reverse_status();
                if portals.is_empty() && bridges.is_empty() {
                    tracing::warn!("status: no portal or bridge configured");
                }
                for p in portals {
                    let t: Vec<String> = p.tunnels.iter().map(tunnel_text).collect();
                    tracing::warn!("status: portal {}: {} tunnel(s) [{}]", p.tag, t.len(), t.join(", "));
                }
                for b in bridges {
                    let t: Vec<String> = b.tunnels.iter().map(tunnel_text).collect();
                    tracing::warn!("status: bridge {}: {} tunnel(s) [{}]", b.tag, t.len(), t.join(", "));
                }
            }
        }
    }
}

/// Re-reads the config files and applies them; an invalid config changes nothing. Tells systemd
/// RELOADING=1 first and READY=1 after, with the outcome as STATUS=.
async fn reload(
    running: &mut oxray::instance::Running,
    files: &[PathBuf],
    notifier: &oxray::ops::systemd::Notifier,
) -> oxray::ops::ReloadAnswer {
    notifier.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration", monotonic_usec()));
    let answer = match oxray::config::load_files_fingerprinted(files) {
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("reload: {e}");
            }
            tracing::error!(
                "reload: {} error(s) in the configuration; the running configuration is kept",
                errors.0.len()
            );
            let text = format!("{errors}\n{} error(s); the running configuration is kept", errors.0.len());
            oxray::ops::ReloadAnswer { applied: false, text }
        }
        Ok((config, fingerprint)) => {
            for w in &config.warnings {
                tracing::warn!("config: {w}");
            }
            match running.reload(&config, fingerprint).await {
                Ok(report) => {
                    for (kind, tag, change) in &report.changes {
                        tracing::info!(kind, tag = tag.as_str(), "reload: {kind} {tag}: {}", change.as_str());
                    }
                    tracing::warn!("reload: {report}");
                    oxray::ops::ReloadAnswer { applied: true, text: format!("reloaded: {report}") }
                }
                Err(e) => {
                    tracing::error!("reload: {e}");
                    tracing::error!("reload: the running configuration is kept");
                    oxray::ops::ReloadAnswer { applied: false, text: format!("{e}\nthe running configuration is kept") }
                }
            }
        }
    };
    let status = if answer.applied { "reloaded".to_string() } else { "reload failed; old configuration kept".into() };
    notifier.notify(&format!("READY=1\nSTATUS={status}: {}", status_line(&running.live_source().snapshot())));
    answer
}

/// CLOCK_MONOTONIC in microseconds, which systemd wants with RELOADING=1.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only the struct passed.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

fn tunnel_text(t: &oxray::reverse::status::TunnelStatus) -> String {
    format!(
        "#{}: {} active session(s){}{}",
        t.id,
        t.active_sessions,
        if t.total_sessions > 0 { format!(", {} in all", t.total_sessions) } else { String::new() },
        if t.draining { ", draining" } else { "" }
    )
}

/// The signals oxray acts on, registered in one place before anything is bound.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// SIGINT or SIGTERM.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_args;

    fn n(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn v2ray_style_arguments() {
        assert_eq!(n(&["oxray", "-config", "a.json"]), ["oxray", "run", "-c", "a.json"]);
        assert_eq!(n(&["oxray", "-test", "-config", "a.json"]), ["oxray", "test", "-c", "a.json"]);
        assert_eq!(
            n(&["oxray", "run", "-c", "a.json", "-c", "b.json"]),
            ["oxray", "run", "-c", "a.json", "-c", "b.json"]
        );
        assert_eq!(n(&["oxray", "-version"]), ["oxray", "version"]);
    }
}
