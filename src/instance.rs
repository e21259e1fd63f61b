//! An `Instance` owns everything a config describes: inbounds, outbounds, router, reverse; it starts
//! them and shuts them down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::{Config, Fingerprint, InboundConfig, InboundProtocol, OpsConfig, OutboundConfig, OutboundProtocol};
use crate::dispatch::Dispatcher;
use crate::dns::Resolver;
use crate::log::AccessLog;
use crate::ops::traffic::Traffic;
use crate::ops::{LiveSource, OpsServer, ReloadAnswer, Source as OpsSource};
use crate::proxy::blackhole::Blackhole;
use crate::proxy::dns::DnsOutbound;
use crate::proxy::dokodemo::Dokodemo;
use crate::proxy::freedom::Freedom;
use crate::proxy::http::{HttpInbound, HttpOutbound};
use crate::proxy::muxed::Muxed;
use crate::proxy::shadowsocks::{ShadowsocksInbound, ShadowsocksOutbound};
use crate::proxy::socks::{SocksInbound, SocksOutbound};
use crate::proxy::trojan::{TrojanInbound, TrojanOutbound};
use crate::proxy::vless::{VlessInbound, VlessOutbound};
use crate::proxy::vmess::{VmessInbound, VmessOutbound};
use crate::proxy::{Inbound, Outbound};
use crate::reverse::bridge::{Bridge, BridgeStatusHandle};
use crate::reverse::portal::Portal;
use crate::reverse::status::{BridgeStatus, PortalStatus};
use crate::router::Router;
use crate::task::Owner;
use crate::transport::{Incoming, Listener, StreamSettings};

