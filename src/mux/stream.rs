//! One Mux session: its bounded receive queue and end-of-session bookkeeping, and the two handles over
//! it, [`MuxStream`] (TCP) and [`MuxPacket`] (UDP).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::info;

use super::conn::{CONN_RECV_HARD_LIMIT, CONN_RECV_HIGH_WATER, Conn};
use super::frame::MAX_UDP_FRAME;
use crate::proxy::{BoxStream, PacketConn, concrete};
use crate::session::{Bypass, Meter};

/// Received data queued per session before it counts as full. Mux.Cool has no flow control: the only
/// loss-free back-pressure is for the connection's single reader to wait, which stalls every session.
/// So the reader waits for a full session only while its consumer keeps taking data (a slow reader
/// slows the link, as in V2Ray); see [`HOL_WAIT`] and [`STALL_LIMIT`] for one that stops reading.
/// Queued data is a private copy, except for one large slice at the front of a queue that was empty
/// (see [`SLICE_MIN`]), so this counts real allocation up to the connection's [`MAX_SLICES`] pinned buffers.
pub(crate) const RECV_HIGH_WATER: usize = 512 * 1024;
/// Most a session may queue at all: past [`HOL_WAIT`] the reader stops waiting for it and queues into
/// this headroom (4 MiB: a visitor whose link pauses while a fast service keeps sending survives a
/// pause of ~0.5 s at 8 MB/s, and none of it delays the others); a session that overruns it is ended
/// (End with the Error option). The connection-wide limits bound the sum.
pub(crate) const RECV_HARD_LIMIT: usize = RECV_HIGH_WATER + 4 * 1024 * 1024;
/// Longest the reader of a client-side connection (the portal, a mux outbound: the side whose sessions
/// end at public visitors) waits for one full session whose consumer takes nothing: the most one
/// stalled visitor can delay the others, per stall. The server side (the bridge, an inbound's Mux
/// server: sessions end at services) waits up to [`STALL_LIMIT`] instead: a pause of the far end there
/// is usually back-pressure of the same flow (a full-duplex service whose answers wait for this very
/// connection), and cutting it would lose a legitimate transfer; time while the peer does not take our
/// frames does not count at all there (a V2Ray portal's reader waits on its slowest visitor).
pub(crate) const HOL_WAIT: Duration = Duration::from_millis(400);
/// A full session whose consumer takes nothing for this long is ended (End|Error, its queue dropped)
/// at the next frame for it; the other sessions never notice.
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(3);
/// Payloads at least this large are queued as slices of the connection's read buffer instead of copied
/// while their session has less than [`SLICE_QUEUE`] queued (the bulk case: the consumer keeps up, and
/// the copy cost ~3 % of a tunnel's CPU). Smaller ones, and anything queued behind that much, are
/// copied, so a slow consumer's backlog is private memory and pins no read buffer.
pub(crate) const SLICE_MIN: usize = 4 * 1024;
/// A session queues slices only while it has less than this queued: about two reads' worth.
pub(crate) const SLICE_QUEUE: usize = 256 * 1024;
/// Most slices queued at once over one connection. Each may pin one read buffer (at most ~192 KiB)
/// beyond the bytes it is charged for: at most 48 MiB more than the queue budgets count, and in the
/// bulk case none (a read buffer's frames are all queued, and taken, together).
pub(crate) const MAX_SLICES: usize = 256;
/// Most stream data queued by one write call (one frame, or two for a full 64 KiB).
pub(crate) const MAX_STREAM_WRITE: usize = 64 * 1024;
/// Payloads up to this size go straight into a session's sink socket (see [`MuxStream::bypass`]) when
/// nothing of the session waits before them: no relay wake-up for a short message.
const BYPASS_MAX: usize = SLICE_MIN;
/// So do payloads at least this large (bulk from an oxray peer, whose frames carry a whole relay
/// read): one system call each either way, and no relay wake-up or copy through the relay's buffer
/// (tunnel CPU per GiB −6 % on the reverse bulk rig). The sizes between (V2Ray's 2–8 KiB frames) are
/// queued, so that the relay joins several into one write.
const BYPASS_BULK_MIN: usize = 32 * 1024;

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
    /// We ended the session (End|Error): its consumer stopped reading while the queue was full.
    Stalled,
}

