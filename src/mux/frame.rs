//! Mux.Cool frame codec (PROTOCOLS.md §4.2–4.3): pure, no I/O.
//!
//! `frame = MetaLen(2) ‖ Meta ‖ [DataLen(2) ‖ Data]`, `Meta = id(2) ‖ status ‖ option ‖ [net ‖ port ‖ addr]`.

use bytes::{Buf, Bytes, BytesMut};

use crate::session::{Address, Destination, Network};
use crate::wire::{AddressError, encoded_len, get_port_addr, put_port_addr};

/// Largest Meta a reader accepts (Go: `metaLen > 512` is an error).
pub const MAX_META_LEN: usize = 512;
/// Largest stream data oxray puts in one frame: all a 16-bit DataLen holds. 4.34 writes at most 8 KiB
/// per frame (`SplitSize(mb, 8*1024)`) but reads any DataLen (`ChunkStreamReader` takes the u16 size as
/// is; PROTOCOLS.md §4.3: a Go bridge took 30,000-byte frames; tests/interop_mux.rs and tests/reverse.rs
/// move bulk both ways against 4.34). One frame per 63 KiB relay read instead of eight: −5 % CPU per
/// GiB on the reverse tunnel (fewer headers, splits, session pushes and wake-ups).
pub const MAX_STREAM_FRAME: usize = 65535;
/// Largest UDP datagram in one frame (Go's `buf.Size`); bigger is a connection error on read.
pub const MAX_UDP_FRAME: usize = 2048;
/// Option bit: a DataLen ‖ Data part follows the Meta.
pub const OPT_DATA: u8 = 0x01;
/// Option bit: on End, the session ended abnormally.
pub const OPT_ERROR: u8 = 0x02;
/// Network byte for TCP in a New frame.
pub const NET_TCP: u8 = 0x01;
/// Network byte for UDP in a New frame.
pub const NET_UDP: u8 = 0x02;
/// Bytes of a header without target: MetaLen(2) ‖ id(2) ‖ status ‖ option.
pub const BASE_HEADER_LEN: usize = 6;

/// The Status byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Opens a session (carries the target).
    New = 0x01,
    /// Data for an open session.
    Keep = 0x02,
    /// Closes a session (Error option: abnormally).
    End = 0x03,
    /// Keeps the connection alive; ignored.
    KeepAlive = 0x04,
}

impl Status {
    fn from_byte(b: u8) -> Result<Status, FrameError> {
        Ok(match b {
            0x01 => Status::New,
            0x02 => Status::Keep,
            0x03 => Status::End,
            0x04 => Status::KeepAlive,
            other => return Err(FrameError::UnknownStatus(other)),
        })
    }
}

/// Why bytes are not a valid frame; every one of these ends the whole Mux connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// MetaLen above 512.
    #[error("invalid metalen {0}")]
    MetaTooLong(usize),
    /// Meta shorter than 4 bytes, or a New Meta shorter than 8.
    #[error("insufficient meta: {0} bytes")]
    MetaTooShort(usize),
    /// A Status byte other than 1..=4.
    #[error("unknown session status {0:#04x}")]
    UnknownStatus(u8),
    /// A New frame with a network byte other than TCP/UDP.
    #[error("unknown network type {0:#04x}")]
    UnknownNetwork(u8),
    /// The target of a New frame did not parse (or cannot be encoded).
    #[error("bad target address: {0}")]
    Address(#[from] AddressError),
    /// A New frame without a target, or a target on another status (encoder misuse).
    #[error("New frames need a target, other frames must not have one")]
    Target,
    /// Data longer than a frame can carry.
    #[error("frame data of {0} bytes is too long")]
    DataTooLong(usize),
}

/// One decoded (or to-be-encoded) frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Session id (first id on a connection is 1).
    pub id: u16,
    /// What the frame does.
    pub status: Status,
    /// The Error option bit (meaningful on End).
    pub error: bool,
    /// The target; Some exactly for New frames.
    pub target: Option<Destination>,
    /// The data part, when the Data option bit is set (may be empty).
    pub data: Option<Bytes>,
}

