//! The VMess body chunk codec (PROTOCOLS.md §2.7–2.8): pure sealing and opening of chunks over byte
//! buffers, no I/O. One [`ChunkEncoder`] or [`ChunkDecoder`] per direction.

use shake::{ExtendableOutput, Shake128, Shake128Reader, Update, XofReader};

use super::kdf::chacha_key;
use crate::proxy::aead::{self, Alg};

/// Option bit: the body is chunked.
pub const OPT_CHUNK_STREAM: u8 = 0x01;
/// Option bit: chunk lengths are masked with a SHAKE128 stream.
pub const OPT_CHUNK_MASKING: u8 = 0x04;
/// Option bit: random padding after each chunk (only with masking).
pub const OPT_GLOBAL_PADDING: u8 = 0x08;
/// Option bit: AEAD-sealed lengths (v5/Xray only; not supported by 4.34 or oxray).
pub const OPT_AUTHENTICATED_LENGTH: u8 = 0x10;

/// AEAD tag size.
pub const TAG_LEN: usize = 16;
/// Largest datagram oxray puts in one (packet) chunk.
pub const MAX_CHUNK_PAYLOAD: usize = 16 * 1024;
/// Largest payload oxray puts in one stream chunk: the most a 16-bit size field can carry with the tag
/// and the largest padding (4.34 readers accept any size up to 65535, PROTOCOLS.md §2.8.5). Large
/// chunks mean one AEAD call and a fraction of a syscall per 64 KiB of a batched Mux write.
pub const MAX_STREAM_CHUNK_PAYLOAD: usize = 65535 - TAG_LEN - 64;
/// Most bytes a chunk adds to its payload on the wire: size field, tag, largest padding.
pub const MAX_CHUNK_OVERHEAD: usize = 2 + TAG_LEN + 63;
/// Largest chunk a reader accepts: the whole 16-bit size field plus the field itself.
pub const MAX_CHUNK_WIRE: usize = 2 + 65535;
/// AEAD chunks one direction can seal before its 16-bit nonce counter would repeat under the same key.
/// The encoder refuses the next one ([`BodyError::NonceExhausted`]); Go wraps and goes on.
pub const MAX_AEAD_CHUNKS: u32 = 1 << 16;

/// Body security as it travels in the request's security nibble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySecurity {
    /// Sec 3.
    Aes128Gcm,
    /// Sec 4.
    Chacha20Poly1305,
    /// Sec 5.
    None,
}

impl BodySecurity {
    /// The wire value of the security nibble.
    pub fn wire(self) -> u8 {
        match self {
            BodySecurity::Aes128Gcm => 3,
            BodySecurity::Chacha20Poly1305 => 4,
            BodySecurity::None => 5,
        }
    }
}

/// Why a chunk could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The size field is smaller than the tag plus padding it must cover.
    #[error("chunk size {0} too small")]
    BadSize(usize),
    /// AEAD authentication failed.
    #[error("chunk authentication failed")]
    Auth,
    /// A payload larger than a chunk can carry.
    #[error("payload of {0} bytes does not fit in one chunk")]
    TooLarge(usize),
    /// Every nonce of this direction has been used: one more chunk would repeat one under the same key.
    #[error("{MAX_AEAD_CHUNKS} chunks sealed under one key; the stream ends rather than reuse a nonce")]
    NonceExhausted,
    /// The output buffer cannot hold the chunk (`need` = payload + [`MAX_CHUNK_OVERHEAD`]).
    #[error("output buffer of {have} bytes cannot hold a chunk needing {need}")]
    NoRoom {
        /// Bytes available.
        have: usize,
        /// Bytes a chunk of this payload may take.
        need: usize,
    },
}

/// How chunks are framed, from the security, the options and the command (stream or packet).
enum Framing {
    /// `size ‖ Seal(payload) ‖ padding`.
    Aead(aead::Key),
    /// NONE over UDP: `size ‖ payload ‖ padding` (a no-op AEAD with zero overhead).
    NoOp,
    /// NONE over a stream: `size ‖ payload`, never padded.
    Plain,
    /// No framing at all (NONE without ChunkStream, v5 "zero").
    Raw,
}