/// Queued data; `slice`: a slice of a shared read buffer (counted in the connection's slices).
struct Entry {
    data: Bytes,
    slice: bool,
}

struct State {
    queue: VecDeque<Entry>,
    queued: usize,
    remote: Remote,
    /// Our End for this session is queued (never send two clean Ends).
    end_sent: bool,
    /// The handle is gone: incoming data is dropped.
    detached: bool,
    read_waker: Option<Waker>,
    /// The connection reader, waiting for room in `queue`.
    feeder_waker: Option<Waker>,
    /// While the queue is full: when the consumer last took data (or the queue became full).
    full_since: Option<Instant>,
    task: Option<AbortHandle>,
    /// The plain TCP socket the relay joins this session to, if any (see [`MuxStream::bypass`]).
    sink: Option<Sink>,
    /// The consumer took data it may not have written to the sink yet: nothing may overtake it.
    busy: bool,
}

/// The far end of a session's relay: its own descriptor of the socket (it stays valid whatever the
/// relay does with its own), and the relay's count of what went past it.
struct Sink {
    socket: std::net::TcpStream,
    bypass: Arc<Bypass>,
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

fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "mux session ended: its receive queue stayed full")
}

/// What the connection reader should do with a frame's data for a session.
pub(crate) enum Push {
    /// Queued (or dropped because nobody will read it).
    Done,
    /// The session is full and its consumer is active: wait for room, but not past this instant.
    Wait(Instant),
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
                full_since: None,
                task: None,
                sink: None,
                busy: false,
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

    /// Connection reader: queues `data` (taking it) when the session has room; when it is full, says how
    /// long to wait for room. A session whose consumer has taken nothing for [`HOL_WAIT`] is not waited
    /// for: its data goes into the headroom up to [`RECV_HARD_LIMIT`], and past that (or past
    /// [`STALL_LIMIT`]) the session is ended. Datagrams are dropped rather than waited for.
    pub(crate) fn push(self: &Arc<Self>, data: &mut Option<Bytes>) -> Push {
        let Some(d) = data.take() else { return Push::Done };
        let mut st = lock(&self.state);
        if st.detached || st.remote != Remote::Open {
            // Nobody will read it (or the peer broke the protocol by sending after its End): drop.
            return Push::Done;
        }
        let conn_full = st.queued > 0 && self.conn.recv_queued() >= CONN_RECV_HIGH_WATER;
        if st.queued < RECV_HIGH_WATER && !conn_full {
            st.full_since = None;
            let Some(rest) = Self::write_past(&mut st, d) else { return Push::Done };
            self.enqueue(&mut st, rest);
            return Push::Done;
        }
        if self.udp {
            // Datagrams may be lost; waiting for this one would stall every other session.
            return Push::Done;
        }
        let now = Instant::now();
        if self.conn.is_server() && self.conn.write_backlogged() {
            // The peer is not reading this connection: everything on it waits, this consumer included
            // (a service whose answers queue behind ours stops reading us). Not this session's stall.
            st.full_since = Some(now);
        }
        let since = *st.full_since.get_or_insert(now);
        let patience = if self.conn.is_server() { STALL_LIMIT } else { HOL_WAIT };
        if now < since + patience {
            *data = Some(d);
            self.conn.hold_until(since + patience);
            return Push::Wait(since + patience);
        }
        let idle = now - since;
        let over = st.queued + d.len() > RECV_HARD_LIMIT || self.conn.recv_queued() + d.len() > CONN_RECV_HARD_LIMIT;
        if idle < STALL_LIMIT && !over {
            self.enqueue(&mut st, d);
            return Push::Done;
        }
        info!(
            id = self.id,
            queued = st.queued,
            idle_ms = idle.as_millis() as u64,
            "mux: ending a session whose reader stopped taking data (its queue stayed full)"
        );
        st.remote = Remote::Stalled;
        self.clear_queue(&mut st);
        wake_all(&mut st);
        let end = !st.end_sent;
        st.end_sent = true;
        drop(st);
        if end {
            self.conn.queue_end(self.id, true);
        }
        self.conn.wake_blocked_writers();
        self.conn.remove(self);
        Push::Done
    }