impl Frame {
    /// A Keep frame with data.
    pub fn keep(id: u16, data: Bytes) -> Frame {
        Frame { id, status: Status::Keep, error: false, target: None, data: Some(data) }
    }

    /// An End frame (with the Error bit if `error`).
    pub fn end(id: u16, error: bool) -> Frame {
        Frame { id, status: Status::End, error, target: None, data: None }
    }

    /// A New frame, optionally carrying the first data.
    pub fn new_session(id: u16, target: Destination, data: Option<Bytes>) -> Frame {
        Frame { id, status: Status::New, error: false, target: Some(target), data }
    }

    /// Appends the wire form of this frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let data_len = self.data.as_ref().map(|d| d.len());
        put_header(out, self.id, self.status, self.error, self.target.as_ref(), data_len)?;
        if let Some(d) = &self.data {
            out.extend_from_slice(d);
        }
        Ok(())
    }
}

/// Appends a frame header: Meta, and `DataLen` when `data_len` is Some (the caller appends the data).
/// On error nothing is appended.
pub fn put_header(
    out: &mut Vec<u8>,
    id: u16,
    status: Status,
    error: bool,
    target: Option<&Destination>,
    data_len: Option<usize>,
) -> Result<(), FrameError> {
    if (status == Status::New) != target.is_some() {
        return Err(FrameError::Target);
    }
    if let Some(n) = data_len
        && n > u16::MAX as usize
    {
        return Err(FrameError::DataTooLong(n));
    }
    let meta_len = 4 + target.map_or(0, |t| 1 + encoded_len(&t.address));
    if meta_len > MAX_META_LEN {
        return Err(FrameError::MetaTooLong(meta_len));
    }
    let start = out.len();
    let option = if data_len.is_some() { OPT_DATA } else { 0 } | if error { OPT_ERROR } else { 0 };
    out.extend_from_slice(&(meta_len as u16).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.push(status as u8);
    out.push(option);
    if let Some(t) = target {
        out.push(match t.network {
            Network::Tcp => NET_TCP,
            Network::Udp => NET_UDP,
        });
        if let Err(e) = put_port_addr(out, t.port, &t.address) {
            out.truncate(start);
            return Err(e.into());
        }
    }
    if let Some(n) = data_len {
        out.extend_from_slice(&(n as u16).to_be_bytes());
    }
    Ok(())
}

/// The header of a `Keep|Data` frame with short metadata carrying `len` (at most
/// [`MAX_STREAM_FRAME`]) bytes of stream data.
#[inline]
pub fn data_header(id: u16, len: usize) -> [u8; 8] {
    let (id, len) = (id.to_be_bytes(), (len.min(MAX_STREAM_FRAME) as u16).to_be_bytes());
    [0, 4, id[0], id[1], Status::Keep as u8, OPT_DATA, len[0], len[1]]
}

/// Decodes one frame from the front of `buf`. `Ok(None)`: more bytes are needed (nothing consumed).
/// On success the frame's bytes are removed and its data shares `buf`'s allocation (no copy).
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(head) = buf.get(..2) else { return Ok(None) };
    let meta_len = u16::from_be_bytes([head[0], head[1]]) as usize;
    if meta_len > MAX_META_LEN {
        return Err(FrameError::MetaTooLong(meta_len));
    }
    let Some(meta) = buf.get(2..2 + meta_len) else { return Ok(None) };
    let (id, status, option, target) = parse_meta(meta)?;
    let mut total = 2 + meta_len;
    let data_len = if option & OPT_DATA != 0 {
        let Some(dl) = buf.get(total..total + 2) else { return Ok(None) };
        let n = u16::from_be_bytes([dl[0], dl[1]]) as usize;
        total += 2;
        if buf.len() < total + n {
            return Ok(None);
        }
        Some(n)
    } else {
        None
    };
    buf.advance(total);
    let data = data_len.map(|n| buf.split_to(n).freeze());
    Ok(Some(Frame { id, status, error: option & OPT_ERROR != 0, target, data }))
}

