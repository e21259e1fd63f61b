//! Request and response headers, AEAD and legacy (PROTOCOLS.md §2.3–2.6, §3): the command block codec,
//! client-side sealing, the server-side handshake state machine and the response header.

use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit, KeyIvInit};
use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use super::body::{BodySecurity, OPT_AUTHENTICATED_LENGTH, OPT_CHUNK_MASKING, OPT_GLOBAL_PADDING};
use super::kdf::{self, fnv1a32, kdf12, kdf16};
use super::validator::{AuthError, Validator};
use crate::session::Address;
use crate::wire::{AddressError, get_port_addr, put_port_addr};

type CfbEnc = cfb_mode::Encryptor<Aes128>;
type CfbDec = cfb_mode::Decryptor<Aes128>;

/// Size of the fixed part of the command block (version up to command).
pub const FIXED_LEN: usize = 38;
/// Domain a Mux (command 3) request targets.
pub const MUX_DOMAIN: &str = "v1.mux.cool";
/// AEAD header prefix: AuthID, sealed length, connection nonce.
const AEAD_PREFIX: usize = 16 + 18 + 8;

/// The request command byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// 0x01: a TCP stream to the address.
    Tcp,
    /// 0x02: UDP datagrams to the address.
    Udp,
    /// 0x03: Mux.Cool; no address on the wire.
    Mux,
}

impl Command {
    fn wire(self) -> u8 {
        match self {
            Command::Tcp => 1,
            Command::Udp => 2,
            Command::Mux => 3,
        }
    }
}

/// The plaintext request command (§2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// Version byte (1; stored but not checked, as Go does).
    pub version: u8,
    /// Request body IV (comes first on the wire).
    pub body_iv: [u8; 16],
    /// Request body key.
    pub body_key: [u8; 16],
    /// Response authentication byte V.
    pub v: u8,
    /// Option bits.
    pub options: u8,
    /// Security nibble as sent.
    pub security: u8,
    /// Command.
    pub command: Command,
    /// Target port (0 for Mux).
    pub port: u16,
    /// Target address (`v1.mux.cool` for Mux).
    pub address: Address,
}

impl RequestHeader {
    /// The body security this request selects, if the server can run it.
    pub fn body_security(&self) -> Option<BodySecurity> {
        match self.security {
            3 => Some(BodySecurity::Aes128Gcm),
            4 => Some(BodySecurity::Chacha20Poly1305),
            5 => Some(BodySecurity::None),
            _ => None,
        }
    }
}

/// Why a request could not be parsed or authenticated. Every variant leads to a silent drain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// No user matches the AuthID or legacy hash.
    #[error("invalid user")]
    NotFound,
    /// An AEAD AuthID seen before.
    #[error("replayed AuthID")]
    Replay,
    /// A legacy hash used by a replay earlier.
    #[error("tainted legacy user hash")]
    Tainted,
    /// (user, key, IV) seen in the last 3 minutes.
    #[error("duplicated session id, possibly under replay attack")]
    DuplicateSession,
    /// AEAD header length or payload failed to open.
    #[error("failed to open AEAD header")]
    AeadOpen,
    /// The FNV checksum of the command does not match.
    #[error("invalid auth (command checksum)")]
    Checksum,
    /// The command block is shorter than its own fields say.
    #[error("command block truncated")]
    Truncated,
    /// An address that does not decode.
    #[error("invalid remote address: {0}")]
    Address(AddressError),
    /// A command other than 1, 2, 3.
    #[error("unknown command {0}")]
    UnknownCommand(u8),
    /// Security nibble UNKNOWN/LEGACY/AUTO or above 5 (LEGACY body security is not implemented).
    #[error("unsupported security type {0}")]
    Security(u8),
    /// GlobalPadding without ChunkMasking (crashes a 4.34 server) or AuthenticatedLength.
    #[error("unsupported option combination {0:#04x}")]
    Options(u8),
    /// A response header whose V does not match the request.
    #[error("unexpected response header")]
    ResponseMismatch,
    /// The target address cannot be encoded.
    #[error("cannot encode target: {0}")]
    Encode(AddressError),
}

