//! One Mux session: its bounded receive queue and end-of-session bookkeeping, and the two handles over
//! it, [`MuxStream`] (TCP) and [`MuxPacket`] (UDP).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::AbortHandle;

use super::conn::Conn;
use super::frame::{MAX_STREAM_FRAME, MAX_UDP_FRAME};
use crate::proxy::PacketConn;

/// Received data buffered per session before the connection reader waits (the only loss-free
/// back-pressure Mux.Cool allows: one slow session stalls the connection, never drops data).
const RECV_HIGH_WATER: usize = 512 * 1024;

/// What we know about the peer's side of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Remote {
    Open,
    /// Peer sent End: reads see EOF after the queue drains; we may still write.
    Ended,
    /// Peer sent End|Error: both directions fail.
    Aborted,
    /// The whole connection is gone.
    ConnClosed,
}

struct State {
    queue: VecDeque<Bytes>,
    queued: usize,
    remote: Remote,
    /// Our End for this session is queued (never send two clean Ends).
    end_sent: bool,
    /// The handle is gone: incoming data is dropped.
    detached: bool,
    read_waker: Option<Waker>,
    /// The connection reader, waiting for room in `queue`.
    feeder_waker: Option<Waker>,
    task: Option<AbortHandle>,
}

/// Shared state of one session (owned by the connection's table and by its handle).
pub(crate) struct Session {
    pub(crate) id: u16,
    pub(crate) udp: bool,
    conn: Arc<Conn>,
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "mux session aborted by peer")
}

fn conn_closed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "mux connection closed")
}

impl Session {
    pub(crate) fn new(id: u16, udp: bool, conn: Arc<Conn>) -> Arc<Session> {
        Arc::new(Session {
            id,
            udp,
            conn,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued: 0,
                remote: Remote::Open,
                end_sent: false,
                detached: false,
                read_waker: None,
                feeder_waker: None,
                task: None,
            }),
        })
    }

    /// Remembers the handler task (server side) so that a dying connection can cancel it.
    pub(crate) fn set_task(&self, task: AbortHandle) {
        let mut st = lock(&self.state);
        if st.remote == Remote::ConnClosed {
            task.abort();
        } else {
            st.task = Some(task);
        }
    }

    /// Connection reader: queue `data` if there is room, else wait for the session's reader.
    pub(crate) fn poll_push(&self, cx: &mut Context<'_>, data: &mut Option<Bytes>) -> Poll<()> {
        let mut st = lock(&self.state);
        if st.detached || st.remote != Remote::Open {
            // Nobody will read it (or the peer broke the protocol by sending after its End): drop.
            *data = None;
            return Poll::Ready(());
        }
        if st.queued >= RECV_HIGH_WATER {
            st.feeder_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some(d) = data.take() {
            st.queued += d.len();
            st.queue.push_back(d);
        }
        if let Some(w) = st.read_waker.take() {
            w.wake();
        }
        Poll::Ready(())
    }

    /// The peer sent End (`error`: End|Error).
    pub(crate) fn on_remote_end(self: &Arc<Self>, error: bool) {
        let remove = {
            let mut st = lock(&self.state);
            // A clean End may be followed by End|Error: the peer half-closed, then abandoned the session
            // (its handle was dropped) and wants our transfer stopped.
            match (st.remote, error) {
                (Remote::Open, _) | (Remote::Ended, true) => {}
                _ => return,
            }
            st.remote = if error { Remote::Aborted } else { Remote::Ended };
            if error {
                st.queue.clear();
                st.queued = 0;
            }
            wake_all(&mut st);
            error || st.end_sent || st.detached
        };
        if error {
            self.conn.wake_blocked_writers();
        }
        if remove {
            self.conn.remove(self);
        }
    }

    /// The connection died (already removed from the table).
    pub(crate) fn on_conn_closed(&self) {
        let mut st = lock(&self.state);
        if st.remote == Remote::Open || st.remote == Remote::Ended {
            st.remote = Remote::ConnClosed;
        }
        st.queue.clear();
        st.queued = 0;
        wake_all(&mut st);
        if let Some(t) = st.task.take() {
            t.abort();
        }
    }

    /// Our side is done writing: queue a clean End once.
    fn shutdown(self: &Arc<Self>) -> io::Result<()> {
        let remove = {
            let mut st = lock(&self.state);
            if st.end_sent {
                return Ok(());
            }
            match st.remote {
                Remote::Aborted => return Err(aborted()),
                Remote::ConnClosed => return Err(conn_closed()),
                Remote::Open | Remote::Ended => {}
            }
            st.end_sent = true;
            st.remote == Remote::Ended
        };
        self.conn.queue_end(self.id, false);
        if remove {
            self.conn.remove(self);
        }
        Ok(())
    }

    /// The handle was dropped: tell the peer at once (so it stops sending) and free the session.
    fn detach(self: &Arc<Self>) {
        let end = {
            let mut st = lock(&self.state);
            st.detached = true;
            st.queue.clear();
            st.queued = 0;
            if let Some(w) = st.feeder_waker.take() {
                w.wake();
            }
            st.task = None;
            let end = match st.remote {
                Remote::Aborted | Remote::ConnClosed => None,
                // Both directions finished normally, we just never said so: a clean End.
                Remote::Ended if !st.end_sent => Some(false),
                Remote::Ended => None,
                // Dropped mid-session (or after our End while the peer still sends): abandon it, so
                // the peer stops its transfer now instead of streaming into the void.
                Remote::Open => Some(true),
            };
            st.end_sent = true;
            end
        };
        if let Some(error) = end {
            self.conn.queue_end(self.id, error);
        }
        self.conn.remove(self);
    }

    fn poll_write_data(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<()>> {
        {
            let st = lock(&self.state);
            match st.remote {
                Remote::Aborted => return Poll::Ready(Err(aborted())),
                Remote::ConnClosed => return Poll::Ready(Err(conn_closed())),
                Remote::Open | Remote::Ended => {}
            }
            if st.end_sent {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "mux session already ended")));
            }
        }
        self.conn.poll_queue_data(cx, self.id, data)
    }

    /// Takes the next queued chunk (None: nothing yet, Ok(None): end of data).
    fn poll_pop(&self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        let mut st = lock(&self.state);
        if let Some(front) = st.queue.front_mut() {
            let chunk = if front.len() > max { front.split_to(max) } else { st.queue.pop_front().unwrap_or_default() };
            st.queued -= chunk.len();
            if st.queued < RECV_HIGH_WATER
                && let Some(w) = st.feeder_waker.take()
            {
                w.wake();
            }
            return Poll::Ready(Ok(Some(chunk)));
        }
        match st.remote {
            Remote::Open => {
                st.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Remote::Ended => Poll::Ready(Ok(None)),
            Remote::Aborted => Poll::Ready(Err(aborted())),
            Remote::ConnClosed => Poll::Ready(Err(conn_closed())),
        }
    }
}

