//! The resolver against real responders on 127.0.0.1 (queries sent straight out, no dispatcher).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use super::responder::{Rec, Responder};
use super::*;
use crate::config::{DnsConfig, DnsServerConfig, DnsServerKind, DomainMatcher, HostEntry, HostValue};
use crate::session::Address;

fn rec(ips: &[&str]) -> Rec {
    Rec { ips: ips.iter().map(|s| s.parse().unwrap()).collect(), ttl: 300, ..Default::default() }
}

fn zone(list: &[(&str, Rec)]) -> HashMap<String, Rec> {
    list.iter().map(|(n, r)| (n.to_string(), r.clone())).collect()
}

fn server(r: &Responder) -> DnsServerConfig {
    DnsServerConfig {
        kind: DnsServerKind::Udp { address: Address::from(r.addr.ip()), port: r.addr.port() },
        domains: Vec::new(),
        expect_ips: Vec::new(),
        expect_geoip: Vec::new(),
        client_ip: None,
        path: "dns.servers[0]".into(),
    }
}

fn resolver(servers: Vec<DnsServerConfig>, timeout: Duration) -> Resolver {
    Resolver::new(&DnsConfig { servers, ..Default::default() }).unwrap().with_timeout(timeout)
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fn asked(r: &Responder, name: &str) -> usize {
    r.seen().iter().filter(|s| s.name == name).count()
}

#[tokio::test]
async fn timeout_falls_back_and_nxdomain_does_not() {
    let silent = Responder::start(HashMap::new(), true).await.unwrap();
    let one = Responder::start(zone(&[("known.test", rec(&["10.0.0.1"]))]), false).await.unwrap();
    let two = Responder::start(zone(&[("x.test", rec(&["10.0.0.2"])), ("known.test", rec(&["10.0.0.9"]))]), false)
        .await
        .unwrap();
    let r = resolver(vec![server(&silent), server(&two)], Duration::from_millis(400));
    let start = Instant::now();
    assert_eq!(r.lookup("x.test", Family::V4).await, Ok(ips(&["10.0.0.2"])));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400), "waited for the silent server: {took:?}");
    assert_eq!((asked(&silent, "x.test"), asked(&two, "x.test")), (1, 1));
    // NXDOMAIN from the first server is final (4.34, T11): the second, which knows the name, is not asked.
    let r = resolver(vec![server(&one), server(&two)], Duration::from_secs(2));
    assert_eq!(r.lookup("x.test", Family::V4).await, Err(LookupError::Rcode(3)));
    assert_eq!(asked(&two, "x.test"), 1, "the second server was not asked again");
    // All silent: exhausted, after one deadline per server.
    let r = resolver(vec![server(&silent), server(&silent)], Duration::from_millis(200));
    assert_eq!(r.lookup("y.test", Family::Both).await, Err(LookupError::Exhausted));
    assert_eq!(asked(&silent, "y.test"), 4, "A and AAAA, twice");
}

#[tokio::test]
async fn cache_hosts_expect_ips_and_order() {
    let one = Responder::start(
        zone(&[
            ("mix.test", rec(&["1.1.1.1", "10.0.0.5"])),
            ("c.test", rec(&["10.1.1.1", "fd00::1"])),
            ("d.corp.test", rec(&["10.3.0.1"])),
        ]),
        false,
    )
    .await
    .unwrap();
    let two = Responder::start(zone(&[("mix.test", rec(&["10.9.9.9"])), ("d.corp.test", rec(&["10.4.0.1"]))]), false)
        .await
        .unwrap();
    // Cache: the second lookup asks nothing.
    let r = resolver(vec![server(&one)], Duration::from_secs(2));
    assert_eq!(r.lookup("c.test", Family::Both).await, Ok(ips(&["10.1.1.1", "fd00::1"])));
    assert_eq!(r.lookup("c.test.", Family::Both).await, Ok(ips(&["10.1.1.1", "fd00::1"])));
    assert_eq!(asked(&one, "c.test"), 2, "one A and one AAAA query in all");
    // expectIPs keeps only matching answers; a server whose answers all fail goes to the next.
    let mut s1 = server(&one);
    s1.expect_ips = vec!["10.0.0.0/8".parse().unwrap()];
    let r = resolver(vec![s1.clone(), server(&two)], Duration::from_secs(2));
    assert_eq!(r.lookup("mix.test", Family::V4).await, Ok(ips(&["10.0.0.5"])));
    s1.expect_ips = vec!["192.168.0.0/16".parse().unwrap()];
    let r = resolver(vec![s1, server(&two)], Duration::from_secs(2));
    assert_eq!(r.lookup("mix.test", Family::V4).await, Ok(ips(&["10.9.9.9"])));
    // `domains`: rank by match kind, not by server order (T12).
    let mut a = server(&one);
    a.domains = vec![DomainMatcher::Keyword("corp".into())];
    let mut b = server(&two);
    b.domains = vec![DomainMatcher::Full("d.corp.test".into())];
    let r = resolver(vec![a, b], Duration::from_secs(2));
    assert_eq!(r.lookup("d.corp.test", Family::V4).await, Ok(ips(&["10.4.0.1"])));
    // hosts answers without asking; an alias is asked instead of the name.
    let cfg = DnsConfig {
        servers: vec![server(&one)],
        hosts: vec![
            HostEntry {
                matcher: crate::config::host_matcher("al.test").unwrap(),
                value: HostValue::Alias("c.test".into()),
            },
            HostEntry {
                matcher: crate::config::host_matcher("h.test").unwrap(),
                value: HostValue::Ip("10.7.7.7".parse().unwrap()),
            },
        ],
        ..Default::default()
    };
    let r = Resolver::new(&cfg).unwrap();
    assert_eq!(r.lookup("h.test", Family::V4).await, Ok(ips(&["10.7.7.7"])));
    assert_eq!(r.lookup("h.test", Family::V6).await, Err(LookupError::Empty));
    assert_eq!(asked(&one, "h.test"), 0);
    assert_eq!(r.lookup("al.test", Family::V4).await, Ok(ips(&["10.1.1.1"])));
}

#[tokio::test]
async fn a_silent_aaaa_does_not_fail_the_lookup_and_ecs_is_sent() {
    let mut r1 = rec(&["10.2.2.2"]);
    r1.silent = vec![RecordType::AAAA];
    let one = Responder::start(zone(&[("s.test", r1)]), false).await.unwrap();
    let mut s = server(&one);
    s.client_ip = Some("203.0.113.9".parse().unwrap());
    let r = resolver(vec![s], Duration::from_secs(4));
    let start = Instant::now();
    assert_eq!(r.lookup("s.test", Family::Both).await, Ok(ips(&["10.2.2.2"])));
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "the A answer is used after a short grace, not the deadline: {took:?}");
    assert!(
        one.seen()
            .iter()
            .all(|q| q.ecs == Some("203.0.113.0".parse().unwrap()) || q.ecs == Some("203.0.113.9".parse().unwrap())),
        "{:?}",
        one.seen()
    );
}

#[tokio::test]
async fn bad_names_fail_cleanly() {
    let r = resolver(Vec::new(), Duration::from_secs(1));
    assert!(matches!(r.lookup(&"a".repeat(300), Family::V4).await, Err(LookupError::InvalidName(_))));
    assert!(matches!(r.lookup("", Family::V4).await, Err(LookupError::InvalidName(_))));
    assert!(matches!(r.lookup("a..b", Family::V4).await, Err(LookupError::InvalidName(_))));
}
