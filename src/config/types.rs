//! The validated, typed configuration: the contract between the config layer and the rest of oxray.
//! Everything here has already been checked; the code that consumes it trusts it.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::session::Address;
pub use crate::transport::StreamSettings;

/// A whole oxray/V2Ray configuration after validation.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `log`.
    pub log: LogConfig,
    /// `inbounds` (legacy `inbound`/`inboundDetour` first).
    pub inbounds: Vec<InboundConfig>,
    /// `outbounds` in order; the first is the default.
    pub outbounds: Vec<OutboundConfig>,
    /// `routing`.
    pub routing: RoutingConfig,
    /// `policy`.
    pub policy: PolicyConfig,
    /// `reverse`.
    pub reverse: ReverseConfig,
    /// `dns`, when the config has one (else lookups use the system resolver).
    pub dns: Option<super::DnsConfig>,
    /// `ops` (oxray extension): the operations listener; None = off.
    pub ops: Option<OpsConfig>,
    /// `stats` present (an object): counters exist and the API's StatsService reports them.
    pub stats: bool,
    /// `api`: the gRPC API served to connections routed to its tag.
    pub api: Option<ApiConfig>,
    /// Values that load but deserve the user's attention (e.g. an unknown `security`, taken as auto).
    pub warnings: Vec<super::ConfigError>,
}

/// `log.loglevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// Connections and lifecycle.
    Info,
    /// V2Ray's default.
    #[default]
    Warning,
    /// Errors only.
    Error,
    /// Nothing at all (also turns the access log off).
    None,
}

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LogTarget {
    /// Not written.
    #[default]
    Off,
    /// Standard output, as V2Ray does.
    Console,
    /// Appended to this file.
    File(PathBuf),
}

/// `log`. With no `log` object: level warning, access off, error to console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Error-log level.
    pub level: LogLevel,
    /// Access log (one line per connection).
    pub access: LogTarget,
    /// Error log.
    pub error: LogTarget,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: LogLevel::Warning, access: LogTarget::Off, error: LogTarget::Console }
    }
}

/// A set of networks (`"tcp"`, `"udp"`, `"tcp,udp"`, or a list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetworkList {
    /// Includes TCP.
    pub tcp: bool,
    /// Includes UDP.
    pub udp: bool,
}

/// A UUID that never shows in Debug or Display output (it is the user's secret).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretId(pub [u8; 16]);

impl fmt::Debug for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretId(<redacted>)")
    }
}

/// One entry of `inbounds`.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// `tag`.
    pub tag: Option<String>,
    /// `listen` (default 0.0.0.0; "localhost" becomes 127.0.0.1).
    pub listen: IpAddr,
    /// `port`: one port or an inclusive range; every port in it is listened on.
    pub port: PortRange,
    /// `protocol` + `settings`.
    pub protocol: InboundProtocol,
    /// `streamSettings`.
    pub stream: StreamSettings,
    /// JSON path of this inbound, e.g. `inbounds[1]`, for run-time messages.
    pub path: String,
    /// `sniffing` (or the older `domainOverride`) when enabled; None: no sniffing.
    pub sniffing: Option<SniffingConfig>,
}

/// An inbound's enabled `sniffing`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SniffingConfig {
    /// `destOverride`, normalised as 4.34 does (`http`, `tls`): a sniffed protocol whose name starts
    /// with an entry replaces the destination address. Empty: sniff for `protocol` rules only.
    pub dest_override: Vec<String>,
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (== first for a single port).
    pub last: u16,
}

/// An inbound protocol with its settings.
#[derive(Debug, Clone)]
pub enum InboundProtocol {
    /// `dokodemo-door`.
    Dokodemo(DokodemoConfig),
    /// `vmess`.
    Vmess(VmessInboundConfig),
    /// `socks`.
    Socks(super::SocksInboundConfig),
    /// `http`.
    Http(super::HttpInboundConfig),
    /// `shadowsocks`.
    Shadowsocks(super::ShadowsocksInboundConfig),
    /// `vless`.
    Vless(super::VlessInboundConfig),
    /// `trojan`.
    Trojan(super::TrojanInboundConfig),
}

/// `dokodemo-door` settings.
#[derive(Debug, Clone)]
pub struct DokodemoConfig {
    /// Fixed target address (None only with `followRedirect`).
    pub address: Option<Address>,
    /// Fixed target port.
    pub port: u16,
    /// Networks to accept (default TCP).
    pub network: NetworkList,
    /// Take the target from SO_ORIGINAL_DST.
    pub follow_redirect: bool,
    /// Legacy idle timeout (replaces connIdle when user level is 0); None = unused.
    pub timeout: Option<Duration>,
    /// Policy level of the flows.
    pub user_level: u32,
}

