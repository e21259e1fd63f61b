//! Sniffers of the first uplink bytes (PROXIES.md §5.3–§5.5): HTTP Host, TLS SNI, BitTorrent. Pure:
//! no I/O. Not wired into the dispatcher yet (see docs/CONFIG.md, `sniffing`).

/// What a sniffer says about the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A definite result: the protocol name (`http1`, `tls`, `bittorrent`) and the domain, if any.
    Found {
        /// Protocol name as the `protocol` routing condition sees it.
        protocol: &'static str,
        /// Host from `Host` (lowercased, port dropped) or SNI (case kept).
        domain: Option<String>,
    },
    /// Could still match with more bytes.
    NeedMore,
    /// Cannot be this protocol.
    No,
}

const METHODS: [&[u8]; 7] = [b"get", b"post", b"head", b"put", b"delete", b"options", b"connect"];

/// The HTTP sniffer, with oxray's deviation: the header block ends at the first empty line (`\r\n` or
/// `\n`) and the first `Host` wins (4.34 reads on into the body and takes the last).
pub fn http(data: &[u8]) -> Sniffed {
    let starts = METHODS.iter().any(|m| data.len() >= m.len() && data[..m.len()].eq_ignore_ascii_case(m));
    if !starts {
        let prefix = METHODS.iter().any(|m| data.len() < m.len() && m[..data.len()].eq_ignore_ascii_case(data));
        return if prefix { Sniffed::NeedMore } else { Sniffed::No };
    }
    // Only complete lines count: a Host line still arriving could be cut short.
    let mut lines = data.split_inclusive(|&c| c == b'\n').filter_map(|l| l.strip_suffix(b"\n"));
    lines.next();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Sniffed::No;
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else { continue };
        if !line[..colon].eq_ignore_ascii_case(b"host") {
            continue;
        }
        let Ok(value) = std::str::from_utf8(&line[colon + 1..]) else { return Sniffed::No };
        let value = value.trim().to_ascii_lowercase();
        let host = match value.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((h, _)) => h.to_string(),
                None => return Sniffed::No,
            },
            None => value.rsplit_once(':').map_or(value.as_str(), |(h, _)| h).to_string(),
        };
        if host.is_empty() {
            return Sniffed::No;
        }
        return Sniffed::Found { protocol: "http1", domain: Some(host) };
    }
    Sniffed::NeedMore
}

/// The TLS sniffer: the SNI of a ClientHello whose first record is complete in `data` (case kept).
pub fn tls(data: &[u8]) -> Sniffed {
    if data.is_empty() {
        return Sniffed::NeedMore;
    }
    if data[0] != 0x16 || data.get(1).is_some_and(|&v| v != 3) {
        return Sniffed::No;
    }
    if data.len() < 5 {
        return Sniffed::NeedMore;
    }
    let len = u16::from_be_bytes([data[3], data[4]]) as usize;
    let Some(record) = data.get(5..5 + len) else { return Sniffed::NeedMore };
    match client_hello_sni(record) {
        Some(sni) => Sniffed::Found { protocol: "tls", domain: Some(sni) },
        None => Sniffed::No,
    }
}

fn client_hello_sni(h: &[u8]) -> Option<String> {
    // handshake type(1) len(3) version(2) random(32)
    let mut p = 38;
    let sid = *h.get(p)? as usize;
    if sid > 32 {
        return None;
    }
    p += 1 + sid;
    let cs = u16::from_be_bytes([*h.get(p)?, *h.get(p + 1)?]) as usize;
    if !cs.is_multiple_of(2) {
        return None;
    }
    p += 2 + cs;
    let comp = *h.get(p)? as usize;
    p += 1 + comp;
    let ext_len = u16::from_be_bytes([*h.get(p)?, *h.get(p + 1)?]) as usize;
    p += 2;
    if p + ext_len != h.len() {
        return None;
    }
    while p + 4 <= h.len() {
        let ty = u16::from_be_bytes([h[p], h[p + 1]]);
        let l = u16::from_be_bytes([h[p + 2], h[p + 3]]) as usize;
        let body = h.get(p + 4..p + 4 + l)?;
        if ty == 0 {
            // server_name_list: len(2), then entries type(1) len(2) name
            let mut q = 2;
            while q + 3 <= body.len() {
                let nt = body[q];
                let nl = u16::from_be_bytes([body[q + 1], body[q + 2]]) as usize;
                let name = body.get(q + 3..q + 3 + nl)?;
                if nt == 0 {
                    let s = std::str::from_utf8(name).ok()?;
                    if s.is_empty() || s.ends_with('.') {
                        return None;
                    }
                    return Some(s.to_string());
                }
                q += 3 + nl;
            }
            return None;
        }
        p += 4 + l;
    }
    None
}

