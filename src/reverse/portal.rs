//! The portal: an outbound that turns bridge connections into tunnels (it is the Mux client on them) and
//! sends every other flow into the least-loaded live tunnel as a new Mux session.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::{PortalConfig, ReverseTuning};
use crate::mux::client::{MuxClient, MuxClientConfig};
use crate::proxy::{BoxPacketConn, BoxStream, Outbound, PacketConn, ProxyError, RelayStats, relay_session};
use crate::reverse::control::{Control, ControlState};
use crate::reverse::status::{PortalStatus, Role};
use crate::reverse::track::{TagTrack, TunnelTrack};
use crate::session::{Address, Destination, Session};

/// V2Ray closes a portal tunnel once it has been idle (no sessions) at a 16 s tick.
const TUNNEL_IDLE_CLOSE: Duration = Duration::from_secs(16);
/// How long a public flow waits for a tunnel when none is up (V2Ray refuses at once; a short wait turns a
/// bridge reconnect into a slow first byte instead of a reset).
const WAIT_FOR_TUNNEL: Duration = Duration::from_secs(2);
/// V2Ray retries a failed pick this many times.
const PICK_ATTEMPTS: usize = 16;

/// One bridge connection, seen from the portal.
struct Tunnel {
    id: u64,
    client: Arc<MuxClient>,
    draining: AtomicBool,
    track: Arc<TunnelTrack>,
    /// The control session is open (it counts as one of the client's active sessions).
    control_open: AtomicBool,
}

impl Tunnel {
    /// True when the tunnel carries nothing but its control session.
    fn idle(&self) -> bool {
        self.client.active_sessions() <= usize::from(self.control_open.load(Ordering::Relaxed))
    }
}

/// The portal outbound (registered under the portal's tag).
pub struct Portal {
    tag: String,
    domain: String,
    internal_domain: Arc<str>,
    tuning: ReverseTuning,
    tunnels: std::sync::Mutex<Vec<Arc<Tunnel>>>,
    tunnel_added: Notify,
    next_tunnel: AtomicU64,
    track: Arc<TagTrack>,
    /// Set when a reload replaced or removed this portal: every tunnel is sent DRAIN at once.
    retired: tokio_util::sync::CancellationToken,
}