/// Why an instance could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Routing rules did not compile.
    #[error("routing: {0}")]
    Router(#[from] crate::router::RouterError),
    /// A handler could not be built from its (validated) settings.
    #[error("{path}: {message}")]
    Handler {
        /// JSON path of the handler.
        path: String,
        /// What failed.
        message: String,
    },
    /// A listener could not be opened.
    #[error("{path}: cannot listen on {addr}: {source}")]
    Listen {
        /// JSON path of the inbound.
        path: String,
        /// Address it tried.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

struct InboundEntry {
    path: String,
    tag: Option<String>,
    addrs: Vec<SocketAddr>,
    stream: StreamSettings,
    handler: Arc<dyn Inbound>,
    /// What reload compares it by (empty until [`Instance::with_fingerprint`]).
    fingerprint: String,
}

/// A configured outbound (portals are kept apart), with what reload compares it by.
struct OutboundEntry {
    tag: Option<String>,
    fingerprint: String,
    handler: Arc<dyn Outbound>,
}

/// A built, not yet started instance.
pub struct Instance {
    dispatcher: Arc<Dispatcher>,
    inbounds: Vec<InboundEntry>,
    services: Vec<Box<dyn Service>>,
    portals: Vec<Arc<Portal>>,
    bridges: Vec<BridgeStatusHandle>,
    ops: Option<OpsConfig>,
    /// Reload state: the outbounds, the bridges (started apart from `services`, each stoppable on its
    /// own), the resolver routing keeps, and the config's fingerprint.
    outbounds: Vec<OutboundEntry>,
    bridge_services: Vec<(String, Bridge)>,
    resolver: Option<Arc<Resolver>>,
    fingerprint: Fingerprint,
    /// The stats API's outbound (a restart section): kept across reloads.
    api: Option<(Option<String>, Arc<dyn Outbound>)>,
}

/// A long-running part of an instance that is neither an inbound nor an outbound (a reverse bridge).
pub trait Service: Send + 'static {
    /// Starts the service. Tasks go on `tracker`, run inside `owner`'s scope (so what they spawn is
    /// owned too). When `shutdown` is cancelled it takes no new work and lets live sessions finish; when
    /// `owner.hard_stop()` is cancelled (the grace period is over) it ends them.
    fn start(
        self: Box<Self>,
        dispatcher: Arc<Dispatcher>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
        owner: &Owner,
    );
}

impl Instance {
    /// Builds every handler from a validated config, with no access log. Nothing is opened yet.
    pub fn new(config: &Config) -> Result<Instance, InstanceError> {
        Self::with_access_log(config, AccessLog::default())
    }

    /// Like [`Instance::new`], writing a line per routed flow to `access` (see [`crate::log::init`]).
    pub fn with_access_log(config: &Config, access: AccessLog) -> Result<Instance, InstanceError> {
        // The `dns` object's resolver serves routing, freedom and the dns outbound; the dns outbound
        // falls back to the system resolver without one (4.34).
        let resolver = match &config.dns {
            Some(d) => Some(Arc::new(
                Resolver::new(d).map_err(|e| InstanceError::Handler { path: e.path, message: e.message })?,
            )),
            None => None,
        };
        let router = Router::new(&config.routing)?.with_resolver(resolver.clone());
        let mut outbounds = Vec::new();
        for ob in &config.outbounds {
            let handler = build_outbound(ob, config, &resolver);
            outbounds.push(OutboundEntry { tag: ob.tag.clone(), fingerprint: String::new(), handler });
        }
        let mut ordered: Vec<(Option<String>, Arc<dyn Outbound>)> =
            outbounds.iter().map(|o| (o.tag.clone(), o.handler.clone())).collect();
        // Portals register after the configured outbounds, so one is the default only when there are none.
        let mut portals = Vec::new();
        for p in &config.reverse.portals {
            let portal = Arc::new(Portal::new(p));
            portals.push(portal.clone());
            ordered.push((Some(p.tag.clone()), portal));
        }
        // Every configured tag has counters from the start (the ops listener reports them at 0).
        let traffic = Arc::new(
            Traffic::new(
                config
                    .inbounds
                    .iter()
                    .filter_map(|i| i.tag.as_deref())
                    .chain(config.reverse.bridges.iter().map(|b| b.tag.as_str())),
                ordered.iter().filter_map(|(t, _)| t.as_deref()),
            )
            .with_user_counters(config.stats),
        );
        // After the counters: the API's own tag has none (4.34).
        let api = crate::stats::api_outbound(config, &traffic);
        ordered.extend(api.clone());
        let metering = config.ops.is_some() || config.stats;
        let dispatcher =
            Arc::new(Dispatcher::new(router, ordered, config.policy.clone(), access).with_traffic(traffic, metering));
        if let Some(r) = &resolver {
            let up: Arc<dyn crate::dns::Upstream> = dispatcher.clone();
            r.set_upstream(Arc::downgrade(&up));
        }

        let mut inbounds = Vec::new();
        for ib in &config.inbounds {
            inbounds.push(build_inbound(ib)?);
        }
        let services: Vec<Box<dyn Service>> = Vec::new();
        let mut bridges = Vec::new();
        let mut bridge_services = Vec::new();
        for b in &config.reverse.bridges {
            let bridge = Bridge::new(b);
            bridges.push(bridge.status_handle());
            bridge_services.push((b.tag.clone(), bridge));
        }
        Ok(Instance {
            dispatcher,
            inbounds,
            services,
            portals,
            bridges,
            ops: config.ops.clone(),
            outbounds,
            bridge_services,
            resolver,
            fingerprint: Fingerprint::default(),
            api,
        })
    }

    /// Remembers what the config was loaded as ([`crate::config::load_files_fingerprinted`]), so a
    /// reload replaces only what changed. Without it, a reload replaces every entry.
    pub fn with_fingerprint(mut self, fingerprint: Fingerprint) -> Instance {
        for (o, f) in self.outbounds.iter_mut().zip(&fingerprint.outbounds) {
            o.fingerprint = f.clone();
        }
        for (i, f) in self.inbounds.iter_mut().zip(&fingerprint.inbounds) {
            i.fingerprint = f.clone();
        }
        self.fingerprint = fingerprint;
        self
    }

    /// Opens every listener and starts every service. Fails (closing what was opened) if a port is taken.
    pub async fn start(self) -> Result<Running, InstanceError> {
        let shutdown = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Tasks spawned below the connections (Mux readers, writers, sessions) belong to `owner`.
        let owner = Owner::new(hard_stop.clone());
        let mut opened = Vec::new();
        for ib in &self.inbounds {
            opened.push(open_inbound(ib).await?);
        }
        let ops = match self.ops {
            Some(cfg) => {
                let addr = cfg.listen;
                Some(OpsServer::bind(cfg).await.map_err(|source| InstanceError::Listen {
                    path: "ops.listen".into(),
                    addr,
                    source,
                })?)
            }
            None => None,
        };
        let ctx = Ctx {
            dispatcher: self.dispatcher.clone(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            owner: owner.clone(),
        };
        let inbounds: Vec<LiveInbound> =
            self.inbounds.into_iter().zip(opened).map(|(ib, sockets)| ctx.launch_inbound(ib, sockets)).collect();
        for svc in self.services {
            svc.start(self.dispatcher.clone(), &tracker, shutdown.clone(), &owner);
        }
        let mut bridges = Vec::new();
        for ((tag, bridge), handle) in self.bridge_services.into_iter().zip(self.bridges) {
            let fingerprint = self.fingerprint.bridges.get(&tag).cloned().unwrap_or_default();
            bridges.push(ctx.start_bridge(tag, fingerprint, bridge, handle));
        }
        let portals = self
            .portals
            .into_iter()
            .map(|portal| LivePortal {
                fingerprint: self.fingerprint.portals.get(portal.tag()).cloned().unwrap_or_default(),
                portal,
            })
            .collect();
        let started = std::time::Instant::now();
        let mut running = Running {
            ctx,
            hard_stop,
            inbounds,
            outbounds: self.outbounds,
            portals,
            bridges,
            bound: Vec::new(),
            resolver: self.resolver,
            fingerprint: self.fingerprint,
            api: self.api,
            live: LiveSource::new(OpsSource {
                portals: Vec::new(),
                bridges: Vec::new(),
                traffic: self.dispatcher.traffic(),
                listeners: Vec::new(),
                started,
            }),
            started,
            ops_addr: None,
            reload_requests: None,
        };
        running.refresh();
        if let Some(server) = ops {
            running.ops_addr = server.local_addr().ok();
            if let Some(a) = running.ops_addr {
                info!("operations listener on http://{a}/");
            }
            // One request at a time: a second POST /reload waits for the first to be answered.
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            running.reload_requests = Some(rx);
            server.start(running.live.clone(), Some(tx), &running.ctx.tracker, running.ctx.shutdown.clone());
        }
        Ok(running)
    }
}

fn build_outbound(ob: &OutboundConfig, config: &Config, resolver: &Option<Arc<Resolver>>) -> Arc<dyn Outbound> {
    let handler: Arc<dyn Outbound> = match &ob.protocol {
        OutboundProtocol::Freedom(f) => Arc::new(
            Freedom::new(f.clone(), &ob.stream, ob.send_through, &config.policy).with_resolver(resolver.clone()),
        ),
        OutboundProtocol::Dns(d) => Arc::new(DnsOutbound::new(
            d.clone(),
            &ob.stream,
            ob.send_through,
            resolver.clone().unwrap_or_else(|| Arc::new(Resolver::system())),
        )),
        OutboundProtocol::Blackhole(b) => Arc::new(Blackhole::new(b.clone())),
        OutboundProtocol::Vmess(v) => Arc::new(VmessOutbound::new(v.clone(), &ob.stream, ob.send_through)),
        OutboundProtocol::Socks(c) => Arc::new(SocksOutbound::new(c.clone(), &ob.stream, ob.send_through)),
        OutboundProtocol::Http(c) => Arc::new(HttpOutbound::new(c.clone(), &ob.stream, ob.send_through)),
        OutboundProtocol::Shadowsocks(c) => Arc::new(ShadowsocksOutbound::new(c, &ob.stream, ob.send_through)),
        OutboundProtocol::Vless(c) => Arc::new(VlessOutbound::new(c, &ob.stream, ob.send_through)),
        OutboundProtocol::Trojan(c) => Arc::new(TrojanOutbound::new(c, &ob.stream, ob.send_through)),
    };
    match ob.mux {
        Some(mux) => Arc::new(Muxed::new(handler, mux)),
        None => handler,
    }
}

fn build_inbound(ib: &InboundConfig) -> Result<InboundEntry, InstanceError> {
    let handler: Arc<dyn Inbound> = match &ib.protocol {
        InboundProtocol::Dokodemo(d) => Arc::new(Dokodemo::new(ib.tag.clone(), d.clone())),
        InboundProtocol::Socks(s) => Arc::new(SocksInbound::new(ib.tag.clone(), ib.listen, s.clone())),
        InboundProtocol::Http(h) => Arc::new(HttpInbound::new(ib.tag.clone(), h.clone())),
        InboundProtocol::Shadowsocks(c) => Arc::new(ShadowsocksInbound::new(ib.tag.clone(), c)),
        InboundProtocol::Vless(c) => Arc::new(VlessInbound::new(ib.tag.clone(), c)),
        InboundProtocol::Trojan(c) => Arc::new(TrojanInbound::new(ib.tag.clone(), c)),
        InboundProtocol::Vmess(v) => Arc::new(
            VmessInbound::new(ib.tag.clone(), v.clone())
                .map_err(|e| InstanceError::Handler { path: ib.path.clone(), message: e.to_string() })?,
        ),
    };
    let handler = crate::dispatch::sniffing_inbound(handler, ib.sniffing.as_ref());
    let addrs = (ib.port.first..=ib.port.last).map(|p| SocketAddr::new(ib.listen, p)).collect();
    Ok(InboundEntry {
        path: ib.path.clone(),
        tag: ib.tag.clone(),
        addrs,
        stream: ib.stream.clone(),
        handler,
        fingerprint: String::new(),
    })
}

/// One bound address of an inbound: its listener and, for inbounds that take UDP, its UDP socket.
struct Socket {
    /// None for a UDP-only inbound (dokodemo-door with `network: "udp"`).
    listener: Option<Listener>,
    udp: Option<tokio::net::UdpSocket>,
}

/// Binds every address of an inbound (nothing is served yet; dropping the result closes them all).
async fn open_inbound(ib: &InboundEntry) -> Result<Vec<Socket>, InstanceError> {
    let mut out = Vec::new();
    for addr in &ib.addrs {
        let listen_err = |addr, source| InstanceError::Listen { path: ib.path.clone(), addr, source };
        if !ib.handler.tcp() {
            let udp = ib.handler.bind_udp(*addr).map_err(|e| listen_err(*addr, e))?;
            out.push(Socket { listener: None, udp: Some(udp) });
            continue;
        }
        let listener =
            Listener::bind(*addr, &ib.stream, ib.handler.wants_original_dst()).map_err(|e| listen_err(*addr, e))?;
        let udp = match (ib.handler.udp(), listener.local_addr()) {
            // The same address and port as the TCP listener (its real port when 0 was asked).
            (true, Ok(a)) => Some(ib.handler.bind_udp(a).map_err(|e| listen_err(a, e))?),
            _ => None,
        };
        out.push(Socket { listener: Some(listener), udp });
    }
    Ok(out)
}

/// What starting (and, on reload, replacing) parts of an instance needs.
struct Ctx {
    dispatcher: Arc<Dispatcher>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    owner: Owner,
}

impl Ctx {
    /// Serves an inbound's bound sockets until its own stop token (a child of the instance's) fires.
    fn launch_inbound(&self, ib: InboundEntry, sockets: Vec<Socket>) -> LiveInbound {
        let stop = self.shutdown.child_token();
        let loops = TaskTracker::new();
        let mut bound = Vec::new();
        let tag = ib.tag.as_deref().unwrap_or("");
        for socket in sockets {
            if let Some(Ok(a)) = socket.listener.as_ref().map(Listener::local_addr) {
                bound.push(a);
                info!(tag, "listening on tcp:{a}");
            }
            if let Some(udp) = socket.udp {
                if let Ok(a) = udp.local_addr() {
                    if socket.listener.is_none() {
                        bound.push(a);
                    }
                    info!(tag, "listening on udp:{a}");
                }
                let (handler, dispatcher, stop) = (ib.handler.clone(), self.dispatcher.clone(), stop.clone());
                self.tracker.spawn(loops.track_future(async move {
                    tokio::select! {
                        _ = handler.serve_udp(Arc::new(udp), dispatcher) => {}
                        _ = stop.cancelled() => {}
                    }
                }));
            }
            let Some(listener) = socket.listener else { continue };
            self.tracker.spawn(loops.track_future(self.owner.scope(accept_loop(
                listener,
                ib.handler.clone(),
                self.dispatcher.clone(),
                self.tracker.clone(),
                stop.clone(),
                self.owner.clone(),
            ))));
        }
        loops.close();
        LiveInbound { path: ib.path, tag: ib.tag, fingerprint: ib.fingerprint, bound, stop, loops }
    }

    fn start_bridge(&self, tag: String, fingerprint: String, bridge: Bridge, handle: BridgeStatusHandle) -> LiveBridge {
        let stop = self.shutdown.child_token();
        Box::new(bridge).start(self.dispatcher.clone(), &self.tracker, stop.clone(), &self.owner);
        LiveBridge { tag, fingerprint, handle, stop }
    }

    /// A replaced or removed portal: DRAIN to its bridges (they dial a new tunnel, which the new
    /// config routes), and each old tunnel closes once its sessions are done (at the latest at the
    /// instance's hard stop).
    fn retire_portal(&self, portal: Arc<Portal>) {
        portal.retire();
        let hard_stop = self.owner.hard_stop().clone();
        self.tracker.spawn(async move {
            loop {
                portal.close_idle_tunnels();
                if !portal.has_tunnels() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETIRE_POLL) => {}
                    _ = hard_stop.cancelled() => return,
                }
            }
        });
    }
}

