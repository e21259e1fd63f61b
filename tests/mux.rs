//! Mux.Cool client/server glue over in-memory duplex pipes and raw frame peers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use common::{XOR, payload, wait_until};
use oxray::mux::frame::{self, Frame, Status};
use oxray::mux::{MuxClient, MuxClientConfig, MuxHandler, MuxPacket, MuxServer, MuxStream};
use oxray::proxy::{BoxStream, PacketConn};
use oxray::session::{Address, Destination};
use oxray::testing::WriteLog;

const T: Duration = Duration::from_secs(10);

fn target() -> Destination {
    Destination::tcp(Address::parse("127.0.0.1"), 80)
}

fn unlimited() -> MuxClientConfig {
    MuxClientConfig { max_concurrency: None, max_total: None, idle_close: None, wear: None }
}

/// XOR-echoes every stream (half-closing after the peer does) and echoes every datagram.
struct XorEcho;

#[async_trait]
impl MuxHandler for XorEcho {
    async fn stream(&self, _target: Destination, mut s: MuxStream) {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    buf[..n].iter_mut().for_each(|b| *b ^= XOR);
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let _ = s.shutdown().await;
    }

    async fn packet(&self, _target: Destination, p: MuxPacket) {
        while let Ok(Some(d)) = p.recv().await {
            if p.send(d).await.is_err() {
                return;
            }
        }
    }
}

fn pair(handler: Arc<dyn MuxHandler>, config: MuxClientConfig) -> (Arc<MuxClient>, Arc<MuxServer>) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    (MuxClient::new(Box::new(a), config), MuxServer::start(Box::new(b), handler))
}

async fn xor_roundtrip(s: MuxStream, data: Vec<u8>) -> Result<(), String> {
    let (mut r, mut w) = tokio::io::split(s);
    let len = data.len();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>((data, w))
    });
    let mut got = Vec::with_capacity(len);
    r.read_to_end(&mut got).await.map_err(|e| format!("read: {e}"))?;
    let (data, _w) = writer.await.map_err(|e| e.to_string())?.map_err(|e| format!("write: {e}"))?;
    if got.len() != len {
        return Err(format!("got {} of {len}", got.len()));
    }
    if got.iter().zip(&data).any(|(g, d)| *g != d ^ XOR) {
        return Err("bytes differ".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_sessions_of_one_mib() {
    let (client, server) = pair(Arc::new(XorEcho), unlimited());
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let s = client.open_stream(target()).unwrap();
        tasks.push(tokio::spawn(xor_roundtrip(s, payload(1 << 20, i))));
    }
    for t in tasks {
        timeout(T, t).await.expect("timed out").unwrap().unwrap();
    }
    assert_eq!(client.total_sessions(), 32);
    assert!(wait_until(T, || async { client.active_sessions() == 0 && server.active_sessions() == 0 }).await);
}

/// Reads everything first, then answers: the reply starts only after the client's End.
struct ReadAllThenReply;

#[async_trait]
impl MuxHandler for ReadAllThenReply {
    async fn stream(&self, _t: Destination, mut s: MuxStream) {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).await.is_err() {
            return;
        }
        all.iter_mut().for_each(|b| *b ^= XOR);
        let _ = s.write_all(&all).await;
        let _ = s.shutdown().await;
    }
    async fn packet(&self, _t: Destination, _p: MuxPacket) {}
}

#[tokio::test]
async fn half_close_client_still_receives() {
    let (client, _server) = pair(Arc::new(ReadAllThenReply), unlimited());
    let s = client.open_stream(target()).unwrap();
    timeout(T, xor_roundtrip(s, payload(300_000, 7))).await.unwrap().unwrap();
}

/// Shuts its side down first, then reads everything and reports how much arrived.
struct ShutdownFirst(mpsc::UnboundedSender<usize>);