/// The state shared by both chunk directions: framing, nonce counter and SHAKE stream.
struct ChunkState {
    framing: Framing,
    iv: [u8; 16],
    /// AEAD nonces used so far (the nonce carries the low 16 bits).
    count: u32,
    shake: Option<Shake128Reader>,
    padding: bool,
}

impl ChunkState {
    fn new(security: BodySecurity, options: u8, udp: bool, key: &[u8; 16], iv: &[u8; 16]) -> Self {
        let framing = match security {
            BodySecurity::Aes128Gcm => Framing::Aead(aead_key(Alg::Aes128Gcm, key)),
            BodySecurity::Chacha20Poly1305 => Framing::Aead(aead_key(Alg::Chacha20Poly1305, &chacha_key(key))),
            BodySecurity::None if options & OPT_CHUNK_STREAM == 0 => Framing::Raw,
            BodySecurity::None if udp => Framing::NoOp,
            BodySecurity::None => Framing::Plain,
        };
        let shake = (options & OPT_CHUNK_MASKING != 0).then(|| {
            let mut h = Shake128::default();
            h.update(iv);
            h.finalize_xof()
        });
        // Plain chunks ignore GlobalPadding (Go's ChunkStreamWriter has no padding at all).
        let padding =
            options & OPT_GLOBAL_PADDING != 0 && shake.is_some() && !matches!(framing, Framing::Plain | Framing::Raw);
        ChunkState { framing, iv: *iv, count: 0, shake, padding }
    }

    fn next16(&mut self) -> u16 {
        match &mut self.shake {
            Some(r) => {
                let mut b = [0u8; 2];
                r.read(&mut b);
                u16::from_be_bytes(b)
            }
            None => 0,
        }
    }

    /// Padding length then size mask, in the order Go reads them.
    fn pad_and_mask(&mut self) -> (usize, u16) {
        let pad = if self.padding { (self.next16() % 64) as usize } else { 0 };
        let mask = self.next16();
        (pad, mask)
    }

    /// The next nonce. The Go counter is a u16 that wraps: its nonces repeat after 65536 chunks. The
    /// sealing side never lets it (`unique`); the opening side goes on past a wrap (the peer is the one
    /// reusing nonces, and 4.34 peers do), and the counter tells the caller it happened.
    fn nonce(&mut self, unique: bool) -> Option<[u8; 12]> {
        if unique && self.count >= MAX_AEAD_CHUNKS {
            return None;
        }
        let mut n = [0u8; 12];
        n[..2].copy_from_slice(&(self.count as u16).to_be_bytes());
        n[2..].copy_from_slice(&self.iv[2..12]);
        self.count = self.count.saturating_add(1);
        Some(n)
    }

    fn overhead(&self) -> usize {
        match self.framing {
            Framing::Aead(_) => TAG_LEN,
            _ => 0,
        }
    }
}

fn aead_key(alg: Alg, key: &[u8]) -> aead::Key {
    // Key lengths are fixed by construction (16 for GCM, 32 for ChaCha), so this cannot fail.
    #[allow(clippy::expect_used)]
    aead::Key::new(alg, key).expect("AEAD key of the right length")
}

/// Seals payloads into chunks for one direction.
pub struct ChunkEncoder {
    st: ChunkState,
    /// Random bytes for padding, refilled in bulk: one RNG call per chunk would cost more than
    /// sealing a 1 KiB chunk.
    pad_pool: Vec<u8>,
    pad_pos: usize,
}

/// Size of the padding pool (refilled when fewer than 64 bytes are left).
const PAD_POOL: usize = 4096;

