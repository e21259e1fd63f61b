//! Shadowsocks AEAD (PROXIES.md §1): keys, the TCP chunk stream and the UDP packet. Pure: no I/O.

use aws_lc_rs::hkdf;
use bytes::{Buf, Bytes, BytesMut};
use md5::{Digest, Md5};

use crate::proxy::aead::{self, Alg};

/// AEAD tag size of every method.
pub const TAG: usize = 16;
/// Largest payload per chunk oxray writes and accepts (SIP004's 0x3FFF; 4.34 writes ≤ 2014).
pub const MAX_PAYLOAD: usize = 0x3fff;

/// A Shadowsocks method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `aes-128-gcm`.
    Aes128Gcm,
    /// `aes-256-gcm`.
    Aes256Gcm,
    /// `chacha20-poly1305` / `chacha20-ietf-poly1305`.
    Chacha20Poly1305,
    /// `none` / `plain`: no encryption, no framing.
    None,
}

impl Method {
    /// Parses a method name as 4.34 does (any case, with its aliases).
    pub fn parse(name: &str) -> Option<Method> {
        Some(match name.to_ascii_lowercase().as_str() {
            "aes-128-gcm" | "aead_aes_128_gcm" => Method::Aes128Gcm,
            "aes-256-gcm" | "aead_aes_256_gcm" => Method::Aes256Gcm,
            "chacha20-poly1305" | "aead_chacha20_poly1305" | "chacha20-ietf-poly1305" => Method::Chacha20Poly1305,
            "none" | "plain" => Method::None,
            _ => return None,
        })
    }

    /// Key size = salt size.
    pub fn key_len(self) -> usize {
        match self {
            Method::Aes128Gcm => 16,
            Method::Aes256Gcm | Method::Chacha20Poly1305 => 32,
            Method::None => 0,
        }
    }

    fn alg(self) -> Option<Alg> {
        match self {
            Method::Aes128Gcm => Some(Alg::Aes128Gcm),
            Method::Aes256Gcm => Some(Alg::Aes256Gcm),
            Method::Chacha20Poly1305 => Some(Alg::Chacha20Poly1305),
            Method::None => None,
        }
    }
}

/// Why Shadowsocks bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsError {
    /// A tag did not verify (wrong key, tampering).
    #[error("cipher: message authentication failed")]
    Auth,
    /// A length field above [`MAX_PAYLOAD`].
    #[error("chunk length {0} above the 0x3FFF limit")]
    TooLong(usize),
    /// A datagram too short for salt, header and tag.
    #[error("packet too short")]
    Short,
    /// The buffer given to [`Encoder::encode_into`] is too small (a caller's bug, never the peer's).
    #[error("no room to seal: {need} bytes needed, {have} given")]
    NoRoom {
        /// Bytes given.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The cipher refused to seal (only for inputs far above a chunk's size).
    #[error("cipher: sealing failed")]
    Seal,
}

/// OpenSSL `EVP_BytesToKey(MD5)` without salt: the master key of a password.
pub fn master_key(password: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut prev: Vec<u8> = Vec::new();
    while out.len() < len {
        let mut h = Md5::new();
        h.update(&prev);
        h.update(password.as_bytes());
        prev = h.finalize().to_vec();
        out.extend_from_slice(&prev);
    }
    out.truncate(len);
    out
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA1(master, salt, "ss-subkey").
pub fn subkey(master: &[u8], salt: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; master.len()];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA1_FOR_LEGACY_USE_ONLY, salt).extract(master);
    // Expanding to ≤ 32 bytes from SHA-1 (limit 255 × 20) cannot fail.
    if let Ok(okm) = prk.expand(&[b"ss-subkey"], Len(out.len())) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// One direction's AEAD with its little-endian nonce counter.
struct Aead {
    key: aead::Key,
    nonce: [u8; 12],
}

impl Aead {
    fn new(method: Method, master: &[u8], salt: &[u8]) -> Option<Aead> {
        let alg = method.alg()?;
        let key = aead::Key::new(alg, &subkey(master, salt))?;
        Some(Aead { key, nonce: [0; 12] })
    }

    fn next_nonce(&mut self) -> [u8; 12] {
        let n = self.nonce;
        for b in self.nonce.iter_mut() {
            *b = b.wrapping_add(1);
            if *b != 0 {
                break;
            }
        }
        n
    }