#[async_trait]
impl MuxHandler for ShutdownFirst {
    async fn stream(&self, _t: Destination, mut s: MuxStream) {
        s.shutdown().await.unwrap();
        let mut all = Vec::new();
        let n = s.read_to_end(&mut all).await.map(|_| all.len()).unwrap_or(usize::MAX);
        let _ = self.0.send(n);
    }
    async fn packet(&self, _t: Destination, _p: MuxPacket) {}
}

#[tokio::test]
async fn server_end_gives_client_eof_and_client_stays_writable() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (client, _server) = pair(Arc::new(ShutdownFirst(tx)), unlimited());
    let mut s = client.open_stream(target()).unwrap();
    let mut b = [0u8; 16];
    assert_eq!(timeout(T, s.read(&mut b)).await.unwrap().unwrap(), 0, "server End is EOF");
    s.write_all(&payload(100_000, 1)).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(timeout(T, rx.recv()).await.unwrap(), Some(100_000));
    assert!(wait_until(T, || async { client.active_sessions() == 0 }).await);
}

/// Streams an endless body until a write fails; records bytes written and when it stopped.
struct Firehose {
    written: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
}

#[async_trait]
impl MuxHandler for Firehose {
    async fn stream(&self, _t: Destination, mut s: MuxStream) {
        let chunk = vec![0xabu8; 16 * 1024];
        while s.write_all(&chunk).await.is_ok() {
            self.written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        self.stopped.store(true, Ordering::SeqCst);
    }
    async fn packet(&self, _t: Destination, _p: MuxPacket) {}
}

async fn ghost_case(shutdown_first: bool) {
    let written = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    let (client, server) = pair(Arc::new(Firehose { written: written.clone(), stopped: stopped.clone() }), unlimited());
    let mut s = client.open_stream(target()).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 2 << 20 {
        got += timeout(T, s.read(&mut buf)).await.unwrap().unwrap();
    }
    if shutdown_first {
        s.shutdown().await.unwrap();
    }
    drop(s); // the visitor went away mid-transfer
    assert!(
        wait_until(Duration::from_secs(2), || async { stopped.load(Ordering::SeqCst) }).await,
        "server side kept sending after the visitor left"
    );
    assert!(wait_until(T, || async { server.active_sessions() == 0 && client.active_sessions() == 0 }).await);
    // The connection itself stays usable.
    let s2 = client.open_stream(target()).unwrap();
    let mut b = [0u8; 1];
    timeout(T, s2.take(1).read_exact(&mut b)).await.unwrap().unwrap();
}

#[tokio::test]
async fn visitor_drop_stops_upstream_transfer() {
    ghost_case(false).await;
}

#[tokio::test]
async fn visitor_half_close_then_drop_stops_upstream_transfer() {
    ghost_case(true).await;
}

/// Port 1 gets an endless body (a service answering a visitor who never reads); every other target
/// is XOR-echoed.
struct FirehoseOnPortOne {
    firehose: Firehose,
}

#[async_trait]
impl MuxHandler for FirehoseOnPortOne {
    async fn stream(&self, t: Destination, s: MuxStream) {
        if t.port == 1 { self.firehose.stream(t, s).await } else { XorEcho.stream(t, s).await }
    }
    async fn packet(&self, t: Destination, p: MuxPacket) {
        XorEcho.packet(t, p).await
    }
}

/// One session whose reader never reads must not stop the connection's single reader: 20 other
/// sessions each finish a 16 KiB round trip within 1 s, byte for byte, the stalled one is ended (End
/// with the Error option, its writer stops), and what it queued stays within its budget in real
/// allocation (queued data is copied out of the shared read buffer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_is_ended_and_the_others_carry_on() {
    let written = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    let firehose = Firehose { written: written.clone(), stopped: stopped.clone() };
    let (client, server) = pair(Arc::new(FirehoseOnPortOne { firehose }), unlimited());
    let mut stalled = client.open_stream(Destination::tcp(Address::parse("127.0.0.1"), 1)).unwrap();
    // The session fills its queue: the reader stops waiting for it after HOL_WAIT and queues into its
    // headroom; from then on nothing waits for it.
    let budget = 512 * 1024;
    assert!(wait_until(T, || async { client.queued_bytes() >= budget }).await, "the stalled session never filled");
    let mut peak = 0;
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let s = client.open_stream(target()).unwrap();
        tasks.push(tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            xor_roundtrip(s, payload(16 * 1024, i)).await.map(|()| t0.elapsed())
        }));
    }
    let mut slowest = Duration::ZERO;
    for (i, t) in tasks.into_iter().enumerate() {
        peak = peak.max(client.queued_bytes());
        let took = timeout(T, t).await.expect("timed out").unwrap().unwrap_or_else(|e| panic!("session {i}: {e}"));
        slowest = slowest.max(took);
    }
    eprintln!("20 x 16 KiB round trips beside a stalled session: slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "slowest round trip took {slowest:?}");
    // The stalled session is ended on its own: its firehose sees the End|Error, its reader an error.
    assert!(wait_until(T, || async { stopped.load(Ordering::SeqCst) }).await, "the stalled session was never ended");
    let mut b = vec![0u8; 64 * 1024];
    let err = loop {
        match timeout(T, stalled.read(&mut b)).await.unwrap() {
            Ok(0) => panic!("clean EOF on a session ended for stalling"),
            Ok(_) => continue, // what it had queued may have been dropped already, or not yet
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    peak = peak.max(client.queued_bytes());
    // Its budget (512 KiB) plus the headroom (4 MiB) plus one frame, in real allocation.
    assert!(peak <= (512 + 4096 + 64) * 1024, "{peak} bytes queued");
    assert!(wait_until(T, || async { client.queued_bytes() == 0 }).await);
    drop(stalled);
    assert!(wait_until(T, || async { client.active_sessions() == 0 && server.active_sessions() == 0 }).await);
    // The connection still carries new sessions.
    timeout(T, xor_roundtrip(client.open_stream(target()).unwrap(), payload(100_000, 99))).await.unwrap().unwrap();
}

/// A reader that pauses briefly (well under the stall limit) while a bulk transfer fills its queue loses
/// nothing: the connection reader waits for it as long as it keeps taking data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_reading_session_loses_nothing() {
    let (client, _server) = pair(Arc::new(XorEcho), unlimited());
    let s = client.open_stream(target()).unwrap();
    let data = payload(8 << 20, 5);
    let (mut r, mut w) = tokio::io::split(s);
    let d2 = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&d2).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 16 * 1024];
    let mut reads = 0u32;
    loop {
        let n = timeout(T, r.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        reads += 1;
        if reads.is_multiple_of(64) {
            // Slower than the link: the queue stays full while the reader keeps taking data.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got.iter().zip(&data).all(|(g, d)| *g == d ^ XOR));
}

#[tokio::test]
async fn connection_death_ends_every_session() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = MuxServer::start(Box::new(b), Arc::new(XorEcho));
    let client = MuxClient::new(Box::new(a), unlimited());
    let mut streams: Vec<MuxStream> = (0..4).map(|_| client.open_stream(target()).unwrap()).collect();
    for s in &mut streams {
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    server.close();
    timeout(T, server.closed()).await.unwrap();
    timeout(T, client.closed()).await.unwrap();
    for mut s in streams {
        let mut b = [0u8; 1];
        assert!(timeout(T, s.read(&mut b)).await.unwrap().is_err());
        assert!(s.write_all(b"y").await.is_err());
    }
    assert!(client.is_closed() && client.is_full());
    assert!(client.open_stream(target()).is_err());
    assert_eq!(client.active_sessions(), 0);
}

#[tokio::test]
async fn idle_close_ends_the_stream_cleanly() {
    let (a, mut raw) = tokio::io::duplex(64 * 1024);
    let cfg = MuxClientConfig { idle_close: Some(Duration::from_millis(150)), ..unlimited() };
    let client = MuxClient::new(Box::new(a), cfg);
    let s = client.open_stream(target()).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!client.is_closed(), "closed with a session open");
    drop(s);
    timeout(Duration::from_secs(2), client.closed()).await.unwrap();
    // The raw peer sees New(1), End(1, error), then a clean EOF.
    let mut all = Vec::new();
    timeout(T, raw.read_to_end(&mut all)).await.unwrap().unwrap();
    let mut buf = BytesMut::from(&all[..]);
    let new = frame::decode(&mut buf).unwrap().unwrap();
    assert_eq!((new.id, new.status, new.target), (1, Status::New, Some(target())));
    assert_eq!(&buf[..], &[0, 4, 0, 1, 3, 2]);
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(f) = frame::decode(buf).unwrap() {
            return Some(f);
        }
        if timeout(T, r.read_buf(buf)).await.unwrap().unwrap() == 0 {
            return None;
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, f: Frame) {
    let mut v = Vec::new();
    f.encode(&mut v).unwrap();
    w.write_all(&v).await.unwrap();
}

#[tokio::test]
async fn garbage_frame_closes_server_connection() {
    let (a, mut raw) = tokio::io::duplex(64 * 1024);
    let server = MuxServer::start(Box::new(a), Arc::new(XorEcho));
    raw.write_all(&[0x02, 0x01, 0, 0]).await.unwrap(); // MetaLen 513
    timeout(T, server.closed()).await.unwrap();
    let mut rest = Vec::new();
    timeout(T, raw.read_to_end(&mut rest)).await.unwrap().unwrap();
}

#[tokio::test]
async fn unknown_session_keep_gets_end() {
    // Server side.
    let (a, mut raw) = tokio::io::duplex(64 * 1024);
    let _server = MuxServer::start(Box::new(a), Arc::new(XorEcho));
    send(&mut raw, Frame::keep(9, Bytes::from_static(b"data"))).await;
    send(&mut raw, Frame::keep(9, Bytes::from_static(b"more"))).await; // answered once only
    send(&mut raw, Frame::keep(10, Bytes::from_static(b"data"))).await;
    let mut buf = BytesMut::new();
    assert_eq!(read_frame(&mut raw, &mut buf).await, Some(Frame::end(9, false)));
    assert_eq!(read_frame(&mut raw, &mut buf).await, Some(Frame::end(10, false)));

    // Client side: ignores New/KeepAlive, answers End for ids it never opened.
    let (a, mut raw) = tokio::io::duplex(64 * 1024);
    let client = MuxClient::new(Box::new(a), unlimited());
    send(&mut raw, Frame::new_session(5, target(), None)).await;
    send(&mut raw, Frame { id: 0, status: Status::KeepAlive, error: false, target: None, data: None }).await;
    send(&mut raw, Frame::keep(5, Bytes::from_static(b"x"))).await;
    let mut buf = BytesMut::new();
    assert_eq!(read_frame(&mut raw, &mut buf).await, Some(Frame::end(5, false)));
    assert!(!client.is_closed());
    assert_eq!(client.active_sessions(), 0);
}

#[tokio::test]
async fn ids_start_at_one_and_data_is_framed_up_to_the_u16_limit() {
    let (a, mut raw) = tokio::io::duplex(1 << 20);
    let client = MuxClient::new(Box::new(a), unlimited());
    let mut s1 = client.open_stream(target()).unwrap();
    let s2 = client.open_stream(target()).unwrap();
    assert_eq!((s1.id(), s2.id()), (1, 2));
    let sent = payload(200_000, 3);
    s1.write_all(&sent).await.unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(read_frame(&mut raw, &mut buf).await.unwrap().id, 1);
    assert_eq!(read_frame(&mut raw, &mut buf).await.unwrap().id, 2);
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let f = read_frame(&mut raw, &mut buf).await.unwrap();
        assert_eq!((f.id, f.status), (1, Status::Keep));
        let d = f.data.unwrap();
        sizes.push(d.len());
        got.extend_from_slice(&d);
    }
    assert_eq!(got, sent);
    // Large writes become large frames (4.34 reads any 16-bit DataLen), never more than DataLen holds.
    assert!(sizes.iter().all(|&n| n <= 65535), "{sizes:?}");
    assert!(sizes.iter().any(|&n| n > 8192), "{sizes:?}");
    // Peer End|Error aborts the session both ways.
    send(&mut raw, Frame::end(1, true)).await;
    let mut b = [0u8; 1];
    assert!(timeout(T, s1.read(&mut b)).await.unwrap().is_err());
    assert!(s1.write_all(b"z").await.is_err());
    drop(s1); // no End for a session the peer aborted
    drop(s2);
    assert_eq!(read_frame(&mut raw, &mut buf).await, Some(Frame::end(2, true)));
}

#[tokio::test]
async fn an_end_joins_the_next_sessions_frames_and_goes_last() {
    let (a, mut raw) = tokio::io::duplex(1 << 20);
    let (logged, writes) = WriteLog::new(a);
    let client = MuxClient::new(Box::new(logged), unlimited());
    let mut s1 = client.open_stream(target()).unwrap();
    s1.write_all(b"a").await.unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(read_frame(&mut raw, &mut buf).await.map(|f| (f.id, f.status)), Some((1, Status::New)));
    assert_eq!(read_frame(&mut raw, &mut buf).await, Some(Frame::keep(1, Bytes::from_static(b"a"))));
    let before = writes.lock().unwrap().len();

    // Session 1 ends (the writer task is woken first), then, in the same scheduler pass, another task
    // opens session 2 and sends: the portal's pattern when a visitor leaves and the next one arrives.
    s1.shutdown().await.unwrap();
    let c = client.clone();
    let opener = tokio::spawn(async move {
        let mut s2 = c.open_stream(target()).unwrap();
        s2.write_all(b"b").await.unwrap();
        s2
    });
    let new = read_frame(&mut raw, &mut buf).await.unwrap();
    assert_eq!((new.id, new.status, new.target), (2, Status::New, Some(target())));
    assert_eq!(read_frame(&mut raw, &mut buf).await, Some(Frame::keep(2, Bytes::from_static(b"b"))));
    assert_eq!(read_frame(&mut raw, &mut buf).await, Some(Frame::end(1, false)), "End goes after new data");
    let _s2 = opener.await.unwrap();
    let w = writes.lock().unwrap();
    assert_eq!(w.len(), before + 1, "End, New and data in one write, got writes of {:?} bytes", &w[before..]);
}

#[tokio::test]
async fn a_mass_end_of_every_session_at_the_cap_goes_out() {
    // As many End frames at once as a connection can have sessions.
    const N: usize = oxray::mux::MAX_SESSIONS;
    let (a, mut raw) = tokio::io::duplex(1 << 20);
    let client = MuxClient::new(Box::new(a), unlimited());
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut ends = 0;
        while let Some(f) = read_frame(&mut raw, &mut buf).await {
            if f.status == Status::End {
                ends += 1;
                if ends == N {
                    break;
                }
            }
        }
        ends
    });
    let mut streams = Vec::with_capacity(N);
    for i in 0..N {
        streams.push(client.open_stream(target()).unwrap());
        if i % 100 == 0 {
            // Let the writer send these New frames, so the buffers never grow past their usual size.
            tokio::task::yield_now().await;
        }
    }
    assert!(client.is_full(), "a client at the session cap takes more");
    assert!(client.open_stream(target()).is_err());
    drop(streams);
    assert_eq!(timeout(T, reader).await.unwrap().unwrap(), N);
}

