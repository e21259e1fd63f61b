//! Plain TCP: name resolution, one connect attempt, and the original destination of redirected
//! connections.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream, lookup_host};

use super::sockopt::SocketOpts;
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

/// Deadline of one name lookup. glibc's resolver waits 5 s per server and try; a lookup that takes
/// longer is failing, and the caller's own retries (or the client) do better than waiting on.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves `addr:port` with the system resolver, within [`DNS_TIMEOUT`].
pub async fn resolve(addr: &Address, port: u16, family: Resolve) -> io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = match addr {
        Address::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Address::Domain(d) => match tokio::time::timeout(DNS_TIMEOUT, lookup_host((d.as_ref(), port))).await {
            Ok(found) => found?.collect(),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("looking up {addr} timed out after {DNS_TIMEOUT:?}"),
                ));
            }
        },
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

/// One connect attempt: each resolved address in turn, each under `timeout`.
pub(super) async fn dial_once(
    addr: &Address,
    port: u16,
    bind: Option<IpAddr>,
    family: Resolve,
    opts: &SocketOpts,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let mut last_err = None;
    for sa in resolve(addr, port, family).await? {
        let socket = if sa.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(ip) = bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        opts.before_connect(&socket);
        match tokio::time::timeout(timeout, socket.connect(sa)).await {
            Ok(Ok(s)) => {
                opts.dialed(&s);
                return Ok(s);
            }
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => {
                last_err = Some(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {sa} timed out after {timeout:?}"),
                ))
            }
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no address to dial")))
}

/// SO_ORIGINAL_DST of a redirected (iptables REDIRECT) connection.
#[cfg(target_os = "linux")]
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    sock.original_dst_v4()
        .ok()
        .and_then(|a| a.as_socket())
        .or_else(|| sock.original_dst_v6().ok().and_then(|a| a.as_socket()))
}

/// SO_ORIGINAL_DST is Linux only.
#[cfg(not(target_os = "linux"))]
pub fn original_dst(_stream: &TcpStream) -> Option<SocketAddr> {
    None
}