    /// Seals `plain` on its way to the front of `out` (ciphertext, then tag); returns the bytes written.
    fn seal_to(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, SsError> {
        let n = plain.len();
        let Some(out) = out.get_mut(..n + TAG) else { return Err(SsError::NoRoom { have: out.len(), need: n + TAG }) };
        let (sealed, tag) = out.split_at_mut(n);
        let nonce = self.next_nonce();
        self.key.seal_to(nonce, plain, sealed, tag).map_err(|_| SsError::Seal)?;
        Ok(n + TAG)
    }

    /// Appends `plain` sealed (a datagram's body).
    fn seal_append(&mut self, plain: &[u8], out: &mut BytesMut) {
        let start = out.len();
        out.resize(start + plain.len() + TAG, 0);
        // Sealing fails only for inputs over AEAD limits (GiB), never for a datagram.
        let n = self.seal_to(plain, &mut out[start..]).unwrap_or(0);
        out.truncate(start + n);
    }

    fn open(&mut self, block: &mut [u8]) -> Result<usize, SsError> {
        let nonce = self.next_nonce();
        self.key.open_in_place(nonce, block).map_err(|_| SsError::Auth)
    }

    /// Opens `block` (ciphertext, then tag) into the front of `out`, which has room for its plaintext.
    fn open_to(&mut self, block: &[u8], out: &mut [u8]) -> Result<usize, SsError> {
        let nonce = self.next_nonce();
        let n = block.len().checked_sub(TAG).ok_or(SsError::Auth)?;
        let (sealed, tag) = block.split_at(n);
        let plain = out.get_mut(..n).ok_or(SsError::Auth)?;
        self.key.open_to(nonce, sealed, tag, plain).map_err(|_| SsError::Auth)?;
        Ok(n)
    }
}

/// Encrypts one direction of a TCP stream: the salt before the first chunk, then chunks.
pub struct Encoder {
    method: Method,
    aead: Option<Aead>,
    salt: Option<Vec<u8>>,
}

impl Encoder {
    /// An encoder with a random salt.
    pub fn new(method: Method, master: &[u8]) -> Encoder {
        let mut salt = vec![0u8; method.key_len()];
        let _ = aws_lc_rs::rand::fill(&mut salt);
        Encoder::with_salt(method, master, salt)
    }

    /// An encoder with a given salt (test vectors).
    pub fn with_salt(method: Method, master: &[u8], salt: Vec<u8>) -> Encoder {
        let aead = Aead::new(method, master, &salt);
        Encoder { method, aead, salt: Some(salt) }
    }

    /// Appends `data` as chunks (never an empty one: a zero length ends a 4.34 reader's stream).
    pub fn encode(&mut self, data: &[u8], out: &mut BytesMut) {
        let start = out.len();
        out.resize(start + self.encoded_len(data.len()), 0);
        // Sealing fails only for inputs over AEAD limits (GiB), never for a chunk.
        let n = self.encode_into(data, &mut out[start..]).unwrap_or(0);
        out.truncate(start + n);
    }

    /// What [`Encoder::encode_into`] writes for `n` bytes of data (with the salt, before the first chunk).
    pub fn encoded_len(&self, n: usize) -> usize {
        let salt = self.salt.as_ref().map_or(0, Vec::len);
        let framing = if self.aead.is_some() { n.div_ceil(MAX_PAYLOAD) * (2 + 2 * TAG) } else { 0 };
        salt + n + framing
    }

