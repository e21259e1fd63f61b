//! The bridge: dials tunnels out to the portal through its own routing, serves Mux.Cool on each, and
//! dispatches every session it receives with its tag as inbound tag.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{BridgeConfig, ReverseTuning};
use crate::dispatch::Dispatcher;
use crate::instance::Service;
use crate::mux::server::{MuxHandler, MuxServer};
use crate::mux::{MuxPacket, MuxStream};
use crate::proxy::{BoxStream, PacketConn, relay_packets};
use crate::reverse::control::{Control, ControlState};
use crate::reverse::is_internal_domain;
use crate::reverse::status::{BridgeStatus, Role};
use crate::reverse::track::{TagTrack, TunnelTrack};
use crate::session::{Address, Destination, LastActivity, Session, Wear};
use crate::task::Owner;
use crate::transport::{TunnelDial, dial_tunnel};

/// First re-dial after a failure comes fast; later ones double up to [`MAX_BACKOFF`] (V2Ray: fixed 2 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// A dead portal is dialled at most about this often.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Most a tunnel dial (name lookup, connect attempts, VMess header) may take, whatever the outbound's
/// own retries: past it the monitor counts a failure and backs off.
const DIAL_DEADLINE: Duration = Duration::from_secs(20);
/// Silence allowed before the portal's heartbeat period is known: covers portals that beat every 10 s
/// (Xray since 25.7), until four control messages have shown the real period.
const SILENCE_UNKNOWN_PERIOD: Duration = Duration::from_secs(31);
/// Heartbeat periods measured below this are taken as this.
const MIN_PERIOD: Duration = Duration::from_secs(1);
/// Gaps between heartbeats the period is measured over.
const PERIOD_SAMPLES: usize = 5;
/// How often a stopping bridge looks for tunnels that have finished their sessions.
const STOP_POLL: Duration = Duration::from_millis(50);

/// One tunnel, seen from the bridge.
struct Tunnel {
    id: u64,
    server: Arc<MuxServer>,
    drained: AtomicBool,
    /// Set once a control message arrived: the portal accepted us, so the back-off can reset.
    confirmed: AtomicBool,
    /// The control session is open (it counts as one of the server's active sessions).
    control_open: AtomicBool,
    /// When bytes last arrived on the tunnel (frames from the portal).
    heard: Arc<LastActivity>,
    track: Arc<TunnelTrack>,
    /// The tunnel's VMess nonce wear: a worn tunnel counts as drained, and a replacement is dialled.
    wear: Arc<Wear>,
}

impl Tunnel {
    fn active(&self) -> bool {
        !self.drained.load(Ordering::Relaxed) && !self.server.is_closed() && !self.wear.is_worn()
    }

    /// True when the tunnel carries nothing but its control session.
    fn idle(&self) -> bool {
        self.server.active_sessions() <= usize::from(self.control_open.load(Ordering::Relaxed))
    }
}

/// Shared state of one bridge.
struct Inner {
    tag: Arc<str>,
    domain: Arc<str>,
    tuning: ReverseTuning,
    tunnels: std::sync::Mutex<Vec<Arc<Tunnel>>>,
    /// Wakes the monitor when a tunnel dies or drains, so replacement does not wait for the next tick.
    changed: Notify,
    next_id: AtomicU64,
    track: Arc<TagTrack>,
    /// The portal's heartbeat period in ms, as measured (see [`Inner::saw_period`]); 0 until known.
    period_ms: AtomicU64,
    /// The last gaps between two control messages of one tunnel.
    gaps: std::sync::Mutex<Vec<Duration>>,
    /// Set at shutdown: new sessions from the portal are refused, live ones finish.
    stopping: AtomicBool,
    /// Set when a reload replaced this bridge: stopping it then serves every session it still gets
    /// (the portal cannot be told not to pick its tunnels) and only closes tunnels once idle.
    handing_over: AtomicBool,
}

/// The bridge service.
pub struct Bridge {
    inner: Arc<Inner>,
}

