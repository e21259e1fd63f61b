//! Client-side measurements. Each returns its result as one flat JSON object (printed as one
//! line by `main`), or an error that says what failed; nothing here panics on peer data.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::proto::*;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r.map_err(|e| err(format!("connect {addr}: {e}")))?,
        Err(_) => return Err(err(format!("connect {addr}: timed out"))),
    };
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connect, send an echo header and `payload`, read the echo back and verify it.
pub async fn echo_roundtrip(addr: SocketAddr, payload: &[u8]) -> io::Result<TcpStream> {
    let mut s = connect(addr).await?;
    let mut msg = header(MODE_ECHO, 0, 0).to_vec();
    msg.extend_from_slice(payload);
    write_t(&mut s, &msg, "echo request").await?;
    let mut back = vec![0u8; payload.len()];
    read_exact_t(&mut s, &mut back, "echo reply").await?;
    if back != payload {
        return Err(err("echo reply differs from the request"));
    }
    Ok(s)
}

async fn write_t(s: &mut TcpStream, b: &[u8], what: &str) -> io::Result<()> {
    match tokio::time::timeout(IDLE, s.write_all(b)).await {
        Ok(r) => r.map_err(|e| err(format!("{what}: {e}"))),
        Err(_) => Err(err(format!("{what}: stalled"))),
    }
}

/// Bulk transfer over `conns` parallel connections, `bytes` in total, every byte verified.
pub async fn bulk(addr: SocketAddr, conns: u32, bytes: u64, up: bool) -> io::Result<String> {
    if conns == 0 || conns > 1024 || bytes == 0 || bytes > MAX_BULK {
        return Err(err("bulk: need 1..=1024 conns and 1..=64 GiB"));
    }
    let per = bytes / conns as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        // Different seeds per connection: a byte delivered to the wrong Mux session fails.
        let seed = i.wrapping_mul(7919).wrapping_add(1);
        let n = if i == conns - 1 { bytes - per * (conns as u64 - 1) } else { per };
        tasks.push(tokio::spawn(async move {
            let mut s = connect(addr).await?;
            if up {
                write_t(&mut s, &header(MODE_UPLOAD, n, seed), "upload header").await?;
                send_pattern(&mut s, seed, n).await?;
                let mut r = [0u8; REPLY_LEN];
                read_exact_t(&mut s, &mut r, "upload reply").await?;
                let mut c = [0u8; 8];
                c.copy_from_slice(&r[1..]);
                let count = u64::from_be_bytes(c);
                if r[0] != 0 || count != n {
                    return Err(err(format!("service saw a bad upload: status {}, {count} of {n} bytes", r[0])));
                }
                Ok(n)
            } else {
                write_t(&mut s, &header(MODE_DOWNLOAD, n, seed), "download header").await?;
                recv_pattern(&mut s, seed, n).await
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| err(format!("bulk task: {e}")))??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"bytes\":{total},\"secs\":{secs:.6},\"mb_per_s\":{:.3},\"verified\":true}}",
        total as f64 / secs / 1e6
    ))
}

/// `count` round trips of `size` bytes on one connection (after `warmup` unrecorded ones).
pub async fn pingpong(addr: SocketAddr, count: u32, size: usize, warmup: u32) -> io::Result<String> {
    if count == 0 || count > 10_000_000 || size == 0 || size > 65_536 {
        return Err(err("pingpong: need 1..=10M round trips of 1..=65536 bytes"));
    }
    let mut s = connect(addr).await?;
    write_t(&mut s, &header(MODE_ECHO, 0, 0), "echo header").await?;
    let msg = &pattern()[..size];
    let mut back = vec![0u8; size];
    let mut us = Vec::with_capacity(count as usize);
    for i in 0..(warmup + count) {
        let t = Instant::now();
        write_t(&mut s, msg, "ping").await?;
        read_exact_t(&mut s, &mut back, "pong").await?;
        let dt = t.elapsed();
        if back != msg {
            return Err(err(format!("pong {i} differs from ping")));
        }
        if i >= warmup {
            us.push(dt.as_secs_f64() * 1e6);
        }
    }
    us.sort_by(f64::total_cmp);
    let pct = |p: usize| us[(us.len() * p / 100).min(us.len() - 1)];
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    Ok(format!(
        "{{\"count\":{count},\"size\":{size},\"p50_us\":{:.2},\"p99_us\":{:.2},\"mean_us\":{mean:.2},\"max_us\":{:.2}}}",
        pct(50),
        pct(99),
        us[us.len() - 1]
    ))
}

/// Sequential connections for `secs`: connect, one 1-byte round trip, close.
pub async fn connrate(addr: SocketAddr, secs: f64) -> io::Result<String> {
    if !(0.1..=600.0).contains(&secs) {
        return Err(err("connrate: need 0.1..=600 seconds"));
    }
    let dur = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut last_err = String::new();
    while start.elapsed() < dur {
        match echo_roundtrip(addr, b"x").await {
            Ok(s) => {
                drop(s);
                ok += 1;
            }
            Err(e) => {
                failed += 1;
                last_err = e.to_string();
                // Many failures mean the tunnel is broken: stop and say so, do not spin.
                if failed > 100 && failed * 20 > ok {
                    return Err(err(format!("connrate: {failed} failures ({ok} ok), last: {last_err}")));
                }
            }
        }
    }
    let el = start.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"ok\":{ok},\"failed\":{failed},\"secs\":{el:.4},\"conns_per_s\":{:.1},\"last_error\":{}}}",
        ok as f64 / el,
        serde_json::Value::String(last_err)
    ))
}