    /// Writes `data` as chunks at the front of `out` (which needs [`Encoder::encoded_len`] bytes) and
    /// returns how many bytes it wrote. Each piece is sealed on its way into `out`, with no copy first.
    pub fn encode_into(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, SsError> {
        let need = self.encoded_len(data.len());
        if out.len() < need {
            return Err(SsError::NoRoom { have: out.len(), need });
        }
        let mut pos = 0;
        if let Some(salt) = self.salt.take() {
            out[..salt.len()].copy_from_slice(&salt);
            pos = salt.len();
        }
        let Some(aead) = &mut self.aead else {
            out[pos..pos + data.len()].copy_from_slice(data);
            return Ok(pos + data.len());
        };
        for piece in data.chunks(MAX_PAYLOAD) {
            pos += aead.seal_to(&(piece.len() as u16).to_be_bytes(), &mut out[pos..])?;
            pos += aead.seal_to(piece, &mut out[pos..])?;
        }
        Ok(pos)
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecState {
    Salt,
    Length,
    Payload(usize),
    End,
}

/// Decrypts one direction of a TCP stream.
pub struct Decoder {
    method: Method,
    master: Vec<u8>,
    aead: Option<Aead>,
    state: DecState,
}

/// One step of the decoder.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Plaintext of one chunk (or of raw bytes with `none`).
    Data(Bytes),
    /// The stream ended (a zero-length chunk, as a 4.34 reader treats it).
    End,
}

/// One step of [`Decoder::decode_in_place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InPlace {
    /// More bytes are needed; `used` were consumed (salt, length blocks).
    Need {
        /// Bytes consumed from the front.
        used: usize,
    },
    /// One chunk's plaintext, opened into the first `n` bytes of the `out` of [`Decoder::decode_to`].
    Opened {
        /// Bytes consumed from the front (through this chunk's tag).
        used: usize,
        /// Plaintext bytes in `out`.
        n: usize,
    },
    /// One chunk's plaintext, now at `plain` inside the buffer.
    Data {
        /// Bytes consumed from the front (through this chunk's tag).
        used: usize,
        /// Where its plaintext is.
        plain: std::ops::Range<usize>,
    },
    /// The stream ended (a zero-length chunk).
    End {
        /// Bytes consumed from the front.
        used: usize,
    },
}

impl Decoder {
    /// A decoder for `method` with the master key.
    pub fn new(method: Method, master: &[u8]) -> Decoder {
        let state = if method == Method::None { DecState::Payload(0) } else { DecState::Salt };
        Decoder { method, master: master.to_vec(), aead: None, state }
    }

    /// Decodes the next chunk from the front of `buf`: `Ok(None)` while more bytes are needed.
    /// [`Decoder::decode_in_place`] with the consumed bytes split off `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, SsError> {
        Ok(match self.decode_in_place(buf)? {
            InPlace::Need { used } => {
                buf.advance(used);
                None
            }
            InPlace::End { used } => {
                buf.advance(used);
                Some(Chunk::End)
            }
            // With no room given, nothing is opened into it.
            InPlace::Opened { .. } => unreachable!("decode_in_place opens in place"),
            InPlace::Data { used, plain } => {
                let mut chunk = buf.split_to(used);
                chunk.truncate(plain.end);
                chunk.advance(plain.start);
                Some(Chunk::Data(chunk.freeze()))
            }
        })
    }

    /// Decodes in place from the front of `buf` (no allocation, no copy): the salt, length blocks and
    /// at most one payload chunk. The plaintext is left inside `buf` at [`InPlace::Data`]'s range;
    /// `used` bytes of `buf` are consumed either way.
    pub fn decode_in_place(&mut self, buf: &mut [u8]) -> Result<InPlace, SsError> {
        self.decode_to(buf, &mut [])
    }

    /// [`Decoder::decode_in_place`], except that a payload chunk that fits into `out` is opened
    /// straight into it ([`InPlace::Opened`]): the stream's reader opens into its caller's buffer and
    /// copies only what does not fit.
    pub fn decode_to(&mut self, buf: &mut [u8], out: &mut [u8]) -> Result<InPlace, SsError> {
        if self.method == Method::None {
            return Ok(if buf.is_empty() {
                InPlace::Need { used: 0 }
            } else {
                InPlace::Data { used: buf.len(), plain: 0..buf.len() }
            });
        }
        let mut used = 0;
        loop {
            let rest = &mut buf[used..];
            match self.state {
                DecState::End => return Ok(InPlace::End { used }),
                DecState::Salt => {
                    let n = self.method.key_len();
                    if rest.len() < n {
                        return Ok(InPlace::Need { used });
                    }
                    self.aead = Aead::new(self.method, &self.master, &rest[..n]);
                    self.state = DecState::Length;
                    used += n;
                }
                DecState::Length => {
                    if rest.len() < 2 + TAG {
                        return Ok(InPlace::Need { used });
                    }
                    let Some(aead) = &mut self.aead else { return Err(SsError::Auth) };
                    let block = &mut rest[..2 + TAG];
                    aead.open(block)?;
                    let len = u16::from_be_bytes([block[0], block[1]]) as usize;
                    used += 2 + TAG;
                    if len == 0 {
                        self.state = DecState::End;
                        continue;
                    }
                    if len > MAX_PAYLOAD {
                        return Err(SsError::TooLong(len));
                    }
                    self.state = DecState::Payload(len);
                }
                DecState::Payload(len) => {
                    if rest.len() < len + TAG {
                        return Ok(InPlace::Need { used });
                    }
                    let Some(aead) = &mut self.aead else { return Err(SsError::Auth) };
                    let block = &mut rest[..len + TAG];
                    let step = if out.len() >= len {
                        InPlace::Opened { used: used + len + TAG, n: aead.open_to(block, out)? }
                    } else {
                        let n = aead.open(block)?;
                        InPlace::Data { used: used + len + TAG, plain: used..used + n }
                    };
                    self.state = DecState::Length;
                    return Ok(step);
                }
            }
        }
    }

