//! A snapshot of the reverse proxy's tunnels and sessions, for logs and operators (SIGUSR1, the
//! operations listener's `/status`, `/metrics` and page).

use std::time::{Duration, SystemTime};

/// Which side of the reverse proxy a tag is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts tunnels from bridges and sends visitors into them.
    Portal,
    /// Dials tunnels to a portal and serves the sessions it receives.
    Bridge,
}

impl Role {
    /// `portal` or `bridge`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Portal => "portal",
            Role::Bridge => "bridge",
        }
    }
}

/// One live session carried by a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// The dispatcher's session id (as in log lines `session=N`).
    pub id: u64,
    /// `tcp:host:port`.
    pub target: String,
    /// The inbound (portal) or bridge tag it came from.
    pub inbound: Option<String>,
    /// The visitor's address, when known (portal side).
    pub source: Option<String>,
    /// Time since it opened.
    pub age: Duration,
    /// Bytes towards the service (visitor → service) so far.
    pub uplink: u64,
    /// Bytes back to the visitor so far.
    pub downlink: u64,
    /// Time since a byte last moved.
    pub idle: Duration,
}

/// A session that has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedSession {
    /// The session as it was last seen (its `age` is its whole life).
    pub session: SessionStatus,
    /// The tunnel that carried it.
    pub tunnel: u64,
    /// When it ended.
    pub closed_at: SystemTime,
    /// Why it ended (`done` when both sides closed cleanly).
    pub reason: String,
}

/// One tunnel's load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelStatus {
    /// Process-local tunnel number.
    pub id: u64,
    /// Sessions open now (the control session included).
    pub active_sessions: usize,
    /// Sessions ever opened on it (portal side; 0 on the bridge).
    pub total_sessions: u32,
    /// Sessions it has carried (control session not included), both sides.
    pub sessions_total: u64,
    /// Draining: takes no new sessions (portal) / replaced (bridge).
    pub draining: bool,
    /// Ended (only in [`TagStatus::closed_tunnels`]).
    pub closed: bool,
    /// The far end: the bridge's address (portal side), when known.
    pub peer: Option<String>,
    /// The transport under VMess (`tcp`).
    pub transport: String,
    /// Time since it came up (its whole life once closed).
    pub age: Duration,
    /// Payload bytes towards the service over all its sessions (live and ended).
    pub uplink: u64,
    /// Payload bytes back towards the visitors.
    pub downlink: u64,
    /// Last heartbeat the portal sent on it.
    pub last_heartbeat_sent: Option<SystemTime>,
    /// Last heartbeat the bridge received on it.
    pub last_heartbeat_received: Option<SystemTime>,
    /// Smoothed TCP round-trip time of its socket (TCP_INFO), when the socket can be found.
    pub rtt: Option<Duration>,
    /// Its live sessions (the control session not included).
    pub sessions: Vec<SessionStatus>,
    /// Why it ended (closed tunnels only).
    pub close_reason: Option<String>,
}

impl TunnelStatus {
    /// `active`, `draining` or `closed`.
    pub fn state(&self) -> &'static str {
        if self.closed {
            "closed"
        } else if self.draining {
            "draining"
        } else {
            "active"
        }
    }
}

/// One portal's or bridge's tunnels, sessions and totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagStatus {
    /// Portal or bridge.
    pub role: Role,
    /// Its tag.
    pub tag: String,
    /// Its heartbeat period.
    pub heartbeat: Duration,
    /// Live tunnels.
    pub tunnels: Vec<TunnelStatus>,
    /// The last few tunnels that ended, newest first.
    pub closed_tunnels: Vec<TunnelStatus>,
    /// The last few sessions that ended, newest first.
    pub closed_sessions: Vec<ClosedSession>,
    /// Sessions ever carried (control sessions not included).
    pub sessions_total: u64,
    /// Payload bytes towards the service, all sessions ever.
    pub uplink: u64,
    /// Payload bytes back to the visitors, all sessions ever.
    pub downlink: u64,
    /// Tunnel dials by result (`ok`, `error`); bridges only.
    pub dials: Vec<(&'static str, u64)>,
    /// Tunnels drained, by reason.
    pub drains: Vec<(&'static str, u64)>,
    /// Newest heartbeat sent (portal) or received (bridge) on any tunnel.
    pub last_heartbeat: Option<SystemTime>,
    /// Time since this portal or bridge started.
    pub uptime: Duration,
}

/// A portal's view.
pub type PortalStatus = TagStatus;
/// A bridge's view.
pub type BridgeStatus = TagStatus;

impl TagStatus {
    /// Live tunnels not draining.
    pub fn active_tunnels(&self) -> usize {
        self.tunnels.iter().filter(|t| !t.draining).count()
    }

    /// Why this tag is not healthy, if it is not: no live tunnel, or (bridge) no heartbeat heard, for
    /// more than `periods` heartbeat periods. A fresh start is given the same grace.
    pub fn problem(&self, now: SystemTime, periods: u32) -> Option<String> {
        let bound = self.heartbeat * periods;
        let since_start_ok = self.uptime <= bound;
        if self.tunnels.is_empty() {
            // Heartbeats flow every period while a tunnel is up, so the newest one dates its loss.
            let since = self.last_heartbeat.and_then(|t| now.duration_since(t).ok());
            return match since {
                Some(d) if d <= bound => None,
                _ if since_start_ok => None,
                Some(d) => Some(format!("{} {}: no tunnel for {}s", self.role.as_str(), self.tag, d.as_secs())),
                None => Some(format!("{} {}: no tunnel since start", self.role.as_str(), self.tag)),
            };
        }
        let newest = self.last_heartbeat.and_then(|t| now.duration_since(t).ok());
        match newest {
            Some(d) if d <= bound => None,
            _ if since_start_ok => None,
            Some(d) => Some(format!(
                "{} {}: no heartbeat for {}s (bound {}s)",
                self.role.as_str(),
                self.tag,
                d.as_secs(),
                bound.as_secs()
            )),
            None => Some(format!("{} {}: no heartbeat yet", self.role.as_str(), self.tag)),
        }
    }
}