impl Ctx {
    /// A replaced bridge keeps dialling and serving until the new one has a tunnel (at most
    /// [`HANDOVER_DEADLINE`]), so the portal always has a tunnel to send visitors into; then it stops
    /// dialling, and its tunnels close once idle. It never refuses a session (the portal may still pick
    /// its tunnels while they carry sessions).
    fn hand_over(&self, old: LiveBridge, new: BridgeStatusHandle) {
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let deadline = tokio::time::Instant::now() + HANDOVER_DEADLINE;
            while !new.has_tunnel() && tokio::time::Instant::now() < deadline {
                tokio::select! {
                    _ = tokio::time::sleep(RETIRE_POLL) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            if !shutdown.is_cancelled() {
                old.handle.hand_over();
            }
            old.stop.cancel();
        });
    }
}

/// Most a replaced bridge waits for its successor's first tunnel before it stops dialling.
const HANDOVER_DEADLINE: Duration = Duration::from_secs(10);
/// How often a retired portal looks for old tunnels that have finished their sessions.
const RETIRE_POLL: Duration = Duration::from_millis(100);
/// Most a replaced inbound's accept loops may take to end (and free its ports) on reload.
const RELEASE_DEADLINE: Duration = Duration::from_secs(2);

async fn accept_loop(
    listener: Listener,
    handler: Arc<dyn Inbound>,
    dispatcher: Arc<Dispatcher>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    owner: Owner,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(incoming) => {
                let handler = handler.clone();
                let dispatcher = dispatcher.clone();
                let hard_stop = owner.hard_stop().clone();
                tracker.spawn(owner.scope(async move {
                    let peer = incoming.peer();
                    tokio::select! {
                        _ = serve(incoming, handler, dispatcher) => {}
                        _ = hard_stop.cancelled() => debug!(%peer, "connection cut at shutdown"),
                    }
                }));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One accepted connection: the transport's handshake under the handshake deadline, then the inbound.
async fn serve(incoming: Incoming, handler: Arc<dyn Inbound>, dispatcher: Arc<Dispatcher>) {
    let peer = incoming.peer();
    let deadline = dispatcher.policy(0).handshake;
    let carrier = incoming.carrier();
    match tokio::time::timeout(deadline, incoming.handshake()).await {
        // The carrier is known to the flow, so a portal can give the connection a tunnel's options.
        Ok(Ok(conn)) => crate::transport::serve_carrier(carrier, handler.accept(conn, &dispatcher)).await,
        Ok(Err(e)) => debug!(%peer, "transport handshake failed: {e}"),
        Err(_) => debug!(%peer, "transport handshake timed out after {deadline:?}"),
    }
}

/// A serving inbound.
struct LiveInbound {
    path: String,
    tag: Option<String>,
    fingerprint: String,
    bound: Vec<SocketAddr>,
    /// Ends its accept loops and UDP task (connections it accepted go on).
    stop: CancellationToken,
    /// Its accept loops and UDP task: empty once its ports are closed.
    loops: TaskTracker,
}

impl LiveInbound {
    /// Closes its ports; returns once they are closed (or after [`RELEASE_DEADLINE`], with a warning).
    async fn close(self) {
        self.stop.cancel();
        if tokio::time::timeout(RELEASE_DEADLINE, self.loops.wait()).await.is_err() {
            warn!(path = %self.path, "reload: the old listener did not close within {RELEASE_DEADLINE:?}");
        }
    }
}

struct LivePortal {
    fingerprint: String,
    portal: Arc<Portal>,
}

struct LiveBridge {
    tag: String,
    fingerprint: String,
    handle: BridgeStatusHandle,
    /// Stops this bridge alone: no new tunnels; old ones close when their sessions are done.
    stop: CancellationToken,
}

/// What a reload did to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New in the config.
    Added,
    /// Its entry changed: the new one serves from now on.
    Replaced,
    /// Gone from the config.
    Removed,
    /// The same as before: kept running as it was (listeners, tunnels, sessions).
    Unchanged,
}

impl Change {
    /// `added`, `replaced`, `removed`, `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Replaced => "replaced",
            Change::Removed => "removed",
            Change::Unchanged => "unchanged",
        }
    }
}