/// `vmess` inbound settings.
#[derive(Debug, Clone, Default)]
pub struct VmessInboundConfig {
    /// `clients`.
    pub clients: Vec<VmessClientConfig>,
    /// `default.alterId` / `default.level` (for users created on the fly; kept for completeness).
    pub default_alter_id: u16,
    /// `default.level`.
    pub default_level: u32,
    /// `disableInsecureEncryption`.
    pub disable_insecure_encryption: bool,
}

/// One VMess user on a server.
#[derive(Debug, Clone)]
pub struct VmessClientConfig {
    /// `id`.
    pub id: SecretId,
    /// `alterId` (0 = AEAD only).
    pub alter_id: u16,
    /// `level`.
    pub level: u32,
    /// `email`.
    pub email: Option<String>,
}

/// One entry of `outbounds`.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// `tag`.
    pub tag: Option<String>,
    /// `protocol` + `settings`.
    pub protocol: OutboundProtocol,
    /// `mux`, when enabled (concurrency already checked to be 1..=1024).
    pub mux: Option<MuxConfig>,
    /// `sendThrough`: local IP to bind before dialing.
    pub send_through: Option<IpAddr>,
    /// `streamSettings`.
    pub stream: StreamSettings,
    /// JSON path, e.g. `outbounds[0]`.
    pub path: String,
}

/// An outbound protocol with its settings.
#[derive(Debug, Clone)]
pub enum OutboundProtocol {
    /// `freedom`.
    Freedom(FreedomConfig),
    /// `blackhole`.
    Blackhole(BlackholeConfig),
    /// `vmess`.
    Vmess(VmessOutboundConfig),
    /// `dns`.
    Dns(super::DnsOutboundConfig),
    /// `socks`.
    Socks(super::ProxyClientConfig),
    /// `http`.
    Http(super::ProxyClientConfig),
    /// `shadowsocks`.
    Shadowsocks(super::ShadowsocksClientConfig),
    /// `vless`.
    Vless(super::VlessOutboundConfig),
    /// `trojan`.
    Trojan(super::TrojanOutboundConfig),
}

/// `freedom.domainStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FreedomDomainStrategy {
    /// Dial the domain as is (the OS resolves it).
    #[default]
    AsIs,
    /// Resolve first, any family.
    UseIp,
    /// Resolve to IPv4 only.
    UseIpv4,
    /// Resolve to IPv6 only.
    UseIpv6,
}

/// `freedom` settings.
#[derive(Debug, Clone, Default)]
pub struct FreedomConfig {
    /// `domainStrategy`.
    pub domain_strategy: FreedomDomainStrategy,
    /// `redirect` host (None: keep the target's host; `0.0.0.0` also means keep).
    pub redirect_host: Option<Address>,
    /// `redirect` port (0: keep the target's port).
    pub redirect_port: u16,
    /// `userLevel`.
    pub user_level: u32,
}

/// `blackhole.response.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlackholeResponse {
    /// Close without a word.
    #[default]
    None,
    /// Send an HTTP 403 first.
    Http,
}

/// `blackhole` settings.
#[derive(Debug, Clone, Default)]
pub struct BlackholeConfig {
    /// `response.type`.
    pub response: BlackholeResponse,
}

/// VMess body security as configured on a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmessSecurity {
    /// AES-128-GCM where the CPU has AES instructions, else ChaCha20-Poly1305.
    #[default]
    Auto,
    /// `aes-128-gcm`.
    Aes128Gcm,
    /// `chacha20-poly1305`.
    Chacha20Poly1305,
    /// `none`: plain length-prefixed chunks.
    None,
    /// `zero` (v5): security NONE without chunking.
    Zero,
}

/// `vmess` outbound settings.
#[derive(Debug, Clone)]
pub struct VmessOutboundConfig {
    /// `vnext`: at least one server, each with at least one user.
    pub servers: Vec<VmessServerConfig>,
}

/// One `vnext` entry.
#[derive(Debug, Clone)]
pub struct VmessServerConfig {
    /// `address`.
    pub address: Address,
    /// `port`.
    pub port: u16,
    /// `users`.
    pub users: Vec<VmessUserConfig>,
}