impl Bridge {
    /// Builds a bridge from its config entry.
    pub fn new(config: &BridgeConfig) -> Self {
        Bridge {
            inner: Arc::new(Inner {
                tag: Arc::from(config.tag.as_str()),
                domain: Arc::from(config.domain.as_str()),
                tuning: config.tuning,
                tunnels: std::sync::Mutex::new(Vec::new()),
                changed: Notify::new(),
                next_id: AtomicU64::new(1),
                track: TagTrack::new(Role::Bridge, &config.tag, config.tuning.heartbeat),
                period_ms: AtomicU64::new(0),
                gaps: std::sync::Mutex::new(Vec::with_capacity(PERIOD_SAMPLES)),
                stopping: AtomicBool::new(false),
                handing_over: AtomicBool::new(false),
            }),
        }
    }

    /// A handle for status reporting.
    pub fn status_handle(&self) -> BridgeStatusHandle {
        BridgeStatusHandle { inner: self.inner.clone() }
    }
}

/// Reads a running bridge's tunnels.
#[derive(Clone)]
pub struct BridgeStatusHandle {
    inner: Arc<Inner>,
}

impl BridgeStatusHandle {
    /// Reload replaced this bridge: once its service is stopped, it dials no more tunnels but keeps
    /// serving sessions on the ones it has, closing each once it is idle (at the latest at hard stop).
    pub fn hand_over(&self) {
        self.inner.handing_over.store(true, Ordering::Relaxed);
    }

    /// True while the bridge has a live tunnel.
    pub fn has_tunnel(&self) -> bool {
        self.inner.lock().iter().any(|t| !t.server.is_closed())
    }

