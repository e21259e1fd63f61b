//! What routing and logging know about one connection: where it came from and where it goes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::config::LevelPolicy;

/// A target host: an IP address or a domain name kept as given (never resolved unless routing asks).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A domain name, compared case-sensitively as V2Ray does.
    Domain(Arc<str>),
}

impl Address {
    /// Parses a host: an IP literal (IPv6 with or without brackets) becomes `Ip`, anything else `Domain`.
    pub fn parse(host: &str) -> Address {
        let trimmed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        match trimmed.parse::<IpAddr>() {
            Ok(ip) => Address::Ip(canonical_ip(ip)),
            Err(_) => Address::Domain(Arc::from(host)),
        }
    }

    /// The domain, if this address is one.
    pub fn domain(&self) -> Option<&str> {
        match self {
            Address::Domain(d) => Some(d),
            Address::Ip(_) => None,
        }
    }

    /// The IP, if this address is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Ip(ip) => Some(*ip),
            Address::Domain(_) => None,
        }
    }
}

/// Maps IPv4-mapped IPv6 addresses to IPv4, as V2Ray does on parse.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl From<IpAddr> for Address {
    fn from(ip: IpAddr) -> Self {
        Address::Ip(canonical_ip(ip))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Address::Ip(ip) => write!(f, "{ip}"),
            Address::Domain(d) => f.write_str(d),
        }
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Transport-level network of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    /// A reliable byte stream.
    Tcp,
    /// Datagrams.
    Udp,
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Tcp => "tcp",
            Network::Udp => "udp",
        })
    }
}

/// Where a flow goes: network, host and port.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// TCP or UDP.
    pub network: Network,
    /// Host.
    pub address: Address,
    /// Port (0 is a valid target: the reverse bridge dials `<domain>:0`).
    pub port: u16,
}

impl Destination {
    /// A TCP destination.
    pub fn tcp(address: Address, port: u16) -> Self {
        Destination { network: Network::Tcp, address, port }
    }

    /// A UDP destination.
    pub fn udp(address: Address, port: u16) -> Self {
        Destination { network: Network::Udp, address, port }
    }
}

/// V2Ray's `tcp:host:port` spelling, used in logs.
impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.network, self.address, self.port)
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An authenticated user of an inbound (VMess client). Never holds the secret id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// The configured `email`, used by routing's `user` condition and the access log.
    pub email: Option<Arc<str>>,
    /// Policy level.
    pub level: u32,
}

/// Everything routing needs to know about one flow, plus its policy.
#[derive(Clone, Debug)]
pub struct Session {
    /// Id for correlating log lines; the dispatcher assigns it (0 until dispatched).
    pub id: u64,
    /// Tag of the inbound (or bridge) the flow came from.
    pub inbound_tag: Option<Arc<str>>,
    /// The peer address as the inbound saw it; none for internally generated flows.
    pub source: Option<SocketAddr>,
    /// Where the flow should go.
    pub target: Destination,
    /// The authenticated user, if the inbound has users.
    pub user: Option<User>,
    /// Timeouts and buffer sizes for this flow; the dispatcher fills it from the user level.
    pub policy: LevelPolicy,
    /// Live byte counts for the operations view; the relay flushes into it (None: not counted live).
    pub meter: Option<Arc<Meter>>,
    /// Set on carriers (reverse tunnels, mux outbound connections, and every VMess inbound connection):
    /// the VMess stream built for this flow counts its AEAD chunks here, so the Mux layer above can
    /// retire the carrier before a nonce counter runs out. None elsewhere.
    pub wear: Option<Arc<Wear>>,
    /// Set on sessions carried by a Mux connection: whether its reader is holding frames back on
    /// purpose, so the relay does not take the silence for an idle far end. None elsewhere.
    pub carrier: Option<Arc<CarrierHold>>,
    /// The protocol the dispatcher sniffed from the first bytes (`http1`, `tls`, `bittorrent`), for the
    /// `protocol` routing condition; None when not sniffed or nothing was recognised.
    pub protocol: Option<&'static str>,
    /// Set when one end of the flow is a Mux session and the other a plain TCP socket: the session's
    /// reader writes small payloads straight into the socket, and the relay counts them from here.
    pub bypass: Option<Arc<Bypass>>,
}

