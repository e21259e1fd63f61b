//! Server-side ALPN choices, probed with `openssl s_client` against oxray and V2Ray 4.34 listeners with
//! the same config (TRANSPORTS.md §2.4/§2.5): Go's rule, including the http/1.1 fallback and alert 120,
//! and the one deliberate deviation (a WebSocket listener never selects h2).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::pki::Pki;
use common::*;

const UUID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";

fn server(port: u16, stream: &str) -> String {
    format!(
        r#"{{"log": {{"loglevel": "warning"}},
  "inbounds": [{{"listen": "127.0.0.1", "port": {port}, "protocol": "vmess",
    "settings": {{"clients": [{{"id": "{UUID}"}}]}}, "streamSettings": {stream}}}],
  "outbounds": [{{"protocol": "freedom"}}]}}"#
    )
}

/// What the server chose for a ClientHello offering `alpn` (None: no ALPN extension).
fn probe(port: u16, ca: &str, alpn: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "example.com", "-CAfile", ca]);
    if let Some(a) = alpn {
        cmd.args(["-alpn", a]);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run openssl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if text.contains("no application protocol") {
        return "alert 120".into();
    }
    if let Some(l) = text.lines().find(|l| l.starts_with("ALPN protocol: ")) {
        return l["ALPN protocol: ".len()..].to_string();
    }
    if text.contains("No ALPN negotiated") {
        return "none".into();
    }
    format!("unexpected: {text}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_choices_match_v2ray() {
    if v2ray().is_none() {
        return;
    }
    let dir = temp_dir("tls-alpn");
    let pki = Pki::new(&dir);
    let ca = pki.ca.to_str().unwrap().to_string();
    let tls = format!(r#""security": "tls", "tlsSettings": {}"#, pki.server_tls());
    let tcp = format!("{{{tls}}}");
    let ws = format!(r#"{{"network": "ws", {tls}}}"#);
    // (listener, offered, V2Ray 4.34's choice, oxray's choice)
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("tcp", None, "none", "none"),
        ("tcp", Some("h2,http/1.1"), "h2", "h2"),
        ("tcp", Some("http/1.1"), "none", "none"),
        ("tcp", Some("foo"), "alert 120", "alert 120"),
        ("ws", Some("http/1.1"), "http/1.1", "http/1.1"),
        ("ws", Some("foo,http/1.1"), "http/1.1", "http/1.1"),
        ("ws", Some("foo"), "alert 120", "alert 120"),
        // 4.34 selects h2 and then serves HTTP/2, where no WebSocket upgrade exists (§8.4 #1).
        ("ws", Some("h2,http/1.1"), "h2", "http/1.1"),
    ];
    let mut procs = Vec::new();
    let mut ports: Vec<((Impl, &str), u16)> = Vec::new();
    for which in [Impl::V2ray, Impl::Oxray] {
        for (kind, stream) in [("tcp", &tcp), ("ws", &ws)] {
            let port = free_port();
            let p = spawn_impl(which, &format!("{which:?}-{kind}"), &dir, &server(port, stream));
            assert!(wait_port_async(local(port), Duration::from_secs(10)).await, "{which:?} {kind}: {}", p.log_text());
            ports.push(((which, kind), port));
            procs.push(p);
        }
    }
    for (kind, offer, v2, ox) in cases {
        let port = |w: Impl| ports.iter().find(|(k, _)| *k == (w, *kind)).map(|(_, p)| *p).expect("started");
        let got_v2 = probe(port(Impl::V2ray), &ca, *offer);
        let got_ox = probe(port(Impl::Oxray), &ca, *offer);
        eprintln!("{kind} offering {offer:?}: V2Ray {got_v2}, oxray {got_ox}");
        assert_eq!(got_v2, *v2, "{kind} offering {offer:?}: V2Ray 4.34");
        assert_eq!(got_ox, *ox, "{kind} offering {offer:?}: oxray");
    }
}
