//! Shadowsocks AEAD stream: sealing a relay buffer (63 KiB → four chunks), appended to a `BytesMut`
//! (`encode`) against sealed into a kept buffer (`encode_into`, the stream's way now); and opening
//! it three ways: `decode` (one `Bytes` per chunk split off the read buffer), `decode_in_place` (opened
//! where it lies, then copied to the reader's buffer) and `decode_to` (opened straight into the
//! reader's buffer, the stream's way now).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Bencher, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use oxray::proxy::shadowsocks::codec::{Chunk, Decoder, Encoder, InPlace, Method, master_key};

/// What the relay hands a stream per write.
const RELAY_WRITE: usize = 63 * 1024;
/// Relay writes sealed per timed batch (each stream's nonces run in order, so a batch is sealed
/// untimed, then opened timed).
const BATCH: usize = 64;

fn methods() -> [(Method, &'static str); 2] {
    [(Method::Aes128Gcm, "aes-128-gcm"), (Method::Chacha20Poly1305, "chacha20-poly1305")]
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("ss_stream_seal");
    for (m, name) in methods() {
        let master = master_key("bench", m.key_len());
        let payload = vec![0xabu8; RELAY_WRITE];
        g.throughput(Throughput::Bytes(RELAY_WRITE as u64));
        let mut enc = Encoder::new(m, &master);
        let mut out = BytesMut::with_capacity(RELAY_WRITE + 256);
        g.bench_function(BenchmarkId::new(format!("{name}/append"), RELAY_WRITE), |b| {
            b.iter(|| {
                out.clear();
                enc.encode(std::hint::black_box(&payload), &mut out);
                std::hint::black_box(&out[..]);
            })
        });
        let mut kept = vec![0u8; RELAY_WRITE + 256];
        g.bench_function(BenchmarkId::new(format!("{name}/into"), RELAY_WRITE), |b| {
            b.iter(|| {
                let n = enc.encode_into(std::hint::black_box(&payload), &mut kept).unwrap_or(0);
                std::hint::black_box(&kept[..n]);
            })
        });
    }
    g.finish();
}

/// Seals `BATCH` relay writes as one stream's wire bytes.
fn wire(m: Method, master: &[u8]) -> BytesMut {
    let mut enc = Encoder::new(m, master);
    let mut w = BytesMut::new();
    for _ in 0..BATCH {
        enc.encode(&vec![0xabu8; RELAY_WRITE], &mut w);
    }
    w
}

/// Times `open_all` over a fresh copy of the sealed batch, with a fresh decoder and a relay-sized
/// reader buffer (set up untimed).
fn time_opening(
    b: &mut Bencher,
    m: Method,
    master: &[u8],
    sealed: &BytesMut,
    open_all: impl Fn(&mut Decoder, &mut BytesMut, &mut [u8]),
) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let mut buf = sealed.clone();
            let mut out = vec![0u8; RELAY_WRITE];
            let mut d = Decoder::new(m, master);
            let start = Instant::now();
            open_all(&mut d, &mut buf, &mut out);
            total += start.elapsed();
            std::hint::black_box(&out);
        }
        total
    })
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("ss_stream_open");
    for (m, name) in methods() {
        let master = master_key("bench", m.key_len());
        g.throughput(Throughput::Bytes((RELAY_WRITE * BATCH) as u64));
        let sealed = wire(m, &master);
        let id = |way: &str| BenchmarkId::new(format!("{name}/{way}"), RELAY_WRITE * BATCH);
        g.bench_function(id("split-bytes"), |b| {
            // As the stream read at first: one chunk per call, copied out of its `Bytes`.
            time_opening(b, m, &master, &sealed, |d, buf, out| {
                while let Ok(Some(Chunk::Data(p))) = d.decode(buf) {
                    out[..p.len()].copy_from_slice(&p);
                }
            })
        });
        g.bench_function(id("in-place"), |b| {
            time_opening(b, m, &master, &sealed, |d, buf, out| {
                let mut pos = 0;
                while let Ok(InPlace::Data { used, plain }) = d.decode_in_place(&mut buf[pos..]) {
                    out[..plain.len()].copy_from_slice(&buf[pos + plain.start..pos + plain.end]);
                    pos += used;
                }
            })
        });
        g.bench_function(id("into-reader"), |b| {
            time_opening(b, m, &master, &sealed, |d, buf, out| {
                let mut pos = 0;
                while let Ok(InPlace::Opened { used, .. }) = d.decode_to(&mut buf[pos..], out) {
                    pos += used;
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = seal, open
}
criterion_main!(benches);
