//! Mux.Cool: frame codec cost at 8 KiB, one session's throughput through client ↔ server over an
//! in-memory duplex (the tunnel's upper bound before VMess and sockets), and a 64 B round trip on one
//! thread (the user-space cost per message of both sides: framing, the write path's task hops, the
//! reader's hand-over to the session).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use oxray::mux::frame::{self, Frame};
use oxray::mux::{MuxClient, MuxClientConfig, MuxHandler, MuxPacket, MuxServer, MuxStream};
use oxray::session::{Address, Destination};

fn codec(c: &mut Criterion) {
    let data = Bytes::from(vec![0x42u8; 8192]);
    let mut g = c.benchmark_group("mux_frame_8k");
    g.throughput(Throughput::Bytes(8192));
    let mut out = Vec::with_capacity(16 * 1024);
    g.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(&frame::data_header(7, data.len()));
            out.extend_from_slice(black_box(&data));
            black_box(out.len())
        })
    });
    let mut wire = Vec::new();
    Frame::keep(7, data.clone()).encode(&mut wire).unwrap();
    // 8 frames per buffer, like a 64 KiB read.
    let batch: Vec<u8> = wire.iter().copied().cycle().take(wire.len() * 8).collect();
    g.throughput(Throughput::Bytes(8192 * 8));
    g.bench_function("decode_x8", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(&batch[..]));
            let mut n = 0;
            while let Some(f) = frame::decode(&mut buf).unwrap() {
                n += f.data.map_or(0, |d| d.len());
            }
            black_box(n)
        })
    });
    g.finish();
}

/// Reads to EOF, then answers with the byte count and ends.
struct Sink;

#[async_trait]
impl MuxHandler for Sink {
    async fn stream(&self, _t: Destination, mut s: MuxStream) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        let _ = s.write_all(&total.to_be_bytes()).await;
        let _ = s.shutdown().await;
    }
    async fn packet(&self, _t: Destination, _p: MuxPacket) {}
}

/// Writes back whatever it reads.
struct Echo;

#[async_trait]
impl MuxHandler for Echo {
    async fn stream(&self, _t: Destination, mut s: MuxStream) {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = s.shutdown().await;
    }
    async fn packet(&self, _t: Destination, _p: MuxPacket) {}
}

fn round_trip(c: &mut Criterion) {
    // One thread, as `oxray run` uses on a 2-CPU machine: every hop is a task switch, not a thread's.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (client, _server) = rt.block_on(async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let cfg = MuxClientConfig { max_concurrency: None, max_total: None, idle_close: None, wear: None };
        (MuxClient::new(Box::new(a), cfg), MuxServer::start(Box::new(b), Arc::new(Echo)))
    });
    let mut s = client.open_stream(Destination::tcp(Address::parse("127.0.0.1"), 7)).unwrap();
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    let mut g = c.benchmark_group("mux_round_trip");
    g.bench_function("64B", |b| {
        b.iter(|| {
            rt.block_on(async {
                s.write_all(black_box(&msg)).await.unwrap();
                s.read_exact(&mut back).await.unwrap();
            })
        })
    });
    g.finish();
    assert_eq!(back, msg);
}

const TRANSFER: usize = 64 << 20;

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (client, _server) = rt.block_on(async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let cfg = MuxClientConfig { max_concurrency: None, max_total: None, idle_close: None, wear: None };
        (MuxClient::new(Box::new(a), cfg), MuxServer::start(Box::new(b), Arc::new(Sink)))
    });
    let chunk = vec![0x5au8; 64 * 1024];
    let mut g = c.benchmark_group("mux_session");
    g.throughput(Throughput::Bytes(TRANSFER as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("one_session_64MiB", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut s = client.open_stream(Destination::tcp(Address::parse("127.0.0.1"), 80)).unwrap();
                    let mut sent = 0;
                    while sent < TRANSFER {
                        s.write_all(&chunk).await.unwrap();
                        sent += chunk.len();
                    }
                    s.shutdown().await.unwrap();
                    let mut ack = [0u8; 8];
                    s.read_exact(&mut ack).await.unwrap();
                    assert_eq!(u64::from_be_bytes(ack), TRANSFER as u64);
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, codec, round_trip, throughput);
criterion_main!(benches);
