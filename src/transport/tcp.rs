//! TCP dialing and socket options shared by every outbound.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream, lookup_host};
use tracing::debug;

use crate::session::Address;

/// How a domain is resolved before dialing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolve {
    /// Any address family, first that connects.
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// Resolves `addr:port` with the system resolver.
pub async fn resolve(addr: &Address, port: u16, family: Resolve) -> io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = match addr {
        Address::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Address::Domain(d) => lookup_host((d.as_ref(), port)).await?.collect(),
    };
    let picked: Vec<SocketAddr> = all
        .into_iter()
        .filter(|a| match family {
            Resolve::Any => true,
            Resolve::V4 => a.is_ipv4(),
            Resolve::V6 => a.is_ipv6(),
        })
        .collect();
    if picked.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no usable address for {addr}")));
    }
    Ok(picked)
}

/// Applies the options every oxray TCP socket gets: no Nagle delay (Mux and VMess do their own batching).
pub fn tune(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!("set_nodelay failed: {e}");
    }
}

/// Connects to `addr:port`, optionally from `bind`, trying each resolved address once per attempt.
/// `retry_waits` are the pauses before the 2nd, 3rd... attempt (empty = one attempt).
pub async fn dial(
    addr: &Address,
    port: u16,
    bind: Option<IpAddr>,
    family: Resolve,
    retry_waits: &[Duration],
) -> io::Result<TcpStream> {
    let mut last_err = None;
    for attempt in 0..=retry_waits.len() {
        if attempt > 0 {
            tokio::time::sleep(retry_waits[attempt - 1]).await;
        }
        match dial_once(addr, port, bind, family).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                debug!(%addr, port, attempt, "dial failed: {e}");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("dial failed")))
}

async fn dial_once(addr: &Address, port: u16, bind: Option<IpAddr>, family: Resolve) -> io::Result<TcpStream> {
    let mut last_err = None;
    for sa in resolve(addr, port, family).await? {
        let socket = if sa.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(ip) = bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        match socket.connect(sa).await {
            Ok(s) => {
                tune(&s);
                return Ok(s);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no address to dial")))
}
