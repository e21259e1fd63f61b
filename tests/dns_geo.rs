//! `geosite:` in a `dns` server's `domains` and `geoip:` / `ext:` in its `expectIPs` (ROUTING-DATA.md), run
//! on oxray and V2Ray 4.34 with the same config and .dat files (the spec's vectors): the routing decisions
//! (`IPIfNonMatch` through the `dns` object) and which responder was asked must agree.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{Impl, Proc, decision, free_port, impls, local, probe, probe_inbounds, temp_dir, v2ray, wait_port_async};
use oxray::dns::responder::{Rec, Responder};
use oxray::router::geo::encode_ip_file;

/// ROUTING-DATA.md §1.9 (geosite `TEST`: full a.test, domain b.test @ads, keyword kw, regexp ^r[0-9]+\.test$;
/// geoip `PRIVATE` 10/8 + fc00::/7, `XX` 198.51.100.0/24).
const GEOIP_HEX: &str = "0a290a075052495641544512080a040a000000100812140a10fc00000000000000000000000000000010070a0e0a02585812080a04c63364001018";
const GEOSITE_HEX: &str = "0a420a0454455354120a08031206612e74657374121308021206622e746573741a070a036164731001120412026b7712130801120f5e725b302d395d2b5c2e7465737424";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn rec(ip: &str) -> Rec {
    Rec { ips: vec![ip.parse().unwrap()], ttl: 300, ..Default::default() }
}

/// The .dat files of both tests in `dir`: the spec's vectors plus `extip.dat` (NET 10.99/16) and
/// `ext.dat` (N: full n.oxt).
fn write_dat_files(dir: &Path) {
    std::fs::write(dir.join("geoip.dat"), unhex(GEOIP_HEX)).unwrap();
    std::fs::write(dir.join("geosite.dat"), unhex(GEOSITE_HEX)).unwrap();
    let net: Vec<ipnet::IpNet> = vec!["10.99.0.0/16".parse().unwrap()];
    std::fs::write(dir.join("extip.dat"), encode_ip_file(&[("NET", &net[..])])).unwrap();
    let site = oxray::router::geo::encode_site_file(&[("N", &[(3, "n.oxt", &[])])]);
    std::fs::write(dir.join("ext.dat"), site).unwrap();
}

/// Runs `which` with the `dns` object `dns` and one dokodemo probe per `want` entry (target host, port
/// 1000+i), with the assets in `dir`; asserts each routing decision (`IPIfNonMatch`; outbounds by IP:
/// geoip:xx → xx, 10.99/16 → hit99, 10.10/16 → hit10) and returns the running process.
async fn run_probes(which: Impl, dir: &Path, dns: &str, want: &[(&str, &str)]) -> Proc {
    write_dat_files(dir);
    let ports: Vec<u16> = want.iter().map(|_| free_port()).collect();
    let ready = free_port();
    let hosts: Vec<&str> = want.iter().map(|(h, _)| *h).collect();
    let inbounds = probe_inbounds(&hosts, &ports, ready);
    let access = dir.join("access.log");
    let config = format!(
        r#"{{"log": {{"loglevel": "debug", "access": "{access}", "error": "{error}"}},
  "dns": {dns},
  "inbounds": [{inbounds}],
  "outbounds": [{{"protocol": "blackhole", "tag": "default"}}, {{"protocol": "blackhole", "tag": "hit10"}},
                {{"protocol": "blackhole", "tag": "hit99"}}, {{"protocol": "blackhole", "tag": "xx"}},
                {{"protocol": "freedom", "tag": "direct"}}],
  "routing": {{"domainStrategy": "IPIfNonMatch", "rules": [
    {{"type": "field", "inboundTag": ["dns-app"], "outboundTag": "direct"}},
    {{"type": "field", "ip": ["geoip:xx"], "outboundTag": "xx"}},
    {{"type": "field", "ip": ["10.99.0.0/16"], "outboundTag": "hit99"}},
    {{"type": "field", "ip": ["10.10.0.0/16"], "outboundTag": "hit10"}}]}}}}"#,
        access = access.display(),
        error = dir.join("error.log").display(),
    );
    let cfg = common::write_file(dir, "config.json", &config);
    let cfg = cfg.to_str().unwrap().to_string();
    let assets = dir.to_str().unwrap().to_string();
    let log = dir.join("run.log");
    let env = [("V2RAY_LOCATION_ASSET", assets.as_str())];
    let proc = match which {
        Impl::Oxray => Proc::spawn("oxray", &common::oxray_bin(), &["run", "-c", &cfg], &log, &env),
        Impl::V2ray => Proc::spawn("v2ray", &v2ray().unwrap(), &["-config", &cfg], &log, &env),
    };
    assert!(wait_port_async(local(ready), Duration::from_secs(10)).await, "{which:?}: {}", proc.log_text());
    for (i, ((host, out), port)) in want.iter().zip(&ports).enumerate() {
        probe(*port).await;
        let got = decision(&access, &format!("tcp:{host}:{}", 1000 + i), Duration::from_secs(10)).await;
        assert_eq!(
            got.as_deref(),
            Some(*out),
            "{which:?}: {host}\n{}",
            std::fs::read_to_string(&access).unwrap_or_default()
        );
    }
    proc
}

