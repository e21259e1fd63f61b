//! The reverse setup users ask for: a socks inbound on the portal routed to the portal, and a bridge
//! with a plain freedom (no `redirect`), so that any host:port the bridge can reach is reachable at the
//! portal by name. `curl --socks5-hostname` reaches two different web services behind the bridge.

mod common;

use std::time::Duration;

use common::*;

const UUID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";

fn portal_config(socks: u16, interconn: u16) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "debug"}},
  "reverse": {{"portals": [{{"tag": "portal", "domain": "test.v2fly.org", "internalDomain": "reverse.internal.v2ray.com"}}]}},
  "inbounds": [
    {{"tag": "socks", "listen": "127.0.0.1", "port": {socks}, "protocol": "socks", "settings": {{"udp": false}}}},
    {{"tag": "interconn", "listen": "127.0.0.1", "port": {interconn}, "protocol": "vmess",
      "settings": {{"clients": [{{"id": "{UUID}"}}]}}}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["socks"], "outboundTag": "portal"}},
    {{"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"}}
  ]}}
}}"#
    )
}

fn bridge_config(interconn: u16) -> String {
    format!(
        r#"{{
  "log": {{"loglevel": "debug"}},
  "reverse": {{"bridges": [{{"tag": "bridge", "domain": "test.v2fly.org"}}]}},
  "outbounds": [
    {{"tag": "out", "protocol": "freedom"}},
    {{"protocol": "vmess", "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {interconn}, "users": [{{"id": "{UUID}"}}]}}]}},
      "tag": "interconn"}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["bridge"], "domain": ["full:test.v2fly.org"], "outboundTag": "interconn"}},
    {{"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"}}
  ]}}
}}"#
    )
}

async fn curl_body(curl: &std::path::Path, proxy: u16, url: &str) -> (i32, Vec<u8>) {
    let mut cmd = std::process::Command::new(curl);
    cmd.args(["-s", "--max-time", "15", "--socks5-hostname", &format!("127.0.0.1:{proxy}"), url]);
    let o = tokio::task::spawn_blocking(move || cmd.output()).await.expect("join").expect("run curl");
    (o.status.code().unwrap_or(-1), o.stdout)
}

async fn two_services_by_name(bridge: Impl) {
    let Some(curl) = curl() else { return };
    if bridge == Impl::V2ray && v2ray().is_none() {
        return;
    }
    let (body_a, body_b) = (payload(200_000, 1), payload(50_000, 2));
    let (a, b) = (http_server(body_a.clone()).await, http_server(body_b.clone()).await);
    let dir = temp_dir(&format!("reverse-socks-{bridge:?}"));
    let (socks, interconn) = (free_port(), free_port());
    let _portal = spawn_impl(Impl::Oxray, "portal", &dir, &portal_config(socks, interconn));
    assert!(wait_for_port(local(interconn), Duration::from_secs(10)));
    let _bridge = spawn_impl(bridge, "bridge", &dir, &bridge_config(interconn));
    let url_a = format!("http://localhost:{}/a", a.port());
    let url_b = format!("http://localhost:{}/b", b.port());
    // The tunnel comes up asynchronously: wait (bounded) for the first answer, then check everything.
    let start = std::time::Instant::now();
    let ready = wait_until(Duration::from_secs(15), || {
        let (curl, url) = (curl.clone(), url_a.clone());
        async move { curl_body(&curl, socks, &url).await.0 == 0 }
    })
    .await;
    assert!(ready, "no answer through the portal's socks inbound within 15 s");
    eprintln!("tunnel carried the first request after {:?}", start.elapsed());
    for (url, body) in [(&url_a, &body_a), (&url_b, &body_b), (&url_a, &body_a)] {
        let (code, got) = curl_body(&curl, socks, url).await;
        assert_eq!(code, 0, "{url}");
        assert!(&got == body, "{url}: {} bytes, body differs", got.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_socks_reaches_two_services_behind_an_oxray_bridge() {
    two_services_by_name(Impl::Oxray).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_socks_reaches_two_services_behind_a_v2ray_bridge() {
    two_services_by_name(Impl::V2ray).await;
}