impl ChunkEncoder {
    /// An encoder for the direction whose body key and IV are `key`/`iv`; `udp` selects packet framing.
    pub fn new(security: BodySecurity, options: u8, udp: bool, key: &[u8; 16], iv: &[u8; 16]) -> Self {
        let st = ChunkState::new(security, options, udp, key, iv);
        let pad_pool = if st.padding { vec![0u8; PAD_POOL] } else { Vec::new() };
        ChunkEncoder { st, pad_pool, pad_pos: PAD_POOL }
    }

    /// True when there is no framing (raw bytes pass through).
    pub fn is_raw(&self) -> bool {
        matches!(self.st.framing, Framing::Raw)
    }

    /// Largest payload one [`ChunkEncoder::encode`] call takes.
    pub fn max_payload(&self) -> usize {
        match self.st.framing {
            Framing::Raw => usize::MAX,
            _ => MAX_STREAM_CHUNK_PAYLOAD,
        }
    }

    /// Appends one chunk carrying `payload` to `out`. An empty payload is the end-of-stream chunk.
    pub fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        let start = out.len();
        out.resize(start + payload.len() + MAX_CHUNK_OVERHEAD, 0);
        let n = self.encode_into(payload, &mut out[start..]);
        out.truncate(start + *n.as_ref().unwrap_or(&0));
        n.map(|_| ())
    }

    /// Writes one chunk carrying `payload` at the front of `out` and returns its length on the wire.
    /// `out` needs `payload.len() + MAX_CHUNK_OVERHEAD` bytes. The payload is sealed on its way into
    /// `out` (no separate copy): the stream writer keeps one initialized buffer and seals into it.
    pub fn encode_into(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, BodyError> {
        self.encode_gather_into(payload, &[], out)
    }

    /// [`encode_into`](Self::encode_into) for the payload `first ‖ second`, sealed from the two
    /// pieces where they are (a Mux frame header and the data it heads).
    pub fn encode_gather_into(&mut self, first: &[u8], second: &[u8], out: &mut [u8]) -> Result<usize, BodyError> {
        let len = first.len() + second.len();
        let need = len + MAX_CHUNK_OVERHEAD;
        if out.len() < need {
            return Err(BodyError::NoRoom { have: out.len(), need });
        }
        if matches!(self.st.framing, Framing::Raw) {
            out[..first.len()].copy_from_slice(first);
            out[first.len()..len].copy_from_slice(second);
            return Ok(len);
        }
        if len > MAX_STREAM_CHUNK_PAYLOAD {
            return Err(BodyError::TooLarge(len));
        }
        // Checked before the SHAKE stream moves, so a refused chunk leaves the encoder as it was.
        let aead = matches!(self.st.framing, Framing::Aead(_));
        if aead && self.st.count >= MAX_AEAD_CHUNKS {
            return Err(BodyError::NonceExhausted);
        }
        let (pad, mask) = self.st.pad_and_mask();
        let overhead = self.st.overhead();
        let size = len + overhead + pad;
        out[..2].copy_from_slice(&((size as u16) ^ mask).to_be_bytes());
        let (sealed, rest) = out[2..].split_at_mut(len + overhead);
        let nonce = if aead { Some(self.st.nonce(true).ok_or(BodyError::NonceExhausted)?) } else { None };
        match (&self.st.framing, nonce) {
            (Framing::Aead(key), Some(nonce)) => {
                key.seal_gather(nonce, first, second, sealed).map_err(|_| BodyError::Auth)?
            }
            _ => {
                sealed[..first.len()].copy_from_slice(first);
                sealed[first.len()..len].copy_from_slice(second);
            }
        }
        if pad > 0 {
            // Padding is never checked; randomness only keeps it from being a fingerprint.
            if self.pad_pos + pad > self.pad_pool.len() {
                let _ = aws_lc_rs::rand::fill(&mut self.pad_pool);
                self.pad_pos = 0;
            }
            if let Some(p) = self.pad_pool.get(self.pad_pos..self.pad_pos + pad) {
                rest[..pad].copy_from_slice(p);
            }
            self.pad_pos += pad;
        }
        Ok(2 + size)
    }

    /// AEAD chunks sealed so far (0 without AEAD framing).
    pub fn chunks(&self) -> u32 {
        self.st.count
    }

    /// Appends the end-of-stream chunk (nothing for raw framing, where the end is the TCP FIN).
    pub fn encode_end(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        if self.is_raw() {
            return Ok(());
        }
        self.encode(&[], out)
    }
}