/// Bytes that crossed a relay without passing through it: a Mux connection's reader wrote them
/// straight into the flow's TCP socket (one task wake-up and one copy less per message). The relay
/// takes them as its own progress (idle limits) and totals; the meter, if any, counts them live.
#[derive(Debug)]
pub struct Bypass {
    /// The bytes go client → target (else target → client).
    uplink: bool,
    bytes: AtomicU64,
    /// The last write (the relay's idle clock).
    last: LastActivity,
    meter: Option<Arc<Meter>>,
}

impl Bypass {
    pub fn new(uplink: bool, meter: Option<Arc<Meter>>) -> Self {
        Bypass { uplink, bytes: 0.into(), last: LastActivity::new(), meter }
    }

    /// `n` more bytes were written past the relay.
    pub fn add(&self, n: u64) {
        let now = tokio::time::Instant::now();
        self.last.touch(now);
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(m) = &self.meter {
            m.add_bypass(self.uplink, n, now.into_std());
        }
    }

    /// When the last bytes were written past the relay (its start when none were).
    pub fn last(&self) -> tokio::time::Instant {
        self.last.last()
    }

    /// Bytes written past the relay so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether they count as uplink (client → target).
    pub fn uplink(&self) -> bool {
        self.uplink
    }
}

/// When something last happened, in ms after creation: one atomic store per event, readable from any
/// thread (a tunnel's last received bytes, a relay's last bypassed write).
#[derive(Debug)]
pub struct LastActivity {
    start: tokio::time::Instant,
    ms: AtomicU64,
}

impl Default for LastActivity {
    fn default() -> Self {
        Self::new()
    }
}

impl LastActivity {
    /// Started now; [`LastActivity::last`] is now until the first touch.
    pub fn new() -> Self {
        LastActivity { start: tokio::time::Instant::now(), ms: AtomicU64::new(0) }
    }

    /// Something happened at `now`.
    pub fn touch(&self, now: tokio::time::Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX);
        self.ms.store(ms, Ordering::Relaxed);
    }

    /// When it last happened (to the millisecond below).
    pub fn last(&self) -> tokio::time::Instant {
        self.start + std::time::Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }
}

/// A session's live byte counts. The relay keeps plain totals on its own stack and stores them here
/// when a poll moved data: one writer, relaxed stores, no wrapper around the streams.
#[derive(Debug)]
pub struct Meter {
    started: std::time::Instant,
    uplink: AtomicU64,
    downlink: AtomicU64,
    /// Bytes that went past the relay (see [`Bypass`]), added by their writer.
    bypass_up: AtomicU64,
    bypass_down: AtomicU64,
    /// Milliseconds after `started` of the last byte moved.
    last_ms: AtomicU64,
}

impl Default for Meter {
    fn default() -> Self {
        Meter::new()
    }
}

impl Meter {
    /// A meter started now.
    pub fn new() -> Self {
        Meter {
            started: std::time::Instant::now(),
            uplink: 0.into(),
            downlink: 0.into(),
            bypass_up: 0.into(),
            bypass_down: 0.into(),
            last_ms: 0.into(),
        }
    }

    /// Stores the relay's running totals (called by the relay only).
    pub fn flush(&self, uplink: u64, downlink: u64, at: std::time::Instant) {
        self.uplink.store(uplink, Ordering::Relaxed);
        self.downlink.store(downlink, Ordering::Relaxed);
        self.touch(at);
    }

    /// Adds bytes written past the relay (see [`Bypass`]).
    fn add_bypass(&self, uplink: bool, n: u64, at: std::time::Instant) {
        (if uplink { &self.bypass_up } else { &self.bypass_down }).fetch_add(n, Ordering::Relaxed);
        self.touch(at);
    }

