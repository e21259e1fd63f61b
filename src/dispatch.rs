//! The dispatcher: routes each flow to an outbound and hands it over.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tracing::{debug, info, warn};

use crate::config::{LevelPolicy, PolicyConfig, SniffingConfig};
use crate::log::AccessLog;
use crate::mux::server::{MuxHandler, MuxServer};
use crate::mux::{MUX_COOL_DOMAIN, MuxPacket, MuxStream};
use crate::ops::traffic::Traffic;
use crate::proxy::{BoxPacketConn, BoxStream, Inbound, Outbound, ProxyError, RelayStats, relay_packets};
use crate::router::Router;
use crate::session::{Address, Network, Session};

tokio::task_local! {
    /// The `sniffing` of the inbound whose connection this task serves. Set by [`SniffingInbound`] around
    /// the inbound's handshake and dispatch, so each inbound's setting reaches the dispatcher without
    /// every protocol carrying it; Mux sub-sessions (other tasks) take their carrier's.
    static SNIFFING: Arc<SniffingConfig>;
}

/// The sniffing in force for the current task, if any.
fn current_sniffing() -> Option<Arc<SniffingConfig>> {
    SNIFFING.try_with(Arc::clone).ok()
}

/// Wraps an inbound whose `sniffing` is enabled: every TCP flow it dispatches is sniffed first (4.34
/// sniffs any inbound type, and each Mux sub-session). Without `sniffing` the inbound is returned as is.
pub fn sniffing_inbound(inner: Arc<dyn Inbound>, sniffing: Option<&SniffingConfig>) -> Arc<dyn Inbound> {
    match sniffing {
        Some(s) => Arc::new(SniffingInbound { inner, sniffing: Arc::new(s.clone()) }),
        None => inner,
    }
}

struct SniffingInbound {
    inner: Arc<dyn Inbound>,
    sniffing: Arc<SniffingConfig>,
}

#[async_trait]
impl Inbound for SniffingInbound {
    async fn accept(&self, conn: crate::transport::Accepted, dispatcher: &Arc<Dispatcher>) {
        SNIFFING.scope(self.sniffing.clone(), self.inner.accept(conn, dispatcher)).await
    }

    fn wants_original_dst(&self) -> bool {
        self.inner.wants_original_dst()
    }

    fn tcp(&self) -> bool {
        self.inner.tcp()
    }

    fn udp(&self) -> bool {
        self.inner.udp()
    }

    fn bind_udp(&self, addr: std::net::SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
        self.inner.bind_udp(addr)
    }

    async fn serve_udp(&self, socket: Arc<tokio::net::UdpSocket>, dispatcher: Arc<Dispatcher>) {
        // UDP is never sniffed (4.34).
        self.inner.serve_udp(socket, dispatcher).await
    }
}

/// Sniffs a TCP flow's first bytes before routing (PROXIES.md §5): the protocol goes to routing; a
/// Host/SNI replaces the target address (port kept) when `destOverride` names the protocol.
async fn sniff(sniffing: &SniffingConfig, session: &mut Session, stream: BoxStream) -> BoxStream {
    let (stream, result) = crate::proxy::sniff::sniff_stream(stream).await;
    let Some(r) = result else {
        debug!(session = session.id, "sniffing found nothing");
        return stream;
    };
    session.protocol = Some(r.protocol);
    if let Some(domain) = r.domain
        && sniffing.dest_override.iter().any(|p| r.protocol.starts_with(p.as_str()))
    {
        debug!(session = session.id, protocol = r.protocol, "sniffed domain: {domain}");
        session.target.address = Address::parse(&domain);
    }
    stream
}