/// What [`ChunkDecoder::decode`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// At least this many bytes (counted from the front of the buffer) are needed to go on.
    Need(usize),
    /// Payload is `buf[start..end]` (opened in place); drop `consumed` bytes from the front afterwards.
    Data {
        /// Payload start.
        start: usize,
        /// Payload end.
        end: usize,
        /// Bytes of the whole chunk.
        consumed: usize,
    },
    /// Payload opened into the first `n` bytes of the `out` of [`ChunkDecoder::decode_to`]; drop
    /// `consumed` bytes from the front of the buffer.
    Opened {
        /// Payload bytes in `out`.
        n: usize,
        /// Bytes of the whole chunk.
        consumed: usize,
    },
    /// The end-of-stream chunk; nothing more will come.
    End,
}

/// Opens chunks for one direction.
pub struct ChunkDecoder {
    st: ChunkState,
    /// Size and padding of a chunk whose size field was read (SHAKE already advanced).
    pending: Option<(usize, usize)>,
}

impl ChunkDecoder {
    /// A decoder for the direction whose body key and IV are `key`/`iv`.
    pub fn new(security: BodySecurity, options: u8, udp: bool, key: &[u8; 16], iv: &[u8; 16]) -> Self {
        ChunkDecoder { st: ChunkState::new(security, options, udp, key, iv), pending: None }
    }

    /// True when there is no framing.
    pub fn is_raw(&self) -> bool {
        matches!(self.st.framing, Framing::Raw)
    }

    /// AEAD chunks opened so far (past [`MAX_AEAD_CHUNKS`], the peer has reused nonces).
    pub fn chunks(&self) -> u32 {
        self.st.count
    }

    /// True between a chunk's size field and its body (EOF there is a truncation, not a clean end).
    pub fn mid_chunk(&self) -> bool {
        self.pending.is_some()
    }

    /// Decodes the chunk at the front of `buf`, opening it in place. Never panics on any input.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Decoded, BodyError> {
        self.decode_to(buf, &mut [])
    }

    /// [`ChunkDecoder::decode`], except that an AEAD chunk whose payload fits into `out` is opened
    /// straight into it ([`Decoded::Opened`]), so a reader with room saves the copy out of `buf`.
    pub fn decode_to(&mut self, buf: &mut [u8], out: &mut [u8]) -> Result<Decoded, BodyError> {
        if matches!(self.st.framing, Framing::Raw) {
            return Ok(if buf.is_empty() {
                Decoded::Need(1)
            } else {
                Decoded::Data { start: 0, end: buf.len(), consumed: buf.len() }
            });
        }
        let (size, pad) = match self.pending {
            Some(p) => p,
            None => {
                if buf.len() < 2 {
                    return Ok(Decoded::Need(2));
                }
                let (pad, mask) = self.st.pad_and_mask();
                let size = (u16::from_be_bytes([buf[0], buf[1]]) ^ mask) as usize;
                let overhead = self.st.overhead();
                if size == overhead + pad {
                    // Go does not read or check the rest of the end chunk.
                    return Ok(Decoded::End);
                }
                if size < overhead + pad {
                    return Err(BodyError::BadSize(size));
                }
                self.pending = Some((size, pad));
                (size, pad)
            }
        };
        if buf.len() < 2 + size {
            return Ok(Decoded::Need(2 + size));
        }
        self.pending = None;
        let body = &mut buf[2..2 + size - pad];
        let len = match &self.st.framing {
            Framing::Aead(_) => {
                let Some(nonce) = self.st.nonce(false) else { return Err(BodyError::NonceExhausted) };
                let Framing::Aead(key) = &self.st.framing else { unreachable!() };
                // A size below the tag was refused above (overhead is the tag's length).
                let n = body.len().saturating_sub(aead::TAG_LEN);
                if let Some(room) = out.get_mut(..n) {
                    let (sealed, tag) = body.split_at(n);
                    key.open_to(nonce, sealed, tag, room).map_err(|_| BodyError::Auth)?;
                    return Ok(Decoded::Opened { n, consumed: 2 + size });
                }
                key.open_in_place(nonce, body).map_err(|_| BodyError::Auth)?
            }
            _ => body.len(),
        };
        Ok(Decoded::Data { start: 2, end: 2 + len, consumed: 2 + size })
    }
}

