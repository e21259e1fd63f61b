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

/// The byte every echo server XORs with, so a test can tell echoed bytes from reflected ones.
pub const XOR: u8 = 0x5a;

/// A free loopback port (bound, then released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
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
    let s = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).ok();
    let (mut r, mut w) = s.into_split();
    let owned = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&owned).await?;
        w.shutdown().await
    });
    let mut got = Vec::with_capacity(data.len());
    r.read_to_end(&mut got).await.map_err(|e| format!("read: {e}"))?;
    writer.await.map_err(|e| e.to_string())?.map_err(|e| format!("write: {e}"))?;
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

/// Blocks until something accepts on `addr` or the deadline passes.
pub fn wait_for_port(addr: SocketAddr, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if StdStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
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