/// Routes flows to outbounds. Cheap to share (`Arc<Dispatcher>`). Routing, outbounds and per-tag
/// counters sit in a [`Table`] that a reload swaps whole ([`Dispatcher::replace`]): flows already
/// routed keep the outbound they got; every flow after the swap uses the new table.
pub struct Dispatcher {
    table: std::sync::RwLock<Arc<Table>>,
    policy: PolicyConfig,
    access: AccessLog,
    next_id: AtomicU64,
    /// Give every flow a meter, so bytes of flows that end in an error are counted too.
    metering: bool,
}

/// What one config generation routes with.
struct Table {
    router: Router,
    outbounds: HashMap<Arc<str>, Arc<dyn Outbound>>,
    default: Option<(Arc<str>, Arc<dyn Outbound>)>,
    traffic: Arc<Traffic>,
}

impl Table {
    fn new(router: Router, ordered: Vec<(Option<String>, Arc<dyn Outbound>)>, traffic: Arc<Traffic>) -> Table {
        let default = ordered.first().map(|(tag, ob)| (Arc::from(tag.as_deref().unwrap_or_default()), ob.clone()));
        let outbounds = ordered.into_iter().filter_map(|(tag, ob)| tag.map(|t| (Arc::from(t), ob))).collect();
        Table { router, outbounds, default, traffic }
    }
}

impl Dispatcher {
    /// Builds a dispatcher. `ordered` is every outbound in config order (portals last): the first one is
    /// the default. Untagged outbounds are reachable only as the default. Every routed flow gets a line
    /// in `access`.
    pub fn new(
        router: Router,
        ordered: Vec<(Option<String>, Arc<dyn Outbound>)>,
        policy: PolicyConfig,
        access: AccessLog,
    ) -> Self {
        Dispatcher {
            table: std::sync::RwLock::new(Arc::new(Table::new(router, ordered, Arc::default()))),
            policy,
            access,
            next_id: AtomicU64::new(1),
            metering: false,
        }
    }

    /// Counts connections and bytes per tag into `traffic`.
    /// With `metering`, every flow gets a live meter (the operations listener shows bytes as they move,
    /// and flows that end in an error still count).
    pub fn with_traffic(mut self, traffic: Arc<Traffic>, metering: bool) -> Self {
        let table = self.table.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = Arc::get_mut(table) {
            t.traffic = traffic;
        }
        self.metering = metering;
        self
    }

