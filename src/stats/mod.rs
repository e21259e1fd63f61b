//! V2Ray's stats: the named counters of 4.34 (`inbound>>>TAG>>>traffic>>>uplink`, `outbound>>>…`,
//! `user>>>EMAIL>>>traffic>>>…`) as a view over the per-tag and per-user totals the dispatcher already
//! keeps ([`crate::ops::traffic`]), and the API (`api` object) that serves them over gRPC.
//!
//! Counting adds nothing to the data path: the relay keeps plain per-session totals, the dispatcher
//! adds them to shared atomics once a second for live flows and at the end of each flow. A counter's
//! `reset` only moves this view's baseline, so the Prometheus totals of the ops listener stay monotonic.

pub mod api;
pub mod proto;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::SystemPolicy;
use crate::ops::traffic::{FlowGuard, Traffic};
use crate::proxy::{ProxyError, RelayStats};
use crate::session::Meter;

/// How often live flows add what they moved to the shared counters (4.34 counts every write; a
/// counter here lags a live flow by at most this).
pub const FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// The counter manager (present when the config has a `stats` object).
pub struct Stats {
    traffic: Arc<Traffic>,
    system: SystemPolicy,
    inbound_tags: Vec<String>,
    outbound_tags: Vec<String>,
    /// Raw total at each counter's last reset.
    bases: Mutex<HashMap<String, u64>>,
}

impl Stats {
    /// Counters over `traffic` for the configured inbound and outbound tags (bridge and portal tags,
    /// and the API's own tag, have none, as in 4.34), as `system` asks.
    pub fn new(
        traffic: Arc<Traffic>,
        system: SystemPolicy,
        inbound_tags: impl IntoIterator<Item = String>,
        outbound_tags: impl IntoIterator<Item = String>,
    ) -> Stats {
        let dedup = |v: Vec<String>| {
            let mut out: Vec<String> = Vec::new();
            for t in v {
                if !t.is_empty() && !out.contains(&t) {
                    out.push(t);
                }
            }
            out
        };
        Stats {
            traffic,
            system,
            inbound_tags: dedup(inbound_tags.into_iter().collect()),
            outbound_tags: dedup(outbound_tags.into_iter().collect()),
            bases: Mutex::default(),
        }
    }

    /// Every counter that exists now with its raw total, sorted by name.
    fn raw(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let s = &self.system;
        let mut tagged =
            |kind: &str, list: Vec<(String, crate::ops::traffic::TagCounts)>, keep: &[String], up, down| {
                for (tag, c) in list.into_iter().filter(|(t, _)| keep.contains(t)) {
                    if up {
                        out.push((format!("{kind}>>>{tag}>>>traffic>>>uplink"), c.uplink));
                    }
                    if down {
                        out.push((format!("{kind}>>>{tag}>>>traffic>>>downlink"), c.downlink));
                    }
                }
            };
        tagged("inbound", self.traffic.inbounds(), &self.inbound_tags, s.inbound_uplink, s.inbound_downlink);
        tagged("outbound", self.traffic.outbounds(), &self.outbound_tags, s.outbound_uplink, s.outbound_downlink);
        for u in self.traffic.users() {
            if u.has_uplink {
                out.push((format!("user>>>{}>>>traffic>>>uplink", u.email), u.counts.uplink));
            }
            if u.has_downlink {
                out.push((format!("user>>>{}>>>traffic>>>downlink", u.email), u.counts.downlink));
            }
        }
        out.sort();
        out
    }

    /// Counters whose name contains `pattern` (all for ""), with their values; `reset` sets them to 0
    /// and returns the values before (4.34's QueryStats).
    pub fn query(&self, pattern: &str, reset: bool) -> Vec<(String, i64)> {
        let raw = self.raw();
        let mut bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        raw.into_iter()
            .filter(|(n, _)| n.contains(pattern))
            .map(|(name, total)| {
                let base = bases.get(&name).copied().unwrap_or(0);
                let value = total.saturating_sub(base);
                if reset {
                    bases.insert(name.clone(), total);
                }
                (name, i64::try_from(value).unwrap_or(i64::MAX))
            })
            .collect()
    }