    /// Live tunnels and their load.
    pub fn status(&self) -> BridgeStatus {
        let live: Vec<Arc<Tunnel>> = self.inner.lock().iter().filter(|t| !t.server.is_closed()).cloned().collect();
        let tunnels = live
            .iter()
            .map(|t| t.track.status(t.server.active_sessions(), 0, t.drained.load(Ordering::Relaxed)))
            .collect();
        self.inner.track.status(tunnels)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Tunnel>>> {
        // Poisoning only means a panic elsewhere mid-push; a Vec of Arcs stays consistent.
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// V2Ray's rule: count active tunnels only; add one when there is none, or when active sessions per
    /// tunnel (control sessions included) exceed the ratio. Closed tunnels are dropped; drained ones stay
    /// listed until they close, so shutdown still waits for their sessions.
    fn needs_tunnel(&self) -> bool {
        let mut tunnels = self.lock();
        tunnels.retain(|t| !t.server.is_closed());
        let active = || tunnels.iter().filter(|t| t.active());
        let n = active().count();
        let sessions: usize = active().map(|t| t.server.active_sessions()).sum();
        n == 0 || sessions / n > self.tuning.sessions_per_tunnel as usize
    }

    /// How long a tunnel may stay silent before it counts as dead: `silenceSeconds`, else three of the
    /// portal's heartbeat periods plus 1 s (7 s against V2Ray's 2 s: a lost heartbeat, or two in a row of
    /// the 1 in 64 that V2Ray leaves empty and does not send, are not mistaken for a dead link).
    fn silence_timeout(&self) -> Duration {
        if let Some(t) = self.tuning.silence {
            return t;
        }
        match self.period_ms.load(Ordering::Relaxed) {
            0 => SILENCE_UNKNOWN_PERIOD,
            ms => Duration::from_millis(ms) * 3 + Duration::from_secs(1),
        }
    }

    /// Records a gap between two control messages. The portal's period is the median of the last
    /// [`PERIOD_SAMPLES`] gaps, rounded to whole seconds (portals beat in whole seconds): one beat held
    /// up in a busy tunnel (a short gap after a long one) or one that V2Ray skipped does not move it.
    fn saw_period(&self, gap: Duration) {
        let median = {
            let mut gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
            if gaps.len() == PERIOD_SAMPLES {
                gaps.remove(0);
            }
            gaps.push(gap);
            if gaps.len() < 3 {
                return;
            }
            let mut sorted = gaps.clone();
            sorted.sort();
            sorted[sorted.len() / 2]
        };
        let secs = median.as_secs_f64().round().max(MIN_PERIOD.as_secs_f64());
        let ms = (secs * 1000.0) as u64;
        if self.period_ms.swap(ms, Ordering::Relaxed) != ms {
            info!(
                bridge = %self.tag,
                "the portal sends a heartbeat every {secs:.0}s: a tunnel silent for {:?} is taken as dead",
                self.silence_timeout()
            );
        }
    }

    async fn dial(self: &Arc<Self>, dispatcher: &Arc<Dispatcher>) -> Result<Arc<Tunnel>, crate::proxy::ProxyError> {
        let target = Destination::tcp(Address::Domain(self.domain.clone()), 0);
        let mut session = Session::new(Some(self.tag.clone()), None, target);
        let wear = Wear::new();
        session.wear = Some(wear.clone());
        // Routing picks the outbound (VMess, normally); the scope gives its socket the tunnel's options.
        let dial = TunnelDial { connect_timeout: self.tuning.connect_timeout };
        let stream = match tokio::time::timeout(DIAL_DEADLINE, dial_tunnel(dial, dispatcher.connect(session))).await {
            Ok(r) => r.inspect_err(|_| self.track.dialed(false))?,
            Err(_) => {
                self.track.dialed(false);
                return Err(crate::proxy::ProxyError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("tunnel dial timed out after {DIAL_DEADLINE:?}"),
                )));
            }
        };
        self.track.dialed(true);
        let heard = Arc::new(LastActivity::new());
        let stream: BoxStream = Box::new(HeardStream { inner: stream, heard: heard.clone() });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let track = self.track.tunnel(id, None);
        let tunnel = Arc::new_cyclic(|weak: &std::sync::Weak<Tunnel>| {
            let handler =
                Arc::new(Handler { bridge: self.clone(), dispatcher: dispatcher.clone(), tunnel: weak.clone() });
            Tunnel {
                id,
                server: MuxServer::start(stream, handler),
                drained: false.into(),
                confirmed: false.into(),
                control_open: false.into(),
                heard,
                track,
                wear,
            }
        });
        self.lock().push(tunnel.clone());
        Ok(tunnel)
    }

    /// Shutdown: new sessions are refused; each tunnel closes once it carries only its control session,
    /// and every one closes at `hard_stop`.
    async fn stop(&self, hard_stop: CancellationToken) {
        if !self.handing_over.load(Ordering::Relaxed) {
            self.stopping.store(true, Ordering::Relaxed);
        }
        loop {
            let left = {
                let mut tunnels = self.lock();
                tunnels.retain(|t| !t.server.is_closed());
                tunnels.iter().filter(|t| t.idle()).for_each(|t| t.server.close());
                tunnels.retain(|t| !t.server.is_closed());
                tunnels.len()
            };
            if left == 0 {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(STOP_POLL) => {}
                _ = hard_stop.cancelled() => {
                    let tunnels: Vec<_> = self.lock().drain(..).collect();
                    debug!(bridge = %self.tag, "grace period over: closing {} tunnel(s) with live sessions", tunnels.len());
                    tunnels.iter().for_each(|t| t.server.close());
                    return;
                }
            }
        }
    }
}

impl Service for Bridge {
    fn start(
        self: Box<Self>,
        dispatcher: Arc<Dispatcher>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
        owner: &Owner,
    ) {
        let inner = self.inner.clone();
        let (t, o, hard_stop) = (tracker.clone(), owner.clone(), owner.hard_stop().clone());
        tracker.spawn(owner.scope(async move {
            tokio::select! {
                _ = monitor(inner.clone(), dispatcher, t, o, shutdown.clone()) => {}
                _ = shutdown.cancelled() => {}
            }
            inner.stop(hard_stop).await;
        }));
    }
}

