//! `streamSettings` as a typed, validated value: what the config loader produces and the transport
//! layer builds listeners and dialers from. Plain data, so the loader and the data path do not import
//! each other.

use super::sockopt::SocketOpts;

/// The transport of a stream (`streamSettings.network`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TransportKind {
    /// Plain TCP.
    #[default]
    Tcp,
}

/// The security layer of a stream (`streamSettings.security`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Security {
    /// No TLS.
    #[default]
    None,
}

/// One inbound's or outbound's `streamSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// `network`.
    pub network: TransportKind,
    /// `security`.
    pub security: Security,
    /// Socket options (`sockopt`, plus oxray's liveness defaults).
    pub sockopt: SocketOpts,
}
