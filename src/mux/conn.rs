//! One Mux.Cool connection, shared by the client and the server side: the session table, the write
//! queue, and the reader task that feeds sessions.
//!
//! Writes: a session whose data finds the stream idle (no writer using it, nothing left half written)
//! frames and writes it at once in its own task, after whatever control frames were queued; on a
//! stream that seals from several buffers (VMess) with nothing queued, straight from the caller's
//! buffer, whatever its size (header and payload in one vectored write, one chunk). Otherwise
//! its frames are queued for the writer task, which also owns every write the stream could not take at
//! once. Both take the write half under the write lock, so frames leave in the order they were queued.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::frame::{self, Frame, MAX_STREAM_FRAME, MAX_UDP_FRAME, OPT_ERROR, Status};
use super::server::MuxHandler;
use super::stream::{MAX_SLICES, MAX_STREAM_WRITE, MuxPacket, MuxStream, Push, Session};
use super::{MuxError, frame::FrameError};
use crate::proxy::BoxStream;
use crate::session::{CarrierHold, Destination, Network};

/// Serialized frames waiting for the writer above this size make session writers wait. The queue and
/// the writer's batch swap buffers and keep their capacity: at 512 KiB they grew to 1 MiB and 512 KiB
/// per tunnel (resident for good after one burst); 64 KiB keeps the writer just as busy, and both
/// buffers are allocated at their final size, so they never grow (or copy) by doubling.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Most the queue can hold: below the high-water mark, plus one write (at most two frames).
const WRITE_QUEUE_CAP: usize = WRITE_HIGH_WATER + MAX_STREAM_WRITE + 2 * 8 + 1024;
/// Most data a session writes to an idle stream itself through the batch (a copy). Longer writes (a
/// bulk relay's full reads) go to the writer task, which batches what several relays queue meanwhile
/// into one write, unless the stream is vectored and nothing is queued (then they need no copy).
const INLINE_MAX: usize = 16 * 1024;
/// Each read from the underlying stream gets at least this much free buffer.
const READ_CHUNK: usize = 128 * 1024;
/// The first write after this much quiet frees the batch and the empty queue (both grown to
/// `WRITE_QUEUE_CAP` by any burst) once written: an idle tunnel holds no write buffer.
const IDLE_RELEASE: Duration = Duration::from_secs(1);
/// End-frame queue capacity kept between batches (~680 frames).
const ENDS_KEEP: usize = 4096;
/// How long the writer may spend flushing queued End frames and shutting the stream down at close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Most sessions open at once on one connection. V2Ray's clients open at most 128 (and its portal 256
/// per tunnel); a peer that opens more is abusing the connection, which is closed. Our own client side
/// (portal, mux outbounds) counts as full here.
pub const MAX_SESSIONS: usize = 1024;
/// Received data queued over all sessions of a connection before a session with data already queued
/// counts as full (so 1024 sessions cannot each hold their whole budget).
pub(crate) const CONN_RECV_HIGH_WATER: usize = 64 * 1024 * 1024;
/// Past this, a session the reader no longer waits for is ended rather than queue more.
pub(crate) const CONN_RECV_HARD_LIMIT: usize = 96 * 1024 * 1024;
/// Control frames (New/End) queued for a peer that does not read: past this the connection is closed.
/// The reader stops taking frames that would queue control frames well before (at the high-water mark).
const CONTROL_HARD_LIMIT: usize = 1024 * 1024;

/// Which side of the connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

struct WriteState {
    /// Frames serialized back to back; a writer swaps it out whole, so a batch is one write.
    pending: Vec<u8>,
    /// `pending` holds data frames; without them (only New/End) the writer waits one scheduler pass.
    has_data: bool,
    /// End frames, sent after `pending` in the same write.
    ends: Vec<u8>,
    closed: bool,
    blocked: Vec<Waker>,
    /// The write half while no writer holds it.
    parked: Option<Parked>,
}

/// The stream's write half and the batch being written, handed between the writer task and sessions.
struct Parked {
    wr: WriteHalf<BoxStream>,
    batch: Vec<u8>,
    /// `batch[sent..]` is still to be written: a session's write the stream did not take at once,
    /// left for the writer task.
    sent: usize,
    /// Written but not flushed.
    dirty: bool,
    /// The last time anyone wrote: the first write after `IDLE_RELEASE` of quiet frees the buffers.
    last_write: tokio::time::Instant,
}

impl Parked {
    fn left(&self) -> bool {
        self.sent < self.batch.len() || self.dirty
    }