/// Keeps enough tunnels up: checks every heartbeat period (V2Ray: 2 s) and at once when a tunnel dies or
/// drains. Dials run in their own task, one at a time, so a dial stuck on a black-holed portal never
/// holds up the monitor. Failed dials, and tunnels that die before the portal's first control message
/// (rejected or misrouted), back off exponentially with jitter; a confirmed tunnel resets the back-off.
async fn monitor(
    inner: Arc<Inner>,
    dispatcher: Arc<Dispatcher>,
    tracker: TaskTracker,
    owner: Owner,
    shutdown: CancellationToken,
) {
    let (died_tx, mut died_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let (dialed_tx, mut dialed_rx) = tokio::sync::mpsc::channel(1);
    let mut dialing = false;
    let mut backoff = Duration::ZERO;
    let mut not_before = tokio::time::Instant::now();
    let mut failures = 0u32;
    loop {
        let changed = inner.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if inner.lock().iter().any(|t| t.active() && t.confirmed.load(Ordering::Relaxed)) {
            backoff = Duration::ZERO;
            failures = 0;
        }
        let now = tokio::time::Instant::now();
        if !dialing && now >= not_before && inner.needs_tunnel() {
            dialing = true;
            let (inner, dispatcher, tx, stop) =
                (inner.clone(), dispatcher.clone(), dialed_tx.clone(), shutdown.clone());
            tracker.spawn(owner.scope(async move {
                tokio::select! {
                    r = inner.dial(&dispatcher) => { let _ = tx.send(r).await; }
                    _ = stop.cancelled() => {}
                }
            }));
        }
        let wait = if now < not_before { not_before - now } else { inner.tuning.heartbeat };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed => {}
            Some(r) = dialed_rx.recv() => {
                dialing = false;
                match r {
                    Ok(tunnel) => {
                        info!(bridge = %inner.tag, tunnel = tunnel.id, "tunnel up");
                        tracker.spawn(owner.scope(watch(inner.clone(), tunnel, died_tx.clone())));
                    }
                    Err(e) => {
                        failures += 1;
                        backoff = next_backoff(backoff);
                        not_before = tokio::time::Instant::now() + jitter(backoff);
                        if failures == 1 || failures.is_multiple_of(10) {
                            warn!(bridge = %inner.tag, "cannot reach the portal ({failures} tries so far): {e}");
                        } else {
                            debug!(bridge = %inner.tag, "dial failed: {e}");
                        }
                    }
                }
            }
            Some(confirmed) = died_rx.recv() => {
                if confirmed {
                    backoff = Duration::ZERO;
                } else {
                    failures += 1;
                    backoff = next_backoff(backoff);
                    not_before = tokio::time::Instant::now() + jitter(backoff);
                    if failures == 1 || failures.is_multiple_of(10) {
                        warn!(
                            bridge = %inner.tag,
                            "the far end closed the tunnel before any heartbeat ({failures} times so far): check \
                             the VMess id and the portal's routing of domain {} to its portal tag",
                            inner.domain
                        );
                    }
                }
            }
        }
    }
}