/// Opens `conns` connections (each does one round trip), prints a ready line, holds them until
/// stdin closes or `max_secs` pass, then checks each still echoes and reports how many did.
pub async fn hold(addr: SocketAddr, conns: u32, max_secs: u64) -> io::Result<String> {
    if conns == 0 || conns > 50_000 {
        return Err(err("hold: need 1..=50000 connections"));
    }
    let start = Instant::now();
    // Bounded concurrency while opening: a burst of 2,000 SYNs would measure the accept
    // backlog, not the tunnel's per-connection cost.
    let sem = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::with_capacity(conns as usize);
    for _ in 0..conns {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.map_err(|e| err(e.to_string()))?;
            echo_roundtrip(addr, b"h").await
        }));
    }
    let mut held = Vec::with_capacity(conns as usize);
    for t in tasks {
        held.push(t.await.map_err(|e| err(format!("hold task: {e}")))??);
    }
    let open_secs = start.elapsed().as_secs_f64();
    println!("{{\"ready\":{conns},\"open_secs\":{open_secs:.4}}}");
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    // Either EOF/line on stdin (the driver is done measuring) or the deadline releases them.
    let _ = tokio::time::timeout(Duration::from_secs(max_secs), stdin.read_line(&mut line)).await;
    let mut alive = 0u32;
    for mut s in held {
        let ok = async {
            write_t(&mut s, b"a", "held ping").await?;
            let mut b = [0u8; 1];
            read_exact_t(&mut s, &mut b, "held pong").await?;
            Ok::<bool, io::Error>(b[0] == b'a')
        }
        .await;
        if let Ok(true) = ok {
            alive += 1;
        }
    }
    Ok(format!("{{\"held\":{conns},\"alive_after\":{alive},\"open_secs\":{open_secs:.4}}}"))
}

/// Polls with 1-byte round trips every `interval` until one succeeds; returns seconds elapsed
/// since `since`, or an error after `deadline`.
pub async fn first_byte(addr: SocketAddr, since: Instant, interval: Duration, deadline: Duration) -> io::Result<f64> {
    let mut last = String::from("never tried");
    while since.elapsed() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), echo_roundtrip(addr, b"f")).await {
            Ok(Ok(_)) => return Ok(since.elapsed().as_secs_f64()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "round trip timed out".into(),
        }
        tokio::time::sleep(interval).await;
    }
    Err(err(format!("no round trip through {addr} within {deadline:?} (last: {last})")))
}
