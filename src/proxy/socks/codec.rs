//! SOCKS4/4a/5 messages (TRANSPORTS.md §5): pure decoders over a byte slice and encoders into a Vec.
//! Each decoder returns `Ok(None)` while more bytes are needed, else the message and the bytes it used.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;

use crate::proxy::addr;
use crate::session::Address;
use crate::wire::{AddressError, parse_domain};

/// SOCKS5 version byte.
pub const V5: u8 = 5;
/// SOCKS4 version byte.
pub const V4: u8 = 4;
/// Method: no authentication.
pub const METHOD_NONE: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const METHOD_PASSWORD: u8 = 0x02;
/// Method: none acceptable.
pub const METHOD_REFUSED: u8 = 0xff;
/// CONNECT.
pub const CMD_CONNECT: u8 = 0x01;
/// BIND (refused).
pub const CMD_BIND: u8 = 0x02;
/// UDP ASSOCIATE.
pub const CMD_UDP: u8 = 0x03;
/// Tor RESOLVE, treated as CONNECT by 4.34.
pub const CMD_TOR_RESOLVE: u8 = 0xf0;
/// Tor RESOLVE_PTR, treated as CONNECT by 4.34.
pub const CMD_TOR_RESOLVE_PTR: u8 = 0xf1;
/// Longest SOCKS4 user id or 4a domain accepted (4.34's buffer size).
pub const MAX_V4_FIELD: usize = 2048;

/// Why a SOCKS message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    /// Neither 4 nor 5.
    #[error("unknown socks version {0}")]
    Version(u8),
    /// A bad address block.
    #[error("bad address: {0}")]
    Address(#[from] AddressError),
    /// A SOCKS4 field without its NUL within the limit.
    #[error("socks4 field longer than {MAX_V4_FIELD} bytes")]
    FieldTooLong,
    /// A server reply the client cannot accept.
    #[error("{0}")]
    Reply(String),
}

/// What a decoder returns: `Ok(None)` while more bytes are needed, else the value and the bytes used.
pub type Decoded<T> = Result<Option<(T, usize)>, SocksError>;

/// The first message of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// SOCKS5 method selection.
    V5 {
        /// Offered methods.
        methods: Vec<u8>,
    },
    /// A whole SOCKS4/4a request.
    V4 {
        /// Command byte.
        cmd: u8,
        /// Target host (IP, or the 4a domain).
        address: Address,
        /// Target port.
        port: u16,
    },
}

/// Decodes the first message (the version byte decides which).
pub fn decode_hello(buf: &[u8]) -> Result<Option<(Hello, usize)>, SocksError> {
    let (Some(&ver), Some(&second)) = (buf.first(), buf.get(1)) else { return Ok(None) };
    match ver {
        V5 => {
            let n = second as usize;
            let Some(m) = buf.get(2..2 + n) else { return Ok(None) };
            Ok(Some((Hello::V5 { methods: m.to_vec() }, 2 + n)))
        }
        V4 => {
            let Some(fixed) = buf.get(2..8) else { return Ok(None) };
            let port = u16::from_be_bytes([fixed[0], fixed[1]]);
            let ip = Ipv4Addr::new(fixed[2], fixed[3], fixed[4], fixed[5]);
            let Some(user_len) = until_nul(&buf[8..])? else { return Ok(None) };
            let mut used = 8 + user_len + 1;
            let address = if ip.octets()[0] == 0 {
                let Some(dom_len) = until_nul(&buf[used..])? else { return Ok(None) };
                let a = parse_domain(&buf[used..used + dom_len])?;
                used += dom_len + 1;
                a
            } else {
                Address::Ip(IpAddr::V4(ip))
            };
            Ok(Some((Hello::V4 { cmd: second, address, port }, used)))
        }
        v => Err(SocksError::Version(v)),
    }
}

fn until_nul(b: &[u8]) -> Result<Option<usize>, SocksError> {
    match b.iter().take(MAX_V4_FIELD + 1).position(|&c| c == 0) {
        Some(i) => Ok(Some(i)),
        None if b.len() > MAX_V4_FIELD => Err(SocksError::FieldTooLong),
        None => Ok(None),
    }
}

