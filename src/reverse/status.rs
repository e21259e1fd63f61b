//! A snapshot of the reverse proxy's tunnels, for logs and operators.

/// One tunnel's load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelStatus {
    /// Process-local tunnel number.
    pub id: u64,
    /// Sessions open now (the control session included).
    pub active_sessions: usize,
    /// Sessions ever opened on it (portal side; 0 on the bridge).
    pub total_sessions: u32,
    /// Draining: takes no new sessions (portal) / replaced (bridge).
    pub draining: bool,
}

/// A portal's live tunnels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalStatus {
    /// Portal tag.
    pub tag: String,
    /// Live tunnels.
    pub tunnels: Vec<TunnelStatus>,
}

/// A bridge's live tunnels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeStatus {
    /// Bridge tag.
    pub tag: String,
    /// Live tunnels.
    pub tunnels: Vec<TunnelStatus>,
}