impl Portal {
    /// Builds a portal from its config entry.
    pub fn new(config: &PortalConfig) -> Self {
        Portal {
            tag: config.tag.clone(),
            domain: config.domain.clone(),
            internal_domain: Arc::from(config.internal_domain.as_str()),
            tuning: config.tuning,
            tunnels: std::sync::Mutex::new(Vec::new()),
            tunnel_added: Notify::new(),
            next_tunnel: AtomicU64::new(1),
            track: TagTrack::new(Role::Portal, &config.tag, config.tuning.heartbeat),
            retired: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// The portal's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Reload replaced or removed this portal: each tunnel is sent DRAIN now (its bridge dials a new
    /// one, which reaches the new config's portal) and carries its live sessions to their end.
    pub fn retire(&self) {
        self.retired.cancel();
    }

    /// True while a tunnel is up.
    pub fn has_tunnels(&self) -> bool {
        self.lock().iter().any(|t| !t.client.is_closed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Tunnel>>> {
        // A poisoned lock only means another task panicked mid-update of a Vec of Arcs; the data is still valid.
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live tunnels and their load, for status reporting.
    pub fn status(&self) -> PortalStatus {
        let live: Vec<Arc<Tunnel>> = self.lock().iter().filter(|t| !t.client.is_closed()).cloned().collect();
        let tunnels = live
            .iter()
            .map(|t| {
                t.track.status(
                    t.client.active_sessions(),
                    t.client.total_sessions(),
                    t.draining.load(Ordering::Relaxed),
                )
            })
            .collect();
        self.track.status(tunnels)
    }

    /// Closes every tunnel that carries nothing but its control session (used while shutting down, so
    /// idle tunnels do not hold the grace period open).
    pub fn close_idle_tunnels(&self) {
        for t in self.lock().iter().filter(|t| t.idle()) {
            t.client.close();
        }
    }

    /// V2Ray's picker, minus its bug: closed tunnels are dropped at once instead of winning every pick
    /// (they have 0 sessions) until a 30 s cleanup. Least active sessions among non-draining tunnels;
    /// if all drain, least among those not full. Ties go to the newest tunnel (V2Ray: the oldest): a
    /// bridge that found its tunnel dead has dialled a new one, and the dead one, whose link the portal
    /// cannot see die before TCP gives up, must not keep winning. A tunnel worn by nonce use comes last:
    /// it still has a quarter of its nonces, and a V2Ray bridge dials its replacement only at its next
    /// 2 s tick after DRAIN, so refusing visitors meanwhile would turn a routine rotation into resets.
    fn pick(&self) -> Option<Arc<Tunnel>> {
        let mut tunnels = self.lock();
        tunnels.retain(|t| !t.client.is_closed());
        // Fresh, then session-drained, then worn; fewest sessions within a rank. `min_by_key` keeps the
        // first of equals, which `rev` makes the newest.
        let rank = |t: &Tunnel| match (t.client.is_worn(), t.draining.load(Ordering::Relaxed)) {
            (true, _) => 2u8,
            (false, true) => 1,
            (false, false) => 0,
        };
        tunnels
            .iter()
            .rev()
            .filter(|t| !t.client.is_full())
            .min_by_key(|t| (rank(t), t.client.active_sessions()))
            .cloned()
    }

    async fn pick_or_wait(&self) -> Result<Arc<Tunnel>, ProxyError> {
        if let Some(t) = self.pick() {
            return Ok(t);
        }
        let deadline = tokio::time::Instant::now() + WAIT_FOR_TUNNEL;
        loop {
            let added = self.tunnel_added.notified();
            if let Some(t) = self.pick() {
                return Ok(t);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return self.pick().ok_or_else(|| {
                    ProxyError::Refused(format!("portal {}: no bridge connected (empty worker list)", self.tag))
                });
            }
        }
    }

    /// Registers a bridge connection as a tunnel and serves it until it ends.
    async fn serve_tunnel(&self, session: &Session, stream: BoxStream) {
        // Keepalive and TCP_USER_TIMEOUT of a tunnel on the bridge's connection: heartbeats that stay
        // unacknowledged end it, and the picker drops it, even with a bridge that never answers.
        if !crate::transport::tune_carrier_as_tunnel() {
            debug!(portal = %self.tag, "tunnel not on a TCP connection of its own: no tunnel socket options");
        }
        let client = MuxClient::new(
            stream,
            MuxClientConfig {
                max_concurrency: None,
                max_total: None,
                idle_close: Some(TUNNEL_IDLE_CLOSE),
                // Set by the VMess inbound: a worn tunnel is picked last, and is drained below.
                wear: session.wear.clone(),
            },
        );
        let id = self.next_tunnel.fetch_add(1, Ordering::Relaxed);
        let track = self.track.tunnel(id, session.source);
        let tunnel = Arc::new(Tunnel { id, client, draining: false.into(), control_open: true.into(), track });
        let from = session.source.map(|s| s.to_string()).unwrap_or_default();
        let control_target = Destination::udp(Address::Domain(self.internal_domain.clone()), 0);
        let control = match tunnel.client.open_packet(control_target) {
            Ok(c) => c,
            Err(e) => {
                warn!(portal = %self.tag, "tunnel from {from}: cannot open the control session: {e}");
                tunnel.client.close();
                return;
            }
        };
        self.lock().push(tunnel.clone());
        self.tunnel_added.notify_waiters();
        info!(portal = %self.tag, tunnel = tunnel.id, "bridge connected from {from}");
        tokio::select! {
            _ = self.heartbeat(&tunnel, control) => {
                tunnel.control_open.store(false, Ordering::Relaxed);
                tunnel.client.closed().await
            }
            _ = tunnel.client.closed() => {}
        }
        self.lock().retain(|t| !Arc::ptr_eq(t, &tunnel));
        let draining = tunnel.draining.load(Ordering::Relaxed);
        let reason = if draining { "drained and ended" } else { "connection ended" };
        let st = tunnel.track.closed(tunnel.client.total_sessions(), draining, reason);
        info!(
            portal = %self.tag,
            tunnel = tunnel.id,
            sessions = tunnel.client.total_sessions(),
            up = st.uplink,
            down = st.downlink,
            age_s = st.age.as_secs(),
            "tunnel closed: {reason}"
        );
    }

    /// Heartbeat at once and every period; DRAIN once the tunnel has carried more than `drain_after`
    /// sessions (the control session included, as V2Ray counts), then close the control session. Wear
    /// and retirement drain at once, not at the next beat: the bridge's replacement comes that much sooner.
    async fn heartbeat(&self, tunnel: &Tunnel, control: crate::mux::MuxPacket) {
        let mut tick = tokio::time::interval(self.tuning.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = Vec::with_capacity(80);
        let mut worn_seen = false;
        let worn = tunnel.client.worn();
        tokio::pin!(worn);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.retired.cancelled() => {}
                _ = &mut worn, if !worn_seen => worn_seen = true,
            }
            let worn = tunnel.client.is_worn();
            let retired = self.retired.is_cancelled();
            let drain = retired || worn || tunnel.client.total_sessions() > self.tuning.drain_after;
            let state = if drain { ControlState::Drain } else { ControlState::Active };
            buf.clear();
            let mut beat = Control::heartbeat(state);
            if beat.random.is_empty() {
                // An empty ACTIVE message encodes to nothing and would not be sent (V2Ray skips 1 beat in
                // 64 so): a bridge that times out silence must see every beat.
                beat.random.push(0);
            }
            beat.encode(&mut buf);
            if control.send(bytes::Bytes::copy_from_slice(&buf)).await.is_err() {
                return;
            }
            tunnel.track.heartbeat_sent();
            if drain {
                tunnel.draining.store(true, Ordering::Relaxed);
                let (reason, why) = match (retired, worn) {
                    (true, _) => ("reload", "the config was reloaded"),
                    (_, true) => ("nonce_wear", "most of its VMess nonces used"),
                    _ => ("session_limit", "session count"),
                };
                self.track.drained(reason);
                info!(portal = %self.tag, tunnel = tunnel.id, sessions = tunnel.client.total_sessions(), "tunnel drained ({why})");
                // A clean End, as V2Ray sends: a dropped session would end with the Error bit, and the
                // bridge would discard the DRAIN still in its buffer.
                control.close();
                return;
            }
        }
    }

    async fn open(&self, session: &Session) -> Result<(Arc<Tunnel>, BoxStream), ProxyError> {
        let mut last = None;
        for _ in 0..PICK_ATTEMPTS {
            let tunnel = self.pick_or_wait().await?;
            match tunnel.client.open_stream(session.target.clone()) {
                Ok(s) => {
                    debug!(portal = %self.tag, tunnel = tunnel.id, target = %session.target, "session opened");
                    return Ok((tunnel, Box::new(s)));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(ProxyError::Refused(format!(
            "portal {}: unable to open a session: {}",
            self.tag,
            last.map_or_else(|| "no tunnel".to_string(), |e| e.to_string())
        )))
    }
}

#[async_trait]
impl Outbound for Portal {
    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError> {
        Ok(self.open(session).await?.1)
    }

    // `async_trait`'s expansion written out: its `async fn` would hold the session twice in the
    // future (once as captured, once as its local), and every visitor session keeps this future for
    // its whole life. Here the block uses the captured session itself.
    fn handle<'life0, 'async_trait>(
        &'life0 self,
        mut session: Session,
        stream: BoxStream,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<RelayStats, ProxyError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if session.target.address.domain() == Some(self.domain.as_str()) {
                // Boxed: the tunnel's state machine (heartbeats, tracking) would otherwise size every
                // visitor session's future, which is the only kind held by the thousand.
                Box::pin(self.serve_tunnel(&session, stream)).await;
                return Ok(RelayStats::default());
            }
            let (tunnel, upstream) = self.open(&session).await?;
            session.carrier = Some(tunnel.client.carrier_hold());
            let guard = tunnel.track.open(&mut session);
            crate::mux::bypass_relay(&mut session, &stream, &upstream);
            let result = relay_session(stream, upstream, &session).await;
            match &result {
                Ok(_) => guard.finish("done"),
                Err(e) => guard.finish(&e.to_string()),
            }
            Ok(result?)
        })
    }

    async fn connect_packet(&self, session: &Session) -> Result<BoxPacketConn, ProxyError> {
        for _ in 0..PICK_ATTEMPTS {
            let tunnel = self.pick_or_wait().await?;
            if let Ok(p) = tunnel.client.open_packet(session.target.clone()) {
                return Ok(Box::new(p));
            }
        }
        Err(ProxyError::Refused(format!("portal {}: unable to open a packet session", self.tag)))
    }
}
