//! Test helpers shared by the unit tests and the integration tests in `tests/`. Not part of oxray's API.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The sizes of the writes a [`WriteLog`] accepted, in order.
pub type WriteSizes = Arc<Mutex<Vec<usize>>>;

/// Wraps a stream and records the size of every write it accepts, to see how a writer batches.
pub struct WriteLog<S> {
    inner: S,
    sizes: WriteSizes,
}

impl<S> WriteLog<S> {
    /// Wraps `inner`; the returned handle reads the recorded sizes.
    pub fn new(inner: S) -> (Self, WriteSizes) {
        let sizes = WriteSizes::default();
        (WriteLog { inner, sizes: sizes.clone() }, sizes)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteLog<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteLog<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.sizes.lock().unwrap_or_else(|p| p.into_inner()).push(n);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The seconds of the day in the `YYYY/MM/DD hh:mm:ss ` stamp that starts a log line, or `None` when
/// the line does not start with one.
pub fn log_stamp_seconds(line: &str) -> Option<u64> {
    let stamp = line.as_bytes().get(..20)?;
    let layout = stamp.iter().enumerate().all(|(i, c)| match i {
        4 | 7 => *c == b'/',
        13 | 16 => *c == b':',
        10 | 19 => *c == b' ',
        _ => c.is_ascii_digit(),
    });
    // All digits where parsed, so the parses cannot fail.
    let num = |r: std::ops::Range<usize>| line[r].parse::<u64>().unwrap_or(0);
    layout.then(|| num(11..13) * 3600 + num(14..16) * 60 + num(17..19))
}
