//! The private service that the bridge's freedom outbound redirects to: echo, verifying sink
//! (upload) and pattern source (download) on one port, selected by the connection's header.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::proto::*;

/// An echo connection idle this long is dropped (held connections sit idle a few seconds).
const ECHO_IDLE: Duration = Duration::from_secs(600);

pub async fn serve(port: u16) -> io::Result<()> {
    let l = TcpListener::bind(("127.0.0.1", port)).await?;
    // The driver waits for this line: the service is ready once it is printed.
    println!("{{\"listening\":{}}}", l.local_addr()?.port());
    loop {
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: report, back off briefly, keep serving.
                eprintln!("serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(e) = handle(s).await {
                eprintln!("serve: {e}");
            }
        });
    }
}

async fn handle(mut s: TcpStream) -> io::Result<()> {
    // Latency rows measure 64-byte messages: never let Nagle hold one back.
    s.set_nodelay(true)?;
    let mut h = [0u8; HEADER_LEN];
    match tokio::time::timeout(ECHO_IDLE, s.read_exact(&mut h)).await {
        Ok(Ok(_)) => {}
        // A poll that connects and gives up (first-byte probing) is normal: stay quiet.
        Ok(Err(_)) | Err(_) => return Ok(()),
    }
    let (mode, n, seed) = parse_header(&h);
    match mode {
        MODE_ECHO => echo(s).await,
        MODE_UPLOAD if n <= MAX_BULK => {
            let (ok, count) = match recv_pattern(&mut s, seed, n).await {
                Ok(c) => (true, c),
                Err(e) => {
                    eprintln!("serve: upload of {n} bytes: {e}");
                    (false, 0)
                }
            };
            let mut r = [0u8; REPLY_LEN];
            r[0] = if ok { 0 } else { 1 };
            r[1..].copy_from_slice(&count.to_be_bytes());
            match tokio::time::timeout(IDLE, s.write_all(&r)).await {
                Ok(res) => res,
                Err(_) => Err(err("upload reply stalled")),
            }
        }
        MODE_DOWNLOAD if n <= MAX_BULK => send_pattern(&mut s, seed, n).await,
        _ => Err(err(format!("bad header: mode {mode:#x}, n {n}"))),
    }
}

async fn echo(mut s: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let k = match tokio::time::timeout(ECHO_IDLE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(Ok(k)) => k,
            // Resets at teardown (held connections, killed tunnels) are expected.
            Ok(Err(_)) => return Ok(()),
        };
        if s.write_all(&buf[..k]).await.is_err() {
            return Ok(());
        }
    }
}
