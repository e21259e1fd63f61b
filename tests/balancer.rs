//! routing.balancers at run time, oxray and V2Ray 4.34 side by side (spec ROUTING-DATA.md §4.3): 60
//! connections through a rule with a balancer; every candidate is picked, nothing else is. Random, so
//! only that is asserted: P(one of 3 candidates never seen in 60 picks) ≈ 3·(2/3)^60 ≈ 1e-10.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Proc, free_port, local};

const N: usize = 60;

fn config(port: u16, access: &Path) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning", "access": "{}"}},
 "inbounds": [{{"tag": "in", "listen": "127.0.0.1", "port": {port}, "protocol": "dokodemo-door", "settings": {{"address": "1.1.1.1", "port": 1}}}}],
 "outbounds": [{{"tag": "default", "protocol": "blackhole"}}, {{"tag": "b-1", "protocol": "blackhole"}},
   {{"tag": "b-2", "protocol": "blackhole"}}, {{"tag": "b-3", "protocol": "blackhole"}}, {{"tag": "c-1", "protocol": "blackhole"}}],
 "routing": {{"balancers": [{{"tag": "bal", "selector": ["b-"]}}],
   "rules": [{{"type": "field", "inboundTag": ["in"], "balancerTag": "bal"}}]}}}}"#,
        access.display()
    )
}

fn picks(bin: &Path, args: &[&str], name: &str, dir: &Path) -> BTreeMap<String, usize> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let access = dir.join("access.log");
    let cfg = common::write_file(&dir, "config.json", &config(port, &access));
    let mut full = args.to_vec();
    full.push(cfg.to_str().unwrap());
    let mut proc = Proc::spawn(name, bin, &full, &dir.join("run.log"), &[]);
    assert!(common::wait_for_port(local(port), Duration::from_secs(10)), "{name} did not start:\n{}", proc.log_text());
    // The readiness probe is a connection too: wait for its line, then count N more.
    let lines = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut text = String::new();
        while Instant::now() < deadline {
            text = std::fs::read_to_string(&access).unwrap_or_default();
            if text.lines().count() >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        text
    };
    lines(1);
    for _ in 0..N {
        let mut s = std::net::TcpStream::connect(local(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"x");
        let _ = s.read(&mut [0u8; 8]);
    }
    let text = lines(N + 1);
    proc.kill();
    let mut count = BTreeMap::new();
    for line in text.lines() {
        let inside = line.rsplit('[').next().unwrap_or("").trim_end_matches(']');
        *count.entry(inside.rsplit(" -> ").next().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    count
}

#[test]
fn balancer_picks_every_candidate_and_nothing_else() {
    let dir = common::temp_dir("balancer");
    let want = ["b-1", "b-2", "b-3"];
    let mut runs = vec![("oxray", picks(&common::oxray_bin(), &["run", "-c"], "oxray", &dir))];
    if let Some(v2ray) = common::v2ray() {
        runs.push(("V2Ray 4.34", picks(&v2ray, &["-config"], "v2ray", &dir)));
    }
    for (who, count) in &runs {
        println!("{who}: {count:?}");
        assert_eq!(count.values().sum::<usize>(), N + 1, "{who}: {count:?}");
        assert_eq!(count.keys().map(String::as_str).collect::<Vec<_>>(), want, "{who}: {count:?}");
    }
}
