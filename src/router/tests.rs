use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use proptest::prelude::*;

use super::ip::{IpSet, PortSet, RangeSet};
use super::*;
use crate::config::{DomainMatcher, PortList};
use crate::session::{Destination, User};

fn rule(tag: &str) -> RuleConfig {
    RuleConfig { outbound_tag: tag.into(), ..Default::default() }
}

fn domains(tag: &str, list: &[DomainMatcher]) -> RuleConfig {
    RuleConfig { domain: list.to_vec(), ..rule(tag) }
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn router(strategy: RoutingDomainStrategy, rules: Vec<RuleConfig>) -> Router {
    Router::new(&RoutingConfig { domain_strategy: strategy, rules, ..Default::default() }).unwrap()
}

fn as_is(rules: Vec<RuleConfig>) -> Router {
    router(RoutingDomainStrategy::AsIs, rules)
}

fn session(host: &str, port: u16) -> Session {
    Session::new(Some(Arc::from("in")), None, Destination::tcp(Address::parse(host), port))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn pick(r: &Router, s: &Session) -> Option<String> {
    block_on(r.pick(s)).map(str::to_owned)
}

fn pick_host(r: &Router, host: &str) -> Option<String> {
    pick(r, &session(host, 443))
}

use DomainMatcher::{Domain, Full, Keyword, Regexp};

#[test]
fn full_is_exact_and_case_sensitive() {
    let r = as_is(vec![domains("x", &[Full("example.com".into())])]);
    assert_eq!(pick_host(&r, "example.com").as_deref(), Some("x"));
    assert_eq!(pick_host(&r, "a.example.com"), None);
    assert_eq!(pick_host(&r, "example.co"), None);
    assert_eq!(pick_host(&r, "Example.com"), None);
}

#[test]
fn domain_matches_at_label_boundaries_only() {
    let r = as_is(vec![domains("x", &[Domain("example.com".into())])]);
    for yes in ["example.com", "a.example.com", "a.b.example.com", ".example.com", "a..example.com"] {
        assert_eq!(pick_host(&r, yes).as_deref(), Some("x"), "{yes}");
    }
    for no in ["xexample.com", "example.com.", "example.comx", "com", "EXAMPLE.com", "a.Example.com"] {
        assert_eq!(pick_host(&r, no), None, "{no}");
    }
}

#[test]
fn domain_with_edge_patterns_follows_go() {
    // Go: HasSuffix(s, p) && (len(s) == len(p) || s[len(s)-len(p)-1] == '.').
    let r = as_is(vec![domains("dot", &[Domain(".example.com".into())]), domains("empty", &[Domain(String::new())])]);
    assert_eq!(pick_host(&r, "a..example.com").as_deref(), Some("dot"));
    assert_eq!(pick_host(&r, ".example.com").as_deref(), Some("dot"));
    assert_eq!(pick_host(&r, "a.example.com"), None);
    assert_eq!(pick_host(&r, "example.com.").as_deref(), Some("empty"));
}

#[test]
fn keyword_is_substring_and_case_sensitive() {
    let r = as_is(vec![domains("x", &[Keyword("goog".into()), Keyword("tube".into())])]);
    assert_eq!(pick_host(&r, "www.google.com").as_deref(), Some("x"));
    assert_eq!(pick_host(&r, "youtube.com").as_deref(), Some("x"));
    assert_eq!(pick_host(&r, "GOOGLE.com"), None);
    assert_eq!(pick_host(&r, "example.com"), None);
}

#[test]
fn empty_keyword_matches_every_domain_but_no_ip() {
    let r = as_is(vec![domains("x", &[Keyword(String::new())])]);
    assert_eq!(pick_host(&r, "a").as_deref(), Some("x"));
    assert_eq!(pick_host(&r, "1.2.3.4"), None);
}

#[test]
fn regexp_is_an_unanchored_search() {
    let r =
        as_is(vec![domains("anchored", &[Regexp(r"^api\.".into())]), domains("search", &[Regexp(r"ex+ample".into())])]);
    assert_eq!(pick_host(&r, "api.example.com").as_deref(), Some("anchored"));
    assert_eq!(pick_host(&r, "www.exxample.org").as_deref(), Some("search"));
    assert_eq!(pick_host(&r, "www.api.org"), None);
    assert_eq!(pick_host(&r, "EXAMPLE.org"), None);
}

#[test]
fn bad_regexp_is_reported_with_its_path() {
    let mut bad = domains("x", &[Full("a".into()), Regexp("(".into())]);
    bad.path = "routing.rules[1]".into();
    let err =
        Router::new(&RoutingConfig { rules: vec![domains("y", &[Regexp("ok".into())]), bad], ..Default::default() })
            .unwrap_err();
    let RouterError::Invalid { path, message } = err;
    assert_eq!(path, "routing.rules[1].domain[1]");
    assert!(message.contains("regexp"), "{message}");
}

#[test]
fn rule_without_conditions_is_refused() {
    assert!(Router::new(&RoutingConfig { rules: vec![rule("x")], ..Default::default() }).is_err());
}

#[test]
fn domain_rules_never_match_ip_targets() {
    let r = as_is(vec![domains("x", &[Keyword("1".into()), Regexp(".".into())])]);
    assert_eq!(pick_host(&r, "1.1.1.1"), None);
    assert_eq!(pick_host(&r, "::1"), None);
}

#[test]
fn first_match_wins_across_matcher_kinds() {
    let r = as_is(vec![
        RuleConfig { port: Some(PortList(vec![(80, 80)])), ..domains("first", &[Keyword("exam".into())]) },
        domains("second", &[Regexp("com$".into())]),
        domains("third", &[Domain("example.com".into())]),
        domains("fourth", &[Full("www.example.com".into())]),
    ]);
    assert_eq!(pick(&r, &session("www.example.com", 80)).as_deref(), Some("first"));
    assert_eq!(pick(&r, &session("www.example.com", 443)).as_deref(), Some("second"));
    assert_eq!(pick(&r, &session("www.example.org", 443)), None);
    let r = as_is(vec![domains("a", &[Full("www.example.com".into())]), domains("b", &[Keyword("www".into())])]);
    assert_eq!(pick_host(&r, "www.example.com").as_deref(), Some("a"));
}

#[test]
fn rules_without_domain_interleave_in_order() {
    let r = as_is(vec![
        domains("d0", &[Full("a.com".into())]),
        RuleConfig { port: Some(PortList(vec![(443, 443)])), ..rule("p1") },
        domains("d2", &[Full("b.com".into())]),
    ]);
    assert_eq!(pick_host(&r, "a.com").as_deref(), Some("d0"));
    assert_eq!(pick_host(&r, "b.com").as_deref(), Some("p1"));
    assert_eq!(pick(&r, &session("b.com", 80)).as_deref(), Some("d2"));
    assert_eq!(pick_host(&r, "1.2.3.4").as_deref(), Some("p1"));
}

#[test]
fn conditions_are_anded_and_entries_ored() {
    let r = as_is(vec![RuleConfig {
        inbound_tag: vec!["in".into(), "other".into()],
        port: Some(PortList(vec![(53, 53), (1000, 2000)])),
        domain: vec![Full("x.com".into()), Keyword("y".into())],
        ..rule("x")
    }]);
    assert_eq!(pick(&r, &session("x.com", 53)).as_deref(), Some("x"));
    assert_eq!(pick(&r, &session("yy.org", 1500)).as_deref(), Some("x"));
    assert_eq!(pick(&r, &session("x.com", 443)), None);
    assert_eq!(pick(&r, &session("z.com", 53)), None);
    let mut s = session("x.com", 53);
    s.inbound_tag = Some(Arc::from("nope"));
    assert_eq!(pick(&r, &s), None);
}

#[test]
fn inbound_tag_user_network_source_and_source_port() {
    let src: SocketAddr = "10.1.2.3:5555".parse().unwrap();
    let r = as_is(vec![
        RuleConfig { user: vec!["a@b".into()], ..rule("user") },
        RuleConfig { network: Some(NetworkList { tcp: false, udp: true }), ..rule("udp") },
        RuleConfig { source: nets(&["10.0.0.0/8"]), ..rule("source") },
        RuleConfig { source_port: Some(PortList(vec![(6000, 7000)])), ..rule("sport") },
        RuleConfig { inbound_tag: vec!["bridge".into()], ..rule("tag") },
    ]);
    let mut s = session("1.1.1.1", 80);
    assert_eq!(pick(&r, &s), None, "no user, tcp, no source, other tag");
    s.user = Some(User { email: Some(Arc::from("a@b")), level: 0 });
    assert_eq!(pick(&r, &s).as_deref(), Some("user"));
    s.user = Some(User { email: Some(Arc::from("A@b")), level: 0 });
    assert_eq!(pick(&r, &s), None);
    s.user = Some(User { email: None, level: 0 });
    s.target.network = Network::Udp;
    assert_eq!(pick(&r, &s).as_deref(), Some("udp"));
    s.target.network = Network::Tcp;
    s.source = Some(src);
    assert_eq!(pick(&r, &s).as_deref(), Some("source"));
    s.source = Some("[::ffff:10.9.9.9]:6500".parse().unwrap());
    assert_eq!(pick(&r, &s).as_deref(), Some("source"), "v4-mapped source is canonicalised");
    s.source = Some("192.168.0.1:6500".parse().unwrap());
    assert_eq!(pick(&r, &s).as_deref(), Some("sport"));
    s.source = None;
    s.inbound_tag = Some(Arc::from("bridge"));
    assert_eq!(pick(&r, &s).as_deref(), Some("tag"));
    s.inbound_tag = None;
    assert_eq!(pick(&r, &s), None);
}

#[test]
fn empty_strings_never_match_like_v2ray() {
    let r = as_is(vec![RuleConfig { inbound_tag: vec![String::new()], ..rule("t") }]);
    let mut s = session("1.1.1.1", 80);
    s.inbound_tag = Some(Arc::from(""));
    assert_eq!(pick(&r, &s), None);
}

#[test]
fn protocol_rules_match_a_prefix_of_the_sniffed_name() {
    let r = as_is(vec![
        RuleConfig { protocol: vec!["http".into()], ..domains("proto", &[Keyword("a".into())]) },
        RuleConfig { protocol: vec!["tls".into()], ..rule("proto2") },
        RuleConfig { protocol: vec!["http2".into(), String::new()], ..rule("never") },
        RuleConfig { protocol: vec!["bittorrent".into()], ..rule("bt") },
        domains("next", &[Keyword("a".into())]),
    ]);
    // Nothing sniffed: no protocol rule matches.
    assert_eq!(pick_host(&r, "a.com").as_deref(), Some("next"));
    assert_eq!(pick_host(&r, "1.1.1.1"), None);
    let with = |host: &str, p: &'static str| {
        let mut s = session(host, 443);
        s.protocol = Some(p);
        pick(&r, &s)
    };
    assert_eq!(with("a.com", "http1").as_deref(), Some("proto"));
    assert_eq!(with("b.com", "http1"), None, "http2 is no prefix of http1");
    assert_eq!(with("1.1.1.1", "tls").as_deref(), Some("proto2"));
    assert_eq!(with("1.1.1.1", "bittorrent").as_deref(), Some("bt"));
}

#[test]
fn ip_rules_v4_v6() {
    let r = as_is(vec![
        RuleConfig { ip: nets(&["10.0.0.0/8", "192.168.1.7/32", "10.200.0.0/16"]), ..rule("v4") },
        RuleConfig { ip: nets(&["2001:db8::/32", "::1/128", "::ffff:172.16.0.0/108"]), ..rule("v6") },
    ]);
    assert_eq!(pick_host(&r, "10.255.255.255").as_deref(), Some("v4"));
    assert_eq!(pick_host(&r, "192.168.1.7").as_deref(), Some("v4"));
    assert_eq!(pick_host(&r, "192.168.1.8"), None);
    assert_eq!(pick_host(&r, "11.0.0.0"), None);
    assert_eq!(pick_host(&r, "2001:db8:ffff::1").as_deref(), Some("v6"));
    assert_eq!(pick_host(&r, "::1").as_deref(), Some("v6"));
    assert_eq!(pick_host(&r, "::2"), None);
    assert_eq!(pick_host(&r, "172.16.3.4").as_deref(), Some("v6"), "v4-mapped CIDR matches v4 targets");
    assert_eq!(pick_host(&r, "::ffff:10.0.0.1").as_deref(), Some("v4"));
    assert_eq!(pick_host(&r, "example.com"), None, "AsIs: an ip rule never sees a domain");
}

#[test]
fn cidr_ranges_merge() {
    let set = IpSet::new(&nets(&["10.0.0.0/9", "10.128.0.0/9", "10.0.0.5/8", "11.0.0.0/8", "1.2.3.4/32"]));
    assert!(set.contains("10.128.3.4".parse().unwrap()));
    assert!(set.contains("11.255.255.255".parse().unwrap()));
    assert!(!set.contains("12.0.0.0".parse().unwrap()));
    assert!(!set.contains("1.2.3.5".parse().unwrap()));
    let v4: RangeSet<u32> =
        RangeSet::from_ranges(vec![(10, 20), (15, 30), (31, 40), (50, 60), (0, 0), (u32::MAX, u32::MAX)]);
    assert_eq!(v4.ranges(), &[(0, 0), (10, 40), (50, 60), (u32::MAX, u32::MAX)]);
    let all = IpSet::new(&nets(&["0.0.0.0/0", "::/0"]));
    assert!(all.contains("255.255.255.255".parse().unwrap()));
    assert!(all.contains("ffff::ffff".parse().unwrap()));
}

#[test]
fn port_lists() {
    let p: PortSet = RangeSet::from_ranges(vec![(53, 53), (1000, 2000), (1500, 2500), (65535, 65535), (0, 0)]);
    assert_eq!(p.ranges(), &[(0, 0), (53, 53), (1000, 2500), (65535, 65535)]);
    for (port, ok) in
        [(0, true), (1, false), (53, true), (999, false), (1000, true), (2500, true), (2501, false), (65535, true)]
    {
        assert_eq!(p.contains(port), ok, "{port}");
    }
}

#[test]
fn as_is_never_resolves() {
    // `.invalid` never resolves; with AsIs the name rule answers at once and an ip rule does not see it.
    let r = as_is(vec![
        RuleConfig { ip: nets(&["0.0.0.0/0", "::/0"]), ..rule("ip") },
        domains("name", &[Domain("nowhere.invalid".into())]),
    ]);
    let t = Instant::now();
    assert_eq!(pick_host(&r, "a.nowhere.invalid").as_deref(), Some("name"));
    assert_eq!(pick_host(&r, "test.v2fly.org").as_deref(), None);
    assert!(t.elapsed() < Duration::from_millis(50));
}

#[test]
fn ip_if_non_match_resolves_only_when_nothing_matched() {
    let rules = vec![
        RuleConfig { ip: nets(&["127.0.0.0/8", "::1/128"]), ..rule("loopback") },
        domains("name", &[Full("localhost".into())]),
    ];
    let r = router(RoutingDomainStrategy::IpIfNonMatch, rules.clone());
    // The name rule matches in the first pass, so the ip rule (earlier) is not reached by resolution.
    assert_eq!(pick_host(&r, "localhost").as_deref(), Some("name"));
    let r = router(RoutingDomainStrategy::IpIfNonMatch, rules[..1].to_vec());
    assert_eq!(pick_host(&r, "localhost").as_deref(), Some("loopback"));
    assert_eq!(pick_host(&r, "nowhere.invalid"), None, "resolution failure is no match, not an error");
    let r = as_is(rules[..1].to_vec());
    assert_eq!(pick_host(&r, "localhost"), None);
}

#[test]
fn ip_if_non_match_keeps_domain_and_other_conditions() {
    let r = router(
        RoutingDomainStrategy::IpIfNonMatch,
        vec![
            RuleConfig { ip: nets(&["127.0.0.0/8", "::1/128"]), port: Some(PortList(vec![(1, 1)])), ..rule("port1") },
            RuleConfig { ip: nets(&["127.0.0.0/8", "::1/128"]), ..domains("both", &[Keyword("local".into())]) },
        ],
    );
    assert_eq!(pick_host(&r, "localhost").as_deref(), Some("both"));
    assert_eq!(pick(&r, &session("localhost", 1)).as_deref(), Some("port1"));
}

#[test]
fn ip_on_demand_resolves_at_the_first_ip_rule() {
    let r = router(
        RoutingDomainStrategy::IpOnDemand,
        vec![
            RuleConfig { ip: nets(&["10.0.0.0/8"]), ..rule("ten") },
            RuleConfig { ip: nets(&["127.0.0.0/8", "::1/128"]), ..rule("loopback") },
            domains("name", &[Full("localhost".into())]),
        ],
    );
    assert_eq!(pick_host(&r, "localhost").as_deref(), Some("loopback"));
    assert_eq!(pick_host(&r, "nowhere.invalid"), None);
}

#[test]
fn router_is_send_sync_and_pick_is_send() {
    fn send_sync<T: Send + Sync + fmt::Debug>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let r = as_is(vec![domains("x", &[Full("a".into())])]);
    send_sync(&r);
    let s = session("a", 1);
    send(r.pick(&s));
    assert!(format!("{r:?}").contains("rules: 1"));
}

#[test]
fn many_rules_one_domain_each_keep_order() {
    let rules: Vec<RuleConfig> =
        (0..10_000).map(|i| domains(&format!("r{i}"), &[Domain(format!("site{}.com", i % 5000))])).collect();
    let t = Instant::now();
    let r = as_is(rules);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(pick_host(&r, "www.site42.com").as_deref(), Some("r42"));
    assert_eq!(pick_host(&r, "site4999.com").as_deref(), Some("r4999"));
    assert_eq!(pick_host(&r, "site5000.com"), None);
}

#[test]
fn many_matching_keyword_rules_spill_the_inline_buffer() {
    let mut rules: Vec<RuleConfig> = (0..100)
        .map(|i| RuleConfig { port: Some(PortList(vec![(i, i)])), ..domains(&format!("r{i}"), &[Keyword("a".into())]) })
        .collect();
    rules.push(domains("last", &[Keyword("b".into())]));
    let r = as_is(rules);
    assert_eq!(pick(&r, &session("ab", 77)).as_deref(), Some("r77"));
    assert_eq!(pick(&r, &session("ab", 1000)).as_deref(), Some("last"));
}

// ---- property test: the compiled router against a naive reading of the rules ----

fn naive_domain(m: &DomainMatcher, d: &str) -> bool {
    match m {
        Keyword(k) => d.contains(k.as_str()),
        Full(f) => d == f,
        Domain(p) => d.ends_with(p.as_str()) && (d.len() == p.len() || d.as_bytes()[d.len() - p.len() - 1] == b'.'),
        Regexp(re) => regex::Regex::new(re).unwrap().is_match(d),
        DomainMatcher::Geo(g) => g.entries.iter().any(|e| naive_domain(e, d)),
    }
}

fn naive_pick<'a>(rules: &'a [RuleConfig], s: &Session) -> Option<&'a str> {
    let ok = |r: &RuleConfig| {
        let addr = &s.target.address;
        (r.domain.is_empty()
            || addr.domain().is_some_and(|d| !d.is_empty() && r.domain.iter().any(|m| naive_domain(m, d))))
            && (r.ip.is_empty() || addr.ip().is_some_and(|ip| r.ip.iter().any(|n| n.contains(&ip))))
            && (r.inbound_tag.is_empty()
                || s.inbound_tag.as_deref().is_some_and(|t| !t.is_empty() && r.inbound_tag.iter().any(|x| x == t)))
            && r.port.as_ref().is_none_or(|p| p.contains(s.target.port))
            && r.source_port.as_ref().is_none_or(|p| s.source.is_some_and(|a| p.contains(a.port())))
            && r.network.is_none_or(|n| if s.target.network == Network::Tcp { n.tcp } else { n.udp })
            && (r.protocol.is_empty()
                || s.protocol.is_some_and(|p| r.protocol.iter().any(|x| !x.is_empty() && p.starts_with(x.as_str()))))
    };
    rules.iter().find(|r| ok(r)).map(|r| r.outbound_tag.as_str())
}

