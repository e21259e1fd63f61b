//! Sniffers of the first uplink bytes (PROXIES.md §5.3–§5.5): HTTP Host, TLS SNI, BitTorrent, and the
//! bounded read the dispatcher runs them on ([`sniff_stream`], §5.2). The sniffers themselves are pure.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::BoxStream;
use super::prefixed::Prefixed;

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

/// 4.34's read attempts: at most two reads, each waiting at most [`SNIFF_WAIT`] for data.
pub const SNIFF_ATTEMPTS: usize = 2;
/// How long one attempt waits for data (returning as soon as some is there).
pub const SNIFF_WAIT: Duration = Duration::from_millis(100);
/// The sniffing window: bytes past it are never read before routing.
pub const SNIFF_WINDOW: usize = 2048;

type SnifferFn = fn(&[u8]) -> Sniffed;

/// The sniffers still undecided, as 4.34 keeps them between attempts: one that said "not this
/// protocol" is not asked again.
pub struct Sniffer {
    pending: Vec<SnifferFn>,
}

impl Default for Sniffer {
    fn default() -> Self {
        Sniffer { pending: vec![http, tls, bittorrent] }
    }
}

impl Sniffer {
    /// Runs the undecided sniffers, in order, on all bytes so far.
    pub fn sniff(&mut self, data: &[u8]) -> Sniffed {
        let mut still = Vec::with_capacity(self.pending.len());
        for s in &self.pending {
            match s(data) {
                found @ Sniffed::Found { .. } => return found,
                Sniffed::NeedMore => still.push(*s),
                Sniffed::No => {}
            }
        }
        self.pending = still;
        if self.pending.is_empty() { Sniffed::No } else { Sniffed::NeedMore }
    }
}

/// What [`sniff_stream`] learnt: the protocol and domain, if a sniffer recognised the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniffResult {
    /// `http1`, `tls` or `bittorrent`.
    pub protocol: &'static str,
    /// Host or SNI (None for BitTorrent).
    pub domain: Option<String>,
}

/// Reads the first uplink bytes of `stream` as 4.34's dispatcher does (at most [`SNIFF_ATTEMPTS`] reads
/// of at most [`SNIFF_WAIT`] each, into at most [`SNIFF_WINDOW`] bytes) and sniffs them. Returns a stream
/// that replays every byte read before the rest, so what is relayed is exactly what arrived; a timeout,
/// EOF or read error only ends sniffing (the relay meets the EOF or error itself on its next read).
pub async fn sniff_stream(mut stream: BoxStream) -> (BoxStream, Option<SniffResult>) {
    let mut buf = vec![0u8; SNIFF_WINDOW];
    let mut len = 0;
    let mut sniffer = Sniffer::default();
    let mut result = None;
    for _ in 0..SNIFF_ATTEMPTS {
        match tokio::time::timeout(SNIFF_WAIT, stream.read(&mut buf[len..])).await {
            Ok(Ok(n)) if n > 0 => len += n,
            Ok(_) => break,
            Err(_) => continue,
        }
        match sniffer.sniff(&buf[..len]) {
            Sniffed::Found { protocol, domain } => {
                result = Some(SniffResult { protocol, domain });
                break;
            }
            Sniffed::No => break,
            Sniffed::NeedMore if len == SNIFF_WINDOW => break,
            Sniffed::NeedMore => {}
        }
    }
    if len == 0 {
        return (stream, result);
    }
    buf.truncate(len);
    (Box::new(Prefixed::new(buf, stream)), result)
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

    use tokio::io::AsyncWriteExt;

    /// Runs `sniff_stream` on a pipe whose peer writes `pieces` (each after its delay), then reads all
    /// that comes out of the returned stream. Time is paused, so the delays are exact.
    async fn through(pieces: Vec<(u64, Vec<u8>)>) -> (Option<SniffResult>, Vec<u8>, Duration) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            for (delay, p) in pieces {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                client.write_all(&p).await.unwrap();
            }
            client.shutdown().await.unwrap();
        });
        let start = tokio::time::Instant::now();
        let (mut stream, result) = sniff_stream(Box::new(server)).await;
        let took = start.elapsed();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        writer.await.unwrap();
        (result, all, took)
    }

    fn result(p: &'static str, d: &str) -> Option<SniffResult> {
        Some(SniffResult { protocol: p, domain: Some(d.to_string()) })
    }

    #[tokio::test(start_paused = true)]
    async fn stream_sniffing_replays_every_byte() {
        let ch = client_hello("sni.test");
        let mut tail = ch.clone();
        tail.extend_from_slice(&[0xAB; 5000]);
        let (r, all, took) = through(vec![(0, tail.clone())]).await;
        assert_eq!(r, result("tls", "sni.test"));
        assert_eq!(all, tail);
        assert!(took < Duration::from_millis(1), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn stream_sniffing_waits_at_most_two_attempts() {
        // Silent client (server speaks first): two 100 ms waits, then routed as is.
        let (r, all, took) = through(vec![(1000, b"late".to_vec())]).await;
        assert_eq!((r, all.as_slice()), (None, &b"late"[..]));
        assert_eq!(took, 2 * SNIFF_WAIT);
        // A ClientHello split with a 50 ms gap is sniffed, with a 300 ms gap it is not (4.34 alike).
        let ch = client_hello("sni.test");
        let (a, b) = ch.split_at(40);
        let (r, all, took) = through(vec![(0, a.to_vec()), (50, b.to_vec())]).await;
        assert_eq!((r, &all, took), (result("tls", "sni.test"), &ch, Duration::from_millis(50)));
        let (r, all, took) = through(vec![(0, a.to_vec()), (300, b.to_vec())]).await;
        assert_eq!((r, &all, took), (None, &ch, SNIFF_WAIT));
        // A Host line 50 ms late is found; EOF ends sniffing at once.
        let (r, _, _) =
            through(vec![(0, b"GET / HTTP/1.1\r\n".to_vec()), (50, b"Host: a.test\r\n\r\n".to_vec())]).await;
        assert_eq!(r, result("http1", "a.test"));
        let (r, all, took) = through(vec![(0, b"GET / HTTP/1.1\r\n".to_vec())]).await;
        assert_eq!((r, all.as_slice(), took), (None, &b"GET / HTTP/1.1\r\n"[..], Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn stream_sniffing_reads_at_most_the_window() {
        // A ClientHello record longer than the window is never sniffed, and no byte is lost.
        let mut big = client_hello("sni.test");
        let extra = SNIFF_WINDOW;
        let len = u16::from_be_bytes([big[3], big[4]]) as usize + extra;
        big[3..5].copy_from_slice(&(len as u16).to_be_bytes());
        big.extend_from_slice(&vec![0; extra]);
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&big).await.unwrap();
        let (mut stream, r) = sniff_stream(Box::new(server)).await;
        assert_eq!(r, None);
        // Only the window was read: the rest is still in the pipe, behind the replayed prefix.
        drop(client);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, big);
    }

    #[test]
    fn a_sniffer_that_said_no_is_not_asked_again() {
        let mut s = Sniffer::default();
        // "\x16\x03" rules out HTTP and BitTorrent; TLS needs more.
        assert_eq!(s.sniff(b"\x16\x03"), Sniffed::NeedMore);
        assert_eq!(s.pending.len(), 1);
        assert_eq!(s.sniff(b"\x16\x04"), Sniffed::No);
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
