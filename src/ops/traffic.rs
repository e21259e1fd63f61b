//! Per inbound and outbound tag: connections and bytes. The dispatcher touches these once when a
//! flow starts and once when it ends (never per byte); every configured tag exists from the start.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Bytes client → target of ended connections.
    pub uplink: u64,
    /// Bytes target → client of ended connections.
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
}

/// Counts one flow until dropped.
pub struct FlowGuard {
    tags: [Option<Arc<TagTraffic>>; 2],
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
        t
    }

    /// A flow from inbound `inbound` routed to outbound `outbound` starts.
    pub fn flow(&self, inbound: Option<&str>, outbound: &str) -> FlowGuard {
        let a = inbound.and_then(|t| self.by_inbound.get(t)).cloned();
        let b = self.by_outbound.get(outbound).cloned();
        for t in [&a, &b].into_iter().flatten() {
            t.open.fetch_add(1, Ordering::Relaxed);
            t.total.fetch_add(1, Ordering::Relaxed);
        }
        FlowGuard { tags: [a, b] }
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
