//! VLESS version 0 request and response headers (PROXIES.md §2.4, §2.5). Pure: no I/O.

use crate::session::Address;
use crate::wire::{self, AddressError};

/// TCP.
pub const CMD_TCP: u8 = 1;
/// UDP (length-prefixed datagrams).
pub const CMD_UDP: u8 = 2;
/// Mux.Cool (target `v1.mux.cool`).
pub const CMD_MUX: u8 = 3;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VlessError {
    /// A version other than 0.
    #[error("invalid request version {0}")]
    Version(u8),
    /// An unknown command byte.
    #[error("unknown request command {0}")]
    Command(u8),
    /// A bad address block.
    #[error("bad address: {0}")]
    Address(#[from] AddressError),
    /// A server response with another version.
    #[error("unexpected response version {0}")]
    ResponseVersion(u8),
}

/// A decoded request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The user id.
    pub id: [u8; 16],
    /// Command byte (1, 2 or 3).
    pub cmd: u8,
    /// Target (none for Mux).
    pub target: Option<(Address, u16)>,
}

/// Decodes `ver ‖ uuid ‖ addons_len ‖ addons ‖ cmd ‖ [port ‖ atype ‖ addr]` from the front of `buf`.
/// Addons are skipped (4.34 ignores their content).
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>, VlessError> {
    let Some(&ver) = buf.first() else { return Ok(None) };
    if ver != 0 {
        return Err(VlessError::Version(ver));
    }
    if buf.len() < 18 {
        return Ok(None);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&buf[1..17]);
    let addons = buf[17] as usize;
    let Some(&cmd) = buf.get(18 + addons) else { return Ok(None) };
    let at = 19 + addons;
    match cmd {
        CMD_MUX => Ok(Some((Request { id, cmd, target: None }, at))),
        CMD_TCP | CMD_UDP => match wire::get_port_addr(&buf[at..]) {
            Ok((port, addr, used)) => Ok(Some((Request { id, cmd, target: Some((addr, port)) }, at + used))),
            Err(AddressError::Truncated) => Ok(None),
            Err(e) => Err(e.into()),
        },
        c => Err(VlessError::Command(c)),
    }
}

/// Encodes a request header (no addons).
pub fn encode_request(
    out: &mut Vec<u8>,
    id: &[u8; 16],
    cmd: u8,
    target: &Address,
    port: u16,
) -> Result<(), AddressError> {
    out.push(0);
    out.extend_from_slice(id);
    out.push(0);
    out.push(cmd);
    if cmd != CMD_MUX {
        wire::put_port_addr(out, port, target)?;
    }
    Ok(())
}

/// The response header `ver ‖ addons_len ‖ addons`: `Ok(None)` while incomplete, else its length.
pub fn decode_response(buf: &[u8]) -> Result<Option<usize>, VlessError> {
    let (Some(&ver), Some(&n)) = (buf.first(), buf.get(1)) else { return Ok(None) };
    if ver != 0 {
        return Err(VlessError::ResponseVersion(ver));
    }
    let len = 2 + n as usize;
    Ok((buf.len() >= len).then_some(len))
}

/// Longest UDP frame payload (the 2-byte length field). 4.34 itself drops datagrams over 2046 bytes
/// when writing and splits frames over 2048 bytes when reading.
pub const MAX_UDP_PAYLOAD: usize = u16::MAX as usize;

/// Appends one UDP frame `length(2, BE) ‖ payload`; None when the datagram is longer than 65 535 bytes.
pub fn encode_udp_frame(out: &mut Vec<u8>, data: &[u8]) -> Option<()> {
    let n = u16::try_from(data.len()).ok()?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(data);
    Some(())
}

/// A UDP frame at the front of `buf`: `Some((payload range, bytes used))`, or None while incomplete.
pub fn decode_udp_frame(buf: &[u8]) -> Option<(std::ops::Range<usize>, usize)> {
    let len = u16::from_be_bytes([*buf.first()?, *buf.get(1)?]) as usize;
    (buf.len() >= 2 + len).then_some((2..2 + len, 2 + len))
}