    /// Writes the rest of the batch and flushes without waiting. Ok(false): the stream would block
    /// (the rest stays in the batch, for the writer task).
    fn write_now(&mut self) -> io::Result<bool> {
        let mut cx = Context::from_waker(Waker::noop());
        while self.sent < self.batch.len() {
            match Pin::new(&mut self.wr).poll_write(&mut cx, &self.batch[self.sent..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.sent += n;
                    self.dirty = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(false),
            }
        }
        if self.dirty {
            match Pin::new(&mut self.wr).poll_flush(&mut cx) {
                Poll::Ready(Ok(())) => self.dirty = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Writes one data frame carrying `data` (at most one frame's payload, nothing else left to write)
    /// as one vectored write from the caller's buffer; what the stream does not take now goes into
    /// the batch, for the writer task. Ok(false) as in `write_now`.
    fn write_frame_now(&mut self, id: u16, data: &[u8]) -> io::Result<bool> {
        let head = frame::data_header(id, data.len());
        let mut cx = Context::from_waker(Waker::noop());
        let bufs = [io::IoSlice::new(&head), io::IoSlice::new(data)];
        let taken = match Pin::new(&mut self.wr).poll_write_vectored(&mut cx, &bufs) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                self.dirty = true;
                n
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => 0,
        };
        if taken < head.len() + data.len() {
            queue_room(&mut self.batch);
            let (head_left, data_left) = match taken.checked_sub(head.len()) {
                None => (&head[taken..], data),
                Some(past) => (&[][..], &data[past..]),
            };
            self.batch.extend_from_slice(head_left);
            self.batch.extend_from_slice(data_left);
        }
        self.write_now()
    }

    /// Starts the next batch: everything queued, `add`'s frames after the queued ones and before
    /// the End frames.
    fn refill(&mut self, w: &mut WriteState, add: impl FnOnce(&mut Vec<u8>)) {
        let batch = &mut self.batch;
        batch.clear();
        std::mem::swap(&mut w.pending, batch);
        add(batch);
        // End frames go last: the far end then starts new sessions before it tears old ones down. They
        // wait for the next batch rather than make this one reallocate, unless there is nothing else
        // to send (thousands of sessions ending at once can outgrow any buffer).
        if batch.is_empty() || batch.len() + w.ends.len() <= batch.capacity() {
            batch.extend_from_slice(&w.ends);
            w.ends.clear();
            // A burst of Ends (a tunnel's sessions closing together) should not stay resident.
            w.ends.shrink_to(ENDS_KEEP);
        }
        w.has_data = false;
        self.sent = 0;
    }

    /// The batch is written and flushed: its buffer is kept for the next one, except after a quiet
    /// spell (an idle tunnel holds no write buffer; the next write allocates it again).
    fn finish(&mut self, w: &mut WriteState, after_quiet: bool) {
        self.batch.clear();
        self.sent = 0;
        if after_quiet {
            self.batch = Vec::new();
            if w.pending.is_empty() {
                w.pending = Vec::new();
            }
        }
    }
}

struct Sessions {
    map: HashMap<u16, Arc<Session>>,
    /// Ids we have sent End for (or answered with End): later Keep frames for them are dropped silently
    /// instead of drawing one End reply per in-flight frame.
    ended: Box<[u64; 1024]>,
    /// Last id handed out (client side); ids are never reused on a connection.
    last_id: u16,
    /// Sessions ever allocated on this connection.
    total: u32,
}

impl Sessions {
    fn is_ended(&self, id: u16) -> bool {
        self.ended[id as usize / 64] & (1 << (id % 64)) != 0
    }
    fn set_ended(&mut self, id: u16, on: bool) {
        let bit = 1u64 << (id % 64);
        let w = &mut self.ended[id as usize / 64];
        if on { *w |= bit } else { *w &= !bit }
    }
}

/// State shared by the handles, the sessions and the tasks of one Mux connection.
pub(crate) struct Conn {
    role: Role,
    write: Mutex<WriteState>,
    write_notify: Notify,
    sessions: Mutex<Sessions>,
    token: CancellationToken,
    /// Bytes queued for session readers, over all sessions.
    recv_queued: AtomicUsize,
    /// Set while the reader waits for a full session (see `deliver`).
    hold: Arc<CarrierHold>,
    /// Queued slices of read buffers, over all sessions (at most `MAX_SLICES`).
    slices: AtomicUsize,
    /// `RLIMIT_NOFILE` when the connection started, for the bypass's descriptor rule: read once per
    /// connection, not once per session (a system call on every visitor's setup).
    pub(crate) fd_limit: Option<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going rather than cascade.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    /// Builds the shared state and spawns the reader and writer tasks over `stream`.
    pub(crate) fn start(stream: BoxStream, role: Role, handler: Option<Arc<dyn MuxHandler>>) -> Arc<Conn> {
        let (rd, wr) = tokio::io::split(stream);
        let parked = Parked { wr, batch: Vec::new(), sent: 0, dirty: false, last_write: tokio::time::Instant::now() };
        let conn = Arc::new(Conn {
            role,
            write: Mutex::new(WriteState {
                pending: Vec::new(),
                has_data: false,
                ends: Vec::new(),
                closed: false,
                blocked: Vec::new(),
                parked: Some(parked),
            }),
            write_notify: Notify::new(),
            sessions: Mutex::new(Sessions { map: HashMap::new(), ended: Box::new([0; 1024]), last_id: 0, total: 0 }),
            token: CancellationToken::new(),
            recv_queued: AtomicUsize::new(0),
            hold: Arc::new(CarrierHold::new()),
            slices: AtomicUsize::new(0),
            fd_limit: crate::transport::sockopt::open_files_limit(),
        });
        crate::task::spawn(writer_task(conn.clone()));
        crate::task::spawn(reader_task(conn.clone(), rd, handler));
        conn
    }

    /// The reader is about to wait (at most until `deadline`) for one full session.
    pub(crate) fn hold_until(&self, deadline: tokio::time::Instant) {
        self.hold.hold_until(deadline);
    }

    /// Whether the reader holds every session back (for their relays' idle limits).
    pub(crate) fn hold(&self) -> Arc<CarrierHold> {
        self.hold.clone()
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// True while the write queue is at its high-water mark: the peer is not taking our frames.
    pub(crate) fn write_backlogged(&self) -> bool {
        let w = lock(&self.write);
        w.pending.len() + w.ends.len() >= WRITE_HIGH_WATER
    }

    pub(crate) fn is_server(&self) -> bool {
        self.role == Role::Server
    }

    pub(crate) fn recv_queued(&self) -> usize {
        self.recv_queued.load(Ordering::Relaxed)
    }

    /// Counts one more queued slice, unless the connection already has `MAX_SLICES`.
    pub(crate) fn try_add_slice(&self) -> bool {
        // Only the reader task adds, so load-then-add cannot overshoot.
        if self.slices.load(Ordering::Relaxed) >= MAX_SLICES {
            return false;
        }
        self.slices.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub(crate) fn sub_slice(&self) {
        self.slices.fetch_sub(1, Ordering::Relaxed);
    }

    /// Slices of read buffers queued now, over all sessions.
    #[cfg(test)]
    pub(crate) fn slices(&self) -> usize {
        self.slices.load(Ordering::Relaxed)
    }

    pub(crate) fn add_recv_queued(&self, n: usize) {
        self.recv_queued.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub_recv_queued(&self, n: usize) {
        if n > 0 {
            self.recv_queued.fetch_sub(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn active_sessions(&self) -> usize {
        lock(&self.sessions).map.len()
    }

    pub(crate) fn total_sessions(&self) -> u32 {
        lock(&self.sessions).total
    }

    /// True when no more ids can be handed out on this connection.
    pub(crate) fn ids_exhausted(&self) -> bool {
        lock(&self.sessions).last_id == u16::MAX
    }

    /// Client side: allocates the next id, registers the session and queues its New frame.
    pub(crate) fn open(self: &Arc<Self>, target: Destination) -> Result<Arc<Session>, MuxError> {
        let mut header = Vec::with_capacity(64);
        // Validate the target before taking an id, so a bad target does not burn one.
        frame::put_header(&mut header, 0, Status::New, false, Some(&target), None)?;
        let session = {
            let mut s = lock(&self.sessions);
            if self.is_closed() {
                return Err(MuxError::Closed);
            }
            if s.last_id == u16::MAX || s.map.len() >= MAX_SESSIONS {
                return Err(MuxError::Full);
            }
            s.last_id += 1;
            s.total += 1;
            let id = s.last_id;
            let session = Session::new(id, target.network == Network::Udp, self.clone());
            s.map.insert(id, session.clone());
            header[2..4].copy_from_slice(&id.to_be_bytes());
            session
        };
        self.queue_control(&header, false);
        Ok(session)
    }

    /// Queues a small control frame: these cannot wait (an End is queued when a handle is dropped), but
    /// they count against the write budget: session writers wait while the queue is above its
    /// high-water mark, the reader stops taking frames that would answer with more (see
    /// [`Conn::poll_control_room`]), and a queue past [`CONTROL_HARD_LIMIT`] (a peer that stopped
    /// reading) closes the connection. End frames (`end`) queue apart, to go after the data of the write
    /// they join.
    fn queue_control(&self, bytes: &[u8], end: bool) {
        let mut w = lock(&self.write);
        if w.closed {
            return;
        }
        if w.pending.len() + w.ends.len() > CONTROL_HARD_LIMIT + WRITE_QUEUE_CAP {
            drop(w);
            debug!("mux: the peer does not read its control frames, closing the connection");
            self.close();
            return;
        }
        if end {
            w.ends.extend_from_slice(bytes);
        } else {
            queue_room(&mut w.pending);
            w.pending.extend_from_slice(bytes);
        }
        drop(w);
        self.write_notify.notify_one();
    }

    /// Ready when the write queue (data and control frames) is below its high-water mark.
    fn poll_control_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut w = lock(&self.write);
        if w.closed || w.pending.len() + w.ends.len() < WRITE_HIGH_WATER {
            return Poll::Ready(());
        }
        if !w.blocked.iter().any(|k| k.will_wake(cx.waker())) {
            w.blocked.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Queues an End frame for `id`.
    pub(crate) fn queue_end(&self, id: u16, error: bool) {
        let [hi, lo] = id.to_be_bytes();
        self.queue_control(&[0, 4, hi, lo, Status::End as u8, if error { OPT_ERROR } else { 0 }], true);
    }

    /// Queues `Keep|Data` frames carrying `data` (split into frames of ≤ [`MAX_STREAM_FRAME`] bytes;
    /// packets, ≤ 2048 bytes, are one frame), or waits while the write queue is above its high-water mark.
    pub(crate) fn poll_queue_data(&self, cx: &mut Context<'_>, id: u16, data: &[u8]) -> Poll<io::Result<()>> {
        let mut w = lock(&self.write);
        if w.closed {
            return Poll::Ready(Err(conn_closed()));
        }
        if w.pending.len() + w.ends.len() >= WRITE_HIGH_WATER {
            if !w.blocked.iter().any(|k| k.will_wake(cx.waker())) {
                w.blocked.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        // An idle stream that seals from several buffers (VMess), and nothing queued to go first: the
        // frame goes out now from the caller's buffer, header and payload in one vectored write (no
        // copy into the queue, no writer-task hop), whatever its size.
        let direct = !data.is_empty()
            && data.len() <= MAX_STREAM_FRAME
            && w.pending.is_empty()
            && w.ends.is_empty()
            && w.parked.as_ref().is_some_and(|p| p.wr.is_write_vectored());
        // Else a short message and an idle stream: write now, in this task, rather than wake the writer
        // task to do it (one task hop less per message, each way). Frames already queued go first.
        if (direct || data.len() <= INLINE_MAX)
            && let Some(mut p) = w.parked.take_if(|p| !p.left())
        {
            let now = tokio::time::Instant::now();
            let after_quiet = now.duration_since(p.last_write) >= IDLE_RELEASE;
            p.last_write = now;
            if direct {
                p.batch.clear();
                p.sent = 0;
            } else {
                p.refill(&mut w, |batch| {
                    queue_room(batch);
                    put_data_frames(batch, id, data);
                });
            }
            let blocked = std::mem::take(&mut w.blocked);
            drop(w);
            blocked.into_iter().for_each(Waker::wake);
            let result = if direct { p.write_frame_now(id, data) } else { p.write_now() };
            let mut w = lock(&self.write);
            if result.as_ref().is_ok_and(|&done| done) {
                p.finish(&mut w, after_quiet);
            }
            // Whatever the stream did not take, and frames queued meanwhile (another thread), are the
            // writer task's; so is the half once closed (its close path waits for it).
            let more = p.left() || w.closed || !w.pending.is_empty() || !w.ends.is_empty();
            w.parked = Some(p);
            drop(w);
            return Poll::Ready(match result {
                Ok(_) => {
                    if more {
                        self.write_notify.notify_one();
                    }
                    Ok(())
                }
                Err(e) => {
                    debug!(error = %e, "mux: write failed, closing connection");
                    self.close();
                    Err(conn_closed())
                }
            });
        }
        queue_room(&mut w.pending);
        put_data_frames(&mut w.pending, id, data);
        w.has_data = true;
        drop(w);
        self.write_notify.notify_one();
        Poll::Ready(Ok(()))
    }

    /// Wakes every writer waiting for queue space, so that one whose session just died notices.
    pub(crate) fn wake_blocked_writers(&self) {
        let blocked = std::mem::take(&mut lock(&self.write).blocked);
        blocked.into_iter().for_each(Waker::wake);
    }

    /// Forgets session `id` (if it is still `session`) and remembers that its End has been dealt with.
    pub(crate) fn remove(&self, session: &Arc<Session>) {
        let mut s = lock(&self.sessions);
        if s.map.get(&session.id).is_some_and(|cur| Arc::ptr_eq(cur, session)) {
            s.map.remove(&session.id);
        }
        s.set_ended(session.id, true);
    }

    /// Ends the connection: every session errors out, the writer flushes what is queued and shuts the
    /// stream down, the reader stops.
    pub(crate) fn close(&self) {
        if self.token.is_cancelled() {
            return;
        }
        self.token.cancel();
        {
            let mut w = lock(&self.write);
            w.closed = true;
        }
        self.wake_blocked_writers();
        self.write_notify.notify_one();
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).map.drain().map(|(_, s)| s).collect();
        for s in sessions {
            s.on_conn_closed();
        }
    }

    fn lookup(&self, id: u16) -> Option<Arc<Session>> {
        lock(&self.sessions).map.get(&id).cloned()
    }

    /// A Keep frame arrived for an id we do not know: answer End once, drop the data.
    fn unknown_session(&self, id: u16) {
        let answer = {
            let mut s = lock(&self.sessions);
            let fresh = !s.is_ended(id);
            s.set_ended(id, true);
            fresh
        };
        if answer {
            debug!(id, "mux: data for unknown session, answering End");
            self.queue_end(id, false);
        }
    }
}

/// A queue freed by an idle writer is allocated again at its final size, never grown by doubling.
fn queue_room(pending: &mut Vec<u8>) {
    if pending.capacity() == 0 {
        pending.reserve_exact(WRITE_QUEUE_CAP);
    }
}

/// Appends `Keep|Data` frames carrying `data`: stream data longer than one frame goes out as several.
fn put_data_frames(out: &mut Vec<u8>, id: u16, data: &[u8]) {
    let mut rest = data;
    loop {
        let (part, tail) = rest.split_at(rest.len().min(MAX_STREAM_FRAME));
        out.extend_from_slice(&frame::data_header(id, part.len()));
        out.extend_from_slice(part);
        rest = tail;
        if rest.is_empty() {
            break;
        }
    }
}

fn conn_closed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "mux connection closed")
}

async fn writer_task(conn: Arc<Conn>) {
    // The write half while this task holds it (else it is parked in the write state).
    let mut held: Option<Parked> = None;
    let result = write_loop(&conn, &mut held).await;
    if let Err(e) = &result {
        debug!(error = %e, "mux: write failed, closing connection");
    }
    conn.close();
    if result.is_ok() {
        // Orderly end: send what was queued before the close (End frames) and end the stream cleanly.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            // A session on another thread may be writing: nobody starts once closed, and it wakes us
            // when it parks the half.
            while held.is_none() {
                held = lock(&conn.write).parked.take();
                if held.is_none() {
                    conn.write_notify.notified().await;
                }
            }
            let Some(p) = held.as_mut() else { return Ok(()) };
            loop {
                if p.sent < p.batch.len() {
                    p.wr.write_all(&p.batch[p.sent..]).await?;
                }
                take_pending(&conn, p);
                if p.batch.is_empty() {
                    break;
                }
            }
            p.wr.shutdown().await
        })
        .await;
    }
    // The stream closes once both halves are gone: the write half must not live on in `conn`, which
    // sessions keep alive.
    drop(held);
    drop(lock(&conn.write).parked.take());
}

async fn write_loop(conn: &Conn, held: &mut Option<Parked>) -> io::Result<()> {
    loop {
        tokio::select! {
            _ = conn.write_notify.notified() => {}
            _ = conn.token.cancelled() => return Ok(()),
        }
        let has_data = {
            let mut w = lock(&conn.write);
            // Absent: a session (on another thread) is writing; it wakes us if it leaves work.
            let Some(p) = w.parked.take() else { continue };
            if !p.left() && w.pending.is_empty() && w.ends.is_empty() {
                // A session's write already took it all.
                w.parked = Some(p);
                continue;
            }
            *held = Some(p);
            w.has_data
        };
        let Some(p) = held.as_mut() else { continue };
        let now = tokio::time::Instant::now();
        let after_quiet = now.duration_since(p.last_write) >= IDLE_RELEASE;
        p.last_write = now;
        if !has_data {
            // Only New/End frames: nobody waits on them byte by byte, so let the tasks already
            // woken this pass queue theirs (a new session's data, other sessions' End) and send
            // all in one write, one wake-up of the far end instead of several.
            tokio::task::yield_now().await;
        }
        loop {
            // First what a session's write left, then whatever is queued, batch by batch.
            if p.sent == p.batch.len() {
                take_pending(conn, p);
            }
            while p.sent < p.batch.len() {
                let n = tokio::select! {
                    r = p.wr.write(&p.batch[p.sent..]) => r?,
                    _ = conn.token.cancelled() => return Ok(()),
                };
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                p.sent += n;
                p.dirty = true;
            }
            if p.dirty {
                tokio::select! {
                    r = p.wr.flush() => r?,
                    _ = conn.token.cancelled() => return Ok(()),
                }
                p.dirty = false;
            }
            // Park, unless more was queued meanwhile.
            let mut w = lock(&conn.write);
            if w.pending.is_empty() && w.ends.is_empty() {
                p.finish(&mut w, after_quiet);
                w.parked = held.take();
                break;
            }
        }
    }
}

/// Starts `p`'s next batch from the queue and wakes writers waiting for space (they refill while we write).
fn take_pending(conn: &Conn, p: &mut Parked) {
    let blocked = {
        let mut w = lock(&conn.write);
        p.refill(&mut w, |_| {});
        std::mem::take(&mut w.blocked)
    };
    blocked.into_iter().for_each(Waker::wake);
}

async fn reader_task(conn: Arc<Conn>, mut rd: ReadHalf<BoxStream>, handler: Option<Arc<dyn MuxHandler>>) {
    let result = tokio::select! {
        r = read_loop(&conn, &mut rd, handler.as_ref()) => r,
        _ = conn.token.cancelled() => Ok(()),
    };
    match result {
        Ok(()) => debug!("mux: connection ended"),
        Err(e) => debug!(error = %e, "mux: connection failed"),
    }
    conn.close();
}

async fn read_loop(
    conn: &Arc<Conn>,
    rd: &mut ReadHalf<BoxStream>,
    handler: Option<&Arc<dyn MuxHandler>>,
) -> Result<(), MuxError> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while let Some(f) = frame::decode(&mut buf)? {
            handle_frame(conn, f, handler).await?;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        if rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

async fn handle_frame(conn: &Arc<Conn>, f: Frame, handler: Option<&Arc<dyn MuxHandler>>) -> Result<(), MuxError> {
    match f.status {
        Status::New => {
            // The client ignores New from the server (Go drains it).
            if let (Role::Server, Some(h)) = (conn.role, handler) {
                // A peer that floods New and never reads stalls here, not in our memory.
                control_room(conn).await;
                accept_new(conn, f, h).await?;
            }
        }
        Status::Keep => {
            let Some(data) = f.data else { return Ok(()) };
            match conn.lookup(f.id) {
                None => {
                    if conn.role == Role::Server || !is_ours(conn, f.id) {
                        control_room(conn).await;
                        conn.unknown_session(f.id);
                    }
                }
                Some(s) => {
                    if s.udp && data.len() > MAX_UDP_FRAME {
                        return Err(MuxError::PacketTooLarge(data.len()));
                    }
                    deliver(&s, data).await;
                }
            }
        }
        Status::End => {
            if let Some(s) = conn.lookup(f.id) {
                s.on_remote_end(f.error);
            }
        }
        Status::KeepAlive => {}
    }
    Ok(())
}

/// Client side: ids at or below the last one handed out were ours and have been answered with End already.
fn is_ours(conn: &Conn, id: u16) -> bool {
    let s = lock(&conn.sessions);
    id != 0 && id <= s.last_id
}

/// Hands data to a session. While the session is full the reader waits for room, but only as long as
/// the session's consumer keeps taking data (see `Session::push`): one visitor that stops reading
/// delays the others by at most `HOL_WAIT`, then is ended on its own.
async fn deliver(s: &Arc<Session>, data: Bytes) {
    let mut data = Some(data);
    while let Push::Wait(deadline) = s.push(&mut data) {
        tokio::select! {
            _ = poll_fn(|cx| s.poll_room(cx)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Waits until the write queue has room for the control frames the next frame may cause.
async fn control_room(conn: &Conn) {
    poll_fn(|cx| conn.poll_control_room(cx)).await
}

async fn accept_new(conn: &Arc<Conn>, f: Frame, handler: &Arc<dyn MuxHandler>) -> Result<(), MuxError> {
    let Some(target) = f.target else { return Err(FrameError::Target.into()) };
    let udp = target.network == Network::Udp;
    if let Some(d) = &f.data
        && udp
        && d.len() > MAX_UDP_FRAME
    {
        return Err(MuxError::PacketTooLarge(d.len()));
    }
    let session = Session::new(f.id, udp, conn.clone());
    let old = {
        let mut s = lock(&conn.sessions);
        // close() drains the table under this lock after cancelling: past this check the session is
        // either in the table it drains or never created, so no handler can wait on an orphan.
        if conn.is_closed() {
            return Err(MuxError::Closed);
        }
        if s.map.len() >= MAX_SESSIONS && !s.map.contains_key(&f.id) {
            return Err(MuxError::TooManySessions(MAX_SESSIONS));
        }
        s.set_ended(f.id, false);
        s.total += 1;
        s.map.insert(f.id, session.clone())
    };
    if let Some(old) = old {
        // A reused live id (a wrapped Go counter, or a hostile peer): the old session cannot receive
        // anything any more, and its handler must not run on unseen.
        debug!(id = f.id, "mux: New for a live session id, aborting the old session");
        old.on_remote_end(true);
        old.abort_task();
    }
    if let Some(d) = f.data {
        deliver(&session, d).await;
    }
    debug!(id = f.id, %target, "mux: new session");
    let h = handler.clone();
    let task = if udp {
        let p = MuxPacket::new(session.clone());
        crate::task::spawn(async move { h.packet(target, p).await })
    } else {
        let st = MuxStream::new(session.clone());
        crate::task::spawn(async move { h.stream(target, st).await })
    };
    session.set_task(task.abort_handle());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::frame::OPT_DATA;
    use super::*;

    async fn send(c: &Conn, id: u16, data: &[u8]) {
        poll_fn(|cx| c.poll_queue_data(cx, id, data)).await.unwrap();
    }

    /// Reads from the peer until `want` bytes of frames came out; returns them.
    async fn drain(peer: &mut tokio::io::DuplexStream, want: usize) -> Vec<u8> {
        let mut got = vec![0u8; want];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got)).await.unwrap().unwrap();
        got
    }

    fn batch_capacity(c: &Conn) -> Option<usize> {
        lock(&c.write).parked.as_ref().map(|p| p.batch.capacity())
    }

    /// After a burst the write buffers stay allocated at full size; the first write after a quiet
    /// second frees them once written, and the next data gets a full-size buffer again (and crosses
    /// intact). On a stream that is not vectored, where every frame goes through them.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_writer_frees_its_queue_and_gets_it_back() {
        let (c, mut peer, _) = mock_conn(1 << 20, false);
        let burst = vec![7u8; 100_000];
        send(&c, 1, &burst).await;
        let framed = drain(&mut peer, burst.len() + burst.len().div_ceil(MAX_STREAM_FRAME) * 8).await;
        assert_eq!(framed.iter().filter(|&&b| b == 7).count(), burst.len());
        // A write that long went through the writer task, which parks the half once it has flushed.
        let end = tokio::time::Instant::now() + Duration::from_secs(1);
        while batch_capacity(&c).is_none() && tokio::time::Instant::now() < end {
            // A sleep, not a yield: paused time moves only while every task waits.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(batch_capacity(&c) >= Some(WRITE_QUEUE_CAP), "kept while busy");

        tokio::time::sleep(IDLE_RELEASE * 2).await;
        send(&c, 1, b"after the quiet").await;
        let frame = drain(&mut peer, 8 + 15).await;
        assert_eq!(&frame[8..], b"after the quiet");
        assert_eq!(batch_capacity(&c), Some(0), "an idle writer holds no batch");
        assert_eq!(lock(&c.write).pending.capacity(), 0, "nor a queue");

        send(&c, 1, b"and again").await;
        assert!(batch_capacity(&c) >= Some(WRITE_QUEUE_CAP));
        let frame = drain(&mut peer, 8 + 9).await;
        assert_eq!(&frame[8..], b"and again");
        c.close();
    }

    /// Splits a stream of frames into (id, status, payload) triples.
    fn frames(mut b: &[u8]) -> Vec<(u16, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            assert_eq!(&b[..2], &[0, 4], "short metadata only in this test");
            let id = u16::from_be_bytes([b[2], b[3]]);
            let (status, opt) = (b[4], b[5]);
            b = &b[6..];
            let mut data = Vec::new();
            if opt & OPT_DATA != 0 {
                let n = u16::from_be_bytes([b[0], b[1]]) as usize;
                data = b[2..2 + n].to_vec();
                b = &b[2 + n..];
            }
            out.push((id, status, data));
        }
        out
    }

    /// A pipe that takes vectored writes (as VMess does: `vectored`) or not (as most streams do);
    /// counts them.
    struct Mock {
        inner: tokio::io::DuplexStream,
        vectored: bool,
        calls: Arc<AtomicUsize>,
    }

    impl tokio::io::AsyncRead for Mock {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Mock {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            Pin::new(&mut self.inner).poll_write(cx, &joined)
        }
        fn is_write_vectored(&self) -> bool {
            self.vectored
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn mock_conn(pipe: usize, vectored: bool) -> (Arc<Conn>, tokio::io::DuplexStream, Arc<AtomicUsize>) {
        let (inner, peer) = tokio::io::duplex(pipe);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Conn::start(Box::new(Mock { inner, vectored, calls: calls.clone() }), Role::Client, None);
        (c, peer, calls)
    }

    fn pattern(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32).map(|i| ((i + seed) % 251) as u8).collect()
    }

    /// On a stream that seals from several buffers, a frame of any size for an idle stream goes out
    /// in one vectored write from the caller's buffer: it is never copied into the queue.
    #[tokio::test]
    async fn a_frame_for_an_idle_vectored_stream_is_written_from_the_callers_buffer() {
        let (c, mut peer, calls) = mock_conn(1 << 20, true);
        for (i, n) in [60_000, MAX_STREAM_FRAME, 1].into_iter().enumerate() {
            let data = pattern(n, i as u32);
            send(&c, 1, &data).await;
            assert_eq!(calls.load(Ordering::Relaxed), i + 1, "one vectored write per frame");
            assert_eq!(batch_capacity(&c), Some(0), "nothing went through the batch");
            assert_eq!(lock(&c.write).pending.capacity(), 0, "nor through the queue");
            assert_eq!(frames(&drain(&mut peer, 8 + n).await), [(1, Status::Keep as u8, data)]);
        }
        // Longer than one frame: queued and split, as on any stream.
        let long = pattern(MAX_STREAM_FRAME + 10, 9);
        send(&c, 2, &long).await;
        let got = frames(&drain(&mut peer, long.len() + 16).await);
        assert_eq!(got.iter().flat_map(|f| f.2.clone()).collect::<Vec<u8>>(), long);
        c.close();
    }

    /// A vectored write the stream cannot take at all (the pipe is full) waits in the batch for the
    /// writer task, and arrives whole once the peer reads.
    #[tokio::test]
    async fn a_frame_a_full_vectored_stream_refuses_waits_for_the_writer() {
        let (c, mut peer, calls) = mock_conn(4096, true);
        let fill = pattern(4096 - 8, 1);
        send(&c, 1, &fill).await;
        assert!(lock(&c.write).parked.as_ref().is_some_and(|p| !p.left()), "the pipe took it all");
        let late = pattern(3000, 2);
        send(&c, 1, &late).await;
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        let got = frames(&drain(&mut peer, 4096 + 8 + late.len()).await);
        assert_eq!(got, [(1, Status::Keep as u8, fill), (1, Status::Keep as u8, late)]);
        c.close();
    }

    /// A session's write that the stream cannot take at once is finished by the writer task, and
    /// frames queued behind it (data of other sessions, an End) leave after it, in order; on a plain
    /// stream (copied into the batch) and on a vectored one (written from the caller's buffer).
    #[tokio::test]
    async fn a_write_the_stream_cannot_take_is_finished_in_order() {
        for vectored in [false, true] {
            let (c, peer, _) = mock_conn(4096, vectored);
            finished_in_order(c, peer).await;
        }
    }

    async fn finished_in_order(c: Arc<Conn>, mut peer: tokio::io::DuplexStream) {
        let first: Vec<u8> = (0..INLINE_MAX as u32).map(|i| (i % 251) as u8).collect();
        send(&c, 1, &first).await;
        assert!(lock(&c.write).parked.as_ref().is_some_and(Parked::left), "the pipe took only part of it");
        send(&c, 2, b"second").await;
        c.queue_end(1, false);
        send(&c, 3, b"third").await;
        let want = first.len() + 8 + (8 + 6) + 6 + (8 + 5);
        let got = frames(&drain(&mut peer, want).await);
        let data_of = |id: u16| -> Vec<u8> {
            got.iter().filter(|f| f.0 == id && f.1 == Status::Keep as u8).flat_map(|f| f.2.clone()).collect()
        };
        assert_eq!(data_of(1), first);
        assert_eq!(data_of(2), b"second");
        assert_eq!(data_of(3), b"third");
        let order: Vec<(u16, u8)> = got.iter().map(|f| (f.0, f.1)).collect();
        let keep = Status::Keep as u8;
        assert_eq!(order, [(1, keep), (2, keep), (3, keep), (1, Status::End as u8)]);
        c.close();
    }
}