/// What a reload did, entry by entry.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// (kind, tag or JSON path, change): kind is `inbound`, `outbound`, `portal`, `bridge` or `routing`.
    pub changes: Vec<(&'static str, String, Change)>,
    /// Top-level sections that changed but need a restart (kept as they were).
    pub restart_needed: Vec<&'static str>,
    /// Problems after the new config was committed (a port of a replaced inbound taken meanwhile).
    pub errors: Vec<String>,
}

impl ReloadReport {
    /// Entries with this change.
    pub fn count(&self, change: Change) -> usize {
        self.changes.iter().filter(|c| c.2 == change).count()
    }
}

impl std::fmt::Display for ReloadReport {
    /// One line: every entry that changed, then how many did not.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let changed: Vec<String> = self
            .changes
            .iter()
            .filter(|c| c.2 != Change::Unchanged)
            .map(|(kind, tag, c)| format!("{kind} {tag} {}", c.as_str()))
            .collect();
        if changed.is_empty() {
            write!(f, "nothing changed")?;
        } else {
            write!(f, "{}", changed.join(", "))?;
        }
        write!(f, "; {} unchanged", self.count(Change::Unchanged))?;
        if !self.restart_needed.is_empty() {
            write!(f, "; not applied (needs a restart): {}", self.restart_needed.join(", "))?;
        }
        for e in &self.errors {
            write!(f, "; error: {e}")?;
        }
        Ok(())
    }
}