    /// Reload: routes every flow from now on with `router` to `ordered` (as in [`Dispatcher::new`]),
    /// counting into `traffic`. Flows already routed are not touched.
    pub fn replace(&self, router: Router, ordered: Vec<(Option<String>, Arc<dyn Outbound>)>, traffic: Arc<Traffic>) {
        let table = Arc::new(Table::new(router, ordered, traffic));
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    fn table(&self) -> Arc<Table> {
        // Poisoning means a panic while swapping an Arc: the Arc in place is whole either way.
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The per-tag counters (of the current config generation).
    pub fn traffic(&self) -> Arc<Traffic> {
        self.table().traffic.clone()
    }

    /// The policy of a user level (inbounds use level 0's `handshake` before the user is known).
    pub fn policy(&self, level: u32) -> LevelPolicy {
        self.policy.level(level)
    }

    /// Gives `session` an id now (the dispatcher would at dispatch), so callers can report it first.
    pub fn assign_id(&self, session: &mut Session) {
        if session.id == 0 {
            session.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Gives `session` an id and its level's policy.
    fn prepare(&self, session: &mut Session) {
        if session.id == 0 {
            session.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        session.policy = self.policy.level(session.level());
    }

    /// Picks the outbound for a session: the first matching rule's, or the default.
    pub async fn pick(&self, session: &Session) -> Result<(Arc<str>, Arc<dyn Outbound>), ProxyError> {
        self.pick_in(&self.table(), session).await
    }

    async fn pick_in(&self, table: &Table, session: &Session) -> Result<(Arc<str>, Arc<dyn Outbound>), ProxyError> {
        if let Some(tag) = table.router.pick(session).await {
            if let Some((tag, ob)) = table.outbounds.get_key_value(tag) {
                return Ok((tag.clone(), ob.clone()));
            }
            warn!(tag, "routing picked an outbound that does not exist; using the default");
        }
        table
            .default
            .as_ref()
            .map(|(t, ob)| (t.clone(), ob.clone()))
            .ok_or_else(|| ProxyError::Refused("no outbound configured".into()))
    }

    // The entry points below are plain functions returning [`Dispatcher::run`]'s future, not `async
    // fn`s awaiting it: an `async fn` keeps its arguments inside its future for its whole life (the
    // session, ~250 bytes), and one wrapping another keeps them once per level. Every flow's task
    // carries this future until the flow ends, and thousands of held flows carry it at once.

    /// Routes a stream and lets the chosen outbound carry it to the end. Logs one access line.
    pub fn dispatch(self: &Arc<Self>, session: Session, stream: BoxStream) -> impl Future<Output = ()> + Send + '_ {
        self.run(Box::new(session), stream, |_| {}, true, drop)
    }

    /// [`Dispatcher::dispatch`], returning what the flow moved or why it ended.
    pub fn dispatch_outcome(
        self: &Arc<Self>,
        session: Session,
        stream: BoxStream,
    ) -> impl Future<Output = Result<RelayStats, String>> + Send + '_ {
        self.run(Box::new(session), stream, |_| {}, true, std::convert::identity)
    }

    /// [`Dispatcher::dispatch_sub`], returning what the flow moved or why it ended.
    pub fn dispatch_sub_outcome(
        self: &Arc<Self>,
        session: Box<Session>,
        stream: BoxStream,
    ) -> impl Future<Output = Result<RelayStats, String>> + Send + '_ {
        self.run(session, stream, |_| {}, false, std::convert::identity)
    }

    /// Dispatches a session that arrived inside a Mux.Cool connection (a Mux sub-session, or a session
    /// the portal opened on a bridge): routed like any flow, but never served as Mux.Cool again. V2Ray's
    /// Mux server dispatches sub-sessions plainly too; nesting would let one peer stack connections.
    pub fn dispatch_sub(self: &Arc<Self>, session: Session, stream: BoxStream) -> impl Future<Output = ()> + Send + '_ {
        self.run(Box::new(session), stream, |_| {}, false, drop)
    }

    /// [`Dispatcher::dispatch`], letting the inbound adjust the session's policy (dokodemo `timeout`).
    pub fn dispatch_with(
        self: &Arc<Self>,
        session: Session,
        stream: BoxStream,
        adjust: impl FnOnce(&mut LevelPolicy),
    ) -> impl Future<Output = ()> + Send + '_ {
        self.run(Box::new(session), stream, adjust, true, drop)
    }

