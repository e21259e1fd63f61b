//! The SOCKS5-style address block `ATYP ‖ ADDR ‖ PORT` (port last), shared by SOCKS, Shadowsocks and
//! Trojan. Pure codec: no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::session::{Address, canonical_ip};
use crate::wire::{AddressError, parse_domain, put_addr};

/// IPv4 address type.
pub const ATYP_IPV4: u8 = 0x01;
/// Domain address type (1-byte length).
pub const ATYP_DOMAIN: u8 = 0x03;
/// IPv6 address type.
pub const ATYP_IPV6: u8 = 0x04;

/// Decodes `ATYP ‖ ADDR ‖ PORT` from the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// address, port and bytes used. `mask_high_nibble` ignores the upper four bits of ATYP (Shadowsocks).
pub fn decode(buf: &[u8], mask_high_nibble: bool) -> Result<Option<(Address, u16, usize)>, AddressError> {
    let Some(&atyp) = buf.first() else { return Ok(None) };
    let atyp = if mask_high_nibble { atyp & 0x0f } else { atyp };
    let (addr, len) = match atyp {
        ATYP_IPV4 => {
            let Some(b) = buf.get(1..5) else { return Ok(None) };
            (Address::Ip(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))), 4)
        }
        ATYP_IPV6 => {
            let Some(b) = buf.get(1..17) else { return Ok(None) };
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            (Address::Ip(canonical_ip(IpAddr::V6(Ipv6Addr::from(o)))), 16)
        }
        ATYP_DOMAIN => {
            let Some(&n) = buf.get(1) else { return Ok(None) };
            let n = n as usize;
            let Some(name) = buf.get(2..2 + n) else { return Ok(None) };
            if n == 0 {
                return Err(AddressError::InvalidDomain);
            }
            (parse_domain(name)?, 1 + n)
        }
        other => return Err(AddressError::UnknownType(other)),
    };
    let Some(p) = buf.get(1 + len..3 + len) else { return Ok(None) };
    Ok(Some((addr, u16::from_be_bytes([p[0], p[1]]), 3 + len)))
}

/// Encoded length of the block for `addr` (the same as VMess's port-first block).
pub use crate::wire::encoded_len;

/// Appends `ATYP ‖ ADDR ‖ PORT`; a domain is written as given (never resolved).
pub fn encode(out: &mut Vec<u8>, addr: &Address, port: u16) -> Result<(), AddressError> {
    put_addr(out, addr, [ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6])?;
    out.extend_from_slice(&port.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden() {
        let mut out = Vec::new();
        encode(&mut out, &Address::parse("localhost"), 20080).unwrap();
        assert_eq!(out, b"\x03\x09localhost\x4e\x70");
        assert_eq!(decode(&out, false).unwrap(), Some((Address::parse("localhost"), 20080, 13)));
        assert_eq!(decode(&[0x13, 1, b'a', 0, 80], true).unwrap(), Some((Address::parse("a"), 80, 5)));
        assert!(decode(&[0x13, 1, b'a', 0, 80], false).is_err());
        assert_eq!(decode(&[3, 0, 0, 80], false), Err(AddressError::InvalidDomain));
        assert_eq!(decode(&[3, 3, b'a', b' ', b'b', 0, 1], false), Err(AddressError::InvalidDomain));
        assert_eq!(decode(&[1, 127, 0, 0], false), Ok(None));
    }

    proptest! {
        #[test]
        fn roundtrip_and_every_prefix_needs_more(port: u16, v4: [u8; 4], v6: [u8; 16], dom in "[a-z][a-z0-9.-]{0,40}", pick in 0..3u8) {
            let addr = match pick {
                0 => Address::Ip(IpAddr::V4(Ipv4Addr::from(v4))),
                1 => Address::from(IpAddr::V6(Ipv6Addr::from(v6))),
                _ => Address::parse(&dom),
            };
            let mut out = Vec::new();
            encode(&mut out, &addr, port).unwrap();
            prop_assert_eq!(out.len(), encoded_len(&addr));
            for cut in 0..out.len() {
                prop_assert_eq!(decode(&out[..cut], false), Ok(None));
            }
            out.extend_from_slice(b"tail");
            let got = decode(&out, false).unwrap().unwrap();
            prop_assert_eq!(got, (addr.clone(), port, encoded_len(&addr)));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), mask: bool) {
            let _ = decode(&bytes, mask);
        }
    }
}
