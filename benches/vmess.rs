//! VMess chunk sealing and opening throughput (options 0x0d as 4.34 sends them: masking + padding).

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use oxray::proxy::aead::{Alg, Backend, Key, TAG_LEN};
use oxray::proxy::vmess::body::{
    BodySecurity, ChunkDecoder, ChunkEncoder, Decoded, MAX_AEAD_CHUNKS, MAX_CHUNK_OVERHEAD, MAX_STREAM_CHUNK_PAYLOAD,
};

const KEY: [u8; 16] = [0x10; 16];
const IV: [u8; 16] = [0x20; 16];
const OPTIONS: u8 = 0x0d;

fn securities() -> [(BodySecurity, &'static str); 3] {
    [
        (BodySecurity::Aes128Gcm, "aes-128-gcm"),
        (BodySecurity::Chacha20Poly1305, "chacha20-poly1305"),
        (BodySecurity::None, "none"),
    ]
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("vmess_chunk_seal");
    for (sec, name) in securities() {
        for size in [1024usize, 16 * 1024, MAX_STREAM_CHUNK_PAYLOAD] {
            g.throughput(Throughput::Bytes(size as u64));
            let payload = vec![0xabu8; size];
            let mut enc = ChunkEncoder::new(sec, OPTIONS, false, &KEY, &IV);
            // As the stream writer does: one initialized buffer, sealed into from the caller's data.
            let mut out = vec![0u8; size + MAX_CHUNK_OVERHEAD];
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    let n = enc.encode_into(std::hint::black_box(&payload), &mut out).unwrap();
                    std::hint::black_box(&out[..n]);
                })
            });
        }
    }
    g.finish();
}

/// Opening, with the plaintext ending in a reader's buffer as the stream hands it on: opened in place
/// and copied out (`in-place+copy`, and what a reader with uninitialized room still gets), or opened
/// straight into the reader's buffer (`into-reader`, `decode_to`).
fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("vmess_chunk_open");
    for (sec, name) in securities() {
        for size in [1024usize, 16 * 1024, 63 * 1024] {
            for into in [false, true] {
                if into && sec == BodySecurity::None {
                    continue; // nothing to open: both ways are the same copy
                }
                g.throughput(Throughput::Bytes(size as u64));
                let payload = vec![0xabu8; size];
                let id = format!("{name}/{}", if into { "into-reader" } else { "in-place+copy" });
                g.bench_with_input(BenchmarkId::new(id, size), &size, |b, _| {
                    // Chunks must be opened in the order they were sealed, so seal a batch (untimed),
                    // then time opening it.
                    let mut enc = ChunkEncoder::new(sec, OPTIONS, false, &KEY, &IV);
                    let mut dec = ChunkDecoder::new(sec, OPTIONS, false, &KEY, &IV);
                    let mut wire = Vec::with_capacity(64 * (size + 128));
                    let mut reader = vec![0u8; 63 * 1024];
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        let mut left = iters;
                        while left > 0 {
                            let batch = left.min(64);
                            if enc.chunks() as u64 + batch >= MAX_AEAD_CHUNKS as u64 {
                                // A key seals a bounded number of chunks: start a fresh pair.
                                enc = ChunkEncoder::new(sec, OPTIONS, false, &KEY, &IV);
                                dec = ChunkDecoder::new(sec, OPTIONS, false, &KEY, &IV);
                            }
                            wire.clear();
                            for _ in 0..batch {
                                enc.encode(&payload, &mut wire).unwrap();
                            }
                            let start = Instant::now();
                            let mut pos = 0;
                            for _ in 0..batch {
                                let room: &mut [u8] = if into { &mut reader } else { &mut [] };
                                match dec.decode_to(&mut wire[pos..], room).unwrap() {
                                    Decoded::Data { start, end, consumed } => {
                                        reader[..end - start].copy_from_slice(&wire[pos + start..pos + end]);
                                        pos += consumed;
                                    }
                                    Decoded::Opened { consumed, .. } => pos += consumed,
                                    other => panic!("{other:?}"),
                                }
                                std::hint::black_box(&reader);
                            }
                            total += start.elapsed();
                            left -= batch;
                        }
                        total
                    })
                });
            }
        }
    }
    g.finish();
}

/// AES-128-GCM on each library, as the chunk encoder seals (out of place) and the decoder opens (in
/// place): which one `Backend::for_alg` should pick on this CPU (src/proxy/aead.rs).
fn backends(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead_aes128gcm");
    for (backend, name) in [(Backend::AwsLc, "aws-lc"), (Backend::Ring, "ring")] {
        let key = Key::on(backend, Alg::Aes128Gcm, &KEY).unwrap();
        for size in [1024usize, 16 * 1024, MAX_STREAM_CHUNK_PAYLOAD] {
            g.throughput(Throughput::Bytes(size as u64));
            let plain = vec![0xabu8; size];
            let mut sealed = vec![0u8; size];
            let mut tag = [0u8; TAG_LEN];
            let mut n = 0u64;
            g.bench_with_input(BenchmarkId::new(format!("{name}/seal"), size), &size, |b, _| {
                b.iter(|| {
                    n += 1;
                    let mut nonce = [0u8; 12];
                    nonce[..8].copy_from_slice(&n.to_be_bytes());
                    key.seal_to(nonce, std::hint::black_box(&plain), &mut sealed, &mut tag).unwrap();
                })
            });
            // Opening fails on the tag (a fixed buffer cannot be opened twice), after the whole
            // decryption and GHASH: a successful open's work, plus clearing the output.
            let mut wire = vec![0u8; size + TAG_LEN];
            g.bench_with_input(BenchmarkId::new(format!("{name}/open"), size), &size, |b, _| {
                b.iter(|| std::hint::black_box(key.open_in_place([0; 12], &mut wire).is_err()))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = seal, open, backends
}
criterion_main!(benches);