/// One user of a `vnext` server.
#[derive(Debug, Clone)]
pub struct VmessUserConfig {
    /// `id`.
    pub id: SecretId,
    /// `alterId` (0 = AEAD header, >0 = legacy header).
    pub alter_id: u16,
    /// `security` (unknown strings are Auto).
    pub security: VmessSecurity,
    /// `level`.
    pub level: u32,
    /// `email`.
    pub email: Option<String>,
}

/// `mux` on an outbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxConfig {
    /// Max active sessions per connection, 1..=1024 (default 8).
    pub concurrency: u16,
}

/// `routing.domainStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingDomainStrategy {
    /// Match domains only as names.
    #[default]
    AsIs,
    /// If no rule matches a domain target, resolve it and try the IP rules again.
    IpIfNonMatch,
    /// Resolve a domain target as soon as an IP rule needs it.
    IpOnDemand,
}

/// `routing`.
#[derive(Debug, Clone, Default)]
pub struct RoutingConfig {
    /// `domainStrategy`.
    pub domain_strategy: RoutingDomainStrategy,
    /// `rules`, in order; first match wins.
    pub rules: Vec<RuleConfig>,
    /// `balancers` (a later one with the same tag wins, as in 4.34).
    pub balancers: Vec<BalancerConfig>,
}

/// One `routing.balancers` entry.
#[derive(Debug, Clone, Default)]
pub struct BalancerConfig {
    /// `tag`, named by rules' `balancerTag`.
    pub tag: String,
    /// `selector`: tag prefixes.
    pub selector: Vec<String>,
    /// The outbound and portal tags that start with a selector (the first outbound included), in
    /// outbound order: one is picked at random per connection. Empty → the default outbound.
    pub candidates: Vec<String>,
}

/// One domain condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainMatcher {
    /// Plain string or `keyword:`: substring.
    Keyword(String),
    /// `full:`: exact.
    Full(String),
    /// `domain:`: the domain or any subdomain.
    Domain(String),
    /// `regexp:`: RE2-style search.
    Regexp(String),
    /// `geosite:`/`ext:`: a list from a .dat file (shared between the rules that name it).
    Geo(std::sync::Arc<crate::router::geo::GeoSiteList>),
}

/// An inclusive list of port ranges (`"53,443,1000-2000"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<(u16, u16)>);

impl PortList {
    /// True if `port` is in any range.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(a, b)| a <= port && port <= b)
    }
}

/// One `type: "field"` rule. Empty lists / None mean "no condition". At least one condition is set.
#[derive(Debug, Clone, Default)]
pub struct RuleConfig {
    /// `outboundTag` (empty when the rule uses a balancer).
    pub outbound_tag: String,
    /// `balancerTag` (used only when `outboundTag` is empty; checked to name a balancer).
    pub balancer_tag: String,
    /// `inboundTag`.
    pub inbound_tag: Vec<String>,
    /// `domain` / `domains`.
    pub domain: Vec<DomainMatcher>,
    /// `ip`.
    pub ip: Vec<IpNet>,
    /// `ip` entries that name geoip lists (`geoip:cn`, `ext:file:code`).
    pub geoip: Vec<std::sync::Arc<crate::router::geo::GeoIpList>>,
    /// `port`.
    pub port: Option<PortList>,
    /// `sourcePort`.
    pub source_port: Option<PortList>,
    /// `network`.
    pub network: Option<NetworkList>,
    /// `source`.
    pub source: Vec<IpNet>,
    /// `source` entries that name geoip lists.
    pub source_geoip: Vec<std::sync::Arc<crate::router::geo::GeoIpList>>,
    /// `user` (emails).
    pub user: Vec<String>,
    /// `protocol`: prefixes of the sniffed protocol name (`http1`, `tls`, `bittorrent`).
    pub protocol: Vec<String>,
    /// `attrs` (a Starlark expression over HTTP-inbound attributes; oxray has no HTTP inbound, so such a
    /// rule never matches, as in 4.34 for every other inbound).
    pub attrs: Option<String>,
    /// JSON path, e.g. `routing.rules[2]`.
    pub path: String,
}

/// Timeouts and buffering of one policy level. Defaults are V2Ray 4.34's code defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelPolicy {
    /// Time allowed for an inbound handshake.
    pub handshake: Duration,
    /// Idle time (no traffic either way) before a connection is closed.
    pub conn_idle: Duration,
    /// Idle limit once the downlink has finished.
    pub uplink_only: Duration,
    /// Idle limit once the uplink has finished.
    pub downlink_only: Duration,
    /// Per-connection buffer in bytes (None = unlimited / default).
    pub buffer_size: Option<usize>,
    /// `statsUserUplink`: count `user>>>EMAIL>>>traffic>>>uplink` (with `stats`).
    pub stats_user_uplink: bool,
    /// `statsUserDownlink`.
    pub stats_user_downlink: bool,
}

