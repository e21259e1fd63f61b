//! oxray's benchmark load generator and driver. See docs/BENCHMARKS.md.
//!
//! Subcommands (each client one prints one JSON line on success; errors go to stderr, exit 1):
//!   serve     --port P
//!   bulk      --addr A --conns N --bytes B --dir up|down
//!   pingpong  --addr A [--count N] [--size 64] [--warmup W]
//!   connrate  --addr A [--seconds S]
//!   hold      --addr A [--conns 2000] [--max-secs 120]
//!   firstbyte --addr A [--timeout-secs 20]
//!   relay     --addr A --to B   (blocking, a thread per direction; for bench/relay-floor.sh)
//!   drive     [--oxray BIN] [--v2ray BIN] [--rathole BIN] [--ops-fragment JSON] [--reps R] [--quick] [--rig] [--memory] [--out DIR] ...

mod client;
mod drive;
mod proto;
mod relay;
mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `--key value` pairs and bare `--flag`s.
struct Args {
    map: HashMap<String, String>,
}

impl Args {
    fn parse(v: &[String]) -> Result<Args, String> {
        let mut map = HashMap::new();
        let mut i = 0;
        while i < v.len() {
            let k = v[i].strip_prefix("--").ok_or_else(|| format!("unexpected argument {:?}", v[i]))?;
            match v.get(i + 1) {
                Some(val) if !val.starts_with("--") => {
                    map.insert(k.to_string(), val.clone());
                    i += 2;
                }
                _ => {
                    map.insert(k.to_string(), String::new());
                    i += 1;
                }
            }
        }
        Ok(Args { map })
    }

    fn get<T: std::str::FromStr>(&self, k: &str, default: Option<T>) -> Result<T, String> {
        match self.map.get(k) {
            Some(v) => v.parse().map_err(|_| format!("bad value for --{k}: {v:?}")),
            None => default.ok_or_else(|| format!("missing --{k}")),
        }
    }

    fn flag(&self, k: &str) -> bool {
        self.map.contains_key(k)
    }

    fn addr(&self) -> Result<SocketAddr, String> {
        self.loopback("addr")
    }

    /// The address under `--key`, which must be on loopback.
    fn loopback(&self, key: &str) -> Result<SocketAddr, String> {
        let a: SocketAddr = self.get(key, None)?;
        // The benchmark is loopback-only by design: refuse to load anything else.
        if !a.ip().is_loopback() {
            return Err(format!("--{key} must be a loopback address, got {a}"));
        }
        Ok(a)
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        eprintln!("usage: loadgen serve|bulk|pingpong|connrate|hold|firstbyte|relay|drive [--options]");
        return ExitCode::from(2);
    };
    if cmd == "relay" {
        // Plain threads, no runtime: see relay.rs.
        let r =
            Args::parse(&argv[1..]).and_then(|a| relay::relay(a.addr()?, a.loopback("to")?).map_err(|e| e.to_string()));
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen relay: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // One thread per process: load generator, service and tunnel share 2 cores, and a
    // multi-threaded runtime would only add cross-CPU wakeups to the figures.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot build runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cmd, &argv[1..])) {
        Ok(Some(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: &str, rest: &[String]) -> Result<Option<String>, String> {
    let a = Args::parse(rest)?;
    let s = |e: std::io::Error| e.to_string();
    Ok(Some(match cmd {
        "serve" => {
            serve::serve(a.get("port", None)?).await.map_err(s)?;
            return Ok(None);
        }
        "bulk" => {
            let up = match a.get::<String>("dir", None)?.as_str() {
                "up" => true,
                "down" => false,
                d => return Err(format!("--dir must be up or down, got {d:?}")),
            };
            client::bulk(a.addr()?, a.get("conns", Some(1))?, a.get("bytes", None)?, up).await.map_err(s)?
        }
        "pingpong" => client::pingpong(
            a.addr()?,
            a.get("count", Some(10_000))?,
            a.get("size", Some(64))?,
            a.get("warmup", Some(200))?,
        )
        .await
        .map_err(s)?,
        "connrate" => client::connrate(a.addr()?, a.get("seconds", Some(3.0))?).await.map_err(s)?,
        "hold" => {
            client::hold(a.addr()?, a.get("conns", Some(2000))?, a.get("max-secs", Some(120))?).await.map_err(s)?
        }
        "firstbyte" => {
            let t: u64 = a.get("timeout-secs", Some(20))?;
            let secs = client::first_byte(
                a.addr()?,
                Instant::now(),
                Duration::from_millis(5),
                Duration::from_secs(t.min(600)),
            )
            .await
            .map_err(s)?;
            format!("{{\"first_byte_ms\":{:.2}}}", secs * 1e3)
        }
        "drive" => {
            let quick = a.flag("quick");
            let existing = |k: &str| -> Option<PathBuf> {
                a.map.get(k).filter(|p| !p.is_empty()).map(PathBuf::from).filter(|p| p.is_file())
            };
            let opts = drive::Opts {
                oxray: existing("oxray"),
                v2ray: existing("v2ray"),
                rathole: existing("rathole"),
                ops_fragment: existing("ops-fragment"),
                reps: a.get("reps", Some(if quick { 1 } else { 5 }))?,
                bulk_bytes: a.get("bulk-bytes", Some(if quick { 64u64 << 20 } else { 1 << 30 }))?,
                ping_count: a.get("ping-count", Some(if quick { 2_000 } else { 10_000 }))?,
                connrate_secs: a.get("connrate-secs", Some(if quick { 1.0 } else { 3.0 }))?,
                hold_conns: a.get("hold-conns", Some(2000))?,
                settle: Duration::from_millis(a.get("settle-ms", Some(if quick { 500 } else { 1000 }))?),
                out_dir: a.get("out", Some(PathBuf::from("bench/results")))?,
                quick,
                rig: a.flag("rig"),
                setups: a.map.get("setups").map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
                memory: a.flag("memory"),
            };
            if let Some(bad) =
                opts.setups.iter().flatten().find(|s| !["reverse", "wstls", "ss", "vless"].contains(&s.as_str()))
            {
                return Err(format!("--setups: unknown setup {bad:?} (reverse, wstls, ss, vless)"));
            }
            if opts.reps == 0 || opts.reps > 50 || opts.hold_conns == 0 || opts.hold_conns > 50_000 {
                return Err("--reps must be 1..=50 and --hold-conns 1..=50000".into());
            }
            drive::drive(opts).await.map_err(s)?;
            return Ok(None);
        }
        other => return Err(format!("unknown subcommand {other:?}")),
    }))
}