    /// How many more bytes the decoder needs before it can make progress (for bounded reads).
    pub fn wants(&self, have: usize) -> usize {
        let need = match self.state {
            DecState::Salt => self.method.key_len(),
            DecState::Length => 2 + TAG,
            DecState::Payload(n) if self.method != Method::None => n + TAG,
            _ => 1,
        };
        need.saturating_sub(have)
    }
}

/// Seals a UDP datagram `salt ‖ AEAD(header ‖ data)` (nonce all zero), or `header ‖ data` for `none`.
pub fn encode_packet(method: Method, master: &[u8], plain: &[u8], out: &mut BytesMut) {
    let mut salt = vec![0u8; method.key_len()];
    let _ = aws_lc_rs::rand::fill(&mut salt);
    encode_packet_with_salt(method, master, &salt, plain, out);
}

/// [`encode_packet`] with a given salt (test vectors).
pub fn encode_packet_with_salt(method: Method, master: &[u8], salt: &[u8], plain: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(salt);
    match Aead::new(method, master, salt) {
        Some(mut aead) => aead.seal_append(plain, out),
        None => out.extend_from_slice(plain),
    }
}

/// Opens a UDP datagram; returns the plaintext (header ‖ data).
pub fn decode_packet(method: Method, master: &[u8], packet: &[u8]) -> Result<Bytes, SsError> {
    let n = method.key_len();
    let Some(mut aead) = (if packet.len() >= n { Aead::new(method, master, &packet[..n]) } else { None }) else {
        return if method == Method::None { Ok(Bytes::copy_from_slice(packet)) } else { Err(SsError::Short) };
    };
    if packet.len() < n + TAG {
        return Err(SsError::Short);
    }
    let mut body = BytesMut::from(&packet[n..]);
    let len = aead.open(&mut body)?;
    body.truncate(len);
    Ok(body.freeze())
}

/// The per-key drain size base of a failed handshake (4.34 derives it from the key so a prober cannot
/// learn where authentication failed): `(base 0–3265, jitter bound 1–64)`.
pub fn drain_params(master: &[u8]) -> (usize, usize) {
    let tag = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"SSBSKDF"), master);
    let seed = crc32fast::hash(tag.as_ref());
    ((seed % 3266) as usize, ((seed >> 16) % 64 + 1) as usize)
}