/// A started instance.
pub struct Running {
    ctx: Ctx,
    hard_stop: CancellationToken,
    inbounds: Vec<LiveInbound>,
    outbounds: Vec<OutboundEntry>,
    portals: Vec<LivePortal>,
    bridges: Vec<LiveBridge>,
    bound: Vec<(Option<String>, SocketAddr)>,
    resolver: Option<Arc<Resolver>>,
    fingerprint: Fingerprint,
    api: Option<(Option<String>, Arc<dyn Outbound>)>,
    live: LiveSource,
    started: std::time::Instant,
    ops_addr: Option<SocketAddr>,
    reload_requests: Option<tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<ReloadAnswer>>>,
}

/// How reload names an entry: its tag, else its JSON text (an untagged entry that changed is a new one).
fn key(tag: Option<&str>, fingerprint: &str) -> String {
    match tag {
        Some(t) => format!("tag:{t}"),
        None => format!("json:{fingerprint}"),
    }
}

impl Running {
    /// The operations listener's address, when one is configured.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// What the operations listener (and `oxray status`) reads, as of now.
    pub fn ops_source(&self) -> OpsSource {
        self.live.get()
    }

    /// What the operations listener reads, following reloads.
    pub fn live_source(&self) -> LiveSource {
        self.live.clone()
    }