fn gcm(key: &[u8; 16]) -> LessSafeKey {
    // 16 bytes is AES-128's key length, so construction cannot fail.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).expect("16-byte AES key"))
}

fn gcm_seal(key: &[u8; 16], nonce: [u8; 12], aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(plain);
    // Sealing with a valid key and a buffer far below the GCM limit cannot fail.
    if let Ok(tag) = gcm(key).seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[start..])
    {
        out.extend_from_slice(tag.as_ref());
    }
}

fn gcm_open<'a>(key: &[u8; 16], nonce: [u8; 12], aad: &[u8], sealed: &'a mut [u8]) -> Result<&'a mut [u8], HeaderError> {
    gcm(key)
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
        .map_err(|_| HeaderError::AeadOpen)
}

/// Encodes the command block: fixed part, address (unless Mux), `padding` random bytes, FNV.
pub fn encode_command(h: &RequestHeader, padding: u8, out: &mut Vec<u8>) -> Result<(), HeaderError> {
    let start = out.len();
    out.push(h.version);
    out.extend_from_slice(&h.body_iv);
    out.extend_from_slice(&h.body_key);
    out.push(h.v);
    out.push(h.options);
    out.push(((padding & 0x0f) << 4) | (h.security & 0x0f));
    out.push(0);
    out.push(h.command.wire());
    if h.command != Command::Mux {
        put_port_addr(out, h.port, &h.address).map_err(HeaderError::Encode)?;
    }
    let at = out.len();
    out.resize(at + (padding & 0x0f) as usize, 0);
    let _ = aws_lc_rs::rand::fill(&mut out[at..]);
    let f = fnv1a32(&out[start..]);
    out.extend_from_slice(&f.to_be_bytes());
    Ok(())
}

/// A parsed command block: the header, bytes used, and whether the FNV checksum matched.
pub struct ParsedCommand {
    /// The header.
    pub header: RequestHeader,
    /// Bytes of the block, checksum included.
    pub used: usize,
    /// FNV matched.
    pub checksum_ok: bool,
}

/// Parses a command block from the front of `plain`. `Truncated` means more bytes could complete it.
pub fn parse_command(plain: &[u8]) -> Result<ParsedCommand, HeaderError> {
    if plain.len() < FIXED_LEN {
        return Err(HeaderError::Truncated);
    }
    let mut body_iv = [0u8; 16];
    body_iv.copy_from_slice(&plain[1..17]);
    let mut body_key = [0u8; 16];
    body_key.copy_from_slice(&plain[17..33]);
    let padding = (plain[35] >> 4) as usize;
    let security = plain[35] & 0x0f;
    let (command, port, address, mut pos) = match plain[37] {
        3 => (Command::Mux, 0, Address::Domain(MUX_DOMAIN.into()), FIXED_LEN),
        c @ (1 | 2) => {
            let (port, addr, used) = get_port_addr(&plain[FIXED_LEN..]).map_err(|e| match e {
                AddressError::Truncated => HeaderError::Truncated,
                other => HeaderError::Address(other),
            })?;
            (if c == 1 { Command::Tcp } else { Command::Udp }, port, addr, FIXED_LEN + used)
        }
        other => return Err(HeaderError::UnknownCommand(other)),
    };
    pos += padding;
    let Some(sum) = plain.get(pos..pos + 4) else { return Err(HeaderError::Truncated) };
    let checksum_ok = u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]) == fnv1a32(&plain[..pos]);
    let header =
        RequestHeader { version: plain[0], body_iv, body_key, v: plain[33], options: plain[34], security, command, port, address };
    Ok(ParsedCommand { header, used: pos + 4, checksum_ok })
}

