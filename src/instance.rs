//! An `Instance` owns everything a config describes: inbounds, outbounds, router, reverse; it starts
//! them and shuts them down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::{Config, InboundProtocol, OpsConfig, OutboundProtocol};
use crate::dispatch::Dispatcher;
use crate::dns::Resolver;
use crate::log::AccessLog;
use crate::ops::traffic::Traffic;
use crate::ops::{OpsServer, Source as OpsSource};
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
}

/// A built, not yet started instance.
pub struct Instance {
    dispatcher: Arc<Dispatcher>,
    inbounds: Vec<InboundEntry>,
    services: Vec<Box<dyn Service>>,
    portals: Vec<Arc<Portal>>,
    bridges: Vec<BridgeStatusHandle>,
    ops: Option<OpsConfig>,
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
        let mut ordered: Vec<(Option<String>, Arc<dyn Outbound>)> = Vec::new();
        for ob in &config.outbounds {
            let handler: Arc<dyn Outbound> = match &ob.protocol {
                OutboundProtocol::Freedom(f) => Arc::new(
                    Freedom::new(f.clone(), &ob.stream, ob.send_through, &config.policy)
                        .with_resolver(resolver.clone()),
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
            let handler: Arc<dyn Outbound> = match ob.mux {
                Some(mux) => Arc::new(Muxed::new(handler, mux)),
                None => handler,
            };
            ordered.push((ob.tag.clone(), handler));
        }
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
        ordered.extend(crate::stats::api_outbound(config, &traffic));
        let metering = config.ops.is_some() || config.stats;
        let dispatcher =
            Arc::new(Dispatcher::new(router, ordered, config.policy.clone(), access).with_traffic(traffic, metering));
        if let Some(r) = &resolver {
            let up: Arc<dyn crate::dns::Upstream> = dispatcher.clone();
            r.set_upstream(Arc::downgrade(&up));
        }

        let mut inbounds = Vec::new();
        for ib in &config.inbounds {
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
            inbounds.push(InboundEntry {
                path: ib.path.clone(),
                tag: ib.tag.clone(),
                addrs,
                stream: ib.stream.clone(),
                handler,
            });
        }
        let mut services: Vec<Box<dyn Service>> = Vec::new();
        let mut bridges = Vec::new();
        for b in &config.reverse.bridges {
            let bridge = Bridge::new(b);
            bridges.push(bridge.status_handle());
            services.push(Box::new(bridge));
        }
        Ok(Instance { dispatcher, inbounds, services, portals, bridges, ops: config.ops.clone() })
    }

    /// Opens every listener and starts every service. Fails (closing what was opened) if a port is taken.
    pub async fn start(self) -> Result<Running, InstanceError> {
        let shutdown = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Tasks spawned below the connections (Mux readers, writers, sessions) belong to `owner`.
        let owner = Owner::new(hard_stop.clone());
        let mut listeners = Vec::new();
        for ib in &self.inbounds {
            for addr in &ib.addrs {
                let l = Listener::bind(*addr, &ib.stream, ib.handler.wants_original_dst())
                    .map_err(|source| InstanceError::Listen { path: ib.path.clone(), addr: *addr, source })?;
                listeners.push((ib.tag.clone(), l, ib.handler.clone()));
            }
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
        let mut bound = Vec::new();
        for (tag, listener, handler) in listeners {
            let local = listener.local_addr().ok();
            if let Some(a) = local {
                bound.push((tag.clone(), a));
                info!(tag = tag.as_deref().unwrap_or(""), "listening on tcp:{a}");
                if handler.udp() {
                    // The same address and port as the TCP listener (its real port when 0 was asked).
                    let socket = tokio::net::UdpSocket::bind(a).await.map_err(|source| InstanceError::Listen {
                        path: tag.clone().unwrap_or_default(),
                        addr: a,
                        source,
                    })?;
                    info!(tag = tag.as_deref().unwrap_or(""), "listening on udp:{a}");
                    let (handler, dispatcher, shutdown) = (handler.clone(), self.dispatcher.clone(), shutdown.clone());
                    tracker.spawn(async move {
                        tokio::select! {
                            _ = handler.serve_udp(Arc::new(socket), dispatcher) => {}
                            _ = shutdown.cancelled() => {}
                        }
                    });
                }
            }
            tracker.spawn(owner.scope(accept_loop(
                listener,
                handler,
                self.dispatcher.clone(),
                tracker.clone(),
                shutdown.clone(),
                owner.clone(),
            )));
        }
        for svc in self.services {
            svc.start(self.dispatcher.clone(), &tracker, shutdown.clone(), &owner);
        }
        let mut running = Running {
            shutdown,
            hard_stop,
            tracker,
            owner,
            bound,
            portals: self.portals,
            bridges: self.bridges,
            traffic: self.dispatcher.traffic().clone(),
            started: std::time::Instant::now(),
            ops_addr: None,
        };
        if let Some(server) = ops {
            running.ops_addr = server.local_addr().ok();
            if let Some(a) = running.ops_addr {
                info!("operations listener on http://{a}/");
            }
            server.start(running.ops_source(), &running.tracker, running.shutdown.clone());
        }
        Ok(running)
    }
}

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

/// A started instance.
pub struct Running {
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
    owner: Owner,
    bound: Vec<(Option<String>, SocketAddr)>,
    portals: Vec<Arc<Portal>>,
    bridges: Vec<BridgeStatusHandle>,
    traffic: Arc<Traffic>,
    started: std::time::Instant,
    ops_addr: Option<SocketAddr>,
}

impl Running {
    /// The operations listener's address, when one is configured.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// What the operations listener (and `oxray status`) reads.
    pub fn ops_source(&self) -> OpsSource {
        OpsSource {
            portals: self.portals.clone(),
            bridges: self.bridges.clone(),
            traffic: self.traffic.clone(),
            listeners: self.bound.clone(),
            started: self.started,
        }
    }

    /// Every listening address with its inbound tag.
    pub fn local_addrs(&self) -> &[(Option<String>, SocketAddr)] {
        &self.bound
    }

    /// Tunnels of every portal and bridge of this instance.
    pub fn reverse_status(&self) -> (Vec<PortalStatus>, Vec<BridgeStatus>) {
        (self.portals.iter().map(|p| p.status()).collect(), self.bridges.iter().map(|b| b.status()).collect())
    }

    /// Closes the listeners and stops services, waits up to `grace` for live connections, then cuts them.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        let deadline = tokio::time::Instant::now() + grace;
        let wait = self.tracker.wait();
        tokio::pin!(wait);
        let finished = loop {
            // Tunnels to bridges are connections too; close those that carry no visitor any more.
            self.portals.iter().for_each(|p| p.close_idle_tunnels());
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
            self.tracker.wait().await;
            self.owner.wait().await;
        };
        if tokio::time::timeout(Duration::from_secs(2), all).await.is_err() {
            warn!("{} task(s) still running 2 s after the hard stop", self.owner.running());
        }
    }
}