/// Watches one tunnel until it ends: warns when no heartbeat confirms it, and closes it when nothing
/// has come from the portal for the silence timeout (a link that died without FIN or RST), so the
/// monitor dials a replacement. A drained tunnel gets no more heartbeats and is left to its sessions
/// (TCP keepalive and `TCP_USER_TIMEOUT` still end it if the link dies).
async fn watch(inner: Arc<Inner>, tunnel: Arc<Tunnel>, died: tokio::sync::mpsc::UnboundedSender<bool>) {
    // A portal sends its first heartbeat at once; silence means the tunnel does not reach a portal
    // (routing on the portal side, or not a portal at all).
    let patience = inner.tuning.heartbeat * 3;
    let confirm_by = tokio::time::Instant::now() + patience;
    let mut warned = false;
    let mut worn_seen = false;
    let worn = tunnel.wear.worn();
    tokio::pin!(worn);
    loop {
        let silence = inner.silence_timeout();
        let dead_at = tunnel.heard.last() + silence;
        // Looks again at least every monitor period: the timeout shrinks once the period is measured.
        let recheck = tokio::time::Instant::now() + inner.tuning.heartbeat;
        let wake = if warned || tunnel.confirmed.load(Ordering::Relaxed) { dead_at } else { dead_at.min(confirm_by) };
        let wake = wake.min(recheck);
        tokio::select! {
            _ = tunnel.server.closed() => break,
            _ = tokio::time::sleep_until(wake) => {}
            // A worn tunnel no longer counts as active: the monitor dials its replacement now.
            _ = &mut worn, if !worn_seen => {
                worn_seen = true;
                inner.changed.notify_waiters();
            }
        }
        let now = tokio::time::Instant::now();
        if !warned && !tunnel.confirmed.load(Ordering::Relaxed) && now >= confirm_by {
            warned = true;
            warn!(
                bridge = %inner.tag,
                tunnel = tunnel.id,
                "no heartbeat from the portal after {patience:?}: does the portal route this connection (domain {}) \
                 to its portal tag?",
                inner.domain
            );
        }
        if tunnel.drained.load(Ordering::Relaxed) {
            tunnel.server.closed().await;
            break;
        }
        if now >= tunnel.heard.last() + inner.silence_timeout() && !tunnel.confirmed.load(Ordering::Relaxed) {
            // Never a heartbeat (warned above): not a portal's tunnel; dial again, backing off.
            debug!(bridge = %inner.tag, tunnel = tunnel.id, "closing a tunnel that never got a heartbeat");
            tunnel.server.close();
            break;
        }
        if now >= tunnel.heard.last() + inner.silence_timeout() {
            warn!(
                bridge = %inner.tag,
                tunnel = tunnel.id,
                "nothing from the portal for {:?}: the link is dead; closing the tunnel and dialling a new one",
                now - tunnel.heard.last()
            );
            tunnel.server.close();
            break;
        }
    }
    let drained = tunnel.drained.load(Ordering::Relaxed);
    let reason = match (drained, tunnel.confirmed.load(Ordering::Relaxed)) {
        (true, _) => "drained by the portal and ended",
        (false, true) => "connection ended",
        (false, false) => "ended before any heartbeat",
    };
    let st = tunnel.track.closed(0, drained, reason);
    info!(
        bridge = %inner.tag,
        tunnel = tunnel.id,
        up = st.uplink,
        down = st.downlink,
        age_s = st.age.as_secs(),
        "tunnel closed: {reason}"
    );
    let _ = died.send(tunnel.confirmed.load(Ordering::Relaxed));
}

/// The tunnel's stream, noting every read that brings bytes (frames from the portal).
struct HeardStream {
    inner: BoxStream,
    heard: Arc<LastActivity>,
}

impl AsyncRead for HeardStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.heard.touch(tokio::time::Instant::now());
        }
        r
    }
}

impl AsyncWrite for HeardStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn next_backoff(b: Duration) -> Duration {
    if b.is_zero() { FIRST_BACKOFF } else { (b * 2).min(MAX_BACKOFF) }
}

/// ±20 % jitter so many bridges that lost the same portal do not re-dial in lockstep.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if aws_lc_rs::rand::fill(&mut b).is_ok() { u16::from_le_bytes(b) } else { 32768 };
    let factor = 0.8 + 0.4 * (f64::from(r) / f64::from(u16::MAX));
    d.mul_f64(factor)
}

/// Handles the sessions the portal opens on one tunnel.
struct Handler {
    bridge: Arc<Inner>,
    dispatcher: Arc<Dispatcher>,
    tunnel: std::sync::Weak<Tunnel>,
}

impl Handler {
    fn session(&self, target: Destination) -> Session {
        // Every flow leaving the bridge carries the bridge tag; routing tells tunnel dials from relayed
        // sessions by destination.
        Session::new(Some(self.bridge.tag.clone()), None, target)
    }
}