/// Builds an AEAD AuthID for `now` with 4 random bytes `rand` (§2.3).
pub fn create_auth_id(cmd_key: &[u8; 16], now: i64, rand: [u8; 4]) -> [u8; 16] {
    let mut plain = [0u8; 16];
    plain[..8].copy_from_slice(&now.to_be_bytes());
    plain[8..12].copy_from_slice(&rand);
    let crc = crc32fast::hash(&plain[..12]);
    plain[12..].copy_from_slice(&crc.to_be_bytes());
    let cipher = Aes128::new(&kdf16(cmd_key, &[kdf::LABEL_AUTH_ID]).into());
    let mut block = aes::Block::from(plain);
    cipher.encrypt_block(&mut block);
    block.into()
}

/// Seals a command into a full AEAD request header: AuthID ‖ EncLen ‖ nonce ‖ EncHeader (§2.4).
pub fn seal_aead_header(cmd_key: &[u8; 16], auth_id: &[u8; 16], conn_nonce: &[u8; 8], command: &[u8], out: &mut Vec<u8>) {
    let path = |label: &'static [u8]| [label, &auth_id[..], &conn_nonce[..]];
    out.extend_from_slice(auth_id);
    let len = (command.len() as u16).to_be_bytes();
    gcm_seal(
        &kdf16(cmd_key, &path(kdf::LABEL_REQ_LEN_KEY)),
        kdf12(cmd_key, &path(kdf::LABEL_REQ_LEN_NONCE)),
        auth_id,
        &len,
        out,
    );
    out.extend_from_slice(conn_nonce);
    gcm_seal(&kdf16(cmd_key, &path(kdf::LABEL_REQ_KEY)), kdf12(cmd_key, &path(kdf::LABEL_REQ_NONCE)), auth_id, command, out);
}

/// Seals a command into a legacy request header: HMAC-MD5(auth id, ts) ‖ AES-CFB(command) (§3.2).
pub fn seal_legacy_header(auth_uuid: &[u8; 16], primary_cmd_key: &[u8; 16], ts: u64, command: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&kdf::hmac_md5(auth_uuid, &ts.to_be_bytes()));
    let start = out.len();
    out.extend_from_slice(command);
    CfbEnc::new(primary_cmd_key.into(), &kdf::legacy_header_iv(ts).into()).encrypt(&mut out[start..]);
}

/// The response body key and IV for a request body key/IV.
pub fn response_keys(aead: bool, key: &[u8; 16], iv: &[u8; 16]) -> ([u8; 16], [u8; 16]) {
    if aead { (kdf::sha256_16(key), kdf::sha256_16(iv)) } else { (kdf::md5(&[key]), kdf::md5(&[iv])) }
}

/// Encodes the response header `V 00 00 00` (no command), sealed (AEAD) or CFB-encrypted (legacy).
pub fn encode_response(aead: bool, resp_key: &[u8; 16], resp_iv: &[u8; 16], v: u8, out: &mut Vec<u8>) {
    let plain = [v, 0, 0, 0];
    if aead {
        gcm_seal(
            &kdf16(resp_key, &[kdf::LABEL_RESP_LEN_KEY]),
            kdf12(resp_iv, &[kdf::LABEL_RESP_LEN_NONCE]),
            &[],
            &(plain.len() as u16).to_be_bytes(),
            out,
        );
        gcm_seal(&kdf16(resp_key, &[kdf::LABEL_RESP_KEY]), kdf12(resp_iv, &[kdf::LABEL_RESP_NONCE]), &[], &plain, out);
    } else {
        let start = out.len();
        out.extend_from_slice(&plain);
        CfbEnc::new(resp_key.into(), resp_iv.into()).encrypt(&mut out[start..]);
    }
}

/// Progress of an incremental header parse.
#[derive(Debug)]
pub enum Progress<T> {
    /// At least this many bytes (from the start of the buffer) are needed.
    Need(usize),
    /// Parsed; the header used this many bytes.
    Done(T, usize),
}

/// Client side: reads and checks the response header.
pub struct ResponseDecoder {
    aead: bool,
    key: [u8; 16],
    iv: [u8; 16],
    v: u8,
    len: Option<usize>,
}