/// Feeds arbitrary bytes to the header decoders and the UDP frame decoder (fuzz target).
pub fn fuzz_header(data: &[u8]) {
    let _ = decode_request(data);
    let _ = decode_response(data);
    let mut rest = data;
    while let Some((r, used)) = decode_udp_frame(rest) {
        assert!(r.end <= rest.len() && used <= rest.len() && used >= 2);
        rest = &rest[used..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: [u8; 16] =
        [0x27, 0x84, 0x87, 0x39, 0x7e, 0x62, 0x41, 0x38, 0x9f, 0xd3, 0x09, 0x8a, 0x63, 0x96, 0x4b, 0x6b];

    #[test]
    fn spec_vectors() {
        let tcp = [&[0u8][..], &ID, &[0, 1, 0x4e, 0x57, 1, 127, 0, 0, 1], b"hello"].concat();
        let (r, n) = decode_request(&tcp).unwrap().unwrap();
        assert_eq!((r.cmd, r.target, &tcp[n..]), (1, Some((Address::parse("127.0.0.1"), 20055)), &b"hello"[..]));
        let mut out = Vec::new();
        encode_request(&mut out, &ID, CMD_TCP, &Address::parse("127.0.0.1"), 20055).unwrap();
        assert_eq!(out, &tcp[..n]);
        let mux = [&[0u8][..], &ID, &[0, 3]].concat();
        assert_eq!(decode_request(&mux).unwrap().unwrap(), (Request { id: ID, cmd: 3, target: None }, 19));
        let addons = [&[0u8][..], &ID, &[2, 0x0a, 0x00, 1, 0, 80, 2, 1, b'a']].concat();
        assert_eq!(decode_request(&addons).unwrap().unwrap().0.target, Some((Address::parse("a"), 80)));
        assert_eq!(decode_request(&[1, 2]), Err(VlessError::Version(1)));
        assert_eq!(decode_request(&[&[0u8][..], &ID, &[0, 4]].concat()), Err(VlessError::Command(4)));
        assert_eq!(decode_response(&[0, 0, b'x']), Ok(Some(2)));
        assert_eq!(decode_response(&[0, 2, 1]), Ok(None));
        // UDP (PROXIES.md §2.7): header, then `0004 "udp1"`.
        let udp = [&[0u8][..], &ID, &[0, 2, 0, 0x50, 2, 0x0b], b"example.com", &[0, 4], b"udp1"].concat();
        let (r, n) = decode_request(&udp).unwrap().unwrap();
        assert_eq!((r.cmd, r.target), (CMD_UDP, Some((Address::parse("example.com"), 80))));
        assert_eq!(decode_udp_frame(&udp[n..]), Some((2..6, 6)));
        let mut f = Vec::new();
        encode_udp_frame(&mut f, b"udp1").unwrap();
        assert_eq!(f, &udp[n..]);
        assert_eq!(encode_udp_frame(&mut f, &vec![0; 65_536]), None);
    }

    proptest! {
        #[test]
        fn prefixes_need_more(port: u16, dom in "[a-z][a-z0-9]{0,20}") {
            let mut out = Vec::new();
            encode_request(&mut out, &ID, CMD_TCP, &Address::parse(&dom), port).unwrap();
            for cut in 0..out.len() {
                prop_assert_eq!(decode_request(&out[..cut]), Ok(None));
            }
            prop_assert_eq!(decode_request(&out).unwrap().unwrap().1, out.len());
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            fuzz_header(&data);
        }

        #[test]
        fn udp_frames_roundtrip_and_prefixes_need_more(
            grams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..5),
        ) {
            let mut out = Vec::new();
            for g in &grams {
                encode_udp_frame(&mut out, g).unwrap();
            }
            let first = 2 + grams[0].len();
            for cut in 0..first {
                prop_assert_eq!(decode_udp_frame(&out[..cut]), None);
            }
            let mut rest = &out[..];
            for g in &grams {
                let (r, used) = decode_udp_frame(rest).unwrap();
                prop_assert_eq!(&rest[r], &g[..]);
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
        }
    }
}