/// Runs a chunk decoder over arbitrary bytes until it stops (fuzzing and robustness tests).
#[doc(hidden)]
pub fn fuzz_chunks(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let security = match data[0] % 3 {
        0 => BodySecurity::Aes128Gcm,
        1 => BodySecurity::Chacha20Poly1305,
        _ => BodySecurity::None,
    };
    let options = data[1] & 0x0f;
    let udp = data[2] & 1 == 1;
    let mut dec = ChunkDecoder::new(security, options, udp, &[7; 16], &[9; 16]);
    let mut buf = data[3..].to_vec();
    let mut pos = 0;
    while pos <= buf.len() {
        match dec.decode(&mut buf[pos..]) {
            Ok(Decoded::Data { consumed, .. }) if consumed > 0 => pos += consumed,
            _ => break,
        }
    }
    // Into a reader's buffer, small enough that both kinds of step come up.
    let mut dec = ChunkDecoder::new(security, options, udp, &[7; 16], &[9; 16]);
    let mut buf = data[3..].to_vec();
    let mut out = [0u8; 64];
    let mut pos = 0;
    while pos <= buf.len() {
        match dec.decode_to(&mut buf[pos..], &mut out) {
            Ok(Decoded::Data { consumed, .. } | Decoded::Opened { consumed, .. }) if consumed > 0 => pos += consumed,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::vmess::kdf::unhex;
    use proptest::prelude::*;

    fn iv() -> [u8; 16] {
        unhex("000102030405060708090a0b0c0d0e0f").try_into().unwrap()
    }
    fn key() -> [u8; 16] {
        unhex("101112131415161718191a1b1c1d1e1f").try_into().unwrap()
    }

    #[test]
    fn shake_stream_vector() {
        let mut st = ChunkState::new(BodySecurity::None, 0x05, false, &key(), &iv());
        let got: Vec<u16> = (0..6).map(|_| st.next16()).collect();
        assert_eq!(got, [0x9848, 0x1946, 0xde85, 0xc670, 0xa7a8, 0x4432]);
    }

    #[test]
    fn first_chunk_hello_golden() {
        let mut enc = ChunkEncoder::new(BodySecurity::Aes128Gcm, 0x0d, false, &key(), &iv());
        let mut out = Vec::new();
        enc.encode(b"hello", &mut out).unwrap();
        assert_eq!(out.len(), 2 + 21 + 8);
        assert_eq!(&out[..2], &[0x19, 0x5b]);
        assert_eq!(out[2..23].to_vec(), unhex("c76e58df1d1b6686ac14fce9bcc0f768b9c8beb10f"));
        let mut dec = ChunkDecoder::new(BodySecurity::Aes128Gcm, 0x0d, false, &key(), &iv());
        match dec.decode(&mut out).unwrap() {
            Decoded::Data { start, end, consumed } => {
                assert_eq!(&out[start..end], b"hello");
                assert_eq!(consumed, 31);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Every nonce the encoder uses is new; the chunk after the 65,536th is refused (never sealed under a
    /// repeated nonce), the refusal leaves nothing behind, and a decoder fed a peer that wraps (as Go
    /// does) still opens its chunks and counts past the limit.
    #[test]
    fn nonces_never_repeat_and_the_limit_is_refused() {
        for sec in [BodySecurity::Aes128Gcm, BodySecurity::Chacha20Poly1305] {
            let mut enc = ChunkEncoder::new(sec, 0x0d, false, &key(), &iv());
            let mut dec = ChunkDecoder::new(sec, 0x0d, false, &key(), &iv());
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for i in 0..MAX_AEAD_CHUNKS {
                // The nonce this chunk is sealed under: the counter before sealing, as the encoder builds it.
                assert!(seen.insert(enc.st.count as u16), "nonce {} repeated", enc.st.count);
                out.clear();
                enc.encode(&i.to_be_bytes(), &mut out).unwrap();
                let Decoded::Data { start, end, .. } = dec.decode(&mut out).unwrap() else { panic!() };
                assert_eq!(&out[start..end], &i.to_be_bytes());
            }
            assert_eq!(enc.chunks(), MAX_AEAD_CHUNKS);
            out.clear();
            assert_eq!(enc.encode(b"one more", &mut out), Err(BodyError::NonceExhausted));
            assert!(out.is_empty());
            assert_eq!(enc.encode_end(&mut out), Err(BodyError::NonceExhausted));

            // A Go peer wraps: its 65,537th chunk reuses nonce 0. A decoder that has opened 65,536 chunks
            // (its counter set there; a fresh encoder's nonce is 0 too) still opens it, and counts on.
            let mut go = ChunkEncoder::new(sec, 0x01, false, &key(), &iv());
            let mut dec = ChunkDecoder::new(sec, 0x01, false, &key(), &iv());
            dec.st.count = MAX_AEAD_CHUNKS;
            out.clear();
            go.encode(b"wrapped", &mut out).unwrap();
            let Decoded::Data { start, end, .. } = dec.decode(&mut out).unwrap() else { panic!() };
            assert_eq!(&out[start..end], b"wrapped");
            assert_eq!(dec.chunks(), MAX_AEAD_CHUNKS + 1);
        }
    }

    /// Framings without AEAD have no nonce and no limit.
    #[test]
    fn plain_chunks_have_no_limit() {
        let mut enc = ChunkEncoder::new(BodySecurity::None, 0x05, false, &key(), &iv());
        let mut out = Vec::new();
        for _ in 0..MAX_AEAD_CHUNKS + 10 {
            out.clear();
            enc.encode(b"x", &mut out).unwrap();
        }
        assert_eq!(enc.chunks(), 0);
    }

    #[test]
    fn tampered_chunk_is_rejected() {
        let mut enc = ChunkEncoder::new(BodySecurity::Aes128Gcm, 0x0d, false, &key(), &iv());
        let mut out = Vec::new();
        enc.encode(b"hello world", &mut out).unwrap();
        out[5] ^= 1;
        let mut dec = ChunkDecoder::new(BodySecurity::Aes128Gcm, 0x0d, false, &key(), &iv());
        assert_eq!(dec.decode(&mut out), Err(BodyError::Auth));
    }

    fn security() -> impl Strategy<Value = BodySecurity> {
        prop_oneof![Just(BodySecurity::Aes128Gcm), Just(BodySecurity::Chacha20Poly1305), Just(BodySecurity::None)]
    }
    fn options() -> impl Strategy<Value = u8> {
        prop_oneof![Just(0x00u8), Just(0x01), Just(0x05), Just(0x0d), Just(0x04), Just(0x0c)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn roundtrip(sec in security(), opt in options(), udp: bool,
                     sizes in proptest::collection::vec(prop_oneof![Just(0usize), Just(1), Just(65535 - 80), 1..20000usize], 1..5),
                     seed: u8, room in prop_oneof![Just(0usize), 1..70_000usize]) {
            let mut enc = ChunkEncoder::new(sec, opt, udp, &key(), &iv());
            let mut dec = ChunkDecoder::new(sec, opt, udp, &key(), &iv());
            let mut wire = Vec::new();
            let mut expect = Vec::new();
            for (i, &n) in sizes.iter().enumerate() {
                let n = n.max(1);
                let data: Vec<u8> = (0..n).map(|j| (j as u8).wrapping_mul(seed).wrapping_add(i as u8)).collect();
                enc.encode(&data, &mut wire).unwrap();
                expect.extend_from_slice(&data);
            }
            enc.encode_end(&mut wire).unwrap();
            let mut got = Vec::new();
            let mut pos = 0;
            // AEAD chunks that fit into `room` are opened into it, the rest in place (room 0: all in place).
            let mut out = vec![0u8; room];
            loop {
                match dec.decode_to(&mut wire[pos..], &mut out).unwrap() {
                    Decoded::Opened { n, consumed } => {
                        prop_assert!(n <= room);
                        got.extend_from_slice(&out[..n]);
                        pos += consumed;
                    }
                    Decoded::Data { start, end, consumed } => {
                        prop_assert!(!matches!(dec.st.framing, Framing::Aead(_)) || end - start > room);
                        got.extend_from_slice(&wire[pos + start..pos + end]);
                        pos += consumed;
                    }
                    Decoded::End => break,
                    Decoded::Need(_) => { prop_assert!(dec.is_raw()); break; }
                }
            }
            prop_assert_eq!(got, expect);
        }

        #[test]
        fn sealing_into_a_dirty_buffer_matches_appending(sec in security(), opt in options(), udp: bool,
                                                         n in prop_oneof![Just(0usize), Just(MAX_STREAM_CHUNK_PAYLOAD), 1..20000usize]) {
            let data: Vec<u8> = (0..n).map(|j| j as u8).collect();
            let mut a = ChunkEncoder::new(sec, opt, udp, &key(), &iv());
            let mut b = ChunkEncoder::new(sec, opt, udp, &key(), &iv());
            let mut appended = Vec::new();
            a.encode(&data, &mut appended).unwrap();
            let mut dirty = vec![0xee; n + MAX_CHUNK_OVERHEAD];
            let len = b.encode_into(&data, &mut dirty).unwrap();
            prop_assert_eq!(len, appended.len());
            // Padding is random; everything before it must be identical.
            let unpadded = if a.is_raw() { n } else { 2 + n + a.st.overhead() };
            prop_assert_eq!(&dirty[..unpadded], &appended[..unpadded]);
            // Too little room is an error, never a panic or a partial write past the end.
            let mut short = vec![0u8; n + MAX_CHUNK_OVERHEAD - 1];
            prop_assert!(b.encode_into(&data, &mut short).is_err());
        }

        /// A payload given in two pieces (cut anywhere) makes the chunk the joined payload makes.
        #[test]
        fn sealing_two_pieces_matches_sealing_them_joined(sec in security(), opt in options(), udp: bool,
                                                          n in prop_oneof![Just(MAX_STREAM_CHUNK_PAYLOAD), 0..20000usize],
                                                          cut in any::<prop::sample::Index>()) {
            let data: Vec<u8> = (0..n).map(|j| (j * 7) as u8).collect();
            let (first, second) = data.split_at(cut.index(n + 1));
            let mut a = ChunkEncoder::new(sec, opt, udp, &key(), &iv());
            let mut b = ChunkEncoder::new(sec, opt, udp, &key(), &iv());
            for _ in 0..2 {
                let mut joined = vec![0u8; n + MAX_CHUNK_OVERHEAD];
                let mut gathered = vec![0xee; n + MAX_CHUNK_OVERHEAD];
                let len = a.encode_into(&data, &mut joined).unwrap();
                prop_assert_eq!(b.encode_gather_into(first, second, &mut gathered).unwrap(), len);
                let unpadded = if a.is_raw() { n } else { 2 + n + a.st.overhead() };
                prop_assert_eq!(&gathered[..unpadded], &joined[..unpadded]);
            }
            let mut short = vec![0u8; n + MAX_CHUNK_OVERHEAD - 1];
            prop_assert!(b.encode_gather_into(first, second, &mut short).is_err());
        }

        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            fuzz_chunks(&data);
        }
    }
}
