//! Poll-based AsyncRead/AsyncWrite over an inner byte stream, running the chunk codec of `body.rs`
//! (and, on the client, the response-header check first). Buffers are reused; chunks are sealed and
//! opened in place.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::warn;

use super::body::{BodyError, ChunkDecoder, ChunkEncoder, Decoded, MAX_AEAD_CHUNKS, MAX_CHUNK_OVERHEAD};
use super::header::{Progress, ResponseDecoder};
use crate::session::Wear;

/// Initial read buffer; it grows (once) to the largest chunk seen, at most 64 KiB + header.
const READ_BUF_INITIAL: usize = 32 * 1024;
/// Above this many unsent bytes, writes push to the socket (and wait for it instead of buffering more);
/// below it, written chunks stay queued until the next flush.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Largest raw (unframed) write accepted at once.
const RAW_WRITE_MAX: usize = 64 * 1024;

enum ReadStage {
    /// Client: the response header comes first.
    Response(ResponseDecoder),
    /// Body chunks.
    Body,
}

struct Reader {
    stage: ReadStage,
    dec: ChunkDecoder,
    buf: Vec<u8>,
    /// Undecoded bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Opened payload not yet handed out: `buf[plain..plain_end]`; `after` is where the chunk ends.
    plain: usize,
    plain_end: usize,
    after: usize,
    eof: bool,
}

struct Writer {
    enc: ChunkEncoder,
    /// Sealed bytes are `buf[pos..filled]`. `buf` only grows and stays initialized, so chunks are sealed
    /// straight into it from the caller's data (no staging copy, no zeroing per chunk).
    buf: Vec<u8>,
    filled: usize,
    /// Bytes of `buf` already written to the inner stream.
    pos: usize,
    end_queued: bool,
}

impl Writer {
    fn unsent(&self) -> usize {
        self.filled - self.pos
    }

    /// Seals one chunk carrying all of `data` (at most one chunk's payload) after what is queued.
    fn seal(&mut self, first: &[u8], second: &[u8]) -> Result<(), BodyError> {
        if self.pos == self.filled {
            self.pos = 0;
            self.filled = 0;
        }
        let need = self.filled + first.len() + second.len() + MAX_CHUNK_OVERHEAD;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        self.filled += self.enc.encode_gather_into(first, second, &mut self.buf[self.filled..])?;
        Ok(())
    }
}

/// A VMess body stream over `S`: reads open the peer's chunks, writes seal ours.
pub struct VmessStream<S> {
    inner: S,
    r: Reader,
    w: Writer,
    /// Chunk counts published for a Mux connection running over this stream.
    wear: Option<Arc<Wear>>,
    /// The peer's nonce counter has wrapped (logged once).
    peer_wrapped: bool,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("vmess: {e}"))
}

impl<S> VmessStream<S> {
    /// Client side: `request_header` is queued to go out first (flush to send it at once); reads
    /// check the response header before the body.
    pub fn client(
        inner: S,
        request_header: Vec<u8>,
        enc: ChunkEncoder,
        dec: ChunkDecoder,
        response: ResponseDecoder,
    ) -> Self {
        Self::build(inner, ReadStage::Response(response), dec, &[], enc, request_header)
    }

    /// Server side: `leftover` are body bytes read along with the request header; the response header
    /// is queued and goes out with the first response data (or alone at shutdown), as Go does.
    pub fn server(inner: S, leftover: &[u8], dec: ChunkDecoder, enc: ChunkEncoder, response_header: Vec<u8>) -> Self {
        Self::build(inner, ReadStage::Body, dec, leftover, enc, response_header)
    }

    fn build(
        inner: S,
        stage: ReadStage,
        dec: ChunkDecoder,
        leftover: &[u8],
        enc: ChunkEncoder,
        queued: Vec<u8>,
    ) -> Self {
        let mut buf = vec![0u8; READ_BUF_INITIAL.max(leftover.len())];
        buf[..leftover.len()].copy_from_slice(leftover);
        let filled = queued.len();
        VmessStream {
            inner,
            r: Reader { stage, dec, buf, start: 0, end: leftover.len(), plain: 0, plain_end: 0, after: 0, eof: false },
            w: Writer { enc, buf: queued, filled, pos: 0, end_queued: false },
            wear: None,
            peer_wrapped: false,
        }
    }