fn label() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "ab", "ba", "c", "A", ""]).prop_map(str::to_owned)
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|v| v.join("."))
}

fn matcher() -> impl Strategy<Value = DomainMatcher> {
    let regexes = prop::sample::select(vec!["^a", "b$", r"a\.b", "c+", "^ab?\\.", "A"]);
    prop_oneof![
        name().prop_map(Keyword),
        name().prop_map(Full),
        name().prop_map(Domain),
        regexes.prop_map(|r| Regexp(r.to_owned())),
    ]
}

/// An empty list most of the time, so that rules often match.
fn sometimes<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = Vec<T>>) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![3 => Just(Vec::new()), 1 => s]
}

fn ports() -> impl Strategy<Value = Option<PortList>> {
    prop::option::weighted(
        0.3,
        prop::collection::vec((0u16..6, 0u16..3).prop_map(|(a, w)| (a, a + w)), 1..3).prop_map(PortList),
    )
}

fn rule_strategy() -> impl Strategy<Value = RuleConfig> {
    (
        prop::collection::vec(matcher(), 0..4),
        sometimes(prop::collection::vec(
            prop::sample::select(vec!["1.0.0.0/8", "1.2.0.0/16", "2.0.0.0/7", "::1/128", "::/1"]),
            1..3,
        )),
        sometimes(prop::collection::vec(prop::sample::select(vec!["in", "other"]), 1..3)),
        ports(),
        ports(),
        prop::option::weighted(0.3, (any::<bool>(), any::<bool>()).prop_map(|(tcp, udp)| NetworkList { tcp, udp })),
        prop::option::weighted(0.2, prop::sample::select(vec!["tls", "http", "http2", "bit"])),
        0u32..1000,
    )
        .prop_map(|(domain, ip, tags, port, source_port, network, proto, n)| RuleConfig {
            outbound_tag: format!("o{n}"),
            domain,
            ip: nets(&ip),
            inbound_tag: tags.into_iter().map(str::to_owned).collect(),
            port,
            source_port,
            network,
            protocol: proto.map(|p| vec![p.to_string()]).unwrap_or_default(),
            ..Default::default()
        })
        .prop_filter("needs a condition", |r| {
            !(r.domain.is_empty()
                && r.ip.is_empty()
                && r.inbound_tag.is_empty()
                && r.port.is_none()
                && r.source_port.is_none()
                && r.network.is_none()
                && r.protocol.is_empty())
        })
}

