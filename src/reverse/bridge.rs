//! The bridge: dials tunnels out to the portal through its own routing, serves Mux.Cool on each, and
//! dispatches every session it receives with its tag as inbound tag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{BridgeConfig, ReverseTuning};
use crate::dispatch::Dispatcher;
use crate::instance::Service;
use crate::mux::server::{MuxHandler, MuxServer};
use crate::mux::{MuxPacket, MuxStream};
use crate::proxy::{PacketConn, relay_packets};
use crate::reverse::control::{Control, ControlState};
use crate::reverse::is_internal_domain;
use crate::reverse::status::{BridgeStatus, Role};
use crate::reverse::track::{TagTrack, TunnelTrack};
use crate::session::{Address, Destination, Session, Wear};

/// First re-dial after a failure comes fast; later ones double up to [`MAX_BACKOFF`] (V2Ray: fixed 2 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// A dead portal is dialled at most about this often.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One tunnel, seen from the bridge.
struct Tunnel {
    id: u64,
    server: Arc<MuxServer>,
    drained: AtomicBool,
    /// Set once a control message arrived: the portal accepted us, so the back-off can reset.
    confirmed: AtomicBool,
    track: Arc<TunnelTrack>,
    /// The tunnel's VMess nonce wear: a worn tunnel counts as drained, and a replacement is dialled.
    wear: Arc<Wear>,
}

impl Tunnel {
    fn active(&self) -> bool {
        !self.drained.load(Ordering::Relaxed) && !self.server.is_closed() && !self.wear.is_worn()
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

    /// V2Ray's rule: drop inactive tunnels; add one when there is none, or when active sessions per
    /// tunnel (control sessions included) exceed the ratio.
    fn needs_tunnel(&self) -> bool {
        let mut tunnels = self.lock();
        tunnels.retain(|t| t.active());
        let n = tunnels.len();
        let sessions: usize = tunnels.iter().map(|t| t.server.active_sessions()).sum();
        n == 0 || sessions / n > self.tuning.sessions_per_tunnel as usize
    }

    async fn dial(self: &Arc<Self>, dispatcher: &Arc<Dispatcher>) -> Result<Arc<Tunnel>, crate::proxy::ProxyError> {
        let target = Destination::tcp(Address::Domain(self.domain.clone()), 0);
        let mut session = Session::new(Some(self.tag.clone()), None, target);
        let wear = Wear::new();
        session.wear = Some(wear.clone());
        let stream = dispatcher.connect(session).await.inspect_err(|_| self.track.dialed(false))?;
        self.track.dialed(true);
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
                track,
                wear,
            }
        });
        self.lock().push(tunnel.clone());
        Ok(tunnel)
    }
}

impl Service for Bridge {
    fn start(self: Box<Self>, dispatcher: Arc<Dispatcher>, tracker: &TaskTracker, shutdown: CancellationToken) {
        let inner = self.inner.clone();
        let t = tracker.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = monitor(inner.clone(), dispatcher, t) => {}
                _ = shutdown.cancelled() => {}
            }
            for tunnel in inner.lock().drain(..) {
                tunnel.server.close();
            }
        });
    }
}

/// Keeps enough tunnels up: checks every heartbeat period (V2Ray: 2 s) and at once when a tunnel dies or
/// drains. Failed dials, and tunnels that die before the portal's first control message (rejected or
/// misrouted), back off exponentially with jitter; a confirmed tunnel resets the back-off.
async fn monitor(inner: Arc<Inner>, dispatcher: Arc<Dispatcher>, tracker: TaskTracker) {
    let (died_tx, mut died_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let mut backoff = Duration::ZERO;
    let mut failures = 0u32;
    loop {
        let changed = inner.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if inner.lock().iter().any(|t| t.active() && t.confirmed.load(Ordering::Relaxed)) {
            backoff = Duration::ZERO;
            failures = 0;
        }
        if inner.needs_tunnel() {
            match inner.dial(&dispatcher).await {
                Ok(tunnel) => {
                    info!(bridge = %inner.tag, tunnel = tunnel.id, "tunnel up");
                    let (watch_inner, died) = (inner.clone(), died_tx.clone());
                    tracker.spawn(async move {
                        // A portal sends its first heartbeat at once; silence means the tunnel does not
                        // reach a portal (routing on the portal side, or not a portal at all).
                        let patience = watch_inner.tuning.heartbeat * 3;
                        if tokio::time::timeout(patience, tunnel.server.closed()).await.is_err() {
                            if !tunnel.confirmed.load(Ordering::Relaxed) {
                                warn!(
                                    bridge = %watch_inner.tag,
                                    tunnel = tunnel.id,
                                    "no heartbeat from the portal after {patience:?}: does the portal route this \
                                     connection (domain {}) to its portal tag?",
                                    watch_inner.domain
                                );
                            }
                            tunnel.server.closed().await;
                        }
                        let drained = tunnel.drained.load(Ordering::Relaxed);
                        let reason = match (drained, tunnel.confirmed.load(Ordering::Relaxed)) {
                            (true, _) => "drained by the portal and ended",
                            (false, true) => "connection ended",
                            (false, false) => "ended before any heartbeat",
                        };
                        let st = tunnel.track.closed(0, drained, reason);
                        info!(
                            bridge = %watch_inner.tag,
                            tunnel = tunnel.id,
                            up = st.uplink,
                            down = st.downlink,
                            age_s = st.age.as_secs(),
                            "tunnel closed: {reason}"
                        );
                        let _ = died.send(tunnel.confirmed.load(Ordering::Relaxed));
                    });
                }
                Err(e) => {
                    failures += 1;
                    backoff = next_backoff(backoff);
                    if failures == 1 || failures.is_multiple_of(10) {
                        warn!(bridge = %inner.tag, "cannot reach the portal ({failures} tries so far): {e}");
                    } else {
                        debug!(bridge = %inner.tag, "dial failed: {e}");
                    }
                }
            }
        }
        let wait = if backoff.is_zero() { inner.tuning.heartbeat } else { jitter(backoff) };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed => {}
            Some(confirmed) = died_rx.recv() => {
                if confirmed {
                    backoff = Duration::ZERO;
                } else {
                    failures += 1;
                    backoff = next_backoff(backoff);
                    if failures == 1 || failures.is_multiple_of(10) {
                        warn!(
                            bridge = %inner.tag,
                            "the far end closed the tunnel before any heartbeat ({failures} times so far): check \
                             the VMess id and the portal's routing of domain {} to its portal tag",
                            inner.domain
                        );
                    }
                    tokio::time::sleep(jitter(backoff)).await;
                }
            }
        }
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
        let mut session = self.session(target);
        self.dispatcher.assign_id(&mut session);
        let guard = self.tunnel.upgrade().map(|t| t.track.open(&mut session));
        let outcome = self.dispatcher.dispatch_sub_outcome(session, Box::new(stream)).await;
        if let Some(g) = guard {
            g.finish(outcome.as_ref().map_or_else(|e| e.as_str(), |_| "done"));
        }
    }

    async fn packet(&self, target: Destination, packet: MuxPacket) {
        if is_internal_domain(&target) {
            self.control(packet).await;
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
        while let Ok(Some(msg)) = packet.recv().await {
            let Some(tunnel) = self.tunnel.upgrade() else { return };
            match Control::decode(&msg) {
                Ok(c) => {
                    tunnel.confirmed.store(true, Ordering::Relaxed);
                    tunnel.track.heartbeat_received();
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
