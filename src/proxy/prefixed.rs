//! A stream that first yields bytes already read past a handshake, then the inner stream's own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `head` then `inner` on the read side; writes go straight to `inner`.
pub struct Prefixed<S> {
    head: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Wraps `inner`, replaying `head` first.
    pub fn new(head: impl Into<Bytes>, inner: S) -> Self {
        Prefixed { head: head.into(), inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Reads into `buf` until `decode` yields a value, the buffer would exceed `max` bytes, EOF, or the
/// deadline. The decoder sees the whole buffer each time and says how many bytes it used.
pub async fn read_until<S, T, E>(
    stream: &mut S,
    buf: &mut bytes::BytesMut,
    max: usize,
    deadline: tokio::time::Instant,
    mut decode: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, E>,
) -> Result<T, ReadError<E>>
where
    S: AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    loop {
        if let Some((v, used)) = decode(buf).map_err(ReadError::Bad)? {
            buf.advance(used);
            return Ok(v);
        }
        if buf.len() >= max {
            return Err(ReadError::TooLong);
        }
        buf.reserve(max.min(4096));
        let r = tokio::time::timeout_at(deadline, stream.read_buf(buf)).await;
        match r {
            Ok(Ok(0)) => return Err(ReadError::Eof),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Err(_) => return Err(ReadError::Timeout),
        }
    }
}

/// Why [`read_until`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// The decoder refused the bytes.
    #[error("{0}")]
    Bad(E),
    /// More than the allowed bytes without a complete message.
    #[error("message too long")]
    TooLong,
    /// The peer closed first.
    #[error("connection closed during the handshake")]
    Eof,
    /// The handshake deadline passed.
    #[error("handshake timed out")]
    Timeout,
    /// A socket error.
    #[error("{0}")]
    Io(io::Error),
}