    /// Writes a short (or a bulk) payload straight into the sink, when there is one and nothing of this session
    /// is waiting before it (queued, or taken by the consumer and maybe not yet written): the relay
    /// task is not woken and the bytes are not copied. Returns what the socket did not take.
    fn write_past(st: &mut State, mut d: Bytes) -> Option<Bytes> {
        use std::io::Write;
        if (BYPASS_MAX < d.len() && d.len() < BYPASS_BULK_MIN) || st.busy || st.queued > 0 {
            return Some(d);
        }
        let Some(sink) = st.sink.as_ref() else { return Some(d) };
        match (&sink.socket).write(&d) {
            Ok(n) => {
                sink.bypass.add(n as u64);
                bytes::Buf::advance(&mut d, n);
            }
            // Full: the relay writes it once the socket drains.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The relay meets the error on its own write; no more writes past it.
            Err(_) => st.sink = None,
        }
        (!d.is_empty()).then_some(d)
    }

    /// Queues `d`: as it is (a slice of the connection's read buffer) if it is at least [`SLICE_MIN`], the
    /// session has less than [`SLICE_QUEUE`] queued and the connection fewer than [`MAX_SLICES`] slices;
    /// else copied into a private allocation of exactly its size, so a backlog never pins read buffers
    /// (a queue of 1-byte slices would otherwise hold 128 KiB each).
    fn enqueue(&self, st: &mut State, d: Bytes) {
        if d.is_empty() && !self.udp {
            return;
        }
        let slice = d.len() >= SLICE_MIN && st.queued < SLICE_QUEUE && self.conn.try_add_slice();
        st.queued += d.len();
        self.conn.add_recv_queued(d.len());
        let data = if slice { d } else { Bytes::copy_from_slice(&d) };
        st.queue.push_back(Entry { data, slice });
        if let Some(w) = st.read_waker.take() {
            w.wake();
        }
    }

    /// Drops everything queued (and its share of the connection's counts).
    fn clear_queue(&self, st: &mut State) {
        self.conn.sub_recv_queued(st.queued);
        for e in st.queue.drain(..) {
            if e.slice {
                self.conn.sub_slice();
            }
        }
        st.queued = 0;
        st.full_since = None;
    }

    /// Ready once the session has room again, or will never take data.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = lock(&self.state);
        if st.detached || st.remote != Remote::Open || st.queued < RECV_HIGH_WATER && st.full_since.is_none() {
            return Poll::Ready(());
        }
        st.feeder_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Cancels the handler task (a New frame reused this id while the session was live).
    pub(crate) fn abort_task(&self) {
        if let Some(t) = lock(&self.state).task.take() {
            t.abort();
        }
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
                self.clear_queue(&mut st);
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
        self.clear_queue(&mut st);
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
                Remote::Stalled => return Err(stalled()),
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
            Remote::Aborted | Remote::ConnClosed | Remote::Stalled => None,
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
            st.sink = None;
            self.clear_queue(&mut st);
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
                Remote::Stalled => return Poll::Ready(Err(stalled())),
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
        if let Some(e) = st.queue.pop_front() {
            if e.slice {
                self.conn.sub_slice();
            }
            st.queued -= e.data.len();
            self.conn.sub_recv_queued(e.data.len());
            taken(&mut st);
            return Poll::Ready(Ok(Some(e.data)));
        }
        Self::poll_empty(&mut st, cx).map_ok(|()| None)
    }

    /// Copies as much queued stream data as fits into `buf` (nothing copied: EOF).
    fn poll_read_into(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut st = lock(&self.state);
        // With a sink, the consumer is the relay, which reads again only once it wrote all it read.
        st.busy = false;
        if st.queue.is_empty() {
            return Self::poll_empty(&mut st, cx);
        }
        st.busy = st.sink.is_some();
        let before = st.queued;
        while buf.remaining() > 0 {
            let Some(front) = st.queue.front_mut() else { break };
            let n = front.data.len().min(buf.remaining());
            buf.put_slice(&front.data[..n]);
            if n == front.data.len() {
                if front.slice {
                    self.conn.sub_slice();
                }
                st.queue.pop_front();
            } else {
                bytes::Buf::advance(&mut front.data, n);
            }
            st.queued -= n;
        }
        self.conn.sub_recv_queued(before - st.queued);
        taken(&mut st);
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
            Remote::Stalled => Poll::Ready(Err(stalled())),
        }
    }
}

