//! Trojan request header (PROXIES.md §3.2): `hex(SHA224(password)) ‖ CRLF ‖ cmd ‖ ATYP ADDR PORT ‖ CRLF`.
//! Pure: no I/O.

use sha2::{Digest, Sha224};

use crate::proxy::addr;
use crate::session::Address;
use crate::wire::AddressError;

/// CONNECT (any command other than 3 is taken as CONNECT, as 4.34 does).
pub const CMD_CONNECT: u8 = 1;
/// UDP ASSOCIATE.
pub const CMD_UDP: u8 = 3;
/// Length of the hex hash.
pub const HASH_LEN: usize = 56;

/// The 56 lowercase hex bytes of SHA224(password).
pub fn password_hash(password: &str) -> [u8; HASH_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha224::digest(password.as_bytes());
    let mut out = [0u8; HASH_LEN];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

/// Whether the first bytes can be Trojan at all (4.34: at least 58 bytes and `\r` at byte 56).
pub fn looks_like_trojan(first: &[u8]) -> bool {
    first.len() >= HASH_LEN + 2 && first[HASH_LEN] == b'\r'
}

/// A decoded request after the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Command byte.
    pub cmd: u8,
    /// Target.
    pub target: (Address, u16),
}

/// Decodes the part after the hash and its CRLF (CRLFs are not checked, as 4.34).
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>, AddressError> {
    let start = HASH_LEN + 2;
    let Some(&cmd) = buf.get(start) else { return Ok(None) };
    let Some((a, p, n)) = addr::decode(&buf[start + 1..], false)? else { return Ok(None) };
    let end = start + 1 + n + 2;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((Request { cmd, target: (a, p) }, end)))
}

/// Encodes a request header.
pub fn encode_request(
    out: &mut Vec<u8>,
    hash: &[u8; HASH_LEN],
    cmd: u8,
    target: &Address,
    port: u16,
) -> Result<(), AddressError> {
    out.extend_from_slice(hash);
    out.extend_from_slice(b"\r\n");
    out.push(cmd);
    addr::encode(out, target, port)?;
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Longest UDP frame payload 4.34 reads (a longer length field is an error there, and here); writers
/// split longer datagrams into several frames, as the 4.34 client does.
pub const MAX_UDP_PAYLOAD: usize = 8192;

/// Why a UDP frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UdpFrameError {
    /// A bad address block.
    #[error("bad address: {0}")]
    Address(#[from] AddressError),
    /// A length over [`MAX_UDP_PAYLOAD`].
    #[error("UDP frame of {0} bytes is too long")]
    TooLong(usize),
}

/// A decoded UDP frame header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrame {
    /// The frame's destination (client to server) or source as requested (server to client).
    pub target: (Address, u16),
    /// Where the payload is in the buffer.
    pub payload: std::ops::Range<usize>,
    /// Bytes the whole frame takes.
    pub used: usize,
}

/// Decodes `ATYP ADDR PORT ‖ length(2) ‖ CRLF ‖ payload` from the front of `buf` (the CRLF is not
/// checked, as 4.34); `Ok(None)` while incomplete.
pub fn decode_udp_frame(buf: &[u8]) -> Result<Option<UdpFrame>, UdpFrameError> {
    let Some((a, p, n)) = addr::decode(buf, false)? else { return Ok(None) };
    let (Some(&hi), Some(&lo)) = (buf.get(n), buf.get(n + 1)) else { return Ok(None) };
    let len = u16::from_be_bytes([hi, lo]) as usize;
    if len > MAX_UDP_PAYLOAD {
        return Err(UdpFrameError::TooLong(len));
    }
    let start = n + 4;
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some(UdpFrame { target: (a, p), payload: start..start + len, used: start + len }))
}