fn query() -> impl Strategy<Value = Session> {
    let host = prop_oneof![
        3 => name(),
        1 => prop::sample::select(vec!["1.2.3.4", "1.9.9.9", "3.0.0.1", "::1", "::2", "8000::1"]).prop_map(str::to_owned),
    ];
    let sniffed = prop::option::of(prop::sample::select(vec!["tls", "http1", "bittorrent"]));
    (
        host,
        0u16..8,
        prop::option::of(0u16..8),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["in", "x"])),
        sniffed,
    )
        .prop_map(|(host, port, sport, udp, tag, sniffed)| {
            let addr = Address::parse(&host);
            let target = if udp { Destination::udp(addr, port) } else { Destination::tcp(addr, port) };
            let source = sport.map(|p| SocketAddr::new(IpAddr::from([9, 9, 9, 9]), p));
            let mut s = Session::new(tag.map(Arc::from), source, target);
            s.protocol = sniffed;
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn fast_router_agrees_with_naive(
        rules in prop::collection::vec(rule_strategy(), 1..12),
        queries in prop::collection::vec(query(), 1..16),
    ) {
        let r = as_is(rules.clone());
        for q in &queries {
            let got = pick(&r, q);
            prop_assert_eq!(got.as_deref(), naive_pick(&rules, q), "{:?}", q.target);
        }
    }
}