fn wake_all(st: &mut State) {
    if let Some(w) = st.read_waker.take() {
        w.wake();
    }
    if let Some(w) = st.feeder_waker.take() {
        w.wake();
    }
}

/// One TCP-like Mux session. `poll_shutdown` is a half-close (End; reading goes on until the peer's End).
/// Dropping it sends End at once (End|Error unless both directions had finished) and frees the session.
pub struct MuxStream {
    session: Arc<Session>,
}

impl MuxStream {
    pub(crate) fn new(session: Arc<Session>) -> MuxStream {
        MuxStream { session }
    }

    /// The session id on its connection.
    pub fn id(&self) -> u16 {
        self.session.id
    }
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.session.id).finish()
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        self.session.detach();
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match self.session.poll_pop(cx, buf.remaining()) {
            Poll::Ready(Ok(Some(chunk))) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_STREAM_FRAME);
        self.session.poll_write_data(cx, &buf[..n]).map_ok(|()| n)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's writer sends and flushes queued frames on its own, batch by batch.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.session.shutdown())
    }
}

/// One UDP Mux session: one datagram per frame, at most 2048 bytes. Dropping or closing it sends End.
pub struct MuxPacket {
    session: Arc<Session>,
}

impl MuxPacket {
    pub(crate) fn new(session: Arc<Session>) -> MuxPacket {
        MuxPacket { session }
    }

    /// The session id on its connection.
    pub fn id(&self) -> u16 {
        self.session.id
    }

    /// Sends End for this session (once); receiving goes on until the peer's End.
    pub fn close(&self) {
        let _ = self.session.shutdown();
    }
}

impl std::fmt::Debug for MuxPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxPacket").field("id", &self.session.id).finish()
    }
}

impl Drop for MuxPacket {
    fn drop(&mut self) {
        self.session.detach();
    }
}

#[async_trait]
impl PacketConn for MuxPacket {
    async fn send(&self, packet: Bytes) -> io::Result<()> {
        if packet.len() > MAX_UDP_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mux packet of {} bytes is too large (max {MAX_UDP_FRAME})", packet.len()),
            ));
        }
        poll_fn(|cx| self.session.poll_write_data(cx, &packet)).await
    }

    async fn recv(&self) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| self.session.poll_pop(cx, usize::MAX)).await
    }
}