#[tokio::test]
async fn server_side_peer_abort_and_first_data_in_new() {
    struct Report(mpsc::UnboundedSender<Vec<u8>>, mpsc::UnboundedSender<bool>);
    #[async_trait]
    impl MuxHandler for Report {
        async fn stream(&self, _t: Destination, mut s: MuxStream) {
            let mut got = vec![0u8; 5];
            s.read_exact(&mut got).await.unwrap();
            let _ = self.0.send(got);
            let mut b = [0u8; 1];
            let _ = self.1.send(s.read(&mut b).await.is_err());
        }
        async fn packet(&self, _t: Destination, _p: MuxPacket) {}
    }
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let (a, mut raw) = tokio::io::duplex(64 * 1024);
    let server = MuxServer::start(Box::new(a), Arc::new(Report(tx1, tx2)));
    send(&mut raw, Frame::new_session(1, target(), Some(Bytes::from_static(b"hello")))).await;
    assert_eq!(timeout(T, rx1.recv()).await.unwrap(), Some(b"hello".to_vec()));
    send(&mut raw, Frame::end(1, true)).await;
    assert_eq!(timeout(T, rx2.recv()).await.unwrap(), Some(true), "End|Error must make reads fail");
    assert!(wait_until(T, || async { server.active_sessions() == 0 }).await);
    // The handler dropped an aborted session: nothing is sent back for it.
    send(&mut raw, Frame::keep(1, Bytes::from_static(b"late"))).await;
    drop(server);
    let mut buf = BytesMut::new();
    let got = timeout(Duration::from_millis(300), read_frame(&mut raw, &mut buf)).await;
    assert!(got.is_err(), "unexpected frame {got:?}");
}

