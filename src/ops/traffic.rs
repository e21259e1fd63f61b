//! Per inbound and outbound tag (and per user, for V2Ray's stats): connections and bytes. The
//! dispatcher touches these when a flow starts, once a second while a metered flow lives, and when it
//! ends (never per byte); every configured tag exists from the start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One tag's counters.
#[derive(Debug, Default)]
pub struct TagTraffic {
    open: AtomicU64,
    total: AtomicU64,
    uplink: AtomicU64,
    downlink: AtomicU64,
}

/// A snapshot of one tag's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagCounts {
    /// Connections open now.
    pub open: u64,
    /// Connections ever.
    pub total: u64,
    /// Bytes client → target (ended connections, and live ones up to their last flush).
    pub uplink: u64,
    /// Bytes target → client (likewise).
    pub downlink: u64,
}

impl TagTraffic {
    fn counts(&self) -> TagCounts {
        TagCounts {
            open: self.open.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            uplink: self.uplink.load(Ordering::Relaxed),
            downlink: self.downlink.load(Ordering::Relaxed),
        }
    }
}

/// Counters of every tagged inbound and outbound.
#[derive(Debug, Default)]
pub struct Traffic {
    inbound: Vec<(String, Arc<TagTraffic>)>,
    outbound: Vec<(String, Arc<TagTraffic>)>,
    by_inbound: HashMap<String, Arc<TagTraffic>>,
    by_outbound: HashMap<String, Arc<TagTraffic>>,
    /// Per user email (V2Ray's `user>>>` counters), created on a user's first flow; None = not kept.
    users: Option<Arc<Users>>,
}

/// Per-user counters by email, shared by every generation of [`Traffic`] across reloads.
type Users = Mutex<HashMap<Arc<str>, UserEntry>>;

/// One user's counters and which directions its level asked for.
#[derive(Debug, Clone)]
struct UserEntry {
    counts: Arc<TagTraffic>,
    uplink: bool,
    downlink: bool,
}

/// A user's counts, as the stats API reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCounts {
    /// The user's email.
    pub email: Arc<str>,
    /// Whether the uplink counter exists (its level's `statsUserUplink`).
    pub has_uplink: bool,
    /// Whether the downlink counter exists.
    pub has_downlink: bool,
    /// Bytes counted.
    pub counts: TagCounts,
}

/// Counts one flow until dropped.
pub struct FlowGuard {
    tags: [Option<Arc<TagTraffic>>; 3],
}

impl FlowGuard {
    /// Adds what the flow moved.
    pub fn bytes(&self, uplink: u64, downlink: u64) {
        for t in self.tags.iter().flatten() {
            t.uplink.fetch_add(uplink, Ordering::Relaxed);
            t.downlink.fetch_add(downlink, Ordering::Relaxed);
        }
    }
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        for t in self.tags.iter().flatten() {
            t.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Traffic {
    /// Counters for these tags (config order; duplicates and empty tags skipped).
    pub fn new<'a>(inbounds: impl IntoIterator<Item = &'a str>, outbounds: impl IntoIterator<Item = &'a str>) -> Self {
        Traffic::default().next(inbounds, outbounds)
    }

    /// Counters for a reloaded config's tags: a tag both configs have keeps its counts (and flows still
    /// open on it count into them); a new tag starts at 0; a removed tag is no longer listed.
    pub fn next<'a>(
        &self,
        inbounds: impl IntoIterator<Item = &'a str>,
        outbounds: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut t = Traffic::default();
        for tag in inbounds {
            if !tag.is_empty() && !t.by_inbound.contains_key(tag) {
                let c = self.by_inbound.get(tag).cloned().unwrap_or_default();
                t.by_inbound.insert(tag.to_string(), c.clone());
                t.inbound.push((tag.to_string(), c));
            }
        }
        for tag in outbounds {
            if !tag.is_empty() && !t.by_outbound.contains_key(tag) {
                let c = self.by_outbound.get(tag).cloned().unwrap_or_default();
                t.by_outbound.insert(tag.to_string(), c.clone());
                t.outbound.push((tag.to_string(), c));
            }
        }
        // Users are not config entries: their counters live on across a reload.
        t.users = self.users.clone();
        t
    }

    /// With `on`, also keeps per-user counters (the config has a `stats` object).
    pub fn with_user_counters(mut self, on: bool) -> Self {
        self.users = on.then(Arc::default);
        self
    }

    /// A flow from inbound `inbound` routed to outbound `outbound` starts.
    pub fn flow(&self, inbound: Option<&str>, outbound: &str) -> FlowGuard {
        self.user_flow(inbound, outbound, None)
    }

    /// [`Traffic::flow`] for a user: `user` is (email, count uplink, count downlink), from the user's
    /// level policy. The user's counters are created on first use (as 4.34 registers them) and only
    /// when user counters are kept and a direction is asked for. One map lookup per flow.
    pub fn user_flow(&self, inbound: Option<&str>, outbound: &str, user: Option<(&Arc<str>, bool, bool)>) -> FlowGuard {
        let a = inbound.and_then(|t| self.by_inbound.get(t)).cloned();
        let b = self.by_outbound.get(outbound).cloned();
        let c = match (&self.users, user) {
            (Some(users), Some((email, up, down))) if (up || down) && !email.is_empty() => {
                let mut map = users.lock().unwrap_or_else(|p| p.into_inner());
                let e = map.entry(email.clone()).or_insert_with(|| UserEntry {
                    counts: Arc::default(),
                    uplink: false,
                    downlink: false,
                });
                e.uplink |= up;
                e.downlink |= down;
                Some(e.counts.clone())
            }
            _ => None,
        };
        for t in [&a, &b, &c].into_iter().flatten() {
            t.open.fetch_add(1, Ordering::Relaxed);
            t.total.fetch_add(1, Ordering::Relaxed);
        }
        FlowGuard { tags: [a, b, c] }
    }

    /// Users seen so far (empty when user counters are not kept), by email.
    pub fn users(&self) -> Vec<UserCounts> {
        let Some(users) = &self.users else { return Vec::new() };
        let map = users.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<UserCounts> = map
            .iter()
            .map(|(email, e)| UserCounts {
                email: email.clone(),
                has_uplink: e.uplink,
                has_downlink: e.downlink,
                counts: e.counts.counts(),
            })
            .collect();
        out.sort_by(|a, b| a.email.cmp(&b.email));
        out
    }

    /// Inbound tags and their counts, in config order.
    pub fn inbounds(&self) -> Vec<(String, TagCounts)> {
        self.inbound.iter().map(|(t, c)| (t.clone(), c.counts())).collect()
    }

    /// Outbound tags and their counts, in config order.
    pub fn outbounds(&self) -> Vec<(String, TagCounts)> {
        self.outbound.iter().map(|(t, c)| (t.clone(), c.counts())).collect()
    }
}
