//! Wire encodings shared by VMess and Mux.Cool: the port-then-address block (PROTOCOLS.md §1.6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::session::{Address, canonical_ip};

/// Address type byte for IPv4.
pub const ATYP_IPV4: u8 = 0x01;
/// Address type byte for a domain.
pub const ATYP_DOMAIN: u8 = 0x02;
/// Address type byte for IPv6.
pub const ATYP_IPV6: u8 = 0x03;

/// Why a port/address block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Fewer bytes than the block needs.
    #[error("address block truncated")]
    Truncated,
    /// An address type other than 1, 2 or 3.
    #[error("unknown address type {0:#04x}")]
    UnknownType(u8),
    /// A domain with characters outside `[0-9A-Za-z._-]`.
    #[error("invalid domain name")]
    InvalidDomain,
    /// A domain longer than 255 bytes cannot be encoded.
    #[error("domain longer than 255 bytes")]
    DomainTooLong,
}

/// Encoded length of `port ‖ atype ‖ addr`.
pub fn encoded_len(addr: &Address) -> usize {
    3 + match addr {
        Address::Ip(IpAddr::V4(_)) => 4,
        Address::Ip(IpAddr::V6(_)) => 16,
        Address::Domain(d) => 1 + d.len(),
    }
}

/// Appends `port(BE u16) ‖ atype ‖ addr` to `out`.
pub fn put_port_addr(out: &mut Vec<u8>, port: u16, addr: &Address) -> Result<(), AddressError> {
    out.extend_from_slice(&port.to_be_bytes());
    put_addr(out, addr, [ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6])
}

/// Appends `atype ‖ addr` with the protocol's type bytes for `[IPv4, domain, IPv6]` (VMess and SOCKS
/// number them differently).
pub fn put_addr(out: &mut Vec<u8>, addr: &Address, types: [u8; 3]) -> Result<(), AddressError> {
    match addr {
        Address::Ip(IpAddr::V4(v4)) => {
            out.push(types[0]);
            out.extend_from_slice(&v4.octets());
        }
        Address::Ip(IpAddr::V6(v6)) => {
            out.push(types[2]);
            out.extend_from_slice(&v6.octets());
        }
        Address::Domain(d) => {
            let len = u8::try_from(d.len()).map_err(|_| AddressError::DomainTooLong)?;
            out.push(types[1]);
            out.push(len);
            out.extend_from_slice(d.as_bytes());
        }
    }
    Ok(())
}

/// Decodes `port ‖ atype ‖ addr` from the front of `buf`; returns the port, address and bytes consumed.
pub fn get_port_addr(buf: &[u8]) -> Result<(u16, Address, usize), AddressError> {
    if buf.len() < 3 {
        return Err(AddressError::Truncated);
    }
    let port = u16::from_be_bytes([buf[0], buf[1]]);
    let rest = &buf[3..];
    let (addr, used) = match buf[2] {
        ATYP_IPV4 => {
            let b: [u8; 4] =
                rest.get(..4).ok_or(AddressError::Truncated)?.try_into().map_err(|_| AddressError::Truncated)?;
            (Address::Ip(IpAddr::V4(Ipv4Addr::from(b))), 4)
        }
        ATYP_IPV6 => {
            let b: [u8; 16] =
                rest.get(..16).ok_or(AddressError::Truncated)?.try_into().map_err(|_| AddressError::Truncated)?;
            (Address::Ip(canonical_ip(IpAddr::V6(Ipv6Addr::from(b)))), 16)
        }
        ATYP_DOMAIN => {
            let len = *rest.first().ok_or(AddressError::Truncated)? as usize;
            let name = rest.get(1..1 + len).ok_or(AddressError::Truncated)?;
            (parse_domain(name)?, 1 + len)
        }
        other => return Err(AddressError::UnknownType(other)),
    };
    Ok((port, addr, 3 + used))
}

/// Go's rule: a domain that parses as an IP becomes one; otherwise only `[0-9A-Za-z._-]` is allowed.
pub fn parse_domain(name: &[u8]) -> Result<Address, AddressError> {
    let s = std::str::from_utf8(name).map_err(|_| AddressError::InvalidDomain)?;
    if s.starts_with(|c: char| c == '[' || c.is_ascii_digit())
        && let Ok(ip) = s.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(s).parse::<IpAddr>()
    {
        return Ok(Address::Ip(canonical_ip(ip)));
    }
    if !s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-') {
        return Err(AddressError::InvalidDomain);
    }
    Ok(Address::Domain(Arc::from(s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_ipv4_and_domain() {
        let mut out = Vec::new();
        put_port_addr(&mut out, 80, &Address::parse("127.0.0.1")).unwrap();
        assert_eq!(out, [0x00, 0x50, 0x01, 0x7f, 0, 0, 1]);
        out.clear();
        put_port_addr(&mut out, 0, &Address::parse("test.v2fly.org")).unwrap();
        assert_eq!(&out[..4], &[0x00, 0x00, 0x02, 0x0e]);
        assert_eq!(&out[4..], b"test.v2fly.org");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(get_port_addr(&[0, 80]), Err(AddressError::Truncated));
        assert_eq!(get_port_addr(&[0, 80, 9]), Err(AddressError::UnknownType(9)));
        assert_eq!(get_port_addr(&[0, 80, 2, 3, b'a', b' ', b'b']), Err(AddressError::InvalidDomain));
        assert_eq!(get_port_addr(&[0, 80, 2, 5, b'a']), Err(AddressError::Truncated));
    }

    #[test]
    fn ip_shaped_domain_and_mapped_v6_become_ipv4() {
        let (_, a, _) = get_port_addr(&[0, 1, 2, 7, b'1', b'.', b'2', b'.', b'3', b'.', b'4']).unwrap();
        assert_eq!(a, Address::parse("1.2.3.4"));
        let mut b = vec![0, 1, 3];
        b.extend_from_slice(&"::ffff:1.2.3.4".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(get_port_addr(&b).unwrap().1, Address::parse("1.2.3.4"));
    }

    proptest! {
        #[test]
        fn roundtrip(port: u16, v4: [u8; 4], dom in "[a-z0-9._-]{1,60}", pick in 0..2u8) {
            let addr = if pick == 0 || dom.starts_with(|c: char| c.is_ascii_digit()) {
                Address::Ip(IpAddr::V4(Ipv4Addr::from(v4)))
            } else {
                Address::Domain(Arc::from(dom.as_str()))
            };
            let mut out = Vec::new();
            put_port_addr(&mut out, port, &addr).unwrap();
            prop_assert_eq!(out.len(), encoded_len(&addr));
            out.extend_from_slice(b"trailing");
            let (p, a, used) = get_port_addr(&out).unwrap();
            prop_assert_eq!((p, a, used), (port, addr.clone(), encoded_len(&addr)));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = get_port_addr(&bytes);
        }
    }
}