    /// The flow's work up to routing is done here, synchronously; the future holds the session on the
    /// heap until it is handed to the outbound (whose future then holds it), so what stays in this one
    /// for the flow's life is a few pointers. Sniffing and Mux serving are boxed for the same reason:
    /// their states are larger than the relay's wait and would otherwise size every flow's future.
    fn run<R: Send + 'static>(
        self: &Arc<Self>,
        mut session: Box<Session>,
        stream: BoxStream,
        adjust: impl FnOnce(&mut LevelPolicy),
        serve_mux: bool,
        finish: fn(Result<RelayStats, String>) -> R,
    ) -> impl Future<Output = R> + Send + '_ {
        self.prepare(&mut session);
        adjust(&mut session.policy);
        let dispatcher = self;
        async move {
            // Read when first polled, not when the future is made: Mux sub-sessions are created outside
            // the inbound's sniffing scope and run inside it (InboundMux::stream).
            let sniffing = current_sniffing();
            let mut stream = stream;
            if serve_mux && session.target.address.domain() == Some(MUX_COOL_DOMAIN) {
                // Every inbound serves Mux.Cool for this magic target, as V2Ray's do; the carrier itself
                // is not sniffed, its sub-sessions are (4.34's Mux server dispatches them with its context).
                let handler = Arc::new(InboundMux { dispatcher: dispatcher.clone(), carrier: *session, sniffing });
                Box::pin(async move { MuxServer::start(stream, handler).closed().await }).await;
                return finish(Ok(RelayStats::default()));
            }
            if let Some(s) = &sniffing
                && session.target.network == Network::Tcp
            {
                stream = Box::pin(sniff(s, &mut session, stream)).await;
            }
            let table = dispatcher.table();
            // Boxed: routing's state (DNS lookups included) is the largest in this future, and an
            // inline one would be carried by every flow's task for its whole life (~1.3 KiB).
            let (tag, outbound) = match Box::pin(dispatcher.pick_in(&table, &session)).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(session = session.id, target = %session.target, "rejected: {e}");
                    return finish(Err(format!("rejected: {e}")));
                }
            };
            access_line(&dispatcher.access, &session, &tag);
            let user = session.user.as_ref().and_then(|u| u.email.as_ref());
            let (p, inbound) = (&session.policy, session.inbound_tag.as_deref());
            let flow =
                table.traffic.user_flow(inbound, &tag, user.map(|e| (e, p.stats_user_uplink, p.stats_user_downlink)));
            drop(table);
            if dispatcher.metering && session.meter.is_none() {
                session.meter = Some(Arc::new(crate::session::Meter::new()));
            }
            let (id, target, meter) = (session.id, session.target.clone(), session.meter.clone());
            // Adds the flow's bytes to `flow` (once a second while it lives when metering), however it
            // ends. The flushing loop's timer is boxed, so a flow without one does not carry its space.
            let handled = outbound.handle(*session, stream);
            let result = if dispatcher.metering {
                Box::pin(crate::stats::run_flushing(handled, &flow, meter.as_deref())).await
            } else {
                let r = handled.await;
                crate::stats::settle(&r, &flow, meter.as_deref(), (0, 0));
                r
            };
            finish(match result {
                Ok(stats) => {
                    debug!(session = id, %target, up = stats.uplink, down = stats.downlink, "closed");
                    Ok(stats)
                }
                Err(e) => {
                    info!(session = id, %target, outbound = &*tag, "connection ends: {e}");
                    Err(e.to_string())
                }
            })
        }
    }

    /// Routes a session and opens a stream to its target through the chosen outbound (the bridge dials
    /// its portal this way).
    pub async fn connect(&self, mut session: Session) -> Result<BoxStream, ProxyError> {
        self.prepare(&mut session);
        let (tag, outbound) = self.pick(&session).await?;
        debug!(session = session.id, target = %session.target, outbound = &*tag, "taking detour");
        outbound.connect(&session).await
    }

    /// Routes a datagram session and opens a packet flow through the chosen outbound.
    pub async fn connect_packet(&self, mut session: Session) -> Result<BoxPacketConn, ProxyError> {
        self.prepare(&mut session);
        let (tag, outbound) = self.pick(&session).await?;
        access_line(&self.access, &session, &tag);
        outbound.connect_packet(&session).await
    }
}

/// The built-in resolver's queries are routed like any flow from its tag, without an access line (4.34).
#[async_trait]
impl crate::dns::Upstream for Dispatcher {
    async fn open_udp(&self, tag: Arc<str>, target: crate::session::Destination) -> Result<BoxPacketConn, ProxyError> {
        let mut session = Session::new(Some(tag), None, target);
        self.prepare(&mut session);
        let (out, outbound) = self.pick(&session).await?;
        debug!(target = %session.target, outbound = &*out, "dns: query taking detour");
        outbound.connect_packet(&session).await
    }

    async fn open_stream(&self, tag: Arc<str>, target: crate::session::Destination) -> Result<BoxStream, ProxyError> {
        self.connect(Session::new(Some(tag), None, target)).await
    }
}