/// The consumer took data: a full queue restarts its stall clock (the consumer is alive); one with room
/// again wakes the connection reader.
fn taken(st: &mut State) {
    if st.queued < RECV_HIGH_WATER {
        st.full_since = None;
        if let Some(w) = st.feeder_waker.take() {
            w.wake();
        }
    } else if st.full_since.is_some() {
        st.full_since = Some(Instant::now());
        if let Some(w) = st.feeder_waker.take() {
            w.wake();
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

    /// Lets the connection's reader write this session's short payloads straight into `socket`, the
    /// other end of the relay about to join them (`uplink`: this session is the relay's client). The
    /// relay must be the only reader of this stream, and read again only once it has written all it
    /// read (as `relay` does): then nothing written past it can overtake its bytes. The returned
    /// count goes into [`crate::session::Session::bypass`]. None: the socket could not be shared.
    pub fn bypass(
        &self,
        socket: &tokio::net::TcpStream,
        uplink: bool,
        meter: Option<Arc<Meter>>,
    ) -> Option<Arc<Bypass>> {
        use std::os::fd::{AsFd, AsRawFd};
        if self.session.udp {
            return None;
        }
        let own = socket.as_fd().try_clone_to_owned().ok()?;
        // The copy costs a descriptor per flow: only while they are plentiful (a new descriptor is the
        // lowest free one, so its number tracks how many are in use), never at the cost of accepts.
        let limit = self.session.conn.fd_limit?;
        if u64::try_from(own.as_raw_fd()).map_or(true, |fd| fd >= limit / 2) {
            return None;
        }
        let bypass = Arc::new(Bypass::new(uplink, meter));
        let mut st = lock(&self.session.state);
        if st.detached {
            return None;
        }
        st.sink = Some(Sink { socket: std::net::TcpStream::from(own), bypass: bypass.clone() });
        Some(bypass)
    }

    /// Whether the connection's reader holds sessions back; goes into [`crate::session::Session::carrier`].
    pub fn carrier_hold(&self) -> Arc<crate::session::CarrierHold> {
        self.session.conn.hold()
    }
}

/// Before a relay joins `client` and `target`: when one is a Mux session and the other a plain TCP
/// socket, the session's reader may write short payloads straight into the socket (see
/// [`MuxStream::bypass`]), and `session.bypass` tells the relay.
pub fn bypass_relay(session: &mut crate::session::Session, client: &BoxStream, target: &BoxStream) {
    use tokio::net::TcpStream;
    let (c, t) = (concrete(&**client), concrete(&**target));
    let pair = match (c.downcast_ref::<MuxStream>(), t.downcast_ref::<TcpStream>()) {
        (Some(m), Some(s)) => Some((m, s, true)),
        _ => t.downcast_ref::<MuxStream>().zip(c.downcast_ref::<TcpStream>()).map(|(m, s)| (m, s, false)),
    };
    if let Some((mux, socket, uplink)) = pair {
        session.bypass = mux.bypass(socket, uplink, session.meter.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::conn::Role;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn conn() -> (Arc<Conn>, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (Conn::start(Box::new(a), Role::Client, None), b)
    }

    fn push(s: &Arc<Session>, n: usize, byte: u8) {
        let mut d = Some(Bytes::from(vec![byte; n]));
        assert!(matches!(s.push(&mut d), Push::Done));
    }

    /// Large payloads into a short queue stay slices; behind SLICE_QUEUE, and below SLICE_MIN, they are
    /// copied; every slice is released once read, and the bytes come out in order.
    #[tokio::test]
    async fn large_payloads_are_sliced_only_into_a_short_queue_and_released_when_read() {
        let (c, _peer) = conn();
        let s = Session::new(1, false, c.clone());
        for i in 0..40u8 {
            push(&s, 8192, i);
        }
        push(&s, 100, 40);
        assert_eq!(c.slices(), SLICE_QUEUE / 8192, "only the first SLICE_QUEUE bytes are slices");
        assert_eq!(c.recv_queued(), 40 * 8192 + 100);
        let mut st = MuxStream::new(s.clone());
        let mut got = vec![0u8; 40 * 8192 + 100];
        st.read_exact(&mut got).await.unwrap();
        assert!(got.chunks(8192).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        assert_eq!((c.slices(), c.recv_queued()), (0, 0));
        // Small payloads are never slices.
        push(&s, SLICE_MIN - 1, 1);
        assert_eq!(c.slices(), 0);
    }

    /// The connection never holds more than MAX_SLICES slices, and dropped queues release theirs.
    #[tokio::test]
    async fn slices_are_capped_per_connection_and_released_with_the_queue() {
        let (c, _peer) = conn();
        let sessions: Vec<_> = (1..=MAX_SLICES as u16 + 10).map(|id| Session::new(id, false, c.clone())).collect();
        for s in &sessions {
            push(s, 8192, 7);
        }
        assert_eq!(c.slices(), MAX_SLICES);
        let streams: Vec<_> = sessions.iter().map(|s| MuxStream::new(s.clone())).collect();
        drop(streams);
        assert_eq!((c.slices(), c.recv_queued()), (0, 0));
        // A connection that dies releases them too.
        let s = Session::new(999, false, c.clone());
        push(&s, 8192, 1);
        assert_eq!(c.slices(), 1);
        s.on_conn_closed();
        assert_eq!((c.slices(), c.recv_queued()), (0, 0));
    }

    /// A connected loopback pair: (the end the bypass writes into, the far end that reads).
    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (far, _) = l.accept().await.unwrap();
        (near, far)
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn push_bytes(s: &Arc<Session>, d: &[u8]) {
        let mut d = Some(Bytes::copy_from_slice(d));
        assert!(matches!(s.push(&mut d), Push::Done));
    }

    /// What the consumer (a relay) would do once: read what is queued and write all of it to `to`.
    async fn relay_once(m: &mut MuxStream, to: &mut tokio::net::TcpStream) -> usize {
        let mut buf = vec![0u8; 256 * 1024];
        let n = m.read(&mut buf).await.unwrap();
        to.write_all(&buf[..n]).await.unwrap();
        n
    }

    /// Without a sink, short payloads are queued like any other (none is lost).
    #[tokio::test]
    async fn short_payloads_without_a_sink_are_queued() {
        let (c, _peer) = conn();
        let s = Session::new(1, false, c.clone());
        push(&s, 13, 1);
        push(&s, 64, 2);
        let mut got = vec![0u8; 77];
        let read = tokio::time::timeout(Duration::from_secs(5), MuxStream::new(s).read_exact(&mut got)).await;
        assert!(read.is_ok_and(|r| r.is_ok()), "queued payloads were lost");
        assert!(got[..13].iter().all(|&b| b == 1) && got[13..].iter().all(|&b| b == 2));
    }

    /// A short or a bulk payload goes straight into the sink only when nothing of its session waits
    /// before it: not while data is queued, nor while the consumer holds data it has read but maybe
    /// not written; middling payloads are always queued. What the far end gets is the exact sequence pushed.
    #[tokio::test]
    async fn short_payloads_go_past_only_when_nothing_waits_before_them() {
        let (c, _peer) = conn();
        let s = Session::new(1, false, c.clone());
        let (mut near, mut far) = tcp_pair().await;
        // Room for a whole bulk payload, whatever the default send buffer.
        socket2::SockRef::from(&near).set_send_buffer_size(1 << 20).unwrap();
        let mut m = MuxStream::new(s.clone());
        let mut sent = Vec::new();
        let mut send = |d: Vec<u8>| {
            push_bytes(&s, &d);
            sent.extend_from_slice(&d);
        };
        send(bytes(13, 1)); // before the sink: queued
        let bypass = m.bypass(&near, true, None).unwrap();
        send(bytes(64, 2)); // behind queued data: queued too
        assert_eq!((bypass.bytes(), c.recv_queued()), (0, 77));
        let mut buf = vec![0u8; 1024];
        let n = m.read(&mut buf).await.unwrap();
        assert_eq!(n, 77);
        send(bytes(10, 3)); // the consumer holds 77 unwritten bytes: queued
        assert_eq!((bypass.bytes(), c.recv_queued()), (0, 10));
        near.write_all(&buf[..n]).await.unwrap();
        assert_eq!(relay_once(&mut m, &mut near).await, 10);
        // The consumer reads again and finds nothing: the next short payload goes past it.
        let polled = std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut m).poll_read(cx, &mut ReadBuf::new(&mut buf)).is_pending())
        });
        assert!(polled.await, "nothing is queued");
        send(bytes(20, 4));
        assert_eq!((bypass.bytes(), c.recv_queued()), (20, 0));
        send(bytes(BYPASS_MAX + 1, 5)); // middling: queued for the relay to join with more
        send(bytes(BYPASS_BULK_MIN - 1, 6));
        let middling = BYPASS_MAX + BYPASS_BULK_MIN;
        assert_eq!((bypass.bytes(), c.recv_queued()), (20, middling));
        assert_eq!(relay_once(&mut m, &mut near).await, middling);
        assert!(
            std::future::poll_fn(|cx| {
                Poll::Ready(Pin::new(&mut m).poll_read(cx, &mut ReadBuf::new(&mut buf)).is_pending())
            })
            .await
        );
        send(bytes(BYPASS_BULK_MIN, 7)); // bulk: past the relay again
        assert_eq!((bypass.bytes() as usize, c.recv_queued()), (20 + BYPASS_BULK_MIN, 0));
        let mut got = vec![0u8; sent.len()];
        far.read_exact(&mut got).await.unwrap();
        assert!(got == sent, "the far end got the bytes out of order");
        // Once the session is released, nothing more is written past it.
        drop(m);
        let mut d = Some(Bytes::from_static(b"late"));
        let _ = s.push(&mut d);
        assert_eq!(bypass.bytes() as usize, 20 + BYPASS_BULK_MIN);
    }

    /// A sink whose socket is full takes what fits; the rest and everything after it are queued for
    /// the relay, in order.
    #[tokio::test]
    async fn a_full_sink_leaves_the_rest_to_the_relay_in_order() {
        let (c, _peer) = conn();
        let s = Session::new(1, false, c.clone());
        let (mut near, mut far) = tcp_pair().await;
        socket2::SockRef::from(&near).set_send_buffer_size(4096).unwrap();
        socket2::SockRef::from(&far).set_recv_buffer_size(4096).unwrap();
        let mut m = MuxStream::new(s.clone());
        let bypass = m.bypass(&near, true, None).unwrap();
        let mut sent = Vec::new();
        // The far end does not read: pushes go past until the socket is full (bounded: buffers are a
        // few hundred KiB at most).
        for i in 0..4096u32 {
            let d = bytes(3000, i as u8);
            push_bytes(&s, &d);
            sent.extend_from_slice(&d);
            if c.recv_queued() > 0 {
                break;
            }
        }
        let past = bypass.bytes() as usize;
        assert!(c.recv_queued() > 0 && past < sent.len(), "the socket never filled");
        for i in 0..3u8 {
            let d = bytes(100, 200 + i);
            push_bytes(&s, &d);
            sent.extend_from_slice(&d);
        }
        assert_eq!(bypass.bytes() as usize, past, "nothing goes past queued data");
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; sent.len()];
            far.read_exact(&mut got).await.map(|_| (got, sent))
        });
        let mut moved = past;
        while c.recv_queued() > 0 {
            moved += relay_once(&mut m, &mut near).await;
        }
        let (got, sent) = reader.await.unwrap().unwrap();
        assert_eq!(moved, sent.len());
        assert!(got == sent, "the far end got the bytes out of order");
    }

    /// Datagram sessions never get a sink.
    #[tokio::test]
    async fn udp_sessions_are_not_bypassed() {
        let (c, _peer) = conn();
        let s = Session::new(1, true, c.clone());
        let (near, _far) = tcp_pair().await;
        assert!(MuxStream::new(s).bypass(&near, true, None).is_none());
    }
}