#[tokio::test]
async fn udp_packet_sessions() {
    let (client, server) = pair(Arc::new(XorEcho), unlimited());
    let p = client.open_packet(Destination::udp(Address::parse("8.8.8.8"), 53)).unwrap();
    for i in 0..20u64 {
        let d = Bytes::from(payload(100 + i as usize * 97, i));
        p.send(d.clone()).await.unwrap();
        assert_eq!(timeout(T, p.recv()).await.unwrap().unwrap(), Some(d));
    }
    p.send(Bytes::from(vec![1u8; 2048])).await.unwrap();
    assert_eq!(timeout(T, p.recv()).await.unwrap().unwrap().map(|d| d.len()), Some(2048));
    assert!(p.send(Bytes::from(vec![1u8; 2049])).await.is_err());
    p.close();
    assert_eq!(client.active_sessions(), 0, "close frees the packet session at once");
    assert_eq!(p.recv().await.unwrap(), None);
    assert!(p.send(Bytes::from_static(b"late")).await.is_err());
    drop(p);
    assert!(wait_until(T, || async { server.active_sessions() == 0 }).await);
}

#[tokio::test]
async fn control_like_packet_session_wire() {
    // What the portal does on DRAIN: a datagram, then close; the bridge never answers.
    let (a, mut raw) = tokio::io::duplex(64 * 1024);
    let client = MuxClient::new(Box::new(a), unlimited());
    let ctl = Destination::udp(Address::parse("reverse.internal.v2ray.com"), 0);
    let p = client.open_packet(ctl.clone()).unwrap();
    p.send(Bytes::from_static(&[0x08, 0x01])).await.unwrap();
    p.close();
    drop(p);
    let mut buf = BytesMut::new();
    assert_eq!(read_frame(&mut raw, &mut buf).await, Some(Frame::new_session(1, ctl, None)));
    assert_eq!(read_frame(&mut raw, &mut buf).await, Some(Frame::keep(1, Bytes::from_static(&[0x08, 0x01]))));
    assert_eq!(read_frame(&mut raw, &mut buf).await, Some(Frame::end(1, false)));
    client.close();
    assert_eq!(read_frame(&mut raw, &mut buf).await, None, "exactly one End, then a clean EOF");
}