impl ResponseDecoder {
    /// A decoder expecting `v` under the response key/IV.
    pub fn new(aead: bool, key: [u8; 16], iv: [u8; 16], v: u8) -> Self {
        ResponseDecoder { aead, key, iv, v, len: None }
    }

    /// Parses the header at the front of `buf` (which it may decrypt in place).
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Progress<()>, HeaderError> {
        if self.aead {
            let len = match self.len {
                Some(l) => l,
                None => {
                    let Some(sealed) = buf.get_mut(..18) else { return Ok(Progress::Need(18)) };
                    let l = gcm_open(
                        &kdf16(&self.key, &[kdf::LABEL_RESP_LEN_KEY]),
                        kdf12(&self.iv, &[kdf::LABEL_RESP_LEN_NONCE]),
                        &[],
                        sealed,
                    )?;
                    let l = u16::from_be_bytes([l[0], l[1]]) as usize;
                    self.len = Some(l);
                    l
                }
            };
            let total = 18 + len + 16;
            let Some(sealed) = buf.get_mut(18..total) else { return Ok(Progress::Need(total)) };
            let plain = gcm_open(&kdf16(&self.key, &[kdf::LABEL_RESP_KEY]), kdf12(&self.iv, &[kdf::LABEL_RESP_NONCE]), &[], sealed)?;
            if plain.len() < 4 || plain[0] != self.v {
                return Err(HeaderError::ResponseMismatch);
            }
            // A command (dynamic port) is parsed by Go and ignored when unknown; oxray ignores all.
            Ok(Progress::Done((), total))
        } else {
            if buf.len() < 4 {
                return Ok(Progress::Need(4));
            }
            let mut head = [0u8; 4];
            head.copy_from_slice(&buf[..4]);
            CfbDec::new((&self.key).into(), (&self.iv).into()).decrypt(&mut head);
            if head[0] != self.v {
                return Err(HeaderError::ResponseMismatch);
            }
            let total = if head[2] != 0 { 4 + head[3] as usize } else { 4 };
            if buf.len() < total {
                return Ok(Progress::Need(total));
            }
            Ok(Progress::Done((), total))
        }
    }
}

/// The outcome of a successful server handshake.
#[derive(Debug)]
pub struct ServerRequest {
    /// The parsed command.
    pub header: RequestHeader,
    /// Index of the user in the validator.
    pub user: usize,
    /// AEAD (true) or legacy header.
    pub aead: bool,
}

enum Stage {
    Start,
    Aead { user: usize, auth_id: [u8; 16], len: Option<usize> },
    Legacy { user: usize, ts: u64, hash: [u8; 16] },
    Failed,
}

/// Server side: an incremental, sans-IO parser of one request header. Feed it the bytes received so
/// far (always from the first byte) until it returns `Done` or an error.
pub struct ServerHandshake<'a> {
    validator: &'a Validator,
    now: i64,
    stage: Stage,
}

impl<'a> ServerHandshake<'a> {
    /// A handshake judged at unix time `now`.
    pub fn new(validator: &'a Validator, now: i64) -> Self {
        ServerHandshake { validator, now, stage: Stage::Start }
    }

    /// Advances over `buf` (all bytes received so far).
    pub fn step(&mut self, buf: &[u8]) -> Result<Progress<ServerRequest>, HeaderError> {
        let r = self.step_inner(buf);
        if r.is_err() {
            self.stage = Stage::Failed;
        }
        r
    }

