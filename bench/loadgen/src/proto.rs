//! The tiny wire protocol between the load generator and its service, and the byte pattern
//! used to verify every bulk byte.
//!
//! Every connection starts with a 13-byte header: `mode (1) | n (u64 BE) | seed (u32 BE)`.
//! * `E` echo: the service echoes everything until EOF (`n`, `seed` unused).
//! * `U` upload: the client sends `n` pattern bytes; the service verifies them and answers
//!   `status (1: 0 ok, 1 mismatch) | count (u64 BE)`. The reply tells the client that every byte
//!   arrived, so no half-close is needed (V2Ray's reverse tunnel does not forward half-close).
//! * `D` download: the service sends `n` pattern bytes; the client verifies them.

use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MODE_ECHO: u8 = b'E';
pub const MODE_UPLOAD: u8 = b'U';
pub const MODE_DOWNLOAD: u8 = b'D';
pub const HEADER_LEN: usize = 13;
pub const REPLY_LEN: usize = 9;

/// Period of the pattern. A prime, so it never lines up with any chunk or frame size of the
/// tunnel: a dropped, duplicated or reordered chunk shifts the pattern and is caught.
pub const PERIOD: usize = 65_521;

/// A transfer that makes no progress for this long is an error, not a hang.
pub const IDLE: Duration = Duration::from_secs(15);

/// Largest bulk transfer accepted from a peer (bounds what a confused client can ask for).
pub const MAX_BULK: u64 = 64 << 30;

/// Longest slice compared or written at once: big enough that syscalls, not the tunnel, are
/// rare (the load generator shares the CPUs with what it measures).
pub const WINDOW: usize = 4 * PERIOD;

/// `PERIOD + WINDOW` bytes (the period repeated), so any window of up to `WINDOW` bytes starting
/// at any phase is one contiguous slice (one memcmp or one write per window).
pub fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut v = Vec::with_capacity(2 * PERIOD);
        for _ in 0..PERIOD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push((x >> 32) as u8);
        }
        while v.len() < PERIOD + WINDOW {
            v.extend_from_within(..PERIOD);
        }
        v
    })
}

/// Phase of the stream with this seed at byte offset `off`.
fn phase(seed: u32, off: u64) -> usize {
    ((seed as u64 + off) % PERIOD as u64) as usize
}

/// True when `data` is exactly the pattern of stream `seed` starting at offset `off`.
pub fn check(seed: u32, mut off: u64, mut data: &[u8]) -> bool {
    let p = pattern();
    while !data.is_empty() {
        let o = phase(seed, off);
        let n = data.len().min(WINDOW);
        if data[..n] != p[o..o + n] {
            return false;
        }
        data = &data[n..];
        off += n as u64;
    }
    true
}

pub fn header(mode: u8, n: u64, seed: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = mode;
    h[1..9].copy_from_slice(&n.to_be_bytes());
    h[9..13].copy_from_slice(&seed.to_be_bytes());
    h
}

pub fn parse_header(h: &[u8; HEADER_LEN]) -> (u8, u64, u32) {
    let mut n = [0u8; 8];
    n.copy_from_slice(&h[1..9]);
    let mut s = [0u8; 4];
    s.copy_from_slice(&h[9..13]);
    (h[0], u64::from_be_bytes(n), u32::from_be_bytes(s))
}

pub fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// `read_exact` with an idle deadline.
pub async fn read_exact_t<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8], what: &str) -> io::Result<()> {
    match tokio::time::timeout(IDLE, r.read_exact(buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(err(format!("{what}: {e}"))),
        Err(_) => Err(err(format!("{what}: no data for {IDLE:?}"))),
    }
}

/// Writes `n` pattern bytes of stream `seed` with an idle deadline per write.
pub async fn send_pattern<W: AsyncWrite + Unpin>(w: &mut W, seed: u32, n: u64) -> io::Result<()> {
    let p = pattern();
    let mut off = 0u64;
    while off < n {
        let o = phase(seed, off);
        // At most one window per write keeps the slice inside the buffer.
        let len = (n - off).min(WINDOW as u64) as usize;
        match tokio::time::timeout(IDLE, w.write_all(&p[o..o + len])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(err(format!("sending at byte {off}: {e}"))),
            Err(_) => return Err(err(format!("sending at byte {off}: stalled for {IDLE:?}"))),
        }
        off += len as u64;
    }
    Ok(())
}

/// Reads exactly `n` bytes of stream `seed`, verifying content. Returns bytes read on success.
pub async fn recv_pattern<R: AsyncRead + Unpin>(r: &mut R, seed: u32, n: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; WINDOW];
    let mut off = 0u64;
    while off < n {
        let want = (n - off).min(buf.len() as u64) as usize;
        let got = match tokio::time::timeout(IDLE, r.read(&mut buf[..want])).await {
            Ok(Ok(0)) => return Err(err(format!("EOF after {off} of {n} bytes"))),
            Ok(Ok(k)) => k,
            Ok(Err(e)) => return Err(err(format!("receiving at byte {off}: {e}"))),
            Err(_) => return Err(err(format!("receiving at byte {off}: no data for {IDLE:?}"))),
        };
        if !check(seed, off, &buf[..got]) {
            return Err(err(format!("content mismatch in bytes {off}..{}", off + got as u64)));
        }
        off += got as u64;
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_windows_check() {
        let p = pattern();
        assert_eq!(p.len(), PERIOD + WINDOW);
        assert_eq!(p[..PERIOD], p[PERIOD..2 * PERIOD]);
        let seed = 12345;
        // Build 3 periods of stream `seed` byte by byte and check it in odd-sized pieces.
        let s: Vec<u8> = (0..9 * PERIOD as u64).map(|i| p[phase(seed, i)]).collect();
        let mut off = 0;
        for piece in s.chunks(300_000) {
            assert!(check(seed, off, piece));
            off += piece.len() as u64;
        }
        let mut bad = s.clone();
        bad[70_000] ^= 1;
        assert!(!check(seed, 0, &bad));
        assert!(!check(seed + 1, 0, &s[..100]));
    }

    #[test]
    fn header_roundtrip() {
        let h = header(MODE_UPLOAD, 1 << 40, 77);
        assert_eq!(parse_header(&h), (MODE_UPLOAD, 1 << 40, 77));
    }
}
