//! geoip/geosite with full-size lists: load time (config → router) and memory for the codes a typical
//! config uses, and lookups/s. No Debian package ships V2Ray's lists, so the files are synthetic, sized
//! like the measurements in ROUTING-DATA.md §1.8 (geosite: 1 001 lists, CN = 61 000 Domain + 1 000
//! Full + 50 Plain + 20 Regex; geoip: 250 lists, CN = 8 000 IPv4 + 1 500 IPv6 CIDRs).
//! Run: `cargo bench --bench geo`.

use std::future::Future;
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use oxray::config::{Assets, load_str_with};
use oxray::router::Router;
use oxray::router::geo::{SiteEntry, encode_ip_file, encode_site_file};
use oxray::session::{Address, Destination, Session};

fn write_files(dir: &Path) {
    let names: Vec<String> = (0..61_000).map(|i| format!("d{i}.cn-site{}.com", i % 977)).collect();
    let fulls: Vec<String> = (0..1_000).map(|i| format!("www.full{i}.cn")).collect();
    let plains: Vec<String> = (0..50).map(|i| format!("kw{i}x")).collect();
    let regexes: Vec<String> = (0..20).map(|i| format!(r"^r{i}[0-9]+\.cn$")).collect();
    let mut cn: Vec<SiteEntry<'_>> = names.iter().map(|n| (2, n.as_str(), &[][..])).collect();
    cn.extend(fulls.iter().map(|n| (3, n.as_str(), &[][..])));
    cn.extend(plains.iter().map(|n| (0, n.as_str(), &[][..])));
    cn.extend(regexes.iter().map(|n| (1, n.as_str(), &[][..])));
    let others: Vec<(String, Vec<String>)> =
        (0..1_000).map(|l| (format!("L{l:04}"), (0..40).map(|i| format!("s{i}.list{l}.example")).collect())).collect();
    let other_entries: Vec<Vec<SiteEntry<'_>>> =
        others.iter().map(|(_, v)| v.iter().map(|d| (2, d.as_str(), &["ads"][..])).collect()).collect();
    let mut lists: Vec<(&str, &[SiteEntry<'_>])> = vec![("CN", &cn)];
    for ((code, _), e) in others.iter().zip(&other_entries) {
        lists.push((code.as_str(), e));
    }
    // The typical config's other codes are ordinary lists of the file.
    lists[1].0 = "GEOLOCATION-!CN";
    lists[2].0 = "CATEGORY-ADS-ALL";
    std::fs::write(dir.join("geosite.dat"), encode_site_file(&lists)).unwrap();

    let v4 = |i: u32, p: u8| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i.wrapping_mul(2_654_435_761) & !0xff), p).unwrap());
    let v6 = |i: u128| IpNet::V6(Ipv6Net::new(Ipv6Addr::from((0x2400u128 << 112) | (i << 80)), 32).unwrap());
    let cn_ip: Vec<IpNet> = (0..8_000).map(|i| v4(i, 24)).chain((0..1_500).map(v6)).collect();
    let private: Vec<IpNet> = ["10.0.0.0/8", "127.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let rest: Vec<(String, Vec<IpNet>)> =
        (0..248).map(|l| (format!("C{l:03}"), (0..700).map(|i| v4(100_000 + l * 1000 + i, 24)).collect())).collect();
    let mut ip_lists: Vec<(&str, &[IpNet])> = vec![("CN", &cn_ip), ("PRIVATE", &private)];
    ip_lists.extend(rest.iter().map(|(c, v)| (c.as_str(), &v[..])));
    std::fs::write(dir.join("geoip.dat"), encode_ip_file(&ip_lists)).unwrap();
}

const CONFIG: &str = r#"{"outbounds": [{"tag": "proxy", "protocol": "blackhole"}, {"tag": "direct", "protocol": "blackhole"}, {"tag": "block", "protocol": "blackhole"}],
 "routing": {"rules": [
   {"type": "field", "domain": ["geosite:category-ads-all"], "outboundTag": "block"},
   {"type": "field", "domain": ["geosite:geolocation-!cn"], "outboundTag": "proxy"},
   {"type": "field", "domain": ["geosite:cn"], "outboundTag": "direct"},
   {"type": "field", "ip": ["geoip:private", "geoip:cn"], "outboundTag": "direct"}]}}"#;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

fn load(dir: &Path) -> Router {
    let cfg = load_str_with("bench.json", CONFIG, Assets::in_dir(dir)).expect("config loads");
    Router::new(&cfg.routing).expect("router")
}

fn pick_now<'a>(r: &'a Router, s: &Session) -> Option<&'a str> {
    let mut fut = pin!(r.pick(s));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(tag) => tag,
        Poll::Pending => panic!("AsIs routing must not wait"),
    }
}

fn geo(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("oxray-geo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_files(&dir);
    let size = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
    // One cold load first, measured by hand for the memory figure.
    let before = rss_kib();
    let t = Instant::now();
    let router = load(&dir);
    let took = t.elapsed();
    let after = rss_kib();
    println!(
        "geo: geosite.dat {:.1} MB, geoip.dat {:.1} MB; typical config (5 codes) loads in {:.0} ms, router holds ~{:.1} MiB (RSS +{} KiB)",
        size("geosite.dat") as f64 / 1e6,
        size("geoip.dat") as f64 / 1e6,
        took.as_secs_f64() * 1e3,
        (after.saturating_sub(before)) as f64 / 1024.0,
        after.saturating_sub(before)
    );
    c.bench_function("geo: load typical config (geosite cn, !cn, ads; geoip cn, private)", |b| {
        b.iter(|| black_box(load(&dir)))
    });
    let q = |h: &str| Session::new(Some(Arc::from("in")), None, Destination::tcp(Address::parse(h), 443));
    let queries: Vec<Session> = (0..1024)
        .map(|i| match i % 4 {
            0 => q(&format!("www.d{}.cn-site{}.com", i * 59, (i * 59) % 977)),
            1 => q(&format!("cdn.nowhere{i}.net")),
            2 => q(&format!("{}.{}.{}.{}", 1 + i % 200, i % 250, 7, 9)),
            _ => q(&format!("s3.list{}.example", i % 40)),
        })
        .collect();
    let mut i = 0;
    c.bench_function("geo: lookup (domains and IPs, hits and misses)", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            black_box(pick_now(&router, black_box(&queries[i])))
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, geo);
criterion_main!(benches);