    fn step_inner(&mut self, buf: &[u8]) -> Result<Progress<ServerRequest>, HeaderError> {
        if let Stage::Start = self.stage {
            let Some(first) = buf.get(..16) else { return Ok(Progress::Need(16)) };
            let mut id = [0u8; 16];
            id.copy_from_slice(first);
            self.stage = match self.validator.match_aead(&id, self.now) {
                Ok(user) => Stage::Aead { user, auth_id: id, len: None },
                Err(AuthError::Replay) => return Err(HeaderError::Replay),
                Err(_) => match self.validator.match_legacy(&id, self.now) {
                    Ok((user, ts)) => Stage::Legacy { user, ts, hash: id },
                    Err(AuthError::Tainted) => return Err(HeaderError::Tainted),
                    Err(_) => return Err(HeaderError::NotFound),
                },
            };
        }
        match self.stage {
            Stage::Start | Stage::Failed => Err(HeaderError::NotFound),
            Stage::Aead { user, auth_id, ref mut len } => {
                if buf.len() < AEAD_PREFIX {
                    return Ok(Progress::Need(AEAD_PREFIX));
                }
                let cmd_key = self.validator.cmd_key(user);
                let mut nonce = [0u8; 8];
                nonce.copy_from_slice(&buf[34..42]);
                let path = |label: &'static [u8]| [label, &auth_id[..], &nonce[..]];
                let l = match *len {
                    Some(l) => l,
                    None => {
                        let mut sealed = [0u8; 18];
                        sealed.copy_from_slice(&buf[16..34]);
                        let plain = gcm_open(
                            &kdf16(cmd_key, &path(kdf::LABEL_REQ_LEN_KEY)),
                            kdf12(cmd_key, &path(kdf::LABEL_REQ_LEN_NONCE)),
                            &auth_id,
                            &mut sealed,
                        )?;
                        let l = u16::from_be_bytes([plain[0], plain[1]]) as usize;
                        *len = Some(l);
                        l
                    }
                };
                let total = AEAD_PREFIX + l + 16;
                if buf.len() < total {
                    return Ok(Progress::Need(total));
                }
                let mut sealed = buf[AEAD_PREFIX..total].to_vec();
                let plain = gcm_open(
                    &kdf16(cmd_key, &path(kdf::LABEL_REQ_KEY)),
                    kdf12(cmd_key, &path(kdf::LABEL_REQ_NONCE)),
                    &auth_id,
                    &mut sealed,
                )?;
                let parsed = parse_command(plain)?;
                let header = self.check(parsed, user, None)?;
                Ok(Progress::Done(ServerRequest { header, user, aead: true }, total))
            }
            Stage::Legacy { user, ts, hash } => {
                let mut plain = buf[16..].to_vec();
                CfbDec::new(self.validator.cmd_key(user).into(), &kdf::legacy_header_iv(ts).into()).decrypt(&mut plain);
                let parsed = match parse_command(&plain) {
                    Err(HeaderError::Truncated) => return Ok(Progress::Need(buf.len().max(16 + FIXED_LEN - 1) + 1)),
                    other => other?,
                };
                let used = 16 + parsed.used;
                let header = self.check(parsed, user, Some(&hash))?;
                Ok(Progress::Done(ServerRequest { header, user, aead: false }, used))
            }
        }
    }

    /// Go's checks after parsing, in Go's order: session history, checksum, security, options.
    fn check(&self, parsed: ParsedCommand, user: usize, legacy_hash: Option<&[u8; 16]>) -> Result<RequestHeader, HeaderError> {
        let h = parsed.header;
        if !self.validator.check_session(user, &h.body_key, &h.body_iv, self.now) {
            if let Some(hash) = legacy_hash {
                self.validator.taint(hash);
            }
            return Err(HeaderError::DuplicateSession);
        }
        if !parsed.checksum_ok {
            if let Some(hash) = legacy_hash {
                self.validator.taint(hash);
            }
            return Err(HeaderError::Checksum);
        }
        if h.body_security().is_none() {
            return Err(HeaderError::Security(h.security));
        }
        if (h.options & OPT_GLOBAL_PADDING != 0 && h.options & OPT_CHUNK_MASKING == 0)
            || h.options & OPT_AUTHENTICATED_LENGTH != 0
        {
            return Err(HeaderError::Options(h.options));
        }
        Ok(h)
    }
}

