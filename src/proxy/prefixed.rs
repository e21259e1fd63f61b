//! Reading a handshake up to its end ([`read_until`]); the bytes read past it go back in front of the
//! stream with [`Prefixed`].

use bytes::Buf;
use std::io;
use tokio::io::AsyncRead;

pub use crate::transport::prefixed::Prefixed;

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
