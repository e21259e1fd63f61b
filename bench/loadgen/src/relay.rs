//! `relay`: the plainest TCP relay there is, for the latency floor (`bench/relay-floor.sh`).
//!
//! Blocking `std::net` sockets and one thread per direction: each hop is one `recvfrom` and one
//! `sendto`, with no readiness polling in between. No event-driven proxy can do less per message,
//! and a thread per direction is exactly what a proxy holding thousands of connections cannot
//! afford, so this only measures a floor.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

/// Accepts on `listen` and relays each connection to `to` until the process is killed.
pub fn relay(listen: SocketAddr, to: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    for client in listener.incoming() {
        let client = client?;
        let target = TcpStream::connect(to)?;
        client.set_nodelay(true)?;
        target.set_nodelay(true)?;
        let (c2, t2) = (client.try_clone()?, target.try_clone()?);
        thread::spawn(move || pump(client, target));
        thread::spawn(move || pump(t2, c2));
    }
    Ok(())
}

/// Copies `from` to `to` until EOF or an error, then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