/// Feeds arbitrary bytes to a server handshake with one known user (fuzzing and robustness tests).
#[doc(hidden)]
pub fn fuzz_request_header(data: &[u8]) {
    use std::sync::OnceLock;
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    let v = VALIDATOR.get_or_init(|| {
        let mut cfg = crate::config::VmessInboundConfig::default();
        cfg.clients.push(crate::config::VmessClientConfig {
            id: crate::config::SecretId([0x27; 16]),
            alter_id: 4,
            level: 0,
            email: None,
        });
        Validator::new(&cfg)
    });
    let mut hs = ServerHandshake::new(v, 1_700_000_000);
    for cut in [16, 42, 64, data.len()] {
        match hs.step(&data[..cut.min(data.len())]) {
            Ok(Progress::Need(_)) => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SecretId, VmessClientConfig, VmessInboundConfig};
    use crate::proxy::vmess::kdf::unhex;
    use proptest::prelude::*;

    const T: i64 = 1_700_000_000;

    fn id() -> [u8; 16] {
        unhex("278487397e6241389fd3098a63964b6b").try_into().unwrap()
    }

    fn sample(address: &str, port: u16) -> RequestHeader {
        RequestHeader {
            version: 1,
            body_iv: unhex("000102030405060708090a0b0c0d0e0f").try_into().unwrap(),
            body_key: unhex("101112131415161718191a1b1c1d1e1f").try_into().unwrap(),
            v: 0x5a,
            options: 0x0d,
            security: 3,
            command: Command::Tcp,
            port,
            address: Address::parse(address),
        }
    }

    fn validator(alter_id: u16) -> Validator {
        let mut cfg = VmessInboundConfig::default();
        cfg.clients.push(VmessClientConfig { id: SecretId(id()), alter_id, level: 1, email: Some("a@b".into()) });
        Validator::new(&cfg)
    }

    #[test]
    fn golden_commands() {
        let mut out = Vec::new();
        encode_command(&sample("127.0.0.1", 80), 0, &mut out).unwrap();
        assert_eq!(
            out,
            unhex("01 000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f 5a 0d 03 00 01 0050 01 7f000001 c0b8ac40")
        );
        out.clear();
        encode_command(&sample("test.v2fly.org", 0), 0, &mut out).unwrap();
        assert_eq!(out.len(), 60);
        assert_eq!(&out[38..42], &unhex("0000020e")[..]);
        assert_eq!(&out[56..], &unhex("4bf17096")[..]);
    }

    #[test]
    fn golden_auth_id_and_sealed_header() {
        let ck = kdf::cmd_key(&id());
        let auth = create_auth_id(&ck, T, [1, 2, 3, 4]);
        assert_eq!(auth.to_vec(), unhex("6868c12572a3ce177baac5f08cc54ec3"));
        let nonce: [u8; 8] = unhex("0a0b0c0d0e0f1011").try_into().unwrap();
        let p = |l: &'static [u8]| [l, &auth[..], &nonce[..]];
        assert_eq!(kdf16(&ck, &p(kdf::LABEL_REQ_LEN_KEY)).to_vec(), unhex("abc35c22ef2e47691098e3d7aaf6515f"));
        assert_eq!(kdf12(&ck, &p(kdf::LABEL_REQ_LEN_NONCE)).to_vec(), unhex("996d24f39775d61330acb2bb"));
        assert_eq!(kdf16(&ck, &p(kdf::LABEL_REQ_KEY)).to_vec(), unhex("ead95be6aeda537d8d0cfeaa8bc5bb95"));
        assert_eq!(kdf12(&ck, &p(kdf::LABEL_REQ_NONCE)).to_vec(), unhex("8c4d677defbe01c3fcbe3399"));
        let mut cmd = Vec::new();
        encode_command(&sample("127.0.0.1", 80), 0, &mut cmd).unwrap();
        let mut sealed = Vec::new();
        seal_aead_header(&ck, &auth, &nonce, &cmd, &mut sealed);
        assert_eq!(
            sealed,
            unhex(
                "6868c12572a3ce177baac5f08cc54ec3 e6e88a341a08ab5533fb2f752d24d1d0a4b7 0a0b0c0d0e0f1011 \
                 f2a16f25af27178efd83aaf01521bd41683665f2e444bc9c121f9f7d8c100b80eeb7c63b0808fe1661e1d1f110a3ddf226f3e74ba925b282fd483abbfe48bebe65"
            )
        );
        // The server opens it at the same time.
        let v = validator(0);
        let mut hs = ServerHandshake::new(&v, T);
        let Progress::Done(req, used) = hs.step(&sealed).unwrap() else { panic!() };
        assert_eq!(used, 107);
        assert_eq!(req.header, sample("127.0.0.1", 80));
        assert!(req.aead);
        // Replaying the AuthID is refused.
        let mut hs = ServerHandshake::new(&v, T);
        assert_eq!(hs.step(&sealed).unwrap_err(), HeaderError::Replay);
    }

    #[test]
    fn golden_response_header() {
        let (rk, riv) = response_keys(true, &sample("1.1.1.1", 1).body_key, &sample("1.1.1.1", 1).body_iv);
        assert_eq!(rk.to_vec(), unhex("fc2e2c73072bfa2bda03ff9307472deb"));
        assert_eq!(riv.to_vec(), unhex("be45cb2605bf36bebde684841a28f0fd"));
        assert_eq!(kdf16(&rk, &[kdf::LABEL_RESP_LEN_KEY]).to_vec(), unhex("1924d3bc33b00e264bafae855349732f"));
        assert_eq!(kdf12(&riv, &[kdf::LABEL_RESP_LEN_NONCE]).to_vec(), unhex("a1ef50805a0ef8cb041cd3b6"));
        assert_eq!(kdf16(&rk, &[kdf::LABEL_RESP_KEY]).to_vec(), unhex("450a4332c55d2ca12599d711c3176af2"));
        assert_eq!(kdf12(&riv, &[kdf::LABEL_RESP_NONCE]).to_vec(), unhex("a910cf077b787585681a4ff1"));
        let mut out = Vec::new();
        encode_response(true, &rk, &riv, 0x5a, &mut out);
        assert_eq!(out, unhex("9bdfb1639712b6a6348d0087b8d1af379ecf 68afb5ebda5d6e4dc9c0f1e136aaf13fa36c72e1"));
        let mut dec = ResponseDecoder::new(true, rk, riv, 0x5a);
        assert!(matches!(dec.decode(&mut out.clone()[..10]), Ok(Progress::Need(18))));
        assert!(matches!(dec.decode(&mut out).unwrap(), Progress::Done((), 38)));
        let mut bad = ResponseDecoder::new(true, rk, riv, 0x5b);
        let mut again = Vec::new();
        encode_response(true, &rk, &riv, 0x5a, &mut again);
        assert_eq!(bad.decode(&mut again).unwrap_err(), HeaderError::ResponseMismatch);
    }

    #[test]
    fn legacy_header_roundtrip_and_taint() {
        let v = validator(4);
        let alters = kdf::alter_ids(&id(), 4);
        let ck = kdf::cmd_key(&id());
        let mut cmd = Vec::new();
        encode_command(&sample("example.com", 443), 7, &mut cmd).unwrap();
        let mut wire = Vec::new();
        seal_legacy_header(&alters[2], &ck, (T - 20) as u64, &cmd, &mut wire);
        // Fed byte by byte, it asks for more until complete.
        let mut hs = ServerHandshake::new(&v, T);
        let mut n = 1;
        let (req, used) = loop {
            match hs.step(&wire[..n]).unwrap() {
                Progress::Need(k) => n = k.max(n + 1).min(wire.len()),
                Progress::Done(r, u) => break (r, u),
            }
        };
        assert_eq!(used, wire.len());
        assert!(!req.aead);
        assert_eq!(req.header.address, Address::parse("example.com"));
        // The replay is a duplicate session, and it taints the hash for good.
        assert_eq!(ServerHandshake::new(&v, T).step(&wire).unwrap_err(), HeaderError::DuplicateSession);
        assert_eq!(ServerHandshake::new(&v, T).step(&wire).unwrap_err(), HeaderError::Tainted);
        let mut legacy_resp = Vec::new();
        let (rk, riv) = response_keys(false, &req.header.body_key, &req.header.body_iv);
        encode_response(false, &rk, &riv, 0x5a, &mut legacy_resp);
        assert!(matches!(ResponseDecoder::new(false, rk, riv, 0x5a).decode(&mut legacy_resp).unwrap(), Progress::Done((), 4)));
    }

    #[test]
    fn auth_id_window() {
        let ck = kdf::cmd_key(&id());
        let v = validator(0);
        let mk = |t: i64, r: u8| {
            let mut cmd = Vec::new();
            let mut h = sample("1.2.3.4", 9);
            h.body_key[0] = r;
            encode_command(&h, 0, &mut cmd).unwrap();
            let mut out = Vec::new();
            seal_aead_header(&ck, &create_auth_id(&ck, t, [r; 4]), &[r; 8], &cmd, &mut out);
            out
        };
        assert!(ServerHandshake::new(&v, T).step(&mk(T - 120, 1)).is_ok());
        assert!(ServerHandshake::new(&v, T).step(&mk(T + 120, 2)).is_ok());
        assert_eq!(ServerHandshake::new(&v, T).step(&mk(T - 121, 3)).unwrap_err(), HeaderError::NotFound);
        assert_eq!(ServerHandshake::new(&v, T).step(&mk(T + 130, 4)).unwrap_err(), HeaderError::NotFound);
    }

    #[test]
    fn rejects_padding_without_masking() {
        let ck = kdf::cmd_key(&id());
        let v = validator(0);
        let mut h = sample("1.2.3.4", 9);
        h.options = 0x09;
        let mut cmd = Vec::new();
        encode_command(&h, 0, &mut cmd).unwrap();
        let mut out = Vec::new();
        seal_aead_header(&ck, &create_auth_id(&ck, T, [9; 4]), &[9; 8], &cmd, &mut out);
        assert_eq!(ServerHandshake::new(&v, T).step(&out).unwrap_err(), HeaderError::Options(0x09));
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![Just(Command::Tcp), Just(Command::Udp), Just(Command::Mux)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn command_roundtrip(cmd in command(), sec in 3u8..=5, opt in prop_oneof![Just(0u8), Just(1), Just(5), Just(0x0d)],
                             padding in 0u8..16, port: u16, key: [u8; 16], iv: [u8; 16], v: u8,
                             dom in "[a-z][a-z0-9.-]{0,40}", legacy: bool) {
            let mut h = sample("x", port);
            h.command = cmd; h.security = sec; h.options = opt; h.body_key = key; h.body_iv = iv; h.v = v;
            h.address = Address::parse(&dom);
            if cmd == Command::Mux { h.port = 0; h.address = Address::Domain(MUX_DOMAIN.into()); }
            let mut c = Vec::new();
            encode_command(&h, padding, &mut c).unwrap();
            let parsed = parse_command(&c).unwrap();
            prop_assert!(parsed.checksum_ok);
            prop_assert_eq!(parsed.used, c.len());
            prop_assert_eq!(&parsed.header, &h);
            // And through the full sealed header.
            let val = validator(2);
            let ck = kdf::cmd_key(&id());
            let mut wire = Vec::new();
            if legacy {
                seal_legacy_header(&kdf::alter_ids(&id(), 2)[1], &ck, (T + 5) as u64, &c, &mut wire);
            } else {
                seal_aead_header(&ck, &create_auth_id(&ck, T, [v; 4]), &[v; 8], &c, &mut wire);
            }
            wire.extend_from_slice(b"body");
            let Progress::Done(req, used) = ServerHandshake::new(&val, T).step(&wire).unwrap() else { panic!() };
            prop_assert_eq!(used, wire.len() - 4);
            prop_assert_eq!(req.header, h);
        }

        #[test]
        fn handshake_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            fuzz_request_header(&data);
        }
    }
}
