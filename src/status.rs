//! `oxray status`: reads a running instance's `/status` from its ops listener and prints a tree.
//! `oxray reload`: asks it to reload (`POST /reload`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

const DEFAULT_OPS: &str = "127.0.0.1:9090";
const TIMEOUT: Duration = Duration::from_secs(3);

/// Exit codes: 0 ready, 1 not ready, 2 unreachable or bad answer.
pub fn main(ops: Option<String>, config: &[PathBuf], json: bool, watch: bool, tunnels: bool) -> ExitCode {
    let (addr, token) = match target(ops, config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("oxray status: {e}");
            return ExitCode::from(2);
        }
    };
    loop {
        let code = once(&addr, token.as_deref(), json, tunnels, watch);
        if !watch {
            return code;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn target(ops: Option<String>, config: &[PathBuf]) -> Result<(String, Option<String>), String> {
    let env_token = std::env::var("OXRAY_OPS_TOKEN").ok().filter(|t| !t.is_empty());
    if !config.is_empty() {
        let c = oxray::config::load_files(config).map_err(|e| e.to_string())?;
        let o = c.ops.as_ref();
        let addr = ops.or_else(|| o.map(|o| o.listen.to_string())).unwrap_or_else(|| DEFAULT_OPS.into());
        return Ok((addr, o.and_then(|o| o.token.clone()).or(env_token)));
    }
    Ok((ops.unwrap_or_else(|| DEFAULT_OPS.into()), env_token))
}

fn once(addr: &str, token: Option<&str>, json: bool, tunnels: bool, watch: bool) -> ExitCode {
    let status = match get(addr, "/status", token) {
        Ok((200, body)) => body,
        Ok((code, body)) => {
            eprintln!("oxray status: {addr} answered {code}: {}", body.trim());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("oxray status: cannot reach the ops listener at {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    let ready_path = if tunnels { "/readyz?tunnels=1" } else { "/readyz" };
    let ready = get(addr, ready_path, token);
    let doc: Value = match serde_json::from_str(&status) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("oxray status: {addr}/status is not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{status}");
    } else {
        let mut out = String::new();
        if watch {
            out.push_str("\x1b[H\x1b[2J");
        }
        render(&doc, &mut out);
        match &ready {
            Ok((200, _)) => out.push_str("ready\n"),
            Ok((_, body)) => out.push_str(body),
            Err(e) => out.push_str(&format!("readiness unknown: {e}\n")),
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }
    match ready {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(_) => ExitCode::from(2),
    }
}

/// `oxray reload`. Exit codes: 0 applied, 1 refused (invalid config; the running one is kept), 2 unreachable.
pub fn reload(ops: Option<String>, config: &[PathBuf], pid: Option<i32>) -> ExitCode {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with a pid and a signal number touches no memory.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            eprintln!("oxray reload: cannot signal process {pid}: {}", std::io::Error::last_os_error());
            return ExitCode::from(2);
        }
        println!("sent SIGHUP to process {pid}; its log tells what changed");
        return ExitCode::SUCCESS;
    }
    // An invalid file would be refused by the running instance too: say why here, send nothing.
    let (addr, token) = match target(ops, config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}\noxray reload: the configuration is invalid; nothing was sent");
            return ExitCode::from(1);
        }
    };
    match request("POST", &addr, "/reload", token.as_deref(), RELOAD_TIMEOUT) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((422, body)) => {
            eprint!("{body}");
            ExitCode::from(1)
        }
        Ok((code, body)) => {
            eprintln!("oxray reload: {addr} answered {code}: {}", body.trim());
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("oxray reload: cannot reach the ops listener at {addr}: {e}");
            ExitCode::from(2)
        }
    }
}

/// A reload closes replaced listeners (up to 2 s) and binds new ones; the instance answers within 30 s.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(35);

/// One GET with `Connection: close`; returns the status code and body.
fn get(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    request("GET", addr, path, token, TIMEOUT)
}

