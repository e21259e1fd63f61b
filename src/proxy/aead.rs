//! The AEAD of the data path (VMess body chunks, Shadowsocks chunks), on whichever library seals
//! AES-GCM faster on this CPU.
//!
//! aws-lc has a VAES + AVX-512 AES-GCM and, without AVX-512, only the 128-bit AVX one; ring has a
//! VAES + AVX2 one. On a CPU with VAES and VPCLMULQDQ but no AVX-512 (AMD Zen 3/4 without it
//! enabled, Intel Alder Lake and later client cores) ring seals and opens about 2× as fast
//! (docs/BENCHMARKS.md, "AES-GCM by CPU"); everywhere else aws-lc is as fast or faster. Both compute
//! the same function, so the choice never shows on the wire.

use aws_lc_rs::aead as awslc;

/// Tag length of every algorithm here.
pub const TAG_LEN: usize = 16;

/// The algorithms of the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// AES-128-GCM (16-byte key).
    Aes128Gcm,
    /// AES-256-GCM (32-byte key).
    Aes256Gcm,
    /// ChaCha20-Poly1305 (32-byte key).
    Chacha20Poly1305,
}

/// Which library a key runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// aws-lc (aws-lc-rs): the default.
    AwsLc,
    /// ring: AES-GCM on CPUs with VAES and VPCLMULQDQ but no AVX-512.
    Ring,
}