    fn touch(&self, at: std::time::Instant) {
        let ms = at.saturating_duration_since(self.started).as_millis();
        self.last_ms.fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Bytes client → target so far.
    pub fn uplink(&self) -> u64 {
        self.uplink.load(Ordering::Relaxed) + self.bypass_up.load(Ordering::Relaxed)
    }

    /// Bytes target → client so far.
    pub fn downlink(&self) -> u64 {
        self.downlink.load(Ordering::Relaxed) + self.bypass_down.load(Ordering::Relaxed)
    }

    /// Time since the meter started.
    pub fn age(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Time since the last byte moved (since the start when none did).
    pub fn idle(&self) -> std::time::Duration {
        let last = self.started + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        last.elapsed()
    }
}

/// A Mux connection's reader waits for a full session before it reads on (back-pressure, bounded by
/// the Mux layer): meanwhile every other session on it hears nothing. The relay of such a session asks
/// this before cutting it for a short (half-close) idle limit.
#[derive(Debug)]
pub struct CarrierHold {
    start: tokio::time::Instant,
    /// Milliseconds after `start` until which the carrier counts as holding back; 0: never held.
    until_ms: std::sync::atomic::AtomicU64,
}

impl CarrierHold {
    /// After a wait, its sessions' frames are still behind the released ones for a moment.
    const GRACE: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new() -> Self {
        CarrierHold { start: tokio::time::Instant::now(), until_ms: 0.into() }
    }

    /// The reader waits until `deadline` at most.
    pub fn hold_until(&self, deadline: tokio::time::Instant) {
        let ms = (deadline + Self::GRACE).saturating_duration_since(self.start).as_millis();
        self.until_ms.fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), std::sync::atomic::Ordering::Relaxed);
    }

    /// True while the reader waits, or did within [`Self::GRACE`].
    pub fn is_held(&self) -> bool {
        let until = self.until_ms.load(std::sync::atomic::Ordering::Relaxed);
        until > 0 && self.start.elapsed().as_millis() < u128::from(until)
    }
}

impl Default for CarrierHold {
    fn default() -> Self {
        Self::new()
    }
}

/// How much of a VMess stream's nonce space is used, per direction: shared between the stream that
/// counts its AEAD chunks and the Mux connection that runs over it (it retires a worn carrier).
#[derive(Debug, Default)]
pub struct Wear {
    sealed: AtomicU32,
    opened: AtomicU32,
    /// Set when a direction first reaches the mark, so [`Wear::worn`] wakes its waiters once.
    announced: AtomicBool,
    became_worn: tokio::sync::Notify,
}

impl Wear {
    /// A carrier counts as worn at 3/4 of the 65,536 nonces of a direction: the remaining quarter lets
    /// the sessions still on it finish while new ones go to its replacement.
    pub const RETIRE_AT: u32 = 49_152;

    /// A fresh, shareable counter.
    pub fn new() -> Arc<Wear> {
        Arc::new(Wear::default())
    }

    /// Records the chunk counts of the stream's two directions.
    pub fn record(&self, sealed: u32, opened: u32) {
        self.sealed.store(sealed, Ordering::Relaxed);
        self.opened.store(opened, Ordering::Relaxed);
        self.announce(sealed.max(opened));
    }

    /// Records the sealing direction's count.
    pub fn record_sealed(&self, n: u32) {
        self.sealed.store(n, Ordering::Relaxed);
        self.announce(n);
    }

    /// Records the opening direction's count.
    pub fn record_opened(&self, n: u32) {
        self.opened.store(n, Ordering::Relaxed);
        self.announce(n);
    }

    /// Per chunk this is one comparison; the swap runs once a direction is past the mark.
    fn announce(&self, n: u32) {
        if n >= Self::RETIRE_AT
            && !self.announced.load(Ordering::Relaxed)
            && !self.announced.swap(true, Ordering::AcqRel)
        {
            self.became_worn.notify_waiters();
        }
    }

    /// Resolves once the carrier is worn: the portal sends DRAIN and the bridge dials a replacement then,
    /// not at their next 2 s tick.
    pub async fn worn(&self) {
        loop {
            let woken = self.became_worn.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_worn() {
                return;
            }
            woken.await;
        }
    }

    /// Chunks sealed and opened so far.
    pub fn chunks(&self) -> (u32, u32) {
        (self.sealed.load(Ordering::Relaxed), self.opened.load(Ordering::Relaxed))
    }

    /// True once either direction has reached [`Wear::RETIRE_AT`].
    pub fn is_worn(&self) -> bool {
        let (s, o) = self.chunks();
        s.max(o) >= Self::RETIRE_AT
    }
}

impl Session {
    /// A new session with default policy; the dispatcher gives it an id.
    pub fn new(inbound_tag: Option<Arc<str>>, source: Option<SocketAddr>, target: Destination) -> Self {
        Session {
            id: 0,
            inbound_tag,
            source,
            target,
            user: None,
            policy: LevelPolicy::default(),
            meter: None,
            wear: None,
            carrier: None,
            protocol: None,
            bypass: None,
        }
    }

    /// The policy level: the user's, or 0.
    pub fn level(&self) -> u32 {
        self.user.as_ref().map_or(0, |u| u.level)
    }
}