/// One request with `Connection: close`; returns the status code and body.
fn request(
    method: &str,
    addr: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let sa: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let mut s = TcpStream::connect_timeout(&sa, TIMEOUT)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let length = if method == "GET" { "" } else { "Content-Length: 0\r\n" };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{length}Connection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

fn bytes(v: &Value) -> String {
    let mut n = v.as_f64().unwrap_or(0.0);
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut i = 0;
    while n >= 1024.0 && i < units.len() - 1 {
        n /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{n:.1} {}", units[i]) }
}

fn age(v: &Value) -> String {
    let s = v.as_f64().unwrap_or(0.0);
    if s < 60.0 {
        format!("{s:.0}s")
    } else if s < 3600.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

fn ago(t: &Value, now: f64) -> String {
    match t.as_f64() {
        Some(t) => format!("{} ago", age(&Value::from((now - t).max(0.0)))),
        None => "never".into(),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// The tree: tag → tunnels → sessions, like the page.
fn render(doc: &Value, out: &mut String) {
    let now = doc["now"].as_f64().unwrap_or(0.0);
    out.push_str(&format!("oxray {} · up {}\n", s(&doc["oxray"]), age(&doc["uptime_s"])));
    for p in doc["problems"].as_array().into_iter().flatten() {
        out.push_str(&format!("!! {}\n", s(p)));
    }
    let tags: Vec<&Value> =
        ["portals", "bridges"].iter().flat_map(|k| doc[*k].as_array().into_iter().flatten()).collect();
    if tags.is_empty() {
        out.push_str("no portal or bridge configured\n");
    }
    for t in tags {
        let hb = ago(&t["last_heartbeat"], now);
        out.push_str(&format!(
            "{} {} [{}] sessions {} ({} in all) ↑{} ↓{} heartbeat {hb}\n",
            s(&t["role"]),
            s(&t["tag"]),
            if t["healthy"].as_bool() == Some(true) { "healthy" } else { "UNHEALTHY" },
            t["sessions_now"],
            t["sessions_total"],
            bytes(&t["uplink"]),
            bytes(&t["downlink"]),
        ));
        let tunnels = t["tunnels"].as_array().cloned().unwrap_or_default();
        if tunnels.is_empty() {
            out.push_str("└─ no tunnel\n");
        }
        for (i, tn) in tunnels.iter().enumerate() {
            let last = i + 1 == tunnels.len();
            let (branch, pad) = if last { ("└─", "   ") } else { ("├─", "│  ") };
            let hb =
                if s(&t["role"]) == "portal" { &tn["last_heartbeat_sent"] } else { &tn["last_heartbeat_received"] };
            let rtt = tn["rtt_ms"].as_f64().map_or_else(|| "-".to_string(), |r| format!("{r:.2} ms"));
            out.push_str(&format!(
                "{branch} tunnel #{} {} {} peer {} age {} sessions {} ({} in all) ↑{} ↓{} heartbeat {} rtt {rtt}\n",
                tn["id"],
                s(&tn["state"]),
                s(&tn["transport"]),
                s(&tn["peer"]),
                age(&tn["age_s"]),
                tn["sessions_now"],
                tn["sessions_total"],
                bytes(&tn["uplink"]),
                bytes(&tn["downlink"]),
                ago(hb, now),
            ));
            let sessions = tn["sessions"].as_array().cloned().unwrap_or_default();
            for (j, se) in sessions.iter().enumerate() {
                let b = if j + 1 == sessions.len() { "└─" } else { "├─" };
                let from = se["source"].as_str().map(|x| format!(" from {x}")).unwrap_or_default();
                out.push_str(&format!(
                    "{pad}{b} session {} → {} via {}{from} age {} ↑{} ↓{} idle {}\n",
                    se["id"],
                    s(&se["target"]),
                    s(&se["inbound"]),
                    age(&se["age_s"]),
                    bytes(&se["uplink"]),
                    bytes(&se["downlink"]),
                    age(&se["idle_s"]),
                ));
            }
        }
    }
}
