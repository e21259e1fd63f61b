//! `dns.hosts`: static answers and aliases, matched as 4.34 does (`app/dns/hosts.go`).

use std::net::{IpAddr, Ipv6Addr};

use crate::config::{HostEntry, HostMatcher, HostValue};

use super::Family;

/// A compiled `hosts` table (entries in sorted-key order, as loaded).
#[derive(Debug, Default)]
pub struct Hosts {
    entries: Vec<(Matcher, HostValue)>,
}

#[derive(Debug)]
enum Matcher {
    Full(String),
    Domain(String),
    Keyword(String),
    Regexp(regex::Regex),
    Dotless(String),
}

/// What `hosts` says about a name.
#[derive(Debug, PartialEq, Eq)]
pub enum HostAnswer {
    /// Not in `hosts`: ask the servers.
    None,
    /// These addresses (already filtered to the wanted family; empty = "empty answer", no server asked).
    Ips(Vec<IpAddr>),
    /// Ask the servers for this name instead.
    Alias(String),
}

/// 4.34 follows aliases through `hosts` at most this many times.
const MAX_ALIAS_DEPTH: usize = 5;

impl Hosts {
    /// Compiles the entries (regexps were checked at config load).
    pub fn new(entries: &[HostEntry]) -> Result<Hosts, regex::Error> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let m = match &e.matcher {
                HostMatcher::Full(s) => Matcher::Full(s.clone()),
                HostMatcher::Domain(s) => Matcher::Domain(s.clone()),
                HostMatcher::Keyword(s) => Matcher::Keyword(s.clone()),
                HostMatcher::Regexp(s) => Matcher::Regexp(regex::Regex::new(s)?),
                HostMatcher::Dotless(s) => Matcher::Dotless(s.clone()),
            };
            out.push((m, e.value.clone()));
        }
        Ok(Hosts { entries: out })
    }

    /// The values of every matching entry, best first: exact, then the longest `domain:` suffix, then
    /// keyword/regexp/dotless in key order. All of them count (4.34 concatenates their IPs).
    fn matches(&self, name: &str) -> Vec<&HostValue> {
        let mut hits: Vec<((u8, usize), &HostValue)> = Vec::new();
        for (i, (m, v)) in self.entries.iter().enumerate() {
            let rank = match m {
                Matcher::Full(s) => (s == name).then_some((0, i)),
                Matcher::Domain(s) => is_subdomain(name, s).then_some((1, usize::MAX - s.len())),
                Matcher::Keyword(s) => name.contains(s.as_str()).then_some((2, i)),
                Matcher::Regexp(re) => re.is_match(name).then_some((2, i)),
                Matcher::Dotless(s) => (!name.contains('.') && name.contains(s.as_str())).then_some((2, i)),
            };
            if let Some(r) = rank {
                hits.push((r, v));
            }
        }
        hits.sort_by_key(|(r, _)| *r);
        hits.into_iter().map(|(_, v)| v).collect()
    }

    /// Looks `name` up, following single aliases through the table.
    pub fn lookup(&self, name: &str, family: Family) -> HostAnswer {
        let mut current: Option<String> = None;
        for _ in 0..MAX_ALIAS_DEPTH {
            let n = current.as_deref().unwrap_or(name);
            let values = self.matches(n);
            if values.is_empty() {
                break;
            }
            let ips: Vec<IpAddr> = values
                .iter()
                .filter_map(|v| match v {
                    HostValue::Ip(ip) => Some(*ip),
                    HostValue::Alias(_) => None,
                })
                .collect();
            if !ips.is_empty() {
                return HostAnswer::Ips(filter_family(&ips, family));
            }
            match values.as_slice() {
                [HostValue::Alias(a)] => current = Some(a.clone()),
                // Several aliases and no IP: 4.34 uses none of them.
                _ => break,
            }
        }
        match current {
            Some(alias) => HostAnswer::Alias(alias),
            None => HostAnswer::None,
        }
    }
}

/// The addresses of the wanted family; `127.0.0.1` also stands for `::1` (4.34's special case).
fn filter_family(ips: &[IpAddr], family: Family) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for ip in ips {
        match (ip, family) {
            (IpAddr::V4(_), Family::V4 | Family::Both) | (IpAddr::V6(_), Family::V6 | Family::Both) => out.push(*ip),
            (IpAddr::V4(v4), Family::V6) if v4.is_loopback() && v4.octets() == [127, 0, 0, 1] => {
                out.push(IpAddr::V6(Ipv6Addr::LOCALHOST))
            }
            _ => {}
        }
    }
    out
}

/// `name` is `domain` or one of its subdomains (label boundary, case-sensitive as in 4.34).
pub(crate) fn is_subdomain(name: &str, domain: &str) -> bool {
    name == domain
        || (name.len() > domain.len()
            && name.ends_with(domain)
            && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostEntry;

    fn hosts(list: &[(&str, &str)]) -> Hosts {
        let mut entries: Vec<(String, HostEntry)> = list
            .iter()
            .map(|(k, v)| {
                let value = match v.parse::<IpAddr>() {
                    Ok(ip) => HostValue::Ip(ip),
                    Err(_) => HostValue::Alias(v.to_string()),
                };
                (k.to_string(), HostEntry { matcher: crate::config::host_matcher(k).unwrap(), value })
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Hosts::new(&entries.into_iter().map(|(_, e)| e).collect::<Vec<_>>()).unwrap()
    }

    fn ips(v: &[&str]) -> HostAnswer {
        HostAnswer::Ips(v.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn matching_like_4_34() {
        let h = hosts(&[
            ("h.test", "10.9.9.9"),
            ("both.hd.test", "10.4.4.4"),
            ("domain:hd.test", "10.8.8.8"),
            ("alias.test", "a.example"),
            ("alias2.test", "h.test"),
            ("v6.test", "fd00::1"),
            ("lo.test", "127.0.0.1"),
            ("keyword:kw", "10.7.7.7"),
            ("dotless:", "10.6.6.6"),
        ]);
        assert_eq!(h.lookup("h.test", Family::Both), ips(&["10.9.9.9"]));
        assert_eq!(h.lookup("H.TEST", Family::Both), HostAnswer::None, "case-sensitive");
        assert_eq!(h.lookup("both.hd.test", Family::V4), ips(&["10.4.4.4", "10.8.8.8"]));
        assert_eq!(h.lookup("x.hd.test", Family::V4), ips(&["10.8.8.8"]));
        assert_eq!(h.lookup("xhd.test", Family::V4), HostAnswer::None);
        assert_eq!(h.lookup("alias.test", Family::Both), HostAnswer::Alias("a.example".into()));
        assert_eq!(h.lookup("alias2.test", Family::Both), ips(&["10.9.9.9"]));
        assert_eq!(h.lookup("v6.test", Family::V4), ips(&[]), "wrong family: empty answer");
        assert_eq!(h.lookup("lo.test", Family::V6), ips(&["::1"]));
        assert_eq!(h.lookup("akwz.example", Family::V4), ips(&["10.7.7.7"]));
        assert_eq!(h.lookup("box", Family::V4), ips(&["10.6.6.6"]));
    }

    #[test]
    fn alias_loops_end() {
        let h = hosts(&[("a.test", "b.test"), ("b.test", "a.test")]);
        assert!(matches!(h.lookup("a.test", Family::Both), HostAnswer::Alias(_)));
    }
}
