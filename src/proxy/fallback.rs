//! Fallbacks of VLESS (and Trojan): a connection that is not the protocol goes, bytes unchanged, to
//! another server chosen by ALPN and HTTP path (PROXIES.md §2.9), optionally behind a PROXY header.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use crate::config::{FallbackConfig, FallbackDest, LevelPolicy};
use crate::proxy::prefixed::Prefixed;
use crate::proxy::{AsyncStream, BoxStream, relay};
use crate::transport::{Dialer, StreamSettings};

const DIAL_WAITS: [Duration; 4] =
    [Duration::from_millis(100), Duration::from_millis(200), Duration::from_millis(300), Duration::from_millis(400)];

/// The fallback table of one inbound.
pub struct Fallbacks {
    /// Entries of the `""` ALPN group (oxray has no TLS on inbounds yet, so the ALPN is always `""`).
    entries: Vec<FallbackConfig>,
    dialer: Dialer,
}

impl Fallbacks {
    /// Builds the table; later entries with the same (alpn, path) replace earlier ones.
    pub fn new(list: &[FallbackConfig]) -> Option<Fallbacks> {
        if list.is_empty() {
            return None;
        }
        let mut entries: Vec<FallbackConfig> = Vec::new();
        for f in list.iter().filter(|f| f.alpn.is_empty()) {
            entries.retain(|e| e.path != f.path);
            entries.push(f.clone());
        }
        let dialer = Dialer::new(&StreamSettings::default(), None).with_retries(&DIAL_WAITS);
        Some(Fallbacks { entries, dialer })
    }

    /// Picks the entry for the first bytes of a connection (4.34's rules).
    pub fn pick(&self, first: &[u8]) -> Option<&FallbackConfig> {
        let has_default = self.entries.iter().any(|e| e.path.is_empty());
        let path = if self.entries.len() > 1 || !has_default { request_path(first) } else { None };
        if let Some(p) = path
            && let Some(e) = self.entries.iter().find(|e| e.path == p)
        {
            return Some(e);
        }
        self.entries.iter().find(|e| e.path.is_empty())
    }

    /// Sends the connection (with the bytes already read) to the chosen fallback and relays until done.
    pub async fn serve<S: AsyncStream>(
        &self,
        first: Vec<u8>,
        client: S,
        peer: SocketAddr,
        local: SocketAddr,
        policy: &LevelPolicy,
    ) {
        let Some(entry) = self.pick(&first) else {
            info!(%peer, "fallback: no entry matches (no default path)");
            return;
        };
        let upstream: BoxStream = match &entry.dest {
            FallbackDest::Tcp(addr, port) => match self.dialer.dial(addr, *port).await {
                Ok(s) => s,
                Err(e) => {
                    info!(%peer, "fallback: cannot reach {addr}:{port}: {e}");
                    return;
                }
            },
            FallbackDest::Unix(path) => match tokio::net::UnixStream::connect(path).await {
                Ok(s) => Box::new(s),
                Err(e) => {
                    info!(%peer, "fallback: cannot reach {}: {e}", path.display());
                    return;
                }
            },
        };
        let mut upstream = upstream;
        let mut head = proxy_header(entry.xver, peer, local);
        head.extend_from_slice(&first);
        if upstream.write_all(&head).await.is_err() {
            return;
        }
        // Unlike 4.34, half-close is forwarded (the relay shuts down the write side toward `dest`).
        match relay(Prefixed::new(Vec::new(), client), upstream, policy).await {
            Ok(s) => debug!(%peer, up = s.uplink, down = s.downlink, "fallback closed"),
            Err(e) => debug!(%peer, "fallback ended: {e}"),
        }
    }
}

/// The request-target of an HTTP/1 request line in the first 64 bytes, as 4.34 finds it: a `/` at
/// index 4..=8 preceded by a space; not for `PRI *` (HTTP/2) or a CR/LF first.
pub fn request_path(first: &[u8]) -> Option<&str> {
    if first.len() < 18 || first[4] == b'*' {
        return None;
    }
    let window = &first[..first.len().min(64)];
    let start = (4..=8).find(|&i| window.get(i) == Some(&b'/') && window[i - 1] == b' ')?;
    let mut end = start;
    while end < window.len() {
        match window[end] {
            b' ' => return std::str::from_utf8(&window[start..end]).ok(),
            b'\r' | b'\n' => return None,
            _ => end += 1,
        }
    }
    None
}

/// The PROXY protocol header (v1 text or v2 binary) for `xver` 1 or 2; empty for 0.
pub fn proxy_header(xver: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src_ip, dst_ip) = (crate::session::canonical_ip(src.ip()), crate::session::canonical_ip(dst.ip()));
    match xver {
        1 => {
            let fam = if src_ip.is_ipv4() && dst_ip.is_ipv4() { "TCP4" } else { "TCP6" };
            let show = |ip: IpAddr| match (fam, ip) {
                ("TCP6", IpAddr::V4(v4)) => v4.to_ipv6_mapped().to_string(),
                (_, ip) => ip.to_string(),
            };
            format!("PROXY {fam} {} {} {} {}\r\n", show(src_ip), show(dst_ip), src.port(), dst.port()).into_bytes()
        }
        2 => {
            let mut h = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x21".to_vec();
            match (src_ip, dst_ip) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    h.extend_from_slice(&[0x11, 0x00, 0x0c]);
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    };
                    h.extend_from_slice(&[0x21, 0x00, 0x24]);
                    h.extend_from_slice(&v6(s).octets());
                    h.extend_from_slice(&v6(d).octets());
                }
            }
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_as_434_finds_them() {
        assert_eq!(request_path(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), Some("/ws"));
        assert_eq!(request_path(b"OPTIONS /ws HTTP/1.1\r\nHost: x\r\n"), Some("/ws"));
        assert_eq!(request_path(b"PROPFIND /ws HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(request_path(b"GET /ws?ed=2048 HTTP/1.1\r\nHost: x\r\n"), Some("/ws?ed=2048"));
        assert_eq!(request_path(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        assert_eq!(request_path(b"GET /ws"), None);
    }

    #[test]
    fn proxy_headers() {
        let (s, d): (SocketAddr, SocketAddr) = ("127.0.0.1:37916".parse().unwrap(), "127.0.0.1:21021".parse().unwrap());
        assert_eq!(proxy_header(1, s, d), b"PROXY TCP4 127.0.0.1 127.0.0.1 37916 21021\r\n");
        let v2 = proxy_header(2, s, d);
        assert_eq!(&v2[..16], b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x21\x11\x00\x0c");
        assert_eq!(&v2[16..], &[127, 0, 0, 1, 127, 0, 0, 1, 0x94, 0x1c, 0x52, 0x1d]);
        assert!(proxy_header(0, s, d).is_empty());
    }
}
