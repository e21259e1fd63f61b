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
use super::frame::MAX_UDP_FRAME;
use crate::proxy::PacketConn;

/// Received data buffered per session before the connection reader waits (the only loss-free
/// back-pressure Mux.Cool allows: one slow session stalls the connection, never drops data).
const RECV_HIGH_WATER: usize = 512 * 1024;
/// Most stream data queued by one write call (one frame, or two for a full 64 KiB).
pub(crate) const MAX_STREAM_WRITE: usize = 64 * 1024;

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

    /// Datagram sessions have no half-close worth keeping: a clean End, and the session is freed
    /// (the Go bridge never answers the control session's End, so waiting for one would pin it).
    fn close_packet(self: &Arc<Self>) {
        self.release(|st| (!st.end_sent && matches!(st.remote, Remote::Open | Remote::Ended)).then_some(false));
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
        self.release(|st| match st.remote {
            Remote::Aborted | Remote::ConnClosed => None,
            // Both directions finished normally, we just never said so: a clean End.
            Remote::Ended if !st.end_sent => Some(false),
            Remote::Ended => None,
            // Dropped mid-session (or after our End while the peer still sends): abandon it, so the peer
            // stops its transfer now instead of streaming into the void.
            Remote::Open => Some(true),
        });
    }

    /// Frees the session once: drops what it buffered, wakes whoever waits on it, sends the End that
    /// `end_frame` picks (`Some(error bit)`, or none) and forgets the session on its connection.
    fn release(self: &Arc<Self>, end_frame: impl FnOnce(&State) -> Option<bool>) {
        let end = {
            let mut st = lock(&self.state);
            if st.detached {
                return;
            }
            st.detached = true;
            st.queue.clear();
            st.queued = 0;
            wake_all(&mut st);
            st.task = None;
            let end = end_frame(&st);
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

    /// Takes the next queued datagram (Ok(None): the peer ended the session).
    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let mut st = lock(&self.state);
        if let Some(chunk) = st.queue.pop_front() {
            st.queued -= chunk.len();
            wake_feeder_if_room(&mut st);
            return Poll::Ready(Ok(Some(chunk)));
        }
        Self::poll_empty(&mut st, cx).map_ok(|()| None)
    }

    /// Copies as much queued stream data as fits into `buf` (nothing copied: EOF).
    fn poll_read_into(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut st = lock(&self.state);
        if st.queue.is_empty() {
            return Self::poll_empty(&mut st, cx);
        }
        while buf.remaining() > 0 {
            let Some(front) = st.queue.front_mut() else { break };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            if n == front.len() {
                st.queue.pop_front();
            } else {
                bytes::Buf::advance(front, n);
            }
            st.queued -= n;
        }
        wake_feeder_if_room(&mut st);
        Poll::Ready(Ok(()))
    }

    /// Nothing queued: EOF, an error, or wait.
    fn poll_empty(st: &mut State, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match st.remote {
            // Closed locally (packet sessions): nothing more will be delivered.
            Remote::Open if st.detached => Poll::Ready(Ok(())),
            Remote::Open => {
                st.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Remote::Ended => Poll::Ready(Ok(())),
            Remote::Aborted => Poll::Ready(Err(aborted())),
            Remote::ConnClosed => Poll::Ready(Err(conn_closed())),
        }
    }
}

fn wake_feeder_if_room(st: &mut State) {
    if st.queued < RECV_HIGH_WATER
        && let Some(w) = st.feeder_waker.take()
    {
        w.wake();
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
        self.session.poll_read_into(cx, buf)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Several frames per call (the connection splits them): one lock and one writer wake-up.
        let n = buf.len().min(MAX_STREAM_WRITE);
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

    /// Sends End for this session (once) and frees it; later `recv` returns None, `send` fails.
    pub fn close(&self) {
        self.session.close_packet();
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
        poll_fn(|cx| self.session.poll_pop(cx)).await
    }
}
