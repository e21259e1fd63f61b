//! Pure parsers for the string forms V2Ray accepts (ports, UUIDs, host:port, CIDRs).

use std::net::IpAddr;

use ipnet::IpNet;

/// `common/uuid/uuid.go ParseString`: 32 hex digits in 8-4-4-4-12 groups, each optionally preceded by
/// one `-`; anything after the last group is ignored. The error never repeats the text (it is a secret).
pub(crate) fn parse_uuid(text: &str) -> Result<[u8; 16], &'static str> {
    let mut rest = text.as_bytes();
    if rest.len() < 32 {
        return Err("invalid UUID: shorter than 32 characters");
    }
    let mut out = [0u8; 16];
    let mut o = 0;
    for group in [8usize, 4, 4, 4, 12] {
        if rest.first() == Some(&b'-') {
            rest = &rest[1..];
        }
        let digits = rest.get(..group).ok_or("invalid UUID: too short")?;
        for pair in digits.chunks(2) {
            let hex = |b: u8| (b as char).to_digit(16).ok_or("invalid UUID: not a hexadecimal digit");
            out[o] = (hex(pair[0])? * 16 + hex(pair[1])?) as u8;
            o += 1;
        }
        rest = &rest[group..];
    }
    Ok(out)
}

/// Go `net.PortFromString`: a decimal u32 that must be ≤ 65535.
pub(crate) fn parse_port(s: &str) -> Result<u16, String> {
    let v: u32 = s.parse().map_err(|_| format!("invalid port {s:?}"))?;
    u16::try_from(v).map_err(|_| format!("port {v} is out of range (0-65535)"))
}

/// An inbound `port` string: `"N"`, `"A-B"` or `"env:VAR"` (the variable then holds one of the others).
/// `env` looks variables up (injected so tests need not touch the process environment).
pub(crate) fn parse_port_range(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<(u16, u16), String> {
    let owned;
    let s = match s.strip_prefix("env:") {
        Some(var) => {
            owned = env(var).unwrap_or_default();
            if owned.is_empty() {
                return Err(format!("environment variable {var:?} is not set or empty"));
            }
            owned.as_str()
        }
        None => s,
    };
    let (from, to) = match s.split_once('-') {
        Some((a, b)) => (parse_port(a)?, parse_port(b)?),
        None => {
            let p = parse_port(s)?;
            (p, p)
        }
    };
    if from > to {
        return Err(format!("invalid port range {from} -> {to}"));
    }
    Ok((from, to))
}

/// A routing port list: `"53,443,1000-2000"` (entries trimmed, empty entries skipped).
pub(crate) fn parse_port_list(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        out.push(parse_port_range(entry, |_| None)?);
    }
    Ok(out)
}

/// Go `net.SplitHostPort` followed by `PortFromString`: `host:port`, `:port`, `[v6]:port`.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| format!("missing ']' in address {s:?}"))?;
        let port = after.strip_prefix(':').ok_or_else(|| format!("missing port in address {s:?}"))?;
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("missing port in address {s:?}"))?;
        if host.contains(':') {
            return Err(format!("too many colons in address {s:?}"));
        }
        (host, port)
    };
    if host.contains('[') || host.contains(']') || port.contains('[') || port.contains(']') {
        return Err(format!("unexpected bracket in address {s:?}"));
    }
    Ok((host, parse_port(port)?))
}

/// A routing IP: `1.2.3.4`, `10.0.0.0/8`, an IPv6 address or CIDR (as `router.go ParseIP`).
pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let (addr, mask) = match s.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (s, None),
    };
    let bare = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    let ip: IpAddr = bare.parse().map_err(|_| format!("invalid IP address {addr:?}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match mask {
        None => max,
        Some(m) => m.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| format!("invalid network mask {m:?}"))?,
    };
    IpNet::new(ip, bits).map(|n| n.trunc()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_like_go() {
        let want = [0x27, 0x84, 0x87, 0x39, 0x7e, 0x62, 0x41, 0x38, 0x9f, 0xd3, 0x09, 0x8a, 0x63, 0x96, 0x4b, 0x6b];
        assert_eq!(parse_uuid("27848739-7e62-4138-9fd3-098a63964b6b"), Ok(want));
        assert_eq!(parse_uuid("278487397e6241389fd3098a63964b6b"), Ok(want));
        assert_eq!(parse_uuid("27848739-7E62-4138-9FD3-098A63964B6B"), Ok(want));
        // Trailing text is ignored, as in 4.34.
        assert_eq!(parse_uuid("27848739-7e62-4138-9fd3-098a63964b6bEXTRA"), Ok(want));
        assert!(parse_uuid("27848739-7e62-4138-9fd3-098a63964b6").is_err());
        assert!(parse_uuid("not-a-uuid-at-all-but-long-enough-xx").is_err());
        assert!(parse_uuid("").is_err());
        // Dashes may be skipped only once per group: 32+ characters yet too short after them.
        assert!(parse_uuid("--------------------------------").is_err());
        assert!(parse_uuid("27848739--7e62-4138-9fd3-098a63964b6b").is_err());
    }

    #[test]
    fn port_ranges() {
        let none = |_: &str| None;
        assert_eq!(parse_port_range("80", none), Ok((80, 80)));
        assert_eq!(parse_port_range("1000-2000", none), Ok((1000, 2000)));
        assert!(parse_port_range("2000-1000", none).is_err());
        assert!(parse_port_range("70000", none).is_err());
        assert!(parse_port_range("x", none).is_err());
        assert!(parse_port_range("1-", none).is_err());
        assert_eq!(parse_port_range("env:P", |v| (v == "P").then(|| "8080".to_string())), Ok((8080, 8080)));
        assert!(parse_port_range("env:NOPE", none).is_err());
        assert_eq!(parse_port_list("53, 443,1000-2000,"), Ok(vec![(53, 53), (443, 443), (1000, 2000)]));
        assert!(parse_port_list("53,9-1").is_err());
    }

    #[test]
    fn redirect_split() {
        assert_eq!(split_host_port("127.0.0.1:8080"), Ok(("127.0.0.1", 8080)));
        assert_eq!(split_host_port(":80"), Ok(("", 80)));
        assert_eq!(split_host_port("[::1]:80"), Ok(("::1", 80)));
        assert_eq!(split_host_port("example.com:0"), Ok(("example.com", 0)));
        assert!(split_host_port("127.0.0.1").is_err());
        assert!(split_host_port("::1:80").is_err());
        assert!(split_host_port("host:").is_err());
        assert!(split_host_port("host:99999").is_err());
        assert!(split_host_port("[::1]80").is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_cidr("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert!(parse_cidr("1.2.3.4/33").is_err());
        assert!(parse_cidr("example.com").is_err());
    }
}
