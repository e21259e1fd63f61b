//! PROXY protocol v1 and v2 headers in front of accepted connections (`tcpSettings` /
//! `wsSettings.acceptProxyProtocol`), required as 4.34's go-proxyproto REQUIRE mode does: a
//! connection without one fails.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIG: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PROXY protocol: {0}")]
pub struct ProxyError(pub &'static str);

/// Parses a header at the start of `buf`: Ok(None) when more bytes are needed; otherwise the source
/// it announces (None for LOCAL/UNKNOWN and non-TCP families) and the header's length.
pub fn parse(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyError> {
    let n = buf.len().min(12);
    if buf[..n] == V2_SIG[..n] {
        return parse_v2(buf);
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return parse_v1(buf);
    }
    Err(ProxyError("no PROXY protocol header"))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyError> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX { Err(ProxyError("v1 header too long")) } else { Ok(None) };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ProxyError("v1 header is not text"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let src = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip: IpAddr = src.parse().map_err(|_| ProxyError("bad v1 source address"))?;
            let _: IpAddr = dst.parse().map_err(|_| ProxyError("bad v1 destination address"))?;
            let port: u16 = sport.parse().map_err(|_| ProxyError("bad v1 source port"))?;
            let _: u16 = dport.parse().map_err(|_| ProxyError("bad v1 destination port"))?;
            if (*fam == "TCP4") != ip.is_ipv4() {
                return Err(ProxyError("v1 address family mismatch"));
            }
            Some(SocketAddr::new(ip, port))
        }
        _ => return Err(ProxyError("malformed v1 header")),
    };
    Ok(Some((src, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError("unsupported v2 version"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let a = &buf[16..16 + len];
    let src = match (ver_cmd & 0x0f, fam) {
        (0, _) => None,
        (1, 0x11) if len >= 12 => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        (1, 0x21) if len >= 36 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(Ipv6Addr::from(o).into(), u16::from_be_bytes([a[32], a[33]])))
        }
        (1, 0x11 | 0x21) => return Err(ProxyError("v2 address block too short")),
        (1, _) => None,
        _ => return Err(ProxyError("unsupported v2 command")),
    };
    Ok(Some((src, 16 + len)))
}

/// Reads the header off `s`; returns the announced source and the bytes read past the header.
pub async fn read<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<(Option<SocketAddr>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        match parse(&buf) {
            Ok(Some((src, used))) => return Ok((src, buf.split_off(used))),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        if buf.len() > 16 + usize::from(u16::MAX) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, ProxyError("header too long")));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, ProxyError("closed inside the header")));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_as_the_spec_sends_them() {
        let v1 = b"PROXY TCP4 198.51.100.1 127.0.0.1 5555 21132\r\nrest";
        assert_eq!(parse(v1).unwrap(), Some((Some("198.51.100.1:5555".parse().unwrap()), v1.len() - 4)));
        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 1, 127, 0, 0, 1, 0x15, 0xb3, 0x52, 0x8c]);
        assert_eq!(parse(&v2).unwrap(), Some((Some("198.51.100.1:5555".parse().unwrap()), 28)));
        for cut in 0..v2.len() {
            assert_eq!(parse(&v2[..cut]).unwrap(), None);
        }
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Some((None, 15)));
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse(b"PROXY TCP4 x y 1 2\r\n").is_err());
        assert!(parse(&[b'P'; 200]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse(&data);
            let mut v2 = V2_SIG.to_vec();
            v2.extend_from_slice(&data);
            let _ = parse(&v2);
            let mut v1 = b"PROXY ".to_vec();
            v1.extend_from_slice(&data);
            let _ = parse(&v1);
        }
    }
}