    /// `POST /reload` requests of the operations listener (taken once; None without one).
    pub fn take_reload_requests(
        &mut self,
    ) -> Option<tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<ReloadAnswer>>> {
        self.reload_requests.take()
    }

    /// Every listening address with its inbound tag.
    pub fn local_addrs(&self) -> &[(Option<String>, SocketAddr)] {
        &self.bound
    }

    /// Tunnels of every portal and bridge of this instance.
    pub fn reverse_status(&self) -> (Vec<PortalStatus>, Vec<BridgeStatus>) {
        (
            self.portals.iter().map(|p| p.portal.status()).collect(),
            self.bridges.iter().map(|b| b.handle.status()).collect(),
        )
    }

    /// Recomputes the listener list and the ops listener's view after a change.
    fn refresh(&mut self) {
        self.bound = self.inbounds.iter().flat_map(|i| i.bound.iter().map(|a| (i.tag.clone(), *a))).collect::<Vec<_>>();
        self.live.set(OpsSource {
            portals: self.portals.iter().map(|p| p.portal.clone()).collect(),
            bridges: self.bridges.iter().map(|b| b.handle.clone()).collect(),
            traffic: self.ctx.dispatcher.traffic(),
            listeners: self.bound.clone(),
            started: self.started,
        });
    }