fn parse_meta(meta: &[u8]) -> Result<(u16, Status, u8, Option<Destination>), FrameError> {
    if meta.len() < 4 {
        return Err(FrameError::MetaTooShort(meta.len()));
    }
    let id = u16::from_be_bytes([meta[0], meta[1]]);
    let status = Status::from_byte(meta[2])?;
    let option = meta[3];
    let target = if status == Status::New {
        if meta.len() < 8 {
            return Err(FrameError::MetaTooShort(meta.len()));
        }
        let net = meta[4];
        // Go parses the address before checking the network byte; the error differs, the outcome does not.
        let (port, address, _used) = get_port_addr(&meta[5..])?;
        let network = match net {
            NET_TCP => Network::Tcp,
            NET_UDP => Network::Udp,
            other => return Err(FrameError::UnknownNetwork(other)),
        };
        Some(Destination { network, address, port })
    } else {
        None
    };
    Ok((id, status, option, target))
}

/// Convenience for tests and callers that build targets: a TCP destination from a host string.
pub fn tcp_target(host: &str, port: u16) -> Destination {
    Destination::tcp(Address::parse(host), port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    fn enc(f: &Frame) -> Vec<u8> {
        let mut v = Vec::new();
        f.encode(&mut v).unwrap();
        v
    }

    #[test]
    fn golden_new_tcp_with_data() {
        let f = Frame::new_session(1, tcp_target("127.0.0.1", 80), Some(Bytes::from_static(b"hi")));
        let b = enc(&f);
        assert_eq!(
            b,
            [0x00, 0x0c, 0x00, 0x01, 0x01, 0x01, 0x01, 0x00, 0x50, 0x01, 0x7f, 0, 0, 1, 0x00, 0x02, b'h', b'i']
        );
        let mut bm = BytesMut::from(&b[..]);
        assert_eq!(decode(&mut bm).unwrap(), Some(f));
        assert!(bm.is_empty());
    }

    #[test]
    fn golden_end_and_keep() {
        assert_eq!(enc(&Frame::end(0x0102, false)), [0x00, 0x04, 0x01, 0x02, 0x03, 0x00]);
        assert_eq!(enc(&Frame::end(7, true)), [0x00, 0x04, 0x00, 0x07, 0x03, 0x02]);
        assert_eq!(enc(&Frame::keep(3, Bytes::from_static(b"x"))), [0, 4, 0, 3, 2, 1, 0, 1, b'x']);
        assert_eq!(data_header(3, 1), [0, 4, 0, 3, 2, 1, 0, 1]);
        assert_eq!(data_header(0x0102, MAX_STREAM_FRAME), [0, 4, 1, 2, 2, 1, 0xff, 0xff]);
    }

    #[test]
    fn golden_new_udp_control() {
        let t = Destination::udp(Address::parse("reverse.internal.v2ray.com"), 0);
        let b = enc(&Frame::new_session(1, t.clone(), None));
        assert_eq!(&b[..2], &[0x00, 35]);
        assert_eq!(&b[2..10], &[0, 1, 1, 0, 2, 0, 0, 2]);
        assert_eq!(b[10], 26);
        assert_eq!(&b[11..], b"reverse.internal.v2ray.com");
        let f = decode(&mut BytesMut::from(&b[..])).unwrap().unwrap();
        assert_eq!(f.target, Some(t));
        assert_eq!(f.data, None);
    }

    #[test]
    fn reader_limits() {
        assert_eq!(decode(&mut BytesMut::from(&[0x02, 0x01][..])), Err(FrameError::MetaTooLong(513)));
        assert_eq!(decode(&mut BytesMut::from(&[0, 3, 0, 1, 2][..])), Err(FrameError::MetaTooShort(3)));
        assert_eq!(decode(&mut BytesMut::from(&[0, 4, 0, 1, 9, 0][..])), Err(FrameError::UnknownStatus(9)));
        assert_eq!(decode(&mut BytesMut::from(&[0, 7, 0, 1, 1, 0, 1, 0, 80][..])), Err(FrameError::MetaTooShort(7)));
        let bad_net = [0, 12, 0, 1, 1, 0, 9, 0, 80, 1, 1, 2, 3, 4];
        assert_eq!(decode(&mut BytesMut::from(&bad_net[..])), Err(FrameError::UnknownNetwork(9)));
        // Partial input consumes nothing.
        let mut partial = BytesMut::from(&[0, 4, 0, 1, 2, 1, 0, 5, 1, 2][..]);
        assert_eq!(decode(&mut partial), Ok(None));
        assert_eq!(partial.len(), 10);
    }

    #[test]
    fn trailing_meta_ignored_and_empty_data_ok() {
        // Xray-style: Keep with extra meta bytes, Data bit with DataLen 0.
        let b = [0, 9, 0, 5, 2, 1, 2, 0, 80, 1, 9, 0, 0];
        let f = decode(&mut BytesMut::from(&b[..])).unwrap().unwrap();
        assert_eq!((f.id, f.status, f.data), (5, Status::Keep, Some(Bytes::new())));
        // New UDP with an 8-byte XUDP GlobalID after the address.
        let mut n = vec![0, 8 + 4 + 8, 0, 1, 1, 0, 2, 0, 53, 1, 8, 8, 8, 8];
        n.extend_from_slice(&[0xaa; 8]);
        let f = decode(&mut BytesMut::from(&n[..])).unwrap().unwrap();
        assert_eq!(f.target, Some(Destination::udp(Address::parse("8.8.8.8"), 53)));
    }

    fn arb_target() -> impl Strategy<Value = Destination> {
        let addr = prop_oneof![
            any::<[u8; 4]>().prop_map(|b| Address::Ip(IpAddr::V4(Ipv4Addr::from(b)))),
            any::<[u8; 16]>().prop_map(|b| Address::from(IpAddr::V6(Ipv6Addr::from(b)))),
            "[a-z][a-z0-9.-]{0,40}".prop_map(|d| Address::Domain(Arc::from(d.as_str()))),
        ];
        (any::<bool>(), addr, any::<u16>()).prop_map(|(udp, address, port)| Destination {
            network: if udp { Network::Udp } else { Network::Tcp },
            address,
            port,
        })
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            any::<u16>(),
            0..4u8,
            any::<bool>(),
            arb_target(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        )
            .prop_map(|(id, s, error, target, data)| {
                let status = [Status::New, Status::Keep, Status::End, Status::KeepAlive][s as usize];
                let target = (status == Status::New).then_some(target);
                Frame { id, status, error, target, data: data.map(Bytes::from) }
            })
    }

    proptest! {
        #[test]
        fn roundtrip(frames in proptest::collection::vec(arb_frame(), 1..8)) {
            let mut wire = Vec::new();
            for f in &frames { f.encode(&mut wire).unwrap(); }
            let mut buf = BytesMut::from(&wire[..]);
            for f in &frames { let got = decode(&mut buf).unwrap(); prop_assert_eq!(got.as_ref(), Some(f)); }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn byte_by_byte_same_frames(frames in proptest::collection::vec(arb_frame(), 1..5)) {
            let mut wire = Vec::new();
            for f in &frames { f.encode(&mut wire).unwrap(); }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for b in wire {
                buf.extend_from_slice(&[b]);
                while let Some(f) = decode(&mut buf).unwrap() { got.push(f); }
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut whole = BytesMut::from(&bytes[..]);
            let mut a = Vec::new();
            let ra = loop {
                match decode(&mut whole) { Ok(Some(f)) => a.push(f), Ok(None) => break Ok(()), Err(e) => break Err(e) }
            };
            // Incremental decoding reaches the same frames and the same verdict.
            let mut inc = BytesMut::new();
            let mut b = Vec::new();
            let mut rb = Ok(());
            'outer: for x in &bytes {
                inc.extend_from_slice(&[*x]);
                loop {
                    match decode(&mut inc) {
                        Ok(Some(f)) => b.push(f),
                        Ok(None) => break,
                        Err(e) => { rb = Err(e); break 'outer; }
                    }
                }
            }
            prop_assert_eq!(a, b);
            prop_assert_eq!(ra, rb);
        }
    }
}