/// V2Ray's access-log shape, `127.0.0.1:51860 accepted tcp:127.0.0.1:80 [external -> portal]`, with
/// the inbound tag before the outbound's (4.34 writes only `[portal]`) and `-` for no source. As in
/// 4.34, an outbound without a tag gives no brackets at all.
fn access_line(access: &AccessLog, session: &Session, outbound_tag: &str) {
    // Runs once per connection: build nothing when no access log listens. Nothing here needs escaping
    // against forged lines: a peer controls only the destination, and a domain from the wire is
    // `[0-9A-Za-z._-]` or refused (`wire::get_port_addr`, for VMess and Mux); tags and emails come from
    // the config.
    if !access.is_on() {
        return;
    }
    let email = session.user.as_ref().and_then(|u| u.email.as_deref()).unwrap_or("");
    let from: &dyn std::fmt::Display = match &session.source {
        Some(addr) => addr,
        None => &"-",
    };
    let (target, mail) = (&session.target, if email.is_empty() { "" } else { " email: " });
    match (outbound_tag, session.inbound_tag.as_deref()) {
        ("", _) => access.line(format_args!("{from} accepted {target}{mail}{email}")),
        (out, Some(inbound)) => access.line(format_args!("{from} accepted {target} [{inbound} -> {out}]{mail}{email}")),
        (out, None) => access.line(format_args!("{from} accepted {target} [{out}]{mail}{email}")),
    }
}

/// Dispatches the sessions of a Mux.Cool connection that arrived on an inbound; each keeps the carrier's
/// inbound tag, source and user.
struct InboundMux {
    dispatcher: Arc<Dispatcher>,
    carrier: Session,
    /// The carrier's inbound's `sniffing`, for each TCP sub-session.
    sniffing: Option<Arc<SniffingConfig>>,
}

impl InboundMux {
    fn session(&self, target: crate::session::Destination) -> Session {
        let mut s = Session::new(self.carrier.inbound_tag.clone(), self.carrier.source, target);
        s.user = self.carrier.user.clone();
        s
    }
}

#[async_trait]
impl MuxHandler for InboundMux {
    async fn stream(&self, target: crate::session::Destination, stream: MuxStream) {
        let mut session = self.session(target);
        session.carrier = Some(stream.carrier_hold());
        let sub = self.dispatcher.dispatch_sub(session, Box::new(stream));
        match &self.sniffing {
            Some(s) => SNIFFING.scope(s.clone(), sub).await,
            None => sub.await,
        }
    }

    async fn packet(&self, target: crate::session::Destination, packet: MuxPacket) {
        match self.dispatcher.connect_packet(self.session(target)).await {
            Ok(upstream) => {
                let linger = self.dispatcher.policy(self.carrier.level()).downlink_only;
                relay_packets(&packet, upstream.as_ref(), linger).await
            }
            Err(e) => debug!("mux udp session refused: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Address, Destination};

    fn line_for(inbound: Option<&str>, source: bool, outbound: &str) -> String {
        let log = AccessLog::in_memory();
        let target = Destination::tcp(Address::parse("example.com"), 443);
        let source = source.then(|| std::net::SocketAddr::from(([127, 0, 0, 1], 5000)));
        access_line(&log, &Session::new(inbound.map(Arc::from), source, target), outbound);
        let text = log.written();
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text:?}");
        text.trim_end()[20..].to_string()
    }

    #[test]
    fn access_lines_name_the_route_as_far_as_it_has_tags() {
        assert_eq!(line_for(Some("in"), true, "out"), "127.0.0.1:5000 accepted tcp:example.com:443 [in -> out]");
        assert_eq!(line_for(None, true, "out"), "127.0.0.1:5000 accepted tcp:example.com:443 [out]");
        assert_eq!(line_for(Some("in"), false, ""), "- accepted tcp:example.com:443");
        assert_eq!(line_for(None, true, ""), "127.0.0.1:5000 accepted tcp:example.com:443");
    }
}
