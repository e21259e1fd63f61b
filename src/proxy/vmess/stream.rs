//! Poll-based AsyncRead/AsyncWrite over an inner byte stream, running the chunk codec of `body.rs`
//! (and, on the client, the response-header check first). Buffers are reused; chunks are sealed and
//! opened in place.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::{ChunkDecoder, ChunkEncoder, Decoded};
use super::header::{Progress, ResponseDecoder};

/// Initial read buffer; it grows (once) to the largest chunk seen, at most 64 KiB + header.
const READ_BUF_INITIAL: usize = 32 * 1024;
/// Above this many unsent bytes, writes wait for the socket instead of buffering more.
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
    buf: Vec<u8>,
    /// Bytes of `buf` already written to the inner stream.
    pos: usize,
    end_queued: bool,
}

/// A VMess body stream over `S`: reads open the peer's chunks, writes seal ours.
pub struct VmessStream<S> {
    inner: S,
    r: Reader,
    w: Writer,
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
        let mut wbuf = Vec::with_capacity(WRITE_HIGH_WATER + 2 * 1024 + queued.len());
        wbuf.extend_from_slice(&queued);
        VmessStream {
            inner,
            r: Reader {
                stage,
                dec,
                buf,
                start: 0,
                end: leftover.len(),
                plain: 0,
                plain_end: 0,
                after: 0,
                eof: false,
            },
            w: Writer { enc, buf: wbuf, pos: 0, end_queued: false },
        }
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> VmessStream<S> {
    /// Writes out everything queued.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.w.pos < self.w.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.w.buf[self.w.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.w.pos += n;
        }
        self.w.buf.clear();
        self.w.pos = 0;
        Poll::Ready(Ok(()))
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
                ReadStage::Body => match r.dec.decode(&mut r.buf[r.start..r.end]).map_err(invalid)? {
                    Decoded::Need(n) => n,
                    Decoded::Data { start, end, consumed } => {
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
                },
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
                let clean =
                    r.start == r.end && !r.dec.mid_chunk() && matches!(r.stage, ReadStage::Body);
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

impl<S: AsyncWrite + Unpin> AsyncWrite for VmessStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.w.end_queued {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "vmess: write after shutdown")));
        }
        if this.w.buf.len() - this.w.pos >= WRITE_HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        } else if this.w.pos >= WRITE_HIGH_WATER {
            this.w.buf.drain(..this.w.pos);
            this.w.pos = 0;
        }
        let limit = if this.w.enc.is_raw() { RAW_WRITE_MAX } else { this.w.enc.max_payload() };
        let n = data.len().min(limit);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        this.w.enc.encode(&data[..n], &mut this.w.buf).map_err(invalid)?;
        // Push what we can now; the rest goes with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
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
            this.w.enc.encode_end(&mut this.w.buf).map_err(invalid)?;
        }
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
