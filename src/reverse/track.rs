//! Live bookkeeping behind [`super::status`]: which sessions each tunnel carries, their meters, totals
//! and the last ended sessions. Touched once per session open/close and per heartbeat, never per byte
//! (bytes are in each session's [`Meter`], which the relay fills).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::status::{ClosedSession, Role, SessionStatus, TagStatus, TunnelStatus};
use crate::session::{Destination, Meter, Session};

/// Ended sessions kept per tag for `/status`.
const CLOSED_SESSIONS_KEPT: usize = 32;
/// Ended tunnels kept per tag.
const CLOSED_TUNNELS_KEPT: usize = 8;

/// Drain reasons every tag reports (at 0 until they happen).
pub const DRAIN_REASONS: &[&str] = &["session_limit", "nonce_wear", "portal_request"];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning only means a panic elsewhere mid-update of plain bookkeeping; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_unix_ms(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

/// What a live session shows. Kept as the session has it (no strings made at open): every held
/// connection keeps one of these for its whole life, and only a status snapshot needs the text.
struct LiveSession {
    target: Destination,
    inbound: Option<Arc<str>>,
    source: Option<SocketAddr>,
    meter: Arc<Meter>,
}

impl LiveSession {
    /// Its figures as of now, its text still unmade (the `Arc`s are shared, nothing is copied).
    fn freeze(&self, id: u64) -> FrozenSession {
        FrozenSession {
            id,
            age: self.meter.age(),
            uplink: self.meter.uplink(),
            downlink: self.meter.downlink(),
            idle: self.meter.idle(),
            target: self.target.clone(),
            inbound: self.inbound.clone(),
            source: self.source,
        }
    }
}

/// A session's figures at one moment, kept raw: every session's end writes one into the ring, and only
/// a status snapshot needs the text (formatting it at each end was ~5 % of the portal's user time per
/// connection in a connection-rate profile).
struct FrozenSession {
    id: u64,
    target: Destination,
    inbound: Option<Arc<str>>,
    source: Option<SocketAddr>,
    age: Duration,
    uplink: u64,
    downlink: u64,
    idle: Duration,
}

impl FrozenSession {
    fn status(&self) -> SessionStatus {
        SessionStatus {
            id: self.id,
            target: self.target.to_string(),
            inbound: self.inbound.as_deref().map(str::to_string),
            source: self.source.map(|s| s.to_string()),
            age: self.age,
            uplink: self.uplink,
            downlink: self.downlink,
            idle: self.idle,
        }
    }
}

/// An entry of a tag's ring of ended sessions.
struct ClosedRaw {
    session: FrozenSession,
    tunnel: u64,
    closed_at: SystemTime,
    reason: String,
}

impl ClosedRaw {
    fn status(&self) -> ClosedSession {
        ClosedSession {
            session: self.session.status(),
            tunnel: self.tunnel,
            closed_at: self.closed_at,
            reason: self.reason.clone(),
        }
    }
}

/// One tunnel's bookkeeping.
pub struct TunnelTrack {
    id: u64,
    tag: Arc<TagTrack>,
    started: Instant,
    peer: Option<SocketAddr>,
    hb_sent: AtomicU64,
    hb_received: AtomicU64,
    /// Bytes of its sessions that have ended.
    up_done: AtomicU64,
    down_done: AtomicU64,
    live: Mutex<HashMap<u64, LiveSession>>,
    opened: AtomicU64,
}

impl TunnelTrack {
    /// Records a heartbeat sent (portal) on this tunnel.
    pub fn heartbeat_sent(&self) {
        let now = unix_ms(SystemTime::now());
        self.hb_sent.store(now, Ordering::Relaxed);
        self.tag.last_heartbeat.store(now, Ordering::Relaxed);
    }

    /// Records a heartbeat received (bridge) on this tunnel.
    pub fn heartbeat_received(&self) {
        let now = unix_ms(SystemTime::now());
        self.hb_received.store(now, Ordering::Relaxed);
        self.tag.last_heartbeat.store(now, Ordering::Relaxed);
    }

    /// Starts tracking `session` (it gets a meter if it has none, and an id if it has none). The
    /// returned guard ends it: [`SessionGuard::finish`] with a reason, or `cancelled` when dropped.
    pub fn open(self: &Arc<Self>, session: &mut Session) -> SessionGuard {
        if session.id == 0 {
            session.id = self.tag.next_session.fetch_add(1, Ordering::Relaxed);
        }
        let meter = session.meter.get_or_insert_with(|| Arc::new(Meter::new())).clone();
        let live = LiveSession {
            target: session.target.clone(),
            inbound: session.inbound_tag.clone(),
            source: session.source,
            meter,
        };
        lock(&self.live).insert(session.id, live);
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.tag.sessions_total.fetch_add(1, Ordering::Relaxed);
        SessionGuard { tunnel: self.clone(), id: session.id, done: false }
    }

    /// Live sessions now.
    pub fn sessions(&self) -> usize {
        lock(&self.live).len()
    }

    /// A snapshot; `mux_sessions`/`total`/`draining`/`closed` come from the tunnel's owner.
    pub fn status(&self, mux_sessions: usize, total: u32, draining: bool) -> TunnelStatus {
        let live = lock(&self.live);
        let mut sessions: Vec<SessionStatus> = live.iter().map(|(id, s)| s.freeze(*id).status()).collect();
        drop(live);
        sessions.sort_by_key(|s| s.id);
        let (up, down) = sessions
            .iter()
            .fold((self.up_done.load(Ordering::Relaxed), self.down_done.load(Ordering::Relaxed)), |(u, d), s| {
                (u + s.uplink, d + s.downlink)
            });
        TunnelStatus {
            id: self.id,
            active_sessions: mux_sessions,
            total_sessions: total,
            sessions_total: self.opened.load(Ordering::Relaxed),
            draining,
            closed: false,
            peer: self.peer.map(|p| p.to_string()),
            transport: "tcp".into(),
            age: self.started.elapsed(),
            uplink: up,
            downlink: down,
            last_heartbeat_sent: from_unix_ms(self.hb_sent.load(Ordering::Relaxed)),
            last_heartbeat_received: from_unix_ms(self.hb_received.load(Ordering::Relaxed)),
            rtt: self.peer.and_then(crate::ops::tcp_rtt_to),
            sessions,
            close_reason: None,
        }
    }

    /// Records the tunnel's end (kept among the last closed tunnels) and returns its final snapshot.
    pub fn closed(&self, total: u32, draining: bool, reason: &str) -> TunnelStatus {
        let mut st = self.status(0, total, draining);
        st.closed = true;
        st.rtt = None;
        st.close_reason = Some(reason.to_string());
        let mut ring = lock(&self.tag.closed_tunnels);
        if ring.len() == CLOSED_TUNNELS_KEPT {
            ring.pop_back();
        }
        ring.push_front(st.clone());
        st
    }

    /// Its process-local number.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Ends a tracked session.
pub struct SessionGuard {
    tunnel: Arc<TunnelTrack>,
    id: u64,
    done: bool,
}

impl SessionGuard {
    /// Ends the session with `reason`.
    pub fn finish(mut self, reason: &str) {
        self.end(reason);
    }

    fn end(&mut self, reason: &str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let Some(live) = lock(&self.tunnel.live).remove(&self.id) else { return };
        let st = live.freeze(self.id);
        let t = &self.tunnel;
        t.up_done.fetch_add(st.uplink, Ordering::Relaxed);
        t.down_done.fetch_add(st.downlink, Ordering::Relaxed);
        t.tag.up_done.fetch_add(st.uplink, Ordering::Relaxed);
        t.tag.down_done.fetch_add(st.downlink, Ordering::Relaxed);
        let closed = ClosedRaw { session: st, tunnel: t.id, closed_at: SystemTime::now(), reason: reason.into() };
        let mut ring = lock(&t.tag.closed_sessions);
        if ring.len() == CLOSED_SESSIONS_KEPT {
            ring.pop_back();
        }
        ring.push_front(closed);
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.end("cancelled");
    }
}

/// One portal's or bridge's bookkeeping.
pub struct TagTrack {
    role: Role,
    tag: String,
    heartbeat: Duration,
    started: Instant,
    next_session: AtomicU64,
    sessions_total: AtomicU64,
    up_done: AtomicU64,
    down_done: AtomicU64,
    dials_ok: AtomicU64,
    dials_failed: AtomicU64,
    drains: Mutex<Vec<(&'static str, u64)>>,
    last_heartbeat: AtomicU64,
    closed_tunnels: Mutex<VecDeque<TunnelStatus>>,
    closed_sessions: Mutex<VecDeque<ClosedRaw>>,
}

impl TagTrack {
    /// Bookkeeping for a portal or bridge `tag` with heartbeat period `heartbeat`.
    pub fn new(role: Role, tag: &str, heartbeat: Duration) -> Arc<Self> {
        Arc::new(TagTrack {
            role,
            tag: tag.to_string(),
            heartbeat,
            started: Instant::now(),
            next_session: AtomicU64::new(1),
            sessions_total: 0.into(),
            up_done: 0.into(),
            down_done: 0.into(),
            dials_ok: 0.into(),
            dials_failed: 0.into(),
            drains: Mutex::new(DRAIN_REASONS.iter().map(|r| (*r, 0)).collect()),
            last_heartbeat: 0.into(),
            closed_tunnels: Mutex::new(VecDeque::new()),
            closed_sessions: Mutex::new(VecDeque::new()),
        })
    }

    /// A new tunnel `id` from `peer` (when known).
    pub fn tunnel(self: &Arc<Self>, id: u64, peer: Option<SocketAddr>) -> Arc<TunnelTrack> {
        Arc::new(TunnelTrack {
            id,
            tag: self.clone(),
            started: Instant::now(),
            peer,
            hb_sent: 0.into(),
            hb_received: 0.into(),
            up_done: 0.into(),
            down_done: 0.into(),
            live: Mutex::new(HashMap::new()),
            opened: 0.into(),
        })
    }

    /// Counts a tunnel dial (bridge).
    pub fn dialed(&self, ok: bool) {
        let c = if ok { &self.dials_ok } else { &self.dials_failed };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a drained tunnel.
    pub fn drained(&self, reason: &'static str) {
        let mut d = lock(&self.drains);
        match d.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => d.push((reason, 1)),
        }
    }

    /// The tag's snapshot, with its live tunnels' snapshots (made by the owner, which knows their Mux state).
    pub fn status(&self, tunnels: Vec<TunnelStatus>) -> TagStatus {
        // Totals include live sessions' bytes so counters never go down when a session ends.
        let (mut up, mut down) = (self.up_done.load(Ordering::Relaxed), self.down_done.load(Ordering::Relaxed));
        for s in tunnels.iter().flat_map(|t| &t.sessions) {
            up += s.uplink;
            down += s.downlink;
        }
        // Sessions of tunnels that are gone but not yet dropped by their owner are not lost: their
        // guards added their bytes to `up_done` when they ended.
        TagStatus {
            role: self.role,
            tag: self.tag.clone(),
            heartbeat: self.heartbeat,
            tunnels,
            closed_tunnels: lock(&self.closed_tunnels).iter().cloned().collect(),
            closed_sessions: lock(&self.closed_sessions).iter().map(ClosedRaw::status).collect(),
            sessions_total: self.sessions_total.load(Ordering::Relaxed),
            uplink: up,
            downlink: down,
            dials: if self.role == Role::Bridge {
                vec![
                    ("ok", self.dials_ok.load(Ordering::Relaxed)),
                    ("error", self.dials_failed.load(Ordering::Relaxed)),
                ]
            } else {
                Vec::new()
            },
            drains: lock(&self.drains).clone(),
            last_heartbeat: from_unix_ms(self.last_heartbeat.load(Ordering::Relaxed)),
            uptime: self.started.elapsed(),
        }
    }
}
