//! IP and port sets as sorted, merged inclusive ranges, searched with `partition_point`.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::PortList;

/// A set of values stored as disjoint, non-adjacent, sorted inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet<T> {
    ranges: Box<[(T, T)]>,
}

/// Integer types whose ranges can be merged when they touch.
pub(crate) trait Step: Ord + Copy {
    /// `self + 1`, or None at the maximum.
    fn next(self) -> Option<Self>;
}

impl Step for u16 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Step for u32 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Step for u128 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl<T: Step> RangeSet<T> {
    /// Builds the set from possibly overlapping, unordered ranges; `(a, b)` with `a > b` is ignored.
    pub(crate) fn from_ranges(mut input: Vec<(T, T)>) -> Self {
        input.retain(|&(a, b)| a <= b);
        input.sort_unstable();
        let mut merged: Vec<(T, T)> = Vec::with_capacity(input.len());
        for (a, b) in input {
            if let Some(last) = merged.last_mut() {
                // Adjacent ranges merge too, so one lookup never needs to look at two ranges.
                if last.1.next().is_none_or(|n| a <= n) {
                    if b > last.1 {
                        last.1 = b;
                    }
                    continue;
                }
            }
            merged.push((a, b));
        }
        RangeSet { ranges: merged.into_boxed_slice() }
    }

    /// True if `x` is in one of the ranges.
    #[inline]
    pub(crate) fn contains(&self, x: T) -> bool {
        let i = self.ranges.partition_point(|&(start, _)| start <= x);
        i > 0 && self.ranges[i - 1].1 >= x
    }

    /// The merged ranges, in order.
    #[cfg(test)]
    pub(crate) fn ranges(&self) -> &[(T, T)] {
        &self.ranges
    }
}

/// A port condition (`port` or `sourcePort`).
pub(crate) type PortSet = RangeSet<u16>;

/// Compiles a validated port list.
pub(crate) fn port_set(list: &PortList) -> PortSet {
    RangeSet::from_ranges(list.0.clone())
}

/// A CIDR condition (`ip` or `source`): IPv4 and IPv6 ranges kept apart.
#[derive(Debug, Clone, Default)]
pub(crate) struct IpSet {
    v4: RangeSet<u32>,
    v6: RangeSet<u128>,
}

impl IpSet {
    /// Compiles CIDRs; host bits set in a CIDR are ignored, as V2Ray does.
    pub(crate) fn new(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => {
                    let (a, b) = (u128::from(n.network()), u128::from(n.broadcast()));
                    v6.push((a, b));
                    // Targets arrive with IPv4-mapped addresses already turned into IPv4, so a
                    // `::ffff:a.b.c.d/n` rule (n >= 96) must also be searched as IPv4 to ever match.
                    if n.prefix_len() >= 96 && n.network().to_ipv4_mapped().is_some() {
                        v4.push((a as u32, b as u32));
                    }
                }
            }
        }
        IpSet { v4: RangeSet::from_ranges(v4), v6: RangeSet::from_ranges(v6) }
    }

    /// True if `ip` is in one of the CIDRs.
    #[inline]
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.v4.contains(u32::from(v4)),
            IpAddr::V6(v6) => self.v6.contains(u128::from(v6)),
        }
    }
}

/// An `ip`/`source` condition: the rule's own CIDRs plus shared geoip lists.
#[derive(Debug)]
pub(crate) struct IpCond {
    own: IpSet,
    geo: Box<[std::sync::Arc<super::geo::GeoIpList>]>,
}

impl IpCond {
    /// None when the rule has no such condition.
    pub(crate) fn new(nets: &[IpNet], geo: &[std::sync::Arc<super::geo::GeoIpList>]) -> Option<IpCond> {
        (!nets.is_empty() || !geo.is_empty()).then(|| IpCond { own: IpSet::new(nets), geo: geo.into() })
    }

    /// True if `ip` is in the CIDRs or in one of the lists.
    #[inline]
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.own.contains(ip) || self.geo.iter().any(|g| g.contains(ip))
    }

    /// True if any of `ips` is in the set.
    #[inline]
    pub(crate) fn contains_any(&self, ips: &[IpAddr]) -> bool {
        ips.iter().any(|&ip| self.contains(ip))
    }
}