/// Appends `data` as frames for `target`, at most [`MAX_UDP_PAYLOAD`] bytes each (whole frames: 4.34
/// writes truncated ones past 2 KiB).
pub fn encode_udp_frames(out: &mut Vec<u8>, target: &Address, port: u16, data: &[u8]) -> Result<(), AddressError> {
    let mut chunks = data.chunks(MAX_UDP_PAYLOAD).peekable();
    if chunks.peek().is_none() {
        addr::encode(out, target, port)?;
        out.extend_from_slice(b"\x00\x00\r\n");
        return Ok(());
    }
    for c in chunks {
        addr::encode(out, target, port)?;
        out.extend_from_slice(&(c.len() as u16).to_be_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(c);
    }
    Ok(())
}

/// Feeds arbitrary bytes to the decoders (fuzz target).
pub fn fuzz_header(data: &[u8]) {
    let _ = looks_like_trojan(data);
    let _ = decode_request(data);
    let mut rest = data;
    while let Ok(Some(f)) = decode_udp_frame(rest) {
        assert!(f.payload.end <= rest.len() && f.used <= rest.len() && f.used > 0);
        rest = &rest[f.used..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_vectors() {
        let h = password_hash("pw1");
        assert_eq!(&h[..], b"69f37647700f38cd43c7fea3041dbcc950097b86c2f62db20e1caba8");
        assert_eq!(&password_hash("")[..], b"d14a028c2a3a2bc9476102bb288234c415a2b01f828ea62ac5b3e42f");
        let mut req = Vec::new();
        encode_request(&mut req, &h, CMD_CONNECT, &Address::parse("127.0.0.1"), 20055).unwrap();
        assert_eq!(&req[56..], b"\r\n\x01\x01\x7f\x00\x00\x01\x4e\x57\r\n");
        req.extend_from_slice(b"hi");
        assert!(looks_like_trojan(&req));
        let (r, n) = decode_request(&req).unwrap().unwrap();
        assert_eq!((r.cmd, r.target, &req[n..]), (1, (Address::parse("127.0.0.1"), 20055), &b"hi"[..]));
        assert!(!looks_like_trojan(b"abc"));
        // UDP (PROXIES.md §3.7): the frame `01 7f000001 4e55 0005 0d0a "hello"`.
        let frame = b"\x01\x7f\x00\x00\x01\x4e\x55\x00\x05\r\nhello";
        let f = decode_udp_frame(frame).unwrap().unwrap();
        assert_eq!((f.target, &frame[f.payload], f.used), ((Address::parse("127.0.0.1"), 20053), &b"hello"[..], 16));
        let mut out = Vec::new();
        encode_udp_frames(&mut out, &Address::parse("127.0.0.1"), 20053, b"hello").unwrap();
        assert_eq!(out, frame);
        let long = [&b"\x01\x7f\x00\x00\x01\x4e\x55\x20\x01\r\n"[..], &[0; 8193]].concat();
        assert_eq!(decode_udp_frame(&long), Err(UdpFrameError::TooLong(8193)));
        out.clear();
        encode_udp_frames(&mut out, &Address::parse("a"), 1, &[7; 20_000]).unwrap();
        let mut rest = &out[..];
        let mut sizes = Vec::new();
        while let Some(f) = decode_udp_frame(rest).unwrap() {
            sizes.push(f.payload.len());
            rest = &rest[f.used..];
        }
        assert_eq!(sizes, [8192, 8192, 3616]);
    }

    proptest! {
        #[test]
        fn prefixes_need_more(port: u16, dom in "[a-z][a-z0-9]{0,20}") {
            let mut out = Vec::new();
            encode_request(&mut out, &password_hash("x"), 1, &Address::parse(&dom), port).unwrap();
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
        fn udp_frames_roundtrip_and_prefixes_need_more(port: u16, dom in "[a-z][a-z0-9]{0,20}", data in proptest::collection::vec(any::<u8>(), 1..3000)) {
            let mut out = Vec::new();
            encode_udp_frames(&mut out, &Address::parse(&dom), port, &data).unwrap();
            for cut in 0..out.len() {
                prop_assert_eq!(decode_udp_frame(&out[..cut]), Ok(None));
            }
            let f = decode_udp_frame(&out).unwrap().unwrap();
            prop_assert_eq!((f.target, &out[f.payload.clone()], f.used), ((Address::parse(&dom), port), &data[..], out.len()));
        }
    }
}
