//! `streamSettings` as a typed, validated value: what the config loader produces and the transport
//! layer builds listeners and dialers from. Plain data, so the loader and the data path do not import
//! each other.

use super::sockopt::SocketOpts;

/// The transport of a stream (`streamSettings.network`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TransportKind {
    /// Plain TCP (with `tcpSettings` in [`StreamSettings::tcp`]).
    #[default]
    Tcp,
    /// WebSocket (`"ws"` / `"websocket"`).
    Ws(WsSettings),
}

/// `wsSettings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    /// The normalized path (leading `/` added), query included as configured: a client sends it,
    /// a server compares only the part before `?`.
    pub path: String,
    /// Client request headers, names canonicalised as Go does (`x-test` → `X-Test`), in config order.
    pub headers: Vec<(String, String)>,
    /// `wsSettings.acceptProxyProtocol`: a PROXY protocol header must precede each connection.
    pub accept_proxy_protocol: bool,
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings { path: "/".into(), headers: Vec::new(), accept_proxy_protocol: false }
    }
}

/// `tcpSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpSettings {
    /// `header` of type `http` (None: `none`).
    pub http_header: Option<HttpHeaderSettings>,
    /// `tcpSettings.acceptProxyProtocol`.
    pub accept_proxy_protocol: bool,
}

/// `tcpSettings.header` with `type: "http"`: one fake request and response per connection. Every
/// list holds the alternatives one is picked from at random per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHeaderSettings {
    /// `request.version` (default `1.1`).
    pub request_version: String,
    /// `request.method` (default `GET`).
    pub request_method: String,
    /// `request.path` (default `["/"]`); the server accepts exactly these paths.
    pub request_paths: Vec<String>,
    /// `request.headers`, in the order they are written.
    pub request_headers: Vec<(String, Vec<String>)>,
    /// `response.version` (default `1.1`).
    pub response_version: String,
    /// `response.status` (default `200`).
    pub response_status: String,
    /// `response.reason` (default `OK`).
    pub response_reason: String,
    /// `response.headers`, in the order they are written.
    pub response_headers: Vec<(String, Vec<String>)>,
}

/// The security layer of a stream (`streamSettings.security`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Security {
    /// No TLS.
    #[default]
    None,
    /// TLS with `tlsSettings`.
    Tls(TlsSettings),
}

/// `tlsSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `serverName` (the `experiment:8357` prefix already stripped); None: from the destination.
    pub server_name: Option<String>,
    /// `allowInsecure`: the client verifies nothing.
    pub allow_insecure: bool,
    /// `alpn`; empty means the per-side, per-transport default.
    pub alpn: Vec<String>,
    /// `certificates`, PEM already read from files.
    pub certificates: Vec<TlsCertificate>,
    /// `disableSystemRoot`: the client trusts only the listed certificates.
    pub disable_system_root: bool,
    /// `enableSessionResumption`.
    pub session_resumption: bool,
}

/// One `tlsSettings.certificates` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    /// PEM certificate chain (leaf first).
    pub certificate: Vec<u8>,
    /// PEM private key (may be absent).
    pub key: Option<Vec<u8>>,
    /// `usage`.
    pub usage: CertUsage,
}

/// `certificates[].usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertUsage {
    /// A server certificate (and, as every listed certificate, a client trust anchor).
    Encipherment,
    /// Only a client trust anchor.
    Verify,
}

/// One inbound's or outbound's `streamSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// `network`.
    pub network: TransportKind,
    /// `security`.
    pub security: Security,
    /// `tcpSettings` (used when `network` is tcp).
    pub tcp: TcpSettings,
    /// Socket options (`sockopt`, plus oxray's liveness defaults).
    pub sockopt: SocketOpts,
}

impl StreamSettings {
    /// Whether connections of this stream must start with a PROXY protocol header.
    pub fn accept_proxy_protocol(&self) -> bool {
        match &self.network {
            TransportKind::Tcp => self.tcp.accept_proxy_protocol,
            TransportKind::Ws(ws) => ws.accept_proxy_protocol,
        }
    }
}