    /// Publishes this stream's AEAD chunk counts to `wear` from now on.
    pub fn set_wear(&mut self, wear: Arc<Wear>) {
        wear.record(self.w.enc.chunks(), self.r.dec.chunks());
        self.wear = Some(wear);
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> VmessStream<S> {
    /// Seals one chunk; at the nonce limit, says why the stream must end (once, at warn level).
    fn seal(&mut self, first: &[u8], second: &[u8]) -> io::Result<()> {
        match self.w.seal(first, second) {
            Ok(()) => {
                if let Some(w) = &self.wear {
                    w.record_sealed(self.w.enc.chunks());
                }
                Ok(())
            }
            Err(BodyError::NonceExhausted) => {
                // Reached once per stream: nothing is sealed after this.
                warn!(
                    "vmess: closing the connection: {MAX_AEAD_CHUNKS} chunks sent under one key, and one more \
                     would reuse a nonce (V2Ray would go on and break the encryption)"
                );
                // Nothing more can be sent on this stream, not even the end chunk.
                self.w.end_queued = true;
                Err(invalid(BodyError::NonceExhausted))
            }
            Err(e) => Err(invalid(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> VmessStream<S> {
    /// Writes out everything queued.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.w.pos < self.w.filled {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.w.buf[self.w.pos..self.w.filled]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.w.pos += n;
        }
        self.w.filled = 0;
        self.w.pos = 0;
        Poll::Ready(Ok(()))
    }
}

/// Publishes the count of chunks opened (for a Mux connection over the stream) and warns once when
/// the peer has gone past the nonce limit.
fn note_opened(opened: u32, wear: Option<&Wear>, wrapped: &mut bool) {
    if let Some(w) = wear {
        w.record_opened(opened);
    }
    if opened > MAX_AEAD_CHUNKS && !*wrapped {
        *wrapped = true;
        warn!(
            "vmess: the peer has sent more than {MAX_AEAD_CHUNKS} chunks under one key, so it \
             reuses nonces (V2Ray does); use mux or shorter connections toward it"
        );
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for VmessStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = &mut this.r;
        loop {
            if r.plain < r.plain_end {
                let n = out.remaining().min(r.plain_end - r.plain);
                out.put_slice(&r.buf[r.plain..r.plain + n]);
                r.plain += n;
                if r.plain == r.plain_end {
                    r.start = r.after;
                }
                return Poll::Ready(Ok(()));
            }
            if r.eof || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if r.start == r.end {
                r.start = 0;
                r.end = 0;
            }
            let need = match &mut r.stage {
                ReadStage::Response(dec) => match dec.decode(&mut r.buf[r.start..r.end]).map_err(invalid)? {
                    Progress::Need(n) => n,
                    Progress::Done((), used) => {
                        r.start += used;
                        r.stage = ReadStage::Body;
                        continue;
                    }
                },
                ReadStage::Body => {
                    // A chunk that fits into what the caller's buffer has initialized past its data (the
                    // relay's buffer is all initialized) is opened straight into it: no copy after.
                    let filled = out.filled().len();
                    let room = &mut out.initialized_mut()[filled..];
                    match r.dec.decode_to(&mut r.buf[r.start..r.end], room).map_err(invalid)? {
                        Decoded::Need(n) => n,
                        Decoded::Opened { n, consumed } => {
                            note_opened(r.dec.chunks(), this.wear.as_deref(), &mut this.peer_wrapped);
                            out.advance(n);
                            r.start += consumed;
                            return Poll::Ready(Ok(()));
                        }
                        Decoded::Data { start, end, consumed } => {
                            note_opened(r.dec.chunks(), this.wear.as_deref(), &mut this.peer_wrapped);
                            r.plain = r.start + start;
                            r.plain_end = r.start + end;
                            r.after = r.start + consumed;
                            if start == end {
                                r.start = r.after;
                            }
                            continue;
                        }
                        Decoded::End => {
                            r.eof = true;
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
            };
            if r.start + need > r.buf.len() {
                r.buf.copy_within(r.start..r.end, 0);
                r.end -= r.start;
                r.start = 0;
                if need > r.buf.len() {
                    r.buf.resize(need, 0);
                }
            }
            let mut rb = ReadBuf::new(&mut r.buf[r.end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                // EOF at a chunk boundary is a clean end: Go often closes without the end chunk.
                let clean = r.start == r.end && !r.dec.mid_chunk() && matches!(r.stage, ReadStage::Body);
                if clean {
                    r.eof = true;
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "vmess: truncated chunk")));
            }
            r.end += n;
        }
    }
}

impl<S: AsyncWrite + Unpin> VmessStream<S> {
    /// Seals `first ‖ second` (as much as one chunk takes) after what is queued; the bytes taken.
    fn poll_write_gather(&mut self, cx: &mut Context<'_>, first: &[u8], second: &[u8]) -> Poll<io::Result<usize>> {
        if self.w.end_queued {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "vmess: write after shutdown")));
        }
        if self.w.unsent() >= WRITE_HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        } else if self.w.pos >= WRITE_HIGH_WATER {
            // Mostly sent: move the rest to the front instead of growing the buffer.
            self.w.buf.copy_within(self.w.pos..self.w.filled, 0);
            self.w.filled -= self.w.pos;
            self.w.pos = 0;
        }
        let limit = if self.w.enc.is_raw() { RAW_WRITE_MAX } else { self.w.enc.max_payload() };
        let first = &first[..first.len().min(limit)];
        let second = &second[..second.len().min(limit - first.len())];
        let n = first.len() + second.len();
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        self.seal(first, second)?;
        // Small writes wait for more (or for a flush) so that back-to-back writes leave in one syscall;
        // past the high-water mark, push what the socket takes now.
        if self.w.unsent() >= WRITE_HIGH_WATER
            && let Poll::Ready(Err(e)) = self.poll_drain(cx)
        {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for VmessStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_gather(cx, data, &[])
    }

    /// The first two non-empty buffers go into one chunk, sealed from where they are: a Mux frame
    /// header and its payload (the relay's buffer) reach the wire without being joined first.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut full = bufs.iter().filter(|b| !b.is_empty());
        let first = full.next().map_or(&[][..], |b| &b[..]);
        let second = full.next().map_or(&[][..], |b| &b[..]);
        self.get_mut().poll_write_gather(cx, first, second)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.w.end_queued {
            this.w.end_queued = true;
            if !this.w.enc.is_raw() {
                this.seal(&[], &[])?;
            }
        }
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SecretId, VmessClientConfig, VmessInboundConfig, VmessSecurity};
    use crate::proxy::vmess::header::{ServerHandshake, encode_response, response_keys};
    use crate::proxy::vmess::outbound::ClientUser;
    use crate::proxy::vmess::validator::Validator;
    use crate::session::{Address, Destination};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const ID: [u8; 16] = [0x42; 16];

    async fn server_side(
        mut io: tokio::io::DuplexStream,
        v: &Validator,
    ) -> (VmessStream<tokio::io::DuplexStream>, Destination) {
        let mut buf = Vec::new();
        let mut hs = ServerHandshake::new(v, crate::proxy::vmess::unix_now());
        loop {
            match hs.step(&buf).unwrap() {
                Progress::Need(_) => {
                    let mut tmp = [0u8; 4096];
                    let n = io.read(&mut tmp).await.unwrap();
                    assert!(n > 0, "eof during handshake");
                    buf.extend_from_slice(&tmp[..n]);
                }
                Progress::Done(req, used) => {
                    let h = req.header;
                    let sec = h.body_security().unwrap();
                    let (rk, riv) = response_keys(req.aead, &h.body_key, &h.body_iv);
                    let mut resp = Vec::new();
                    encode_response(req.aead, &rk, &riv, h.v, &mut resp);
                    let s = VmessStream::server(
                        io,
                        &buf[used..],
                        ChunkDecoder::new(sec, h.options, false, &h.body_key, &h.body_iv),
                        ChunkEncoder::new(sec, h.options, false, &rk, &riv),
                        resp,
                    );
                    return (s, Destination::tcp(h.address, h.port));
                }
            }
        }
    }

    async fn roundtrip(security: VmessSecurity, alter_id: u16, size: usize) {
        let mut cfg = VmessInboundConfig::default();
        cfg.clients.push(VmessClientConfig { id: SecretId(ID), alter_id, level: 0, email: None });
        let v = Validator::new(&cfg);
        let (a, b) = tokio::io::duplex(64 * 1024);
        let target = Destination::tcp(Address::parse("test.v2fly.org"), 0);
        let user = ClientUser::new(&ID, alter_id, security);
        let mut client = user.handshake(a, &target, crate::proxy::vmess::unix_now()).unwrap();
        // The header must go out with no payload, and the server must see it.
        client.flush().await.unwrap();
        let (mut server, got_target) = server_side(b, &v).await;
        assert_eq!(got_target, target);
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        let d2 = data.clone();
        let echo = tokio::spawn(async move {
            let mut all = Vec::new();
            server.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, d2);
            let rev: Vec<u8> = all.iter().map(|b| b ^ 0x5a).collect();
            server.write_all(&rev).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let (mut cr, mut cw) = tokio::io::split(client);
        let d3 = data.clone();
        // The client writes vectored (sealed from two pieces, as the Mux writer does), the server
        // writes plain.
        let writer = tokio::spawn(async move {
            let mut pos = 0;
            while pos < d3.len() {
                let cut = pos + (d3.len() - pos) / 3;
                let bufs = [std::io::IoSlice::new(&d3[pos..cut]), std::io::IoSlice::new(&d3[cut..])];
                let n = cw.write_vectored(&bufs).await.unwrap();
                assert!(n > 0);
                pos += n;
            }
            cw.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        echo.await.unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back.iter().zip(&data).all(|(x, y)| *x == y ^ 0x5a));
    }

    /// Collects formatted log lines for the current thread.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A plain VMess stream that has sealed 65,536 chunks refuses the next write (never reusing a
    /// nonce), says why in the log, and the peer got every byte sealed before; the wear counter a Mux
    /// connection would watch marks the stream worn at 3/4 of the way.
    #[tokio::test]
    async fn a_stream_at_the_nonce_limit_is_closed_with_the_reason_logged() {
        let log = Captured::default();
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let mut cfg = VmessInboundConfig::default();
        cfg.clients.push(VmessClientConfig { id: SecretId(ID), alter_id: 0, level: 0, email: None });
        let v = Validator::new(&cfg);
        let (a, b) = tokio::io::duplex(1 << 20);
        let user = ClientUser::new(&ID, 0, VmessSecurity::Aes128Gcm);
        let target = Destination::tcp(Address::parse("example.com"), 80);
        let mut client = user.handshake(a, &target, crate::proxy::vmess::unix_now()).unwrap();
        let wear = Wear::new();
        client.set_wear(wear.clone());
        client.flush().await.unwrap();
        let (mut server, _) = server_side(b, &v).await;
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let r = server.read_to_end(&mut all).await;
            (r.map(|_| ()), all.len())
        });
        let mut worn_at = None;
        for i in 0..MAX_AEAD_CHUNKS {
            // One byte per write: one chunk each.
            assert_eq!(client.write(&[i as u8]).await.unwrap(), 1);
            if worn_at.is_none() && wear.is_worn() {
                worn_at = Some(i + 1);
            }
            if i % 4096 == 0 {
                client.flush().await.unwrap();
            }
        }
        assert_eq!(worn_at, Some(Wear::RETIRE_AT));
        assert_eq!(wear.chunks(), (MAX_AEAD_CHUNKS, 0));
        let err = client.write(b"x").await.unwrap_err();
        assert!(err.to_string().contains("reuse a nonce"), "{err}");
        assert!(client.write(b"x").await.is_err(), "a refused stream takes no more writes");
        let _ = client.shutdown().await;
        drop(client);
        let (r, n) = reader.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(n, MAX_AEAD_CHUNKS as usize);
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("WARN") && text.contains("would reuse a nonce"), "log: {text}");
    }

    #[tokio::test]
    async fn client_server_all_securities() {
        for sec in [
            VmessSecurity::Aes128Gcm,
            VmessSecurity::Chacha20Poly1305,
            VmessSecurity::None,
            VmessSecurity::Auto,
            VmessSecurity::Zero,
        ] {
            for alter in [0u16, 4] {
                for size in [0usize, 1, 17, 16384, 16385, 65535, 100_000] {
                    roundtrip(sec, alter, size).await;
                }
            }
        }
    }
}
