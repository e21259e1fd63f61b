//! One relay direction between two plain TCP sockets, moved with splice(2) through a pipe: the bytes go
//! socket → pipe → socket inside the kernel (page references, not copies) and never enter user space.
//!
//! Pipes are pooled per thread like the relay's buffers: a direction holds one only while bytes are in
//! it, so an idle connection holds no pipe (and no descriptors beyond its sockets).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Idle pipes kept per thread for reuse (beyond that they are closed).
const POOL_MAX: usize = 8;

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Pipes open on this thread, pooled or not (tests check that none outlives its relay).
    static LIVE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Pipes open on this thread and pipes in its pool.
#[cfg(test)]
pub(crate) fn pipe_counts() -> (usize, usize) {
    (LIVE.with(|l| l.get()), PIPES.with(|p| p.borrow().len()))
}

/// A non-blocking pipe: `r` is its read end, `w` its write end.
pub(crate) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn open() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        #[cfg(test)]
        LIVE.with(|l| l.set(l.get() + 1));
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        Ok(unsafe { Pipe { r: OwnedFd::from_raw_fd(fds[0]), w: OwnedFd::from_raw_fd(fds[1]) } })
    }
}

#[cfg(test)]
impl Drop for Pipe {
    fn drop(&mut self) {
        LIVE.with(|l| l.set(l.get() - 1));
    }
}

/// An empty pipe from this thread's pool, or a new one.
fn take_pipe() -> io::Result<Pipe> {
    match PIPES.with(|p| p.borrow_mut().pop()) {
        Some(p) => Ok(p),
        None => Pipe::open(),
    }
}

/// Returns an empty pipe to this thread's pool.
fn give_pipe(pipe: Pipe) {
    PIPES.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(pipe);
        }
    });
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from live owners);
    // null offsets mean "the file's own position", as pipes and sockets require.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// The splice state of one relay direction.
#[derive(Default)]
pub(crate) struct Spliced {
    /// Present only while bytes are in it (or during a read into it).
    pipe: Option<Pipe>,
    /// Bytes in the pipe, read from the source and not yet written to the sink.
    pub(crate) piped: usize,
    /// pipe(2) failed (descriptor limit): this direction copies instead.
    pub(crate) unavailable: bool,
}

/// What one call of [`Spliced::poll_move`] ended with.
pub(crate) enum Moved {
    /// The source reached EOF and the pipe is empty: the sink may be shut down.
    Eof,
    /// No pipe could be had: copy through user space instead.
    Unavailable,
}

impl Spliced {
    /// Moves bytes `from` → `to` until the source has nothing more now (Pending), reaches EOF, or
    /// the relay's rounds per poll were done (then it wakes itself and returns Pending, to let other
    /// tasks run).
    /// Bytes written to the sink are added to `total`; `progress` is set when any byte moved.
    pub(crate) fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        max: usize,
        total: &mut u64,
        progress: &mut bool,
    ) -> Poll<io::Result<Moved>> {
        for _ in 0..crate::proxy::relay::ROUNDS_PER_POLL {
            while self.piped > 0 {
                let Some(pipe) = &self.pipe else { break };
                ready!(to.poll_write_ready(cx))?;
                match to.try_io(Interest::WRITABLE, || splice(pipe.r.as_raw_fd(), to.as_raw_fd(), self.piped)) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.piped -= n;
                        *total += n as u64;
                        *progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            let pipe = match self.pipe.take() {
                Some(p) => p,
                None => match take_pipe() {
                    Ok(p) => p,
                    Err(_) => {
                        self.unavailable = true;
                        return Poll::Ready(Ok(Moved::Unavailable));
                    }
                },
            };
            loop {
                match from.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing to read now: hold no pipe while idle.
                        give_pipe(pipe);
                        return Poll::Pending;
                    }
                }
                match from.try_io(Interest::READABLE, || splice(from.as_raw_fd(), pipe.w.as_raw_fd(), max)) {
                    Ok(0) => {
                        give_pipe(pipe);
                        return Poll::Ready(Ok(Moved::Eof));
                    }
                    Ok(n) => {
                        self.piped = n;
                        self.pipe = Some(pipe);
                        *progress = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
