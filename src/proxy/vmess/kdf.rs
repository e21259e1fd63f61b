//! Key derivation and small hashes of VMess: the nested-HMAC AEAD KDF, cmdKey, legacy alter IDs,
//! HMAC-MD5, FNV-1a and the ChaCha20 key expansion (PROTOCOLS.md §1, §2.7, §3.1).

use md5::Md5;
use sha2::{Digest, Sha256};

/// Root key of the KDF's innermost HMAC.
const KDF_ROOT: &[u8] = b"VMess AEAD KDF";
/// Salt of cmdKey.
const CMD_KEY_SALT: &[u8] = b"c48619fe-8f02-49e0-b9e9-edf763e17e21";
/// First salt of the legacy alter-ID chain.
const ALTER_SALT: &[u8] = b"16167dc8-16b6-4e6d-b8bb-65dd68113a81";
/// Salt appended while an alter ID repeats its predecessor.
const ALTER_RETRY_SALT: &[u8] = b"533eff8a-4113-4b10-b5ce-0f5d76b98cd2";

/// KDF label: AuthID AES key.
pub const LABEL_AUTH_ID: &[u8] = b"AES Auth ID Encryption";
/// KDF label: request header length key.
pub const LABEL_REQ_LEN_KEY: &[u8] = b"VMess Header AEAD Key_Length";
/// KDF label: request header length nonce.
pub const LABEL_REQ_LEN_NONCE: &[u8] = b"VMess Header AEAD Nonce_Length";
/// KDF label: request header payload key.
pub const LABEL_REQ_KEY: &[u8] = b"VMess Header AEAD Key";
/// KDF label: request header payload nonce.
pub const LABEL_REQ_NONCE: &[u8] = b"VMess Header AEAD Nonce";
/// KDF label: response header length key.
pub const LABEL_RESP_LEN_KEY: &[u8] = b"AEAD Resp Header Len Key";
/// KDF label: response header length nonce.
pub const LABEL_RESP_LEN_NONCE: &[u8] = b"AEAD Resp Header Len IV";
/// KDF label: response header payload key.
pub const LABEL_RESP_KEY: &[u8] = b"AEAD Resp Header Key";
/// KDF label: response header payload nonce.
pub const LABEL_RESP_NONCE: &[u8] = b"AEAD Resp Header IV";

const BLOCK: usize = 64;

/// Level `level` of the nested HMAC applied to the concatenation of `msg`.
/// Level 0 is HMAC-SHA256 keyed with the root; level i is HMAC keyed with `path[i-1]` whose hash
/// function is level i-1. Recursion depth is the path length (3 at most in VMess).
fn nested(path: &[&[u8]], msg: &[&[u8]]) -> [u8; 32] {
    let Some((last, rest)) = path.split_last() else {
        return hmac_sha256(KDF_ROOT, msg);
    };
    let (ipad, opad) = pads(last);
    let mut inner_msg: Vec<&[u8]> = Vec::with_capacity(msg.len() + 1);
    inner_msg.push(&ipad);
    inner_msg.extend_from_slice(msg);
    let inner = nested(rest, &inner_msg);
    nested(rest, &[&opad, &inner])
}

/// RFC 2104 pads for a key of at most 64 bytes (VMess never uses longer path elements; a longer key is
/// hashed first by plain HMAC, which the upstream nested construction does not reproduce, so it is
/// truncated here and documented as unsupported).
fn pads(key: &[u8]) -> ([u8; BLOCK], [u8; BLOCK]) {
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for (i, k) in key.iter().take(BLOCK).enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    (ipad, opad)
}

fn hmac_sha256(key: &[u8], msg: &[&[u8]]) -> [u8; 32] {
    let (ipad, opad) = pads(key);
    let mut h = Sha256::new();
    h.update(ipad);
    for m in msg {
        h.update(m);
    }
    let inner = h.finalize();
    let mut h = Sha256::new();
    h.update(opad);
    h.update(inner);
    h.finalize().into()
}

/// `KDF(key, path...)`: 32 bytes.
pub fn kdf(key: &[u8], path: &[&[u8]]) -> [u8; 32] {
    nested(path, &[key])
}

/// `KDF(key, path...)[0:16]`.
pub fn kdf16(key: &[u8], path: &[&[u8]]) -> [u8; 16] {
    first16(&kdf(key, path))
}

/// `KDF(key, path...)[0:12]`: an AEAD nonce.
pub fn kdf12(key: &[u8], path: &[&[u8]]) -> [u8; 12] {
    let full = kdf(key, path);
    let mut out = [0u8; 12];
    out.copy_from_slice(&full[..12]);
    out
}