#[tokio::test]
async fn oversized_udp_frame_closes_connection() {
    let (a, mut raw) = tokio::io::duplex(64 * 1024);
    let server = MuxServer::start(Box::new(a), Arc::new(XorEcho));
    send(&mut raw, Frame::new_session(1, Destination::udp(Address::parse("1.1.1.1"), 53), None)).await;
    send(&mut raw, Frame::keep(1, Bytes::from(vec![0u8; 3000]))).await;
    timeout(T, server.closed()).await.unwrap();
}

#[tokio::test]
async fn limits_make_client_full() {
    let (a, _raw) = tokio::io::duplex(64 * 1024);
    let cfg = MuxClientConfig { max_concurrency: Some(2), max_total: Some(3), idle_close: None, wear: None };
    let client = MuxClient::new(Box::new(a), cfg);
    let s1 = client.open_stream(target()).unwrap();
    let _s2 = client.open_stream(target()).unwrap();
    assert!(client.is_full());
    assert!(client.open_stream(target()).is_err());
    drop(s1);
    assert!(!client.is_full());
    let _s3 = client.open_stream(target()).unwrap();
    assert_eq!(client.total_sessions(), 3);
    assert!(client.is_full());
}

#[tokio::test]
async fn over_real_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = accept.await.unwrap();
    let server = MuxServer::start(Box::new(s) as BoxStream, Arc::new(XorEcho));
    let client = MuxClient::new(Box::new(c), unlimited());
    let mut tasks = Vec::new();
    for i in 0..4 {
        let st = client.open_stream(target()).unwrap();
        tasks.push(tokio::spawn(xor_roundtrip(st, payload(500_000, i))));
    }
    for t in tasks {
        timeout(T, t).await.unwrap().unwrap().unwrap();
    }
    client.close();
    timeout(T, server.closed()).await.unwrap();
}

