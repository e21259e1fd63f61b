//! Router lookups with large rule sets. Run: `cargo bench --bench router`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use oxray::config::{DomainMatcher, RoutingConfig, RuleConfig};
use oxray::router::Router;
use oxray::session::{Address, Destination, Session};

const N: usize = 10_000;

/// `pick` under AsIs never waits, so one poll answers it; this keeps the runtime out of the numbers.
fn pick_now<'a>(r: &'a Router, s: &Session) -> Option<&'a str> {
    let mut fut = pin!(r.pick(s));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(tag) => tag,
        Poll::Pending => panic!("AsIs routing must not wait"),
    }
}

fn rule(tag: &str, domain: Vec<DomainMatcher>) -> RuleConfig {
    RuleConfig { outbound_tag: tag.into(), domain, ..Default::default() }
}

fn build(rules: Vec<RuleConfig>) -> Router {
    Router::new(&RoutingConfig { rules, ..Default::default() }).expect("valid rules")
}

fn session(host: &str) -> Session {
    Session::new(Some(Arc::from("socks")), None, Destination::tcp(Address::parse(host), 443))
}

/// Half the queries hit a rule (as a subdomain), half miss; average length about 20 bytes.
fn queries() -> Vec<Session> {
    (0..1024)
        .map(|i| {
            let k = (i * 7919) % N;
            if i % 2 == 0 { session(&format!("www.site{k}.com")) } else { session(&format!("cdn.other{k}.net")) }
        })
        .collect()
}

fn run(c: &mut Criterion, name: &str, r: &Router, qs: &[Session]) {
    let mut i = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % qs.len();
            black_box(pick_now(r, black_box(&qs[i])))
        })
    });
}

fn domain_rules(c: &mut Criterion) {
    let qs = queries();
    let one = build(vec![rule("proxy", (0..N).map(|i| DomainMatcher::Domain(format!("site{i}.com"))).collect())]);
    run(c, "one rule, 10k domain:", &one, &qs);

    let many: Vec<RuleConfig> =
        (0..N).map(|i| rule(&format!("o{}", i % 8), vec![DomainMatcher::Domain(format!("site{i}.com"))])).collect();
    c.bench_function("build 10k rules of one domain:", |b| b.iter(|| build(black_box(many.clone()))));
    let many = build(many);
    run(c, "10k rules, one domain: each", &many, &qs);

    let full: Vec<RuleConfig> =
        (0..N).map(|i| rule(&format!("o{}", i % 8), vec![DomainMatcher::Full(format!("www.site{i}.com"))])).collect();
    run(c, "10k rules, one full: each", &build(full), &qs);

    // 9k domain: + 900 keyword: + 100 regexp: rules, in that interleaved order.
    let mix: Vec<RuleConfig> = (0..N)
        .map(|i| {
            let m = match i % 100 {
                0 => DomainMatcher::Regexp(format!(r"^ads\d*\.tracker{i}\.")),
                1..=9 => DomainMatcher::Keyword(format!("kw{i}x")),
                _ => DomainMatcher::Domain(format!("site{i}.com")),
            };
            rule(&format!("o{}", i % 8), vec![m])
        })
        .collect();
    run(c, "10k rules: 9k domain: + 900 keyword: + 100 regexp:", &build(mix), &qs);

    let kw = build(vec![rule("kw", (0..1000).map(|i| DomainMatcher::Keyword(format!("kw{i}x"))).collect())]);
    run(c, "one rule, 1k keyword:", &kw, &qs);
}

fn ip_target(c: &mut Criterion) {
    // The reverse-proxy shape: a handful of inboundTag rules, IP targets.
    let tagged = |tag: &str, inbound: &str| RuleConfig {
        outbound_tag: tag.into(),
        inbound_tag: vec![inbound.into()],
        ..Default::default()
    };
    let r = build(vec![
        tagged("portal", "external"),
        tagged("portal", "tunnel"),
        tagged("out", "bridge"),
        tagged("freedom", "interconn"),
        rule("d", vec![DomainMatcher::Domain("test.v2fly.org".into())]),
    ]);
    let mut s = Session::new(Some(Arc::from("bridge")), None, Destination::tcp(Address::parse("127.0.0.1"), 80));
    c.bench_function("ip target, inboundTag rules (3rd matches)", |b| {
        b.iter(|| black_box(pick_now(&r, black_box(&s))))
    });
    s.inbound_tag = Some(Arc::from("none"));
    c.bench_function("ip target, inboundTag rules (no match)", |b| b.iter(|| black_box(pick_now(&r, black_box(&s)))));
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(30);
    targets = domain_rules, ip_target
}
criterion_main!(benches);