impl Default for LevelPolicy {
    fn default() -> Self {
        LevelPolicy {
            handshake: Duration::from_secs(60),
            conn_idle: Duration::from_secs(300),
            uplink_only: Duration::from_secs(1),
            downlink_only: Duration::from_secs(1),
            buffer_size: None,
            stats_user_uplink: false,
            stats_user_downlink: false,
        }
    }
}

/// `policy`.
#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// `levels`, already merged with the defaults.
    pub levels: HashMap<u32, LevelPolicy>,
    /// `system`.
    pub system: SystemPolicy,
}

/// `policy.system`: which inbound/outbound counters exist (with `stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemPolicy {
    /// `statsInboundUplink`.
    pub inbound_uplink: bool,
    /// `statsInboundDownlink`.
    pub inbound_downlink: bool,
    /// `statsOutboundUplink`.
    pub outbound_uplink: bool,
    /// `statsOutboundDownlink`.
    pub outbound_downlink: bool,
}

/// `api`: `{"tag": "api", "services": ["StatsService"]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// The outbound tag whose connections are served as gRPC.
    pub tag: String,
    /// `StatsService` is listed (the only service oxray implements).
    pub stats_service: bool,
}

impl PolicyConfig {
    /// The policy for a level (defaults for levels not configured).
    pub fn level(&self, level: u32) -> LevelPolicy {
        self.levels.get(&level).copied().unwrap_or_default()
    }
}

/// `reverse`.
#[derive(Debug, Clone, Default)]
pub struct ReverseConfig {
    /// `bridges`.
    pub bridges: Vec<BridgeConfig>,
    /// `portals`.
    pub portals: Vec<PortalConfig>,
}

/// Scaling constants of the reverse proxy (oxray extensions; defaults are V2Ray's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReverseTuning {
    /// Bridge: add a tunnel when active sessions per tunnel exceed this (V2Ray: 16).
    pub sessions_per_tunnel: u32,
    /// Portal: drain a tunnel once it has carried more than this many sessions (V2Ray: 256).
    pub drain_after: u32,
    /// Heartbeat / monitor period (V2Ray: 2 s).
    pub heartbeat: Duration,
    /// Bridge: a tunnel with nothing from the portal for this long is dead (`silenceSeconds`); None =
    /// three of the portal's heartbeat periods (as measured) plus 1 s.
    pub silence: Option<Duration>,
    /// Bridge: per-attempt connect deadline of tunnel dials (`connectTimeoutSeconds`).
    pub connect_timeout: Duration,
}

impl Default for ReverseTuning {
    fn default() -> Self {
        ReverseTuning {
            sessions_per_tunnel: 16,
            drain_after: 256,
            heartbeat: Duration::from_secs(2),
            silence: None,
            connect_timeout: crate::transport::CONNECT_TIMEOUT,
        }
    }
}

/// One `reverse.bridges` entry.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// `tag`: the inbound tag of every flow the bridge creates.
    pub tag: String,
    /// `domain`: the target domain of the tunnel dial.
    pub domain: String,
    /// oxray extensions.
    pub tuning: ReverseTuning,
}

/// One `reverse.portals` entry.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// `tag`: registered as an outbound tag.
    pub tag: String,
    /// `domain`: streams to this domain are bridge tunnels.
    pub domain: String,
    /// `internalDomain` (oxray extension): the control-session domain the portal announces.
    /// Default `reverse.internal.v2fly.org` (v5); set `reverse.internal.v2ray.com` for a V2Ray 4.x bridge.
    pub internal_domain: String,
    /// oxray extensions.
    pub tuning: ReverseTuning,
}

/// `ops` (oxray extension, ignored by V2Ray): the operations listener (status, metrics, readiness, page).
#[derive(Clone, PartialEq, Eq)]
pub struct OpsConfig {
    /// `listen`: `host:port`; loopback unless `allowRemote`.
    pub listen: std::net::SocketAddr,
    /// `token`: when set, every request needs `Authorization: Bearer <token>` (or `?token=`).
    pub token: Option<String>,
    /// `allowRemote`: permit a non-loopback `listen`.
    pub allow_remote: bool,
}

/// Never prints the token.
impl fmt::Debug for OpsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpsConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allow_remote", &self.allow_remote)
            .finish()
    }
}