    /// One counter by exact name (4.34's GetStats); None when it does not exist.
    pub fn get(&self, name: &str, reset: bool) -> Option<i64> {
        let (n, total) = self.raw().into_iter().find(|(n, _)| n == name)?;
        let mut bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        let value = total.saturating_sub(bases.get(&n).copied().unwrap_or(0));
        if reset {
            bases.insert(n, total);
        }
        Some(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

/// The API handler for `config.api` (tag and outbound), reading `traffic`'s counters when the config
/// has `stats`. Registered after the configured outbounds, so it replaces one with the same tag and is
/// the default only when nothing else is (as 4.34's commander).
pub fn api_outbound(
    config: &crate::config::Config,
    traffic: &Arc<Traffic>,
) -> Option<(Option<String>, Arc<dyn crate::proxy::Outbound>)> {
    let api = config.api.as_ref()?;
    let stats = config.stats.then(|| {
        Arc::new(Stats::new(
            traffic.clone(),
            config.policy.system,
            config.inbounds.iter().filter_map(|i| i.tag.clone()),
            config.outbounds.iter().filter_map(|o| o.tag.clone()),
        ))
    });
    let idle = config.policy.level(0).conn_idle;
    Some((Some(api.tag.clone()), Arc::new(api::ApiOutbound::new(stats, api.stats_service, idle))))
}

/// Runs a flow's outbound future, adding what its meter shows to `flow` every [`FLUSH_PERIOD`] (so
/// counters move for long-lived flows), and the rest when it ends. One timer per flow, nothing per byte.
/// Only for flows whose counters someone reads while they run (an ops listener or stats): without, the
/// dispatcher awaits the flow and calls [`settle`], so a held idle flow has no timer to carry or wake.
pub(crate) async fn run_flushing(
    handled: impl Future<Output = Result<RelayStats, ProxyError>>,
    flow: &FlowGuard,
    meter: Option<&Meter>,
) -> Result<RelayStats, ProxyError> {
    let mut done = (0u64, 0u64);
    let result = match meter {
        Some(m) => {
            tokio::pin!(handled);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + FLUSH_PERIOD, FLUSH_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    r = &mut handled => break r,
                    _ = tick.tick() => {
                        let (up, down) = (m.uplink(), m.downlink());
                        flow.bytes(up.saturating_sub(done.0), down.saturating_sub(done.1));
                        done = (done.0.max(up), done.1.max(down));
                    }
                }
            }
        }
        None => handled.await,
    };
    settle(&result, flow, meter, done);
    result
}

/// Adds what an ended flow moved to `flow`, past `done` (already added): its totals, or what its meter
/// saw when it ended in an error.
pub(crate) fn settle(
    result: &Result<RelayStats, ProxyError>,
    flow: &FlowGuard,
    meter: Option<&Meter>,
    done: (u64, u64),
) {
    let (up, down) = match result {
        Ok(s) => (s.uplink, s.downlink),
        Err(_) => meter.map(|m| (m.uplink(), m.downlink())).unwrap_or_default(),
    };
    flow.bytes(up.saturating_sub(done.0), down.saturating_sub(done.1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(system: SystemPolicy) -> (Arc<Traffic>, Stats) {
        let t = Arc::new(Traffic::new(["in", "bridge"], ["out", "portal"]).with_user_counters(true));
        let s = Stats::new(t.clone(), system, ["in".to_string()], ["out".to_string()]);
        (t, s)
    }

    #[test]
    fn names_follow_the_policy_and_exist_from_the_start() {
        let all = SystemPolicy {
            inbound_uplink: true,
            inbound_downlink: true,
            outbound_uplink: true,
            outbound_downlink: true,
        };
        let (_, s) = stats(all);
        let names: Vec<String> = s.query("", false).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "inbound>>>in>>>traffic>>>downlink",
                "inbound>>>in>>>traffic>>>uplink",
                "outbound>>>out>>>traffic>>>downlink",
                "outbound>>>out>>>traffic>>>uplink"
            ]
        );
        let (_, s) = stats(SystemPolicy { inbound_downlink: true, ..Default::default() });
        assert_eq!(s.query("", false), [("inbound>>>in>>>traffic>>>downlink".to_string(), 0)]);
    }

    #[test]
    fn users_appear_on_first_use_per_direction_and_reset_returns_the_old_value() {
        let (t, s) = stats(SystemPolicy::default());
        assert!(s.query("", false).is_empty());
        let email: Arc<str> = Arc::from("a@b");
        t.user_flow(Some("in"), "out", Some((&email, true, false))).bytes(10, 20);
        let none: Arc<str> = Arc::from("");
        t.user_flow(Some("in"), "out", Some((&none, true, true))).bytes(1, 1);
        assert_eq!(s.query("user", false), [("user>>>a@b>>>traffic>>>uplink".to_string(), 10)]);
        assert_eq!(s.get("user>>>a@b>>>traffic>>>uplink", true), Some(10));
        assert_eq!(s.get("user>>>a@b>>>traffic>>>uplink", false), Some(0));
        assert_eq!(s.get("user>>>a@b>>>traffic>>>downlink", false), None);
        t.user_flow(None, "x", Some((&email, true, false))).bytes(5, 5);
        assert_eq!(s.query(">>>a@b", true), [("user>>>a@b>>>traffic>>>uplink".to_string(), 5)]);
        assert_eq!(s.query(">>>a@b", false), [("user>>>a@b>>>traffic>>>uplink".to_string(), 0)]);
        // The ops listener's totals are not reset.
        assert_eq!(t.users()[0].counts.uplink, 15);
    }
}