/// RFC 1929 `ver ulen user plen pass`; the version byte is not checked (as 4.34).
pub fn decode_userpass(buf: &[u8]) -> Decoded<(Bytes, Bytes)> {
    let Some(&ulen) = buf.get(1) else { return Ok(None) };
    let ulen = ulen as usize;
    let Some(&plen) = buf.get(2 + ulen) else { return Ok(None) };
    let plen = plen as usize;
    let Some(pass) = buf.get(3 + ulen..3 + ulen + plen) else { return Ok(None) };
    let user = Bytes::copy_from_slice(&buf[2..2 + ulen]);
    Ok(Some(((user, Bytes::copy_from_slice(pass)), 3 + ulen + plen)))
}

/// A SOCKS5 request: the command, then (for supported commands) the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Command byte.
    pub cmd: u8,
    /// Target, absent when the command is refused before the address is read (as 4.34 does).
    pub target: Option<(Address, u16)>,
}

/// `VER CMD RSV ATYP ADDR PORT` (VER/RSV unchecked). For an unsupported command only the first three
/// bytes are used: 4.34 replies "not supported" without reading the address.
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>, SocksError> {
    let Some(&cmd) = buf.get(1) else { return Ok(None) };
    if buf.len() < 3 {
        return Ok(None);
    }
    if !matches!(cmd, CMD_CONNECT | CMD_UDP | CMD_TOR_RESOLVE | CMD_TOR_RESOLVE_PTR) {
        return Ok(Some((Request { cmd, target: None }, 3)));
    }
    match addr::decode(&buf[3..], false)? {
        None => Ok(None),
        Some((a, p, n)) => Ok(Some((Request { cmd, target: Some((a, p)) }, 3 + n))),
    }
}

/// `05 REP 00 ATYP BND.ADDR BND.PORT`.
pub fn reply5(out: &mut Vec<u8>, rep: u8, bind: &Address, port: u16) {
    out.extend_from_slice(&[V5, rep, 0]);
    // An Address from the config or a socket is an IP or a short domain: it always encodes.
    if addr::encode(out, bind, port).is_err() {
        addr::encode(out, &Address::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port).ok();
    }
}

/// `00 CD 00 00 00 00 00 00`: the SOCKS4 reply 4.34 sends (port 0, IP 0.0.0.0).
pub fn reply4(granted: bool) -> [u8; 8] {
    [0, if granted { 0x5a } else { 0x5b }, 0, 0, 0, 0, 0, 0]
}

/// The 10-byte "command not supported" reply.
pub const REPLY_NOT_SUPPORTED: [u8; 10] = [5, 7, 0, 1, 0, 0, 0, 0, 0, 0];

/// A UDP datagram `00 00 FRAG ATYP ADDR PORT DATA`. None for anything 4.34 drops silently (FRAG ≠ 0,
/// short, bad address, empty data).
pub fn decode_udp(buf: &[u8]) -> Option<(Address, u16, &[u8])> {
    if buf.len() < 5 || buf[2] != 0 {
        return None;
    }
    let (a, p, n) = addr::decode(&buf[3..], false).ok()??;
    let data = &buf[3 + n..];
    (!data.is_empty()).then_some((a, p, data))
}

/// Encodes a UDP datagram header + data.
pub fn encode_udp(out: &mut Vec<u8>, address: &Address, port: u16, data: &[u8]) -> Result<(), AddressError> {
    out.extend_from_slice(&[0, 0, 0]);
    addr::encode(out, address, port)?;
    out.extend_from_slice(data);
    Ok(())
}