/// Feeds arbitrary bytes to the stream decoder and the packet decoder (fuzz target).
pub fn fuzz_chunks(data: &[u8]) {
    let method = match data.first().map(|b| b % 4) {
        Some(0) => Method::Aes128Gcm,
        Some(1) => Method::Aes256Gcm,
        Some(2) => Method::Chacha20Poly1305,
        _ => Method::None,
    };
    let master = master_key("fuzz", method.key_len());
    let mut d = Decoder::new(method, &master);
    let mut buf = BytesMut::from(data.get(1..).unwrap_or_default());
    while let Ok(Some(Chunk::Data(p))) = d.decode(&mut buf) {
        let _ = crate::proxy::addr::decode(&p, true);
    }
    let mut d = Decoder::new(method, &master);
    let mut buf = data.get(1..).unwrap_or_default().to_vec();
    let mut pos = 0;
    while let Ok(InPlace::Data { used, plain }) = d.decode_in_place(&mut buf[pos..]) {
        let _ = crate::proxy::addr::decode(&buf[pos + plain.start..pos + plain.end], true);
        pos += used;
    }
    // Into a caller's buffer, as the stream reads: a small one, so both kinds of step come up.
    let mut d = Decoder::new(method, &master);
    let mut buf = data.get(1..).unwrap_or_default().to_vec();
    let mut out = [0u8; 64];
    let mut pos = 0;
    while let Ok(step) = d.decode_to(&mut buf[pos..], &mut out) {
        match step {
            InPlace::Opened { used, n } => {
                let _ = crate::proxy::addr::decode(&out[..n], true);
                pos += used;
            }
            InPlace::Data { used, .. } => pos += used,
            InPlace::Need { .. } | InPlace::End { .. } => break,
        }
    }
    if let Ok(p) = decode_packet(method, &master, data) {
        let _ = crate::proxy::addr::decode(&p, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn master_keys_for_test() {
        assert_eq!(master_key("test", 16), hex("098f6bcd4621d373cade4e832627b4f6"));
        assert_eq!(master_key("test", 32), hex("098f6bcd4621d373cade4e832627b4f60a9172716ae6428409885b8b829ccb05"));
    }

    #[test]
    fn tcp_vectors_of_the_spec() {
        let first = hex("017f0000014e57").into_iter().chain(*b"hello").collect::<Vec<u8>>();
        for (m, sub, len_block, payload_block) in [
            (
                Method::Aes128Gcm,
                "96b249baa3b4e00f502f84a5a90ac784",
                "c4500ee2a4f27d2c54d66c69c8f19636bc2a",
                "65038d0e2c3ec209d5cf9e2bb9f3b190f7e759610629a9b1d58606aa",
            ),
            (
                Method::Aes256Gcm,
                "0205fa486aabee35ab86fc1fa015f3a9fc5c8ce7657db427d9ba55b49e718953",
                "50b047619fe02e2d235dcfba391929df879e",
                "7ba4851167d265e17f70bcae1bbd8262c13f1511c4c3cde62bf34df0",
            ),
            (
                Method::Chacha20Poly1305,
                "0205fa486aabee35ab86fc1fa015f3a9fc5c8ce7657db427d9ba55b49e718953",
                "94af412f957b2e159ffe73f716b582920d49",
                "0d840ab0328dc2381666dbe7fe2f77efa2db233510ac0258f5a53867",
            ),
        ] {
            let master = master_key("test", m.key_len());
            let salt: Vec<u8> = (0..m.key_len() as u8).collect();
            assert_eq!(subkey(&master, &salt), hex(sub), "{m:?}");
            let mut out = BytesMut::new();
            Encoder::with_salt(m, &master, salt.clone()).encode(&first, &mut out);
            let want = [salt.clone(), hex(len_block), hex(payload_block)].concat();
            assert_eq!(&out[..], &want[..], "{m:?}");
            let mut d = Decoder::new(m, &master);
            let mut buf = out.clone();
            assert_eq!(d.decode(&mut buf), Ok(Some(Chunk::Data(Bytes::from(first.clone())))));
        }
    }

    #[test]
    fn udp_vectors_of_the_spec() {
        let master = master_key("test", 16);
        let salt: Vec<u8> = (0..16).collect();
        let plain = hex("017f0000014e55").into_iter().chain(*b"hello").collect::<Vec<u8>>();
        let mut out = BytesMut::new();
        encode_packet_with_salt(Method::Aes128Gcm, &master, &salt, &plain, &mut out);
        assert_eq!(&out[16..], &hex("c5238006c2697d9091ed872c55a411466cccc2130f7172895096a474")[..]);
        assert_eq!(decode_packet(Method::Aes128Gcm, &master, &out).unwrap(), plain);
        let master = master_key("test", 32);
        let salt: Vec<u8> = (0..32).collect();
        let plain = hex("017f0000014e55").into_iter().chain(*b"hi").collect::<Vec<u8>>();
        out.clear();
        encode_packet_with_salt(Method::Chacha20Poly1305, &master, &salt, &plain, &mut out);
        assert_eq!(&out[32..], &hex("95dc9694d609c3fa5bcd0514819aba2212a3e94bacf6aca802")[..]);
    }

    #[test]
    fn wrong_key_tamper_zero_length_and_limit() {
        let m = Method::Aes128Gcm;
        let (k1, k2) = (master_key("a", 16), master_key("b", 16));
        let mut out = BytesMut::new();
        Encoder::new(m, &k1).encode(b"data", &mut out);
        assert_eq!(Decoder::new(m, &k2).decode(&mut out.clone()), Err(SsError::Auth));
        let mut bad = out.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(Decoder::new(m, &k1).decode(&mut bad), Err(SsError::Auth));
        // A zero-length chunk ends the stream (as 4.34's reader).
        let salt: Vec<u8> = vec![7; 16];
        let mut enc = Encoder::with_salt(m, &k1, salt.clone());
        let mut s = BytesMut::new();
        enc.encode(b"A", &mut s);
        let mut a = Aead::new(m, &k1, &salt).unwrap();
        let _ = a.next_nonce();
        let _ = a.next_nonce();
        a.seal_append(&0u16.to_be_bytes(), &mut s);
        let mut d = Decoder::new(m, &k1);
        assert_eq!(d.decode(&mut s), Ok(Some(Chunk::Data(Bytes::from_static(b"A")))));
        assert_eq!(d.decode(&mut s), Ok(Some(Chunk::End)));
        // A length above 0x3FFF is refused.
        let mut s = BytesMut::from(&salt[..]);
        let mut a = Aead::new(m, &k1, &salt).unwrap();
        a.seal_append(&0x4000u16.to_be_bytes(), &mut s);
        assert_eq!(Decoder::new(m, &k1).decode(&mut s), Err(SsError::TooLong(0x4000)));
    }

    proptest! {
        #[test]
        fn roundtrip_any_split(data in proptest::collection::vec(any::<u8>(), 1..40_000), cut in 0usize..50_000, pick in 0..3u8) {
            let m = [Method::Aes128Gcm, Method::Aes256Gcm, Method::Chacha20Poly1305][pick as usize];
            let master = master_key("pw", m.key_len());
            let mut wire = BytesMut::new();
            Encoder::new(m, &master).encode(&data, &mut wire);
            let cut = cut.min(wire.len());
            let mut d = Decoder::new(m, &master);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(Chunk::Data(p)) = d.decode(&mut buf).unwrap() { got.extend_from_slice(&p); }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(Chunk::Data(p)) = d.decode(&mut buf).unwrap() { got.extend_from_slice(&p); }
            prop_assert_eq!(got, data);
        }

        #[test]
        fn in_place_decoding_matches_decode(data in proptest::collection::vec(any::<u8>(), 1..40_000), cut in 0usize..50_000, pick in 0..4u8, room in prop_oneof![Just(0usize), 1usize..20_000]) {
            let m = [Method::Aes128Gcm, Method::Aes256Gcm, Method::Chacha20Poly1305, Method::None][pick as usize];
            let master = master_key("pw", m.key_len());
            let mut wire = BytesMut::new();
            Encoder::new(m, &master).encode(&data, &mut wire);
            // Fed in two parts, as a stream reads: what is not used yet stays for the next call.
            let cut = cut.min(wire.len());
            let mut d = Decoder::new(m, &master);
            let mut buf = wire[..cut].to_vec();
            let mut got = Vec::new();
            let mut pos = 0;
            // Chunks that fit into `room` are opened into it, the others in place (room 0: all in place).
            let mut out = vec![0u8; room];
            for part in [&wire[cut..], &[][..]] {
                loop {
                    match d.decode_to(&mut buf[pos..], &mut out).unwrap() {
                        InPlace::Opened { used, n } => {
                            prop_assert!(n <= room);
                            got.extend_from_slice(&out[..n]);
                            pos += used;
                        }
                        InPlace::Data { used, plain } => {
                            prop_assert!(m == Method::None || plain.len() > room);
                            got.extend_from_slice(&buf[pos + plain.start..pos + plain.end]);
                            pos += used;
                        }
                        InPlace::Need { used } => {
                            pos += used;
                            break;
                        }
                        InPlace::End { .. } => unreachable!(),
                    }
                }
                buf.extend_from_slice(part);
            }
            prop_assert_eq!(got, data);
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            fuzz_chunks(&data);
        }
    }
}