#[allow(dead_code)]
fn _assert_types(s: DuplexStream) -> BoxStream {
    Box::new(s)
}

/// Collects every stream's bytes and reports them at the peer's End.
struct Collect(mpsc::UnboundedSender<(u16, Vec<u8>)>);

#[async_trait]
impl MuxHandler for Collect {
    async fn stream(&self, _t: Destination, mut s: MuxStream) {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).await.is_ok() {
            let _ = self.0.send((s.id(), all));
        }
    }
    async fn packet(&self, _t: Destination, _p: MuxPacket) {}
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Frames of any size for interleaved sessions, from a raw peer: each session receives exactly its
    /// bytes in order, and once they are read nothing stays queued (the accounting of copies balances).
    #[test]
    fn interleaved_frames_arrive_whole_and_the_queue_count_balances(
        frames in proptest::collection::vec((1u16..6, 0usize..70_000), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let (a, mut raw) = tokio::io::duplex(256 * 1024);
            let server = MuxServer::start(Box::new(a), Arc::new(Collect(tx)));
            let mut want: std::collections::BTreeMap<u16, Vec<u8>> = Default::default();
            let mut wire = Vec::new();
            for (i, (id, len)) in frames.iter().enumerate() {
                let data = Bytes::from(payload((*len).min(65_535), i as u64));
                let f = if want.contains_key(id) {
                    Frame::keep(*id, data.clone())
                } else {
                    Frame::new_session(*id, target(), Some(data.clone()))
                };
                want.entry(*id).or_default().extend_from_slice(&data);
                f.encode(&mut wire).unwrap();
            }
            for id in want.keys() {
                Frame::end(*id, false).encode(&mut wire).unwrap();
            }
            let writer = tokio::spawn(async move {
                raw.write_all(&wire).await.unwrap();
                raw
            });
            let mut got = std::collections::BTreeMap::new();
            while got.len() < want.len() {
                let (id, data) = timeout(T, rx.recv()).await.unwrap().unwrap();
                got.insert(id, data);
            }
            assert_eq!(got, want);
            assert_eq!(server.queued_bytes(), 0);
            drop(writer.await.unwrap());
        });
    }
}