/// The BitTorrent handshake sniffer (no domain: usable only by `protocol` rules).
pub fn bittorrent(data: &[u8]) -> Sniffed {
    const MAGIC: &[u8] = b"\x13BitTorrent protocol";
    if data.len() < MAGIC.len() {
        return if MAGIC.starts_with(data) { Sniffed::NeedMore } else { Sniffed::No };
    }
    if data.starts_with(MAGIC) { Sniffed::Found { protocol: "bittorrent", domain: None } } else { Sniffed::No }
}

/// Runs the sniffers in 4.34's order (HTTP, TLS, BitTorrent) on the bytes so far.
pub fn sniff(data: &[u8]) -> Sniffed {
    let mut need = false;
    for s in [http, tls, bittorrent] {
        match s(data) {
            found @ Sniffed::Found { .. } => return found,
            Sniffed::NeedMore => need = true,
            Sniffed::No => {}
        }
    }
    if need { Sniffed::NeedMore } else { Sniffed::No }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn found(p: &'static str, d: &str) -> Sniffed {
        Sniffed::Found { protocol: p, domain: Some(d.to_string()) }
    }

    #[test]
    fn http_host() {
        assert_eq!(http(b"GET / HTTP/1.1\r\nHost: BLOCKED.TEST:9999\r\n\r\n"), found("http1", "blocked.test"));
        assert_eq!(http(b"GETX / HTTP/1.1\r\nHost: a\r\n"), found("http1", "a"));
        assert_eq!(http(b"PATCH / HTTP/1.1\r\nHost: a\r\n"), Sniffed::No);
        assert_eq!(http(b"po"), Sniffed::NeedMore);
        assert_eq!(http(b"GET / HTTP/1.1\r\nAccept: x\r\n"), Sniffed::NeedMore);
        assert_eq!(http(b"GET / HTTP/1.1\r\nHost :a\r\n"), Sniffed::NeedMore);
        assert_eq!(http(b"GET / HTTP/1.1\r\nHost: exa"), Sniffed::NeedMore);
        assert_eq!(http(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n"), found("http1", "::1"));
        // The header block ends at the blank line: a Host in the body does not count.
        assert_eq!(http(b"POST / HTTP/1.1\r\nX: y\r\n\r\nHost: evil\r\n"), Sniffed::No);
    }

    fn client_hello(sni: &str) -> Vec<u8> {
        let name = sni.as_bytes();
        let mut sn = vec![];
        sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sn.push(0);
        sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sn.extend_from_slice(name);
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(sn.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sn);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn tls_sni_keeps_case_and_needs_the_whole_record() {
        let ch = client_hello("SNI.TEST");
        assert_eq!(tls(&ch), found("tls", "SNI.TEST"));
        assert_eq!(tls(&ch[..ch.len() - 1]), Sniffed::NeedMore);
        assert_eq!(tls(&client_hello("x.")), Sniffed::No);
        assert_eq!(sniff(&ch), found("tls", "SNI.TEST"));
        assert_eq!(sniff(b"\x13BitTorrent protocol\x00"), Sniffed::Found { protocol: "bittorrent", domain: None });
        assert_eq!(sniff(b"SSH-2.0-x\r\n"), Sniffed::No);
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = sniff(&data);
        }

        #[test]
        fn truncated_hello_needs_more(cut in 0usize..60) {
            let ch = client_hello("example.com");
            let cut = cut.min(ch.len() - 1);
            prop_assert_eq!(tls(&ch[..cut]), Sniffed::NeedMore);
        }
    }
}
