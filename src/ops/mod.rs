//! The operations listener (an oxray extension): `/status` (JSON), `/metrics` (Prometheus), `/livez`,
//! `/readyz` and a live page at `/`, on its own loopback port, never on a proxy listener.
//! Also the pieces `oxray run` uses around it: systemd notification and process figures.

mod http;
pub mod metrics;
pub mod process;
pub mod status;
pub mod systemd;
pub mod traffic;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::OpsConfig;
use crate::reverse::bridge::BridgeStatusHandle;
use crate::reverse::portal::Portal;
use crate::reverse::status::TagStatus;
pub use http::{Request as RequestHead, parse_head as parse_request_head};
use traffic::{TagCounts, Traffic};

/// Heartbeat periods without a tunnel or heartbeat before a tag is reported unhealthy (page banner,
/// bridge readiness).
pub const STALE_PERIODS: u32 = 3;

/// Parses an ops `listen` value (`host:port`, IPv6 in brackets; `localhost` is 127.0.0.1); refuses a
/// non-loopback address unless `allow_remote`.
pub fn parse_listen(text: &str, allow_remote: bool) -> Result<SocketAddr, String> {
    let fixed = text.strip_prefix("localhost:").map(|p| format!("127.0.0.1:{p}"));
    let addr: SocketAddr = fixed
        .as_deref()
        .unwrap_or(text)
        .parse()
        .map_err(|_| format!("{text:?} is not host:port (e.g. \"127.0.0.1:9090\")"))?;
    if !allow_remote && !is_loopback(addr.ip()) {
        return Err(format!(
            "{addr} is not a loopback address; the ops listener shows every tunnel and session, so listening \
             beyond this host needs \"allowRemote\": true (and a token)"
        ));
    }
    Ok(addr)
}

/// What the operations listener reads: the running instance's portals, bridges, counters, listeners.
#[derive(Clone)]
pub struct Source {
    /// Portals.
    pub portals: Vec<Arc<Portal>>,
    /// Bridges.
    pub bridges: Vec<BridgeStatusHandle>,
    /// Per-tag connections and bytes.
    pub traffic: Arc<Traffic>,
    /// Bound proxy listeners.
    pub listeners: Vec<(Option<String>, SocketAddr)>,
    /// When the instance started.
    pub started: Instant,
}

/// The [`Source`] of a running instance; a reload puts in the new set of tags and listeners.
#[derive(Clone)]
pub struct LiveSource(Arc<std::sync::RwLock<Source>>);

impl LiveSource {
    /// Starts with `source`.
    pub fn new(source: Source) -> LiveSource {
        LiveSource(Arc::new(std::sync::RwLock::new(source)))
    }

    /// The current source.
    pub fn get(&self) -> Source {
        // A poisoned lock held a whole Source (only ever replaced whole).
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the source (after a reload).
    pub fn set(&self, source: Source) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = source;
    }

    /// A snapshot of the current source.
    pub fn snapshot(&self) -> Snapshot {
        self.get().snapshot()
    }
}

/// The outcome of a reload asked for over `POST /reload`.
#[derive(Debug, Clone)]
pub struct ReloadAnswer {
    /// The new config was applied.
    pub applied: bool,
    /// What changed, or every error (one per line).
    pub text: String,
}

/// Where `POST /reload` sends its request: the process running the instance answers on the oneshot.
pub type ReloadRequests = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<ReloadAnswer>>;

/// Everything one response needs, taken at one moment.
pub struct Snapshot {
    /// Wall-clock time of the snapshot.
    pub now: SystemTime,
    /// Time since start.
    pub uptime: Duration,
    /// Portals.
    pub portals: Vec<TagStatus>,
    /// Bridges.
    pub bridges: Vec<TagStatus>,
    /// Inbound tags.
    pub inbounds: Vec<(String, TagCounts)>,
    /// Outbound tags.
    pub outbounds: Vec<(String, TagCounts)>,
    /// Bound proxy listeners.
    pub listeners: Vec<(Option<String>, SocketAddr)>,
}

impl Source {
    /// Takes a snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            now: SystemTime::now(),
            uptime: self.started.elapsed(),
            portals: self.portals.iter().map(|p| p.status()).collect(),
            bridges: self.bridges.iter().map(|b| b.status()).collect(),
            inbounds: self.traffic.inbounds(),
            outbounds: self.traffic.outbounds(),
            listeners: self.listeners.clone(),
        }
    }
}

impl Snapshot {
    /// Every tag's health problem (page banner): no tunnel or no heartbeat for [`STALE_PERIODS`].
    pub fn problems(&self) -> Vec<String> {
        self.portals.iter().chain(&self.bridges).filter_map(|t| t.problem(self.now, STALE_PERIODS)).collect()
    }

    /// Why the instance is not ready (empty = ready). A bridge is ready when each bridge tag has a live
    /// tunnel that heard a heartbeat within [`STALE_PERIODS`] periods; a portal once its listeners are
    /// bound (always, for a running instance), or with `portal_tunnels` when each portal has a tunnel.
    pub fn not_ready(&self, portal_tunnels: bool) -> Vec<String> {
        let mut out = Vec::new();
        for b in &self.bridges {
            let bound = b.heartbeat * STALE_PERIODS;
            let fresh = |t: &crate::reverse::status::TunnelStatus| {
                t.last_heartbeat_received.and_then(|h| self.now.duration_since(h).ok()).is_some_and(|d| d <= bound)
            };
            if b.tunnels.is_empty() {
                out.push(format!("bridge {}: no tunnel to the portal", b.tag));
            } else if !b.tunnels.iter().any(|t| !t.draining && fresh(t)) {
                out.push(format!("bridge {}: no tunnel heard a heartbeat in the last {}s", b.tag, bound.as_secs()));
            }
        }
        if portal_tunnels {
            for p in &self.portals {
                if p.tunnels.is_empty() {
                    out.push(format!("portal {}: no bridge connected", p.tag));
                }
            }
        }
        out
    }
}

/// Smoothed RTT of this process's TCP socket connected to `peer` (TCP_INFO), found by its address.
/// Only read when a snapshot is taken, never on the data path.
pub fn tcp_rtt_to(peer: SocketAddr) -> Option<Duration> {
    process::tcp_rtt_by_peer(peer)
}

/// A bound operations listener.
pub struct OpsServer {
    listener: TcpListener,
    config: OpsConfig,
}

impl OpsServer {
    /// Binds `config.listen` (refusing a non-loopback one unless allowed).
    pub async fn bind(config: OpsConfig) -> std::io::Result<OpsServer> {
        if !config.allow_remote && !is_loopback(config.listen.ip()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is not loopback (set ops.allowRemote)", config.listen),
            ));
        }
        let listener = TcpListener::bind(config.listen).await?;
        Ok(OpsServer { listener, config })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; connection tasks go on `tracker`. `POST /reload` goes to `reload`.
    pub fn start(
        self,
        source: LiveSource,
        reload: Option<ReloadRequests>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let state = Arc::new(http::State::new(source, self.config.token.clone(), reload));
        tracker.spawn(http::serve(self.listener, state, tracker.clone(), shutdown));
    }
}

/// True for loopback addresses (IPv4-mapped included).
pub fn is_loopback(ip: IpAddr) -> bool {
    crate::session::canonical_ip(ip).is_loopback()
}