impl Backend {
    /// The faster library for `alg` on this CPU.
    pub fn for_alg(alg: Alg) -> Backend {
        match alg {
            Alg::Aes128Gcm | Alg::Aes256Gcm if vaes_without_avx512() => Backend::Ring,
            _ => Backend::AwsLc,
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn vaes_without_avx512() -> bool {
    use std::arch::is_x86_feature_detected as has;
    // What aws-lc asks of the CPU for its AVX-512 GCM (crypto_gcm_avx512_enabled).
    let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("vaes") && has!("vpclmulqdq");
    !avx512 && has!("vaes") && has!("vpclmulqdq") && has!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn vaes_without_avx512() -> bool {
    false
}

/// Sealing or opening failed (for opening: the data is not authentic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unspecified;

enum Inner {
    /// aws-lc keeps its key schedule on the heap already.
    AwsLc(awslc::LessSafeKey),
    /// ring keeps it inline (544 bytes): boxed, so a key is small whichever library it runs on.
    Ring(Box<ring::aead::LessSafeKey>),
}

/// A key for one direction. Every call takes a fresh 12-byte nonce; the callers count them.
pub struct Key(Inner);

impl Key {
    /// A key for `alg` on the faster library here; `None` when `key` has the wrong length.
    pub fn new(alg: Alg, key: &[u8]) -> Option<Key> {
        Key::on(Backend::for_alg(alg), alg, key)
    }

    /// A key on the named library.
    pub fn on(backend: Backend, alg: Alg, key: &[u8]) -> Option<Key> {
        Some(Key(match backend {
            Backend::AwsLc => {
                let a = match alg {
                    Alg::Aes128Gcm => &awslc::AES_128_GCM,
                    Alg::Aes256Gcm => &awslc::AES_256_GCM,
                    Alg::Chacha20Poly1305 => &awslc::CHACHA20_POLY1305,
                };
                Inner::AwsLc(awslc::LessSafeKey::new(awslc::UnboundKey::new(a, key).ok()?))
            }
            Backend::Ring => {
                let a = match alg {
                    Alg::Aes128Gcm => &ring::aead::AES_128_GCM,
                    Alg::Aes256Gcm => &ring::aead::AES_256_GCM,
                    Alg::Chacha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
                };
                Inner::Ring(Box::new(ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(a, key).ok()?)))
            }
        }))
    }

    /// The library this key runs on.
    #[cfg(test)]
    fn backend(&self) -> Backend {
        match self.0 {
            Inner::AwsLc(_) => Backend::AwsLc,
            Inner::Ring(_) => Backend::Ring,
        }
    }

    /// Encrypts `in_out` in place (no associated data) and returns the tag.
    pub fn seal_in_place(&self, nonce: [u8; 12], in_out: &mut [u8]) -> Result<[u8; TAG_LEN], Unspecified> {
        let mut out = [0u8; TAG_LEN];
        match &self.0 {
            Inner::AwsLc(k) => {
                let tag = k
                    .seal_in_place_separate_tag(awslc::Nonce::assume_unique_for_key(nonce), awslc::Aad::empty(), in_out)
                    .map_err(|_| Unspecified)?;
                out.copy_from_slice(tag.as_ref());
            }
            Inner::Ring(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::empty(),
                        in_out,
                    )
                    .map_err(|_| Unspecified)?;
                out.copy_from_slice(tag.as_ref());
            }
        }
        Ok(out)
    }

    /// Encrypts `plain` into `sealed` (same length) and writes the tag into `tag` (`TAG_LEN` bytes).
    pub fn seal_to(&self, nonce: [u8; 12], plain: &[u8], sealed: &mut [u8], tag: &mut [u8]) -> Result<(), Unspecified> {
        if sealed.len() != plain.len() || tag.len() != TAG_LEN {
            return Err(Unspecified);
        }
        match &self.0 {
            Inner::AwsLc(k) => k
                .seal_out_of_place_scatter(
                    awslc::Nonce::assume_unique_for_key(nonce),
                    awslc::Aad::empty(),
                    plain,
                    sealed,
                    &[],
                    tag,
                )
                .map_err(|_| Unspecified),
            Inner::Ring(_) => {
                // ring seals in place only: one copy, far cheaper than the sealing it speeds up.
                sealed.copy_from_slice(plain);
                tag.copy_from_slice(&self.seal_in_place(nonce, sealed)?);
                Ok(())
            }
        }
    }

    /// Encrypts the plaintext `first ‖ second` into `out` (`first.len() + second.len() + TAG_LEN`
    /// bytes: ciphertext, then the tag) without joining the two first: a Mux frame header and the
    /// relay's buffer it heads are sealed as one chunk straight from where they are.
    pub fn seal_gather(&self, nonce: [u8; 12], first: &[u8], second: &[u8], out: &mut [u8]) -> Result<(), Unspecified> {
        if out.len() != first.len() + second.len() + TAG_LEN {
            return Err(Unspecified);
        }
        let (out_first, out_rest) = out.split_at_mut(first.len());
        match &self.0 {
            // aws-lc's extra plaintext is encrypted into the buffer that ends with the tag.
            Inner::AwsLc(k) => k
                .seal_out_of_place_scatter(
                    awslc::Nonce::assume_unique_for_key(nonce),
                    awslc::Aad::empty(),
                    first,
                    out_first,
                    second,
                    out_rest,
                )
                .map_err(|_| Unspecified),
            Inner::Ring(_) => {
                // ring seals in place only (see `seal_to`).
                let plain_len = first.len() + second.len();
                out_first.copy_from_slice(first);
                out_rest[..second.len()].copy_from_slice(second);
                let tag = self.seal_in_place(nonce, &mut out[..plain_len])?;
                out[plain_len..].copy_from_slice(&tag);
                Ok(())
            }
        }
    }

    /// Decrypts `sealed` into `plain` (same length), checking `tag` (`TAG_LEN` bytes). When the data is
    /// not authentic, `plain` holds unspecified bytes: the caller must not hand them on.
    pub fn open_to(&self, nonce: [u8; 12], sealed: &[u8], tag: &[u8], plain: &mut [u8]) -> Result<(), Unspecified> {
        if sealed.len() != plain.len() || tag.len() != TAG_LEN {
            return Err(Unspecified);
        }
        match &self.0 {
            Inner::AwsLc(k) => k
                .open_separate_gather(
                    awslc::Nonce::assume_unique_for_key(nonce),
                    awslc::Aad::empty(),
                    sealed,
                    tag,
                    plain,
                )
                .map_err(|_| Unspecified),
            Inner::Ring(k) => {
                // ring opens in place only: one copy, as in `seal_to`.
                plain.copy_from_slice(sealed);
                let tag = ring::aead::Tag::try_from(tag).map_err(|_| Unspecified)?;
                k.open_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::empty(),
                    tag,
                    plain,
                    0..,
                )
                .map(|_| ())
                .map_err(|_| Unspecified)
            }
        }
    }

    /// Decrypts `in_out` (ciphertext then tag) in place; returns the plaintext's length.
    pub fn open_in_place(&self, nonce: [u8; 12], in_out: &mut [u8]) -> Result<usize, Unspecified> {
        match &self.0 {
            Inner::AwsLc(k) => k
                .open_in_place(awslc::Nonce::assume_unique_for_key(nonce), awslc::Aad::empty(), in_out)
                .map(|p| p.len())
                .map_err(|_| Unspecified),
            Inner::Ring(k) => k
                .open_in_place(ring::aead::Nonce::assume_unique_for_key(nonce), ring::aead::Aad::empty(), in_out)
                .map(|p| p.len())
                .map_err(|_| Unspecified),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALGS: [(Alg, usize); 3] = [(Alg::Aes128Gcm, 16), (Alg::Aes256Gcm, 32), (Alg::Chacha20Poly1305, 32)];

    #[test]
    fn wrong_key_lengths_are_refused() {
        for (alg, len) in ALGS {
            for b in [Backend::AwsLc, Backend::Ring] {
                assert!(Key::on(b, alg, &vec![1; len]).is_some());
                assert!(Key::on(b, alg, &vec![1; len + 1]).is_none());
            }
        }
    }

    #[test]
    fn chacha_stays_on_aws_lc() {
        assert_eq!(Backend::for_alg(Alg::Chacha20Poly1305), Backend::AwsLc);
        // Whatever this CPU picks for AES-GCM, a key reports it.
        let k = Key::new(Alg::Aes128Gcm, &[0; 16]).unwrap();
        assert_eq!(k.backend(), Backend::for_alg(Alg::Aes128Gcm));
    }

    proptest! {
        /// Both libraries compute the same function: same ciphertext and tag, each opens the other's,
        /// and a flipped bit anywhere fails on both.
        #[test]
        fn both_libraries_agree(alg in 0usize..3, key in prop::collection::vec(any::<u8>(), 32),
                                nonce in any::<[u8; 12]>(), plain in prop::collection::vec(any::<u8>(), 0..3000),
                                flip in any::<prop::sample::Index>()) {
            let (alg, len) = ALGS[alg];
            let a = Key::on(Backend::AwsLc, alg, &key[..len]).unwrap();
            let r = Key::on(Backend::Ring, alg, &key[..len]).unwrap();
            let mut x = plain.clone();
            let tx = a.seal_in_place(nonce, &mut x).unwrap();
            let (mut y, mut ty) = (vec![0; plain.len()], [0u8; TAG_LEN]);
            r.seal_to(nonce, &plain, &mut y, &mut ty).unwrap();
            prop_assert_eq!(&x, &y);
            prop_assert_eq!(tx, ty);
            let (mut z, mut tz) = (vec![0; plain.len()], [0u8; TAG_LEN]);
            a.seal_to(nonce, &plain, &mut z, &mut tz).unwrap();
            prop_assert_eq!(&x, &z);
            prop_assert_eq!(tx, tz);
            // Sealed from two pieces, split anywhere, on either library: the same chunk.
            let cut = flip.index(plain.len() + 1);
            for k in [&a, &r] {
                let mut g = vec![0u8; plain.len() + TAG_LEN];
                k.seal_gather(nonce, &plain[..cut], &plain[cut..], &mut g).unwrap();
                prop_assert_eq!(&g[..plain.len()], &x[..]);
                prop_assert_eq!(&g[plain.len()..], &tx[..]);
            }

            let mut sealed = x.clone();
            sealed.extend_from_slice(&tx);
            for (opener, other) in [(&a, &r), (&r, &a)] {
                let mut m = sealed.clone();
                prop_assert_eq!(opener.open_in_place(nonce, &mut m), Ok(plain.len()));
                prop_assert_eq!(&m[..plain.len()], &plain[..]);
                let mut out = vec![0u8; plain.len()];
                prop_assert_eq!(opener.open_to(nonce, &x, &tx, &mut out), Ok(()));
                prop_assert_eq!(&out, &plain);
                let mut bad = sealed.clone();
                let i = flip.index(bad.len());
                bad[i] ^= 1;
                prop_assert_eq!(other.open_in_place(nonce, &mut bad.clone()), Err(Unspecified));
                let (bad_sealed, bad_tag) = bad.split_at(plain.len());
                prop_assert_eq!(other.open_to(nonce, bad_sealed, bad_tag, &mut out), Err(Unspecified));
            }
        }
    }

    #[test]
    fn seal_to_checks_lengths() {
        let k = Key::on(Backend::Ring, Alg::Aes128Gcm, &[3; 16]).unwrap();
        let mut sealed = [0u8; 4];
        let mut tag = [0u8; TAG_LEN];
        assert_eq!(k.seal_to([0; 12], &[1, 2, 3], &mut sealed, &mut tag), Err(Unspecified));
        assert_eq!(k.seal_to([0; 12], &[1, 2, 3, 4], &mut sealed, &mut tag[..8]), Err(Unspecified));
        for b in [Backend::AwsLc, Backend::Ring] {
            let k = Key::on(b, Alg::Aes128Gcm, &[3; 16]).unwrap();
            let mut out = [0u8; 4 + TAG_LEN];
            assert_eq!(k.seal_gather([0; 12], &[1, 2], &[3], &mut out), Err(Unspecified));
            assert_eq!(k.seal_gather([0; 12], &[1, 2], &[3, 4], &mut out[..4 + 8]), Err(Unspecified));
            assert_eq!(k.open_to([0; 12], &[1, 2, 3], &tag, &mut sealed), Err(Unspecified));
            assert_eq!(k.open_to([0; 12], &[1, 2, 3, 4], &tag[..8], &mut sealed), Err(Unspecified));
        }
    }
}