fn first16(b: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&b[..16]);
    out
}

/// MD5 of the concatenation of `parts`.
pub fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// First 16 bytes of SHA-256(data): the AEAD-mode response key/IV derivation.
pub fn sha256_16(data: &[u8]) -> [u8; 16] {
    first16(&Sha256::digest(data))
}

/// `cmdKey = MD5(uuid ‖ salt)`.
pub fn cmd_key(id: &[u8; 16]) -> [u8; 16] {
    md5(&[id, CMD_KEY_SALT])
}

/// HMAC-MD5(key, msg): the legacy user hash.
pub fn hmac_md5(key: &[u8], msg: &[u8]) -> [u8; 16] {
    let (ipad, opad) = pads(key);
    let inner = md5(&[&ipad, msg]);
    md5(&[&opad, &inner])
}

/// The legacy header's CFB IV: MD5 of the BE u64 timestamp repeated four times.
pub fn legacy_header_iv(ts: u64) -> [u8; 16] {
    let b = ts.to_be_bytes();
    md5(&[&b, &b, &b, &b])
}

/// The legacy alter IDs derived from a primary ID (V2Ray's `NewAlterIDs`).
pub fn alter_ids(primary: &[u8; 16], count: u16) -> Vec<[u8; 16]> {
    let mut out = Vec::with_capacity(count as usize);
    let mut prev = *primary;
    for _ in 0..count {
        let mut h = Md5::new();
        h.update(prev);
        h.update(ALTER_SALT);
        let mut cand: [u8; 16] = h.clone().finalize().into();
        while cand == prev {
            h.update(ALTER_RETRY_SALT);
            cand = h.clone().finalize().into();
        }
        out.push(cand);
        prev = cand;
    }
    out
}

/// FNV-1a 32 (offset basis 0x811c9dc5, prime 0x01000193).
pub fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// The 32-byte ChaCha20-Poly1305 key V2Ray derives from a 16-byte key: `MD5(K) ‖ MD5(MD5(K))`.
pub fn chacha_key(key: &[u8; 16]) -> [u8; 32] {
    let a = md5(&[key]);
    let b = md5(&[&a]);
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&a);
    out[16..].copy_from_slice(&b);
    out
}

#[cfg(test)]
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "278487397e6241389fd3098a63964b6b";

    fn id() -> [u8; 16] {
        unhex(UUID).try_into().unwrap()
    }

    #[test]
    fn kdf_vector() {
        let out = kdf(
            b"Demo Key for KDF Value Test",
            &[b"Demo Path for KDF Value Test", b"Demo Path for KDF Value Test2", b"Demo Path for KDF Value Test3"],
        );
        assert_eq!(out.to_vec(), unhex("53e9d7e1bd7bd25022b71ead07d8a596efc8a845c7888652fd684b4903dc8892"));
    }

    #[test]
    fn cmd_key_and_plain_kdf() {
        let ck = cmd_key(&id());
        assert_eq!(ck.to_vec(), unhex("6f87e1b19f8da25df715d655ae9a1764"));
        assert_eq!(kdf(&ck, &[]).to_vec(), unhex("7a8a95cc2671e89395999ce8ef49797d6f3d123cb4206da24993bf88b99e437f"));
        assert_eq!(kdf16(&ck, &[LABEL_AUTH_ID]).to_vec(), unhex("1d3a02ab9f56cff3ec46c641e6b89716"));
    }

    #[test]
    fn fnv_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c9dc5);
        assert_eq!(fnv1a32(b"hello"), 0x4f9f2cab);
    }

    #[test]
    fn chacha_key_vector() {
        let k: [u8; 16] = unhex("101112131415161718191a1b1c1d1e1f").try_into().unwrap();
        assert_eq!(
            chacha_key(&k).to_vec(),
            unhex("1bf42e241816ba29ff5f307bb1bc1d168b39e04ece3e33ab822442d7e6cefd5f")
        );
    }

    #[test]
    fn legacy_vectors() {
        assert_eq!(
            hmac_md5(&id(), &1_700_000_000u64.to_be_bytes()).to_vec(),
            unhex("a965548db6bc114289eecbc893ca0c6f")
        );
        assert_eq!(legacy_header_iv(1_700_000_000).to_vec(), unhex("7a29d7bdc972aaefb1f54e5205589e78"));
        let alters = alter_ids(&id(), 2);
        assert_eq!(alters[0].to_vec(), unhex("2bbd2628154d041151a5488b24b9fc33"));
        assert_eq!(alters[1].to_vec(), unhex("e82cc96015dd537c497c67916bd8c4b9"));
    }
}