/// Client side: the greeting with exactly one method, and the RFC 1929 block in the same write.
pub fn client_greeting(out: &mut Vec<u8>, user: Option<(&[u8], &[u8])>) {
    match user {
        None => out.extend_from_slice(&[V5, 1, METHOD_NONE]),
        Some((u, p)) => {
            out.extend_from_slice(&[V5, 1, METHOD_PASSWORD, 1]);
            // Lengths are checked (≤ 255) when the config is loaded.
            out.push(u.len().min(255) as u8);
            out.extend_from_slice(&u[..u.len().min(255)]);
            out.push(p.len().min(255) as u8);
            out.extend_from_slice(&p[..p.len().min(255)]);
        }
    }
}

/// Client side: the server's reply(s) to the greeting: `05 M` and, for a password, `01 00`.
pub fn decode_method_reply(buf: &[u8], password: bool) -> Result<Option<((), usize)>, SocksError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let want = if password { METHOD_PASSWORD } else { METHOD_NONE };
    if buf[0] != V5 || buf[1] != want {
        return Err(SocksError::Reply(format!("server chose method {:#04x}, not {want:#04x}", buf[1])));
    }
    if !password {
        return Ok(Some(((), 2)));
    }
    if buf.len() < 4 {
        return Ok(None);
    }
    if buf[3] != 0 {
        return Err(SocksError::Reply("server refused the username/password".into()));
    }
    Ok(Some(((), 4)))
}

/// Client side: `05 01|03 00 ATYP ADDR PORT`.
pub fn client_request(out: &mut Vec<u8>, cmd: u8, address: &Address, port: u16) -> Result<(), AddressError> {
    out.extend_from_slice(&[V5, cmd, 0]);
    addr::encode(out, address, port)
}

/// Client side: `05 00 00 ATYP BND.ADDR BND.PORT`; returns the bound address.
pub fn decode_reply(buf: &[u8]) -> Decoded<(Address, u16)> {
    if buf.len() < 3 {
        return Ok(None);
    }
    if buf[0] != V5 || buf[1] != 0 {
        return Err(SocksError::Reply(format!("server replied {:#04x} to the request", buf[1])));
    }
    Ok(addr::decode(&buf[3..], false)?.map(|(a, p, n)| ((a, p), 3 + n)))
}

/// The address to send UDP to after a UDP ASSOCIATE: an unspecified reply address means the server's.
pub fn udp_relay_addr(bound: (Address, u16), server: Address) -> (Address, u16) {
    match bound.0.ip() {
        Some(ip) if ip.is_unspecified() => (server, bound.1),
        _ => bound,
    }
}

/// The reply address of a UDP ASSOCIATE (4.34's rules): `ip` if configured; the client's own address
/// for a loopback client; else the listen address.
pub fn udp_reply_addr(configured: Option<&Address>, client: SocketAddr, listen: IpAddr) -> Address {
    if let Some(a) = configured {
        return a.clone();
    }
    if client.ip() == IpAddr::from(Ipv4Addr::LOCALHOST) || client.ip() == IpAddr::from(std::net::Ipv6Addr::LOCALHOST) {
        return Address::Ip(client.ip());
    }
    Address::Ip(listen)
}