    /// Applies a new config: entries whose JSON is unchanged keep running as they are (listeners,
    /// tunnels, sessions); changed ones are replaced, removed ones stopped, new ones started; routing
    /// is rebuilt. Everything that can fail (building handlers and routing, binding new ports) is done
    /// before anything is changed: on an error the old config keeps running untouched.
    ///
    /// Flows already routed keep their outbound (a replaced outbound or portal finishes them);
    /// connections accepted by a replaced inbound finish on its old handler. Sections listed in
    /// [`crate::config::RESTART_SECTIONS`] are not applied: [`ReloadReport::restart_needed`] names them.
    pub async fn reload(&mut self, config: &Config, fingerprint: Fingerprint) -> Result<ReloadReport, InstanceError> {
        let mut report = ReloadReport::default();
        for section in crate::config::RESTART_SECTIONS {
            if self.fingerprint.restart.get(section) != fingerprint.restart.get(section) {
                report.restart_needed.push(section);
            }
        }
        // 1. Build (nothing changes yet).
        let router = Router::new(&config.routing)?.with_resolver(self.resolver.clone());
        let mut outbounds = Vec::new();
        for (ob, fp) in config.outbounds.iter().zip(&fingerprint.outbounds) {
            let k = key(ob.tag.as_deref(), fp);
            let name = ob.tag.clone().unwrap_or_else(|| ob.path.clone());
            let old = self.outbounds.iter().find(|o| key(o.tag.as_deref(), &o.fingerprint) == k);
            let (handler, change) = match old {
                Some(o) if o.fingerprint == *fp => (o.handler.clone(), Change::Unchanged),
                Some(_) => (build_outbound(ob, config, &self.resolver), Change::Replaced),
                None => (build_outbound(ob, config, &self.resolver), Change::Added),
            };
            report.changes.push(("outbound", name, change));
            outbounds.push(OutboundEntry { tag: ob.tag.clone(), fingerprint: fp.clone(), handler });
        }
        for o in &self.outbounds {
            let k = key(o.tag.as_deref(), &o.fingerprint);
            if !outbounds.iter().any(|n| key(n.tag.as_deref(), &n.fingerprint) == k) {
                let name = o.tag.clone().unwrap_or_else(|| "(untagged)".into());
                report.changes.push(("outbound", name, Change::Removed));
            }
        }
        let mut portals = Vec::new();
        let mut retired_portals = Vec::new();
        for p in &config.reverse.portals {
            let fp = fingerprint.portals.get(&p.tag).cloned().unwrap_or_default();
            let old = self.portals.iter().find(|o| o.portal.tag() == p.tag);
            let (portal, change) = match old {
                Some(o) if o.fingerprint == fp && !fp.is_empty() => (o.portal.clone(), Change::Unchanged),
                Some(o) => {
                    retired_portals.push(o.portal.clone());
                    (Arc::new(Portal::new(p)), Change::Replaced)
                }
                None => (Arc::new(Portal::new(p)), Change::Added),
            };
            report.changes.push(("portal", p.tag.clone(), change));
            portals.push(LivePortal { fingerprint: fp, portal });
        }
        for o in &self.portals {
            if !config.reverse.portals.iter().any(|p| p.tag == o.portal.tag()) {
                report.changes.push(("portal", o.portal.tag().to_string(), Change::Removed));
                retired_portals.push(o.portal.clone());
            }
        }
        // Inbounds: kept (index into the old list) or new (built, and bound now unless an old one
        // being replaced holds one of its ports: those are bound once the old one has closed).
        enum Next {
            Keep(usize),
            New(Box<InboundEntry>, Option<Vec<Socket>>),
        }
        let mut next = Vec::new();
        let mut kept = vec![false; self.inbounds.len()];
        for (ib, fp) in config.inbounds.iter().zip(&fingerprint.inbounds) {
            let k = key(ib.tag.as_deref(), fp);
            let name = ib.tag.clone().unwrap_or_else(|| ib.path.clone());
            let old = self.inbounds.iter().position(|o| key(o.tag.as_deref(), &o.fingerprint) == k);
            match old {
                Some(i) if self.inbounds[i].fingerprint == *fp && !kept[i] => {
                    kept[i] = true;
                    report.changes.push(("inbound", name, Change::Unchanged));
                    next.push(Next::Keep(i));
                }
                _ => {
                    let mut entry = build_inbound(ib)?;
                    entry.fingerprint = fp.clone();
                    report.changes.push((
                        "inbound",
                        name,
                        if old.is_some() { Change::Replaced } else { Change::Added },
                    ));
                    next.push(Next::New(Box::new(entry), None));
                }
            }
        }
        for (i, o) in self.inbounds.iter().enumerate() {
            if !kept[i] && !next.iter().any(|n| matches!(n, Next::New(e, _) if key(e.tag.as_deref(), &e.fingerprint) == key(o.tag.as_deref(), &o.fingerprint))) {
                report.changes.push(("inbound", o.tag.clone().unwrap_or_else(|| o.path.clone()), Change::Removed));
            }
        }
        let closing_ports: Vec<u16> = self
            .inbounds
            .iter()
            .enumerate()
            .filter(|(i, _)| !kept[*i])
            .flat_map(|(_, o)| o.bound.iter().map(|a| a.port()))
            .collect();
        for n in &mut next {
            if let Next::New(entry, sockets) = n
                && !entry.addrs.iter().any(|a| a.port() != 0 && closing_ports.contains(&a.port()))
            {
                // A failure drops what was bound so far (closing it) and leaves the old config running.
                *sockets = Some(open_inbound(entry).await?);
            }
        }
        let mut bridges_next = Vec::new();
        for b in &config.reverse.bridges {
            let fp = fingerprint.bridges.get(&b.tag).cloned().unwrap_or_default();
            let old = self.bridges.iter().position(|o| o.tag == b.tag);
            let change = match old {
                Some(i) if self.bridges[i].fingerprint == fp && !fp.is_empty() => Change::Unchanged,
                Some(_) => Change::Replaced,
                None => Change::Added,
            };
            report.changes.push(("bridge", b.tag.clone(), change));
            bridges_next.push((b, fp, change));
        }
        for o in &self.bridges {
            if !config.reverse.bridges.iter().any(|b| b.tag == o.tag) {
                report.changes.push(("bridge", o.tag.clone(), Change::Removed));
            }
        }
        let routing_change =
            if self.fingerprint.routing == fingerprint.routing { Change::Unchanged } else { Change::Replaced };
        report.changes.push(("routing", "rules".into(), routing_change));

        // 2. Commit: from here on nothing fails back to the old config.
        let mut ordered: Vec<(Option<String>, Arc<dyn Outbound>)> =
            outbounds.iter().map(|o| (o.tag.clone(), o.handler.clone())).collect();
        ordered
            .extend(portals.iter().map(|p| (Some(p.portal.tag().to_string()), p.portal.clone() as Arc<dyn Outbound>)));
        let traffic = Arc::new(
            self.ctx.dispatcher.traffic().next(
                config
                    .inbounds
                    .iter()
                    .filter_map(|i| i.tag.as_deref())
                    .chain(config.reverse.bridges.iter().map(|b| b.tag.as_str())),
                ordered.iter().filter_map(|(t, _)| t.as_deref()),
            ),
        );
        // After the counters, as at start: the API's own tag has none (4.34).
        ordered.extend(self.api.clone());
        self.ctx.dispatcher.replace(router, ordered, traffic);
        self.outbounds = outbounds;
        self.portals = portals;
        for p in retired_portals {
            self.ctx.retire_portal(p);
        }
        let mut old_inbounds: Vec<Option<LiveInbound>> =
            std::mem::take(&mut self.inbounds).into_iter().map(Some).collect();
        for (i, o) in old_inbounds.iter_mut().enumerate() {
            if !kept[i]
                && let Some(o) = o.take()
            {
                o.close().await;
            }
        }
        for n in next {
            match n {
                Next::Keep(i) => {
                    if let Some(o) = old_inbounds[i].take() {
                        self.inbounds.push(o);
                    }
                }
                Next::New(entry, Some(sockets)) => self.inbounds.push(self.ctx.launch_inbound(*entry, sockets)),
                Next::New(entry, None) => match open_inbound(&entry).await {
                    Ok(sockets) => self.inbounds.push(self.ctx.launch_inbound(*entry, sockets)),
                    Err(e) => {
                        error!("reload: {e}");
                        report.errors.push(e.to_string());
                    }
                },
            }
        }
        let mut old_bridges: Vec<Option<LiveBridge>> =
            std::mem::take(&mut self.bridges).into_iter().map(Some).collect();
        for (b, fp, change) in bridges_next {
            let old = old_bridges.iter().position(|o| o.as_ref().is_some_and(|o| o.tag == b.tag));
            if change == Change::Unchanged
                && let Some(o) = old.and_then(|i| old_bridges[i].take())
            {
                self.bridges.push(o);
                continue;
            }
            let bridge = Bridge::new(b);
            let handle = bridge.status_handle();
            let new = self.ctx.start_bridge(b.tag.clone(), fp, bridge, handle);
            if let Some(o) = old.and_then(|i| old_bridges[i].take()) {
                self.ctx.hand_over(o, new.handle.clone());
            }
            self.bridges.push(new);
        }
        for o in old_bridges.into_iter().flatten() {
            o.stop.cancel();
        }
        self.fingerprint = fingerprint;
        self.refresh();
        Ok(report)
    }

    /// Closes the listeners and stops services, waits up to `grace` for live connections, then cuts them.
    pub async fn shutdown(self, grace: Duration) {
        self.ctx.shutdown.cancel();
        self.ctx.tracker.close();
        let deadline = tokio::time::Instant::now() + grace;
        let wait = self.ctx.tracker.wait();
        tokio::pin!(wait);
        let finished = loop {
            // Tunnels to bridges are connections too; close those that carry no visitor any more.
            self.portals.iter().for_each(|p| p.portal.close_idle_tunnels());
            let step = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
            if tokio::time::timeout_at(step, &mut wait).await.is_ok() {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
        };
        if !finished {
            warn!("grace period of {grace:?} over; closing the remaining connections");
        }
        // Ends what is left: connections past the grace, and owned background tasks (idle Mux carriers,
        // tunnels' readers and writers), which the grace does not wait for.
        self.hard_stop.cancel();
        let all = async {
            self.ctx.tracker.wait().await;
            self.ctx.owner.wait().await;
        };
        if tokio::time::timeout(Duration::from_secs(2), all).await.is_err() {
            warn!("{} task(s) still running 2 s after the hard stop", self.ctx.owner.running());
        }
    }
}