#[async_trait]
impl MuxHandler for Handler {
    async fn stream(&self, target: Destination, stream: MuxStream) {
        if self.bridge.stopping.load(Ordering::Relaxed) {
            // Shutting down: the session ends at once (dropping the stream sends End).
            return;
        }
        // On the heap until the outbound takes it: a session held inline here would stay in this
        // session's task for its whole life.
        let mut session = Box::new(self.session(target));
        session.carrier = Some(stream.carrier_hold());
        self.dispatcher.assign_id(&mut session);
        let guard = self.tunnel.upgrade().map(|t| t.track.open(&mut session));
        let outcome = self.dispatcher.dispatch_sub_outcome(session, Box::new(stream)).await;
        if let Some(g) = guard {
            g.finish(outcome.as_ref().map_or_else(|e| e.as_str(), |_| "done"));
        }
    }

    async fn packet(&self, target: Destination, packet: MuxPacket) {
        if is_internal_domain(&target) {
            let open = self.tunnel.upgrade();
            open.iter().for_each(|t| t.control_open.store(true, Ordering::Relaxed));
            self.control(packet).await;
            open.iter().for_each(|t| t.control_open.store(false, Ordering::Relaxed));
            return;
        }
        if self.bridge.stopping.load(Ordering::Relaxed) {
            return;
        }
        let session = self.session(target);
        match self.dispatcher.connect_packet(session).await {
            Ok(upstream) => relay_packets(&packet, upstream.as_ref(), self.dispatcher.policy(0).downlink_only).await,
            Err(e) => debug!(bridge = %self.bridge.tag, "udp session refused: {e}"),
        }
    }
}

impl Handler {
    /// Reads Control messages; the bridge never writes on the control session.
    async fn control(&self, packet: MuxPacket) {
        let mut last: Option<tokio::time::Instant> = None;
        while let Ok(Some(msg)) = packet.recv().await {
            let Some(tunnel) = self.tunnel.upgrade() else { return };
            match Control::decode(&msg) {
                Ok(c) => {
                    tunnel.confirmed.store(true, Ordering::Relaxed);
                    tunnel.track.heartbeat_received();
                    let now = tokio::time::Instant::now();
                    if let Some(prev) = last.replace(now) {
                        self.bridge.saw_period(now - prev);
                    }
                    if c.state == ControlState::Drain {
                        self.bridge.track.drained("portal_request");
                        info!(bridge = %self.bridge.tag, tunnel = tunnel.id, "portal drained the tunnel");
                        tunnel.drained.store(true, Ordering::Relaxed);
                        self.bridge.changed.notify_one();
                    }
                }
                Err(e) => debug!(bridge = %self.bridge.tag, "skipping a bad control message: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(silence: Option<Duration>) -> Bridge {
        let tuning = ReverseTuning { silence, ..ReverseTuning::default() };
        Bridge::new(&BridgeConfig { tag: "b".into(), domain: "d".into(), tuning })
    }

    #[test]
    fn silence_timeout_follows_the_measured_period() {
        let b = bridge(None);
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(b.inner.silence_timeout(), SILENCE_UNKNOWN_PERIOD, "unknown period");
        // A beat held up in a busy tunnel (2.6 s, then 1.4 s) and a beat V2Ray skipped (4 s) do not
        // move the period off 2 s.
        for gap in [2000, 2600, 1400, 4000, 2000, 1990] {
            b.inner.saw_period(ms(gap));
        }
        assert_eq!(b.inner.silence_timeout(), Duration::from_secs(7));
        // A portal that beats every 10 s (Xray).
        for _ in 0..PERIOD_SAMPLES {
            b.inner.saw_period(ms(10_050));
        }
        assert_eq!(b.inner.silence_timeout(), Duration::from_secs(31));
        assert_eq!(bridge(Some(Duration::from_secs(9))).inner.silence_timeout(), Duration::from_secs(9));
    }
}