/// Decodes a buffer as a server would, step by step, for the fuzz target: never panics.
pub fn fuzz_server(data: &[u8]) {
    let mut at = 0;
    if let Ok(Some((hello, n))) = decode_hello(data) {
        at += n;
        if matches!(hello, Hello::V5 { .. }) {
            if let Ok(Some((_, n))) = decode_userpass(&data[at..]) {
                at += n;
            }
            let _ = decode_request(&data[at..]);
        }
    }
    let _ = decode_udp(data);
    let _ = decode_reply(data);
    let _ = decode_method_reply(data, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hellos() {
        assert_eq!(decode_hello(&[5, 2, 0]), Ok(None));
        assert_eq!(decode_hello(&[5, 2, 0, 2, 9]), Ok(Some((Hello::V5 { methods: vec![0, 2] }, 4))));
        assert_eq!(decode_hello(&[6, 1]), Err(SocksError::Version(6)));
        let v4 = b"\x04\x01\x00\x50\x7f\x00\x00\x01me\x00";
        assert_eq!(
            decode_hello(v4),
            Ok(Some((Hello::V4 { cmd: 1, address: Address::parse("127.0.0.1"), port: 80 }, v4.len())))
        );
        let v4a = b"\x04\x01\x00\x50\x00\x00\x00\x07\x00localhost\x00rest";
        assert_eq!(
            decode_hello(v4a),
            Ok(Some((Hello::V4 { cmd: 1, address: Address::parse("localhost"), port: 80 }, v4a.len() - 4)))
        );
        let long = [&b"\x04\x01\x00\x50\x7f\x00\x00\x01"[..], &[b'a'; 2049]].concat();
        assert_eq!(decode_hello(&long), Err(SocksError::FieldTooLong));
    }

    #[test]
    fn requests_and_replies() {
        let r = b"\x05\x01\x00\x03\x09localhost\x4e\x70";
        assert_eq!(
            decode_request(r),
            Ok(Some((Request { cmd: 1, target: Some((Address::parse("localhost"), 20080)) }, r.len())))
        );
        assert_eq!(decode_request(&[5, 2, 0, 1]), Ok(Some((Request { cmd: 2, target: None }, 3))));
        let mut out = Vec::new();
        reply5(&mut out, 0, &Address::parse("0.0.0.0"), 21140);
        assert_eq!(out, [5, 0, 0, 1, 0, 0, 0, 0, 0x52, 0x94]);
        out.clear();
        client_greeting(&mut out, Some((b"u1", b"p1")));
        assert_eq!(out, [5, 1, 2, 1, 2, b'u', b'1', 2, b'p', b'1']);
        assert_eq!(decode_userpass(&out[3..]), Ok(Some(((Bytes::from("u1"), Bytes::from("p1")), 7))));
        assert_eq!(decode_method_reply(&[5, 2, 1, 0], true), Ok(Some(((), 4))));
        assert!(decode_method_reply(&[5, 2, 1, 0xff], true).is_err());
        assert!(decode_method_reply(&[5, 0xff], false).is_err());
    }

    #[test]
    fn udp_datagrams() {
        let d = b"\x00\x00\x00\x03\x09localhost\x4e\x55hi";
        assert_eq!(decode_udp(d), Some((Address::parse("localhost"), 20053, &b"hi"[..])));
        let mut frag = d.to_vec();
        frag[2] = 1;
        assert_eq!(decode_udp(&frag), None);
        assert_eq!(decode_udp(&d[..d.len() - 2]), None);
        let mut out = Vec::new();
        encode_udp(&mut out, &Address::parse("localhost"), 20053, b"hi").unwrap();
        assert_eq!(out, d);
    }

    #[test]
    fn udp_reply_address_rules() {
        let listen = IpAddr::from([0, 0, 0, 0]);
        let ip = Address::parse("10.9.8.7");
        assert_eq!(udp_reply_addr(Some(&ip), "127.0.0.1:5".parse().unwrap(), listen), ip);
        assert_eq!(udp_reply_addr(None, "127.0.0.1:5".parse().unwrap(), listen), Address::parse("127.0.0.1"));
        assert_eq!(udp_reply_addr(None, "[::1]:5".parse().unwrap(), listen), Address::parse("::1"));
        assert_eq!(udp_reply_addr(None, "127.0.0.2:5".parse().unwrap(), listen), Address::parse("0.0.0.0"));
        assert_eq!(
            udp_relay_addr((Address::parse("0.0.0.0"), 7), Address::parse("1.2.3.4")),
            (Address::parse("1.2.3.4"), 7)
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            fuzz_server(&data);
        }

        #[test]
        fn requests_need_every_byte(port: u16, dom in "[a-z][a-z0-9-]{0,30}") {
            let mut out = Vec::new();
            client_request(&mut out, CMD_CONNECT, &Address::parse(&dom), port).unwrap();
            for cut in 0..out.len() {
                prop_assert_eq!(decode_request(&out[..cut]), Ok(None));
            }
            let (req, n) = decode_request(&out).unwrap().unwrap();
            prop_assert_eq!(n, out.len());
            prop_assert_eq!(req.target, Some((Address::parse(&dom), port)));
        }
    }
}