fn asked(r: &Responder, from: usize) -> Vec<String> {
    r.seen()[from..].iter().map(|s| s.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_lists_in_the_dns_object_work_like_v2ray() {
    // `main` answers every probe name inside 10.10/16; `special` answers inside XX or 10.99/16.
    let names = ["a.test", "x.b.test", "r7.test", "c.oxt", "kw.oxt", "n.oxt"];
    let main = Responder::start(
        names.iter().enumerate().map(|(i, n)| (n.to_string(), rec(&format!("10.10.0.{}", i + 1)))).collect(),
        false,
    )
    .await
    .unwrap();
    let special: HashMap<String, Rec> = [
        ("a.test", "198.51.100.7"),
        ("x.b.test", "10.77.0.1"),
        ("r7.test", "198.51.100.9"),
        ("kw.oxt", "10.99.0.2"),
        ("n.oxt", "10.99.0.3"),
    ]
    .into_iter()
    .map(|(n, ip)| (n.to_string(), rec(ip)))
    .collect();
    let special = Responder::start(special, false).await.unwrap();
    // (name, outbound): names in geosite:test (full, domain, regexp, keyword `kw` entries) and in
    // ext:ext.dat:n go to `special` first; its answer counts only inside geoip:xx or ext-ip NET (10.99/16),
    // else `main` answers (x.b.test). c.oxt matches no list: `main` first.
    let want: &[(&str, &str)] = &[
        ("a.test", "xx"),
        ("x.b.test", "hit10"),
        ("r7.test", "xx"),
        ("c.oxt", "hit10"),
        ("kw.oxt", "hit99"),
        ("n.oxt", "hit99"),
    ];
    for which in impls() {
        let dir = temp_dir(&format!("dns-geo-{which:?}"));
        let dns = format!(
            r#"{{"tag": "dns-app", "servers": [
    {{"address": "127.0.0.1", "port": {main}}},
    {{"address": "127.0.0.1", "port": {special}, "domains": ["geosite:test", "ext:ext.dat:n"],
      "expectIPs": ["geoip:xx", "ext-ip:extip.dat:net"]}}]}}"#,
            main = main.addr.port(),
            special = special.addr.port(),
        );
        let (main_before, special_before) = (main.seen().len(), special.seen().len());
        let mut proc = run_probes(which, &dir, &dns, want).await;
        let (m, s) = (asked(&main, main_before), asked(&special, special_before));
        for n in ["a.test", "x.b.test", "r7.test", "kw.oxt", "n.oxt"] {
            assert!(s.iter().any(|x| x == n), "{which:?}: {n} must go to the geosite server first: {s:?}");
        }
        assert!(!s.iter().any(|x| x == "c.oxt"), "{which:?}: c.oxt matches no list, main answers first: {s:?}");
        assert!(m.iter().any(|x| x == "x.b.test"), "{which:?}: expectIPs rejected special's answer: {m:?}");
        assert!(!m.iter().any(|x| x == "a.test"), "{which:?}: special's answer was inside geoip:xx: {m:?}");
        proc.terminate(Duration::from_secs(5));
    }
}

/// `geosite:` and `ext:` keys in `dns.hosts`: every entry of the list (full, domain, regexp, keyword) answers
/// with the key's value, no server asked; a name the lists miss goes to the server. Same decisions on 4.34.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geosite_keys_in_dns_hosts_work_like_v2ray() {
    let names = ["a.test", "x.b.test", "r7.test", "c.oxt", "kw.oxt", "n.oxt", "b.test.oxt"];
    let main = Responder::start(
        names.iter().enumerate().map(|(i, n)| (n.to_string(), rec(&format!("10.10.0.{}", i + 1)))).collect(),
        false,
    )
    .await
    .unwrap();
    // geosite:test → 10.99.0.9 (hit99); ext:ext.dat:n → 198.51.100.5 (xx); `b.test.oxt` contains the
    // list's `domain:b.test` without being under it: the server answers (hit10).
    let want: &[(&str, &str)] = &[
        ("a.test", "hit99"),
        ("x.b.test", "hit99"),
        ("r7.test", "hit99"),
        ("c.oxt", "hit10"),
        ("kw.oxt", "hit99"),
        ("n.oxt", "xx"),
        ("b.test.oxt", "hit10"),
    ];
    for which in impls() {
        let dir = temp_dir(&format!("dns-geo-hosts-{which:?}"));
        let dns = format!(
            r#"{{"tag": "dns-app", "servers": [{{"address": "127.0.0.1", "port": {main}}}],
    "hosts": {{"geosite:test": "10.99.0.9", "ext:ext.dat:n": "198.51.100.5"}}}}"#,
            main = main.addr.port(),
        );
        let before = main.seen().len();
        let mut proc = run_probes(which, &dir, &dns, want).await;
        let m = asked(&main, before);
        for n in ["a.test", "x.b.test", "r7.test", "kw.oxt", "n.oxt"] {
            assert!(!m.iter().any(|x| x == n), "{which:?}: {n} is in hosts, no server may be asked: {m:?}");
        }
        assert!(m.iter().any(|x| x == "c.oxt"), "{which:?}: c.oxt is in no list: {m:?}");
        proc.terminate(Duration::from_secs(5));
    }
}
