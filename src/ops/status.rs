//! `/status`: the versioned JSON view of a [`Snapshot`]. No secrets are in a snapshot (no VMess ids,
//! no tokens), so nothing needs redacting here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Snapshot;
use crate::reverse::status::{ClosedSession, SessionStatus, TagStatus, TunnelStatus};

/// Bumped when a field changes meaning or goes away (new fields do not bump it).
pub const STATUS_VERSION: u32 = 1;

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn unix(t: Option<SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(Value::Null, |d| json!(secs(d)))
}

fn session(s: &SessionStatus) -> Value {
    json!({
        "id": s.id,
        "target": s.target,
        "inbound": s.inbound,
        "source": s.source,
        "age_s": secs(s.age),
        "uplink": s.uplink,
        "downlink": s.downlink,
        "idle_s": secs(s.idle),
    })
}

fn closed_session(c: &ClosedSession) -> Value {
    let mut v = session(&c.session);
    if let Value::Object(m) = &mut v {
        m.remove("idle_s");
        m.insert("tunnel".into(), json!(c.tunnel));
        m.insert("closed_at".into(), unix(Some(c.closed_at)));
        m.insert("reason".into(), json!(c.reason));
    }
    v
}

fn tunnel(t: &TunnelStatus) -> Value {
    json!({
        "id": t.id,
        "peer": t.peer,
        "transport": t.transport,
        "state": t.state(),
        "age_s": secs(t.age),
        "sessions_now": t.sessions.len(),
        "sessions_total": t.sessions_total,
        "mux_sessions": t.active_sessions,
        "uplink": t.uplink,
        "downlink": t.downlink,
        "last_heartbeat_sent": unix(t.last_heartbeat_sent),
        "last_heartbeat_received": unix(t.last_heartbeat_received),
        "rtt_ms": t.rtt.map(|r| (r.as_secs_f64() * 1e6).round() / 1e3),
        "close_reason": t.close_reason,
        "sessions": t.sessions.iter().map(session).collect::<Vec<_>>(),
    })
}

fn tag(t: &TagStatus, now: SystemTime) -> Value {
    let pairs =
        |v: &[(&str, u64)]| v.iter().map(|(k, n)| ((*k).to_string(), json!(n))).collect::<serde_json::Map<_, _>>();
    let problem = t.problem(now, super::STALE_PERIODS);
    json!({
        "tag": t.tag,
        "role": t.role.as_str(),
        "heartbeat_s": secs(t.heartbeat),
        "healthy": problem.is_none(),
        "problem": problem,
        "uptime_s": secs(t.uptime),
        "sessions_now": t.tunnels.iter().map(|x| x.sessions.len()).sum::<usize>(),
        "sessions_total": t.sessions_total,
        "uplink": t.uplink,
        "downlink": t.downlink,
        "last_heartbeat": unix(t.last_heartbeat),
        "dials": pairs(&t.dials),
        "drains": pairs(&t.drains),
        "tunnels": t.tunnels.iter().map(tunnel).collect::<Vec<_>>(),
        "closed_tunnels": t.closed_tunnels.iter().map(tunnel).collect::<Vec<_>>(),
        "closed_sessions": t.closed_sessions.iter().map(closed_session).collect::<Vec<_>>(),
    })
}

/// The `/status` document.
pub fn render(s: &Snapshot) -> Value {
    let traffic = |v: &[(String, super::TagCounts)]| {
        v.iter()
            .map(|(t, c)| {
                json!({"tag": t, "connections": c.open, "connections_total": c.total,
                       "uplink": c.uplink, "downlink": c.downlink})
            })
            .collect::<Vec<_>>()
    };
    let not_ready = s.not_ready(false);
    json!({
        "version": STATUS_VERSION,
        "oxray": env!("CARGO_PKG_VERSION"),
        "now": unix(Some(s.now)),
        "uptime_s": secs(s.uptime),
        "ready": not_ready.is_empty(),
        "not_ready": not_ready,
        "problems": s.problems(),
        "listeners": s.listeners.iter().map(|(t, a)| json!({"tag": t, "address": a.to_string()})).collect::<Vec<_>>(),
        "portals": s.portals.iter().map(|t| tag(t, s.now)).collect::<Vec<_>>(),
        "bridges": s.bridges.iter().map(|t| tag(t, s.now)).collect::<Vec<_>>(),
        "inbounds": traffic(&s.inbounds),
        "outbounds": traffic(&s.outbounds),
    })
}
