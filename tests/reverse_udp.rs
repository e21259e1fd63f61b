//! UDP through the reverse tunnel: a VMess UDP flow (command 2) reaches the portal, rides a Mux.Cool UDP
//! session to the bridge, and the bridge's freedom sends it to a UDP service.

mod common;

use std::time::Duration;

use common::*;
use oxray::config::VmessSecurity;

const TUNNEL_ID: &str = "27848739-7e62-4138-9fd3-098a63964b6b";
const PUBLIC_ID: [u8; 16] = [0x5e; 16];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_crosses_the_reverse_tunnel() {
    let echo = udp_xor_echo().await;
    let (public, interconn) = (free_port(), free_port());
    let portal = format!(
        r#"{{"log": {{"loglevel": "info"}},
  "reverse": {{"portals": [{{"tag": "portal", "domain": "test.v2fly.org"}}]}},
  "inbounds": [
    {{"tag": "public", "listen": "127.0.0.1", "port": {public}, "protocol": "vmess", "settings": {{"clients": [{{"id": "{pid}"}}]}}}},
    {{"tag": "interconn", "listen": "127.0.0.1", "port": {interconn}, "protocol": "vmess", "settings": {{"clients": [{{"id": "{TUNNEL_ID}"}}]}}}}
  ],
  "routing": {{"rules": [{{"type": "field", "inboundTag": ["public", "interconn"], "outboundTag": "portal"}}]}}
}}"#,
        pid = uuid_text(&PUBLIC_ID)
    );
    let bridge = format!(
        r#"{{"log": {{"loglevel": "info"}},
  "reverse": {{"bridges": [{{"tag": "bridge", "domain": "test.v2fly.org"}}]}},
  "outbounds": [
    {{"tag": "out", "protocol": "freedom", "settings": {{"redirect": "{echo}"}}}},
    {{"tag": "interconn", "protocol": "vmess", "settings": {{"vnext": [{{"address": "127.0.0.1", "port": {interconn}, "users": [{{"id": "{TUNNEL_ID}"}}]}}]}}}}
  ],
  "routing": {{"rules": [
    {{"type": "field", "inboundTag": ["bridge"], "domain": ["full:test.v2fly.org"], "outboundTag": "interconn"}},
    {{"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"}}
  ]}}
}}"#
    );
    let dir = temp_dir("reverse-udp");
    let p = spawn_impl(Impl::Oxray, "portal", &dir, &portal);
    let b = spawn_impl(Impl::Oxray, "bridge", &dir, &bridge);
    let up = wait_until(Duration::from_secs(15), || {
        let connected = p.log_text().contains("bridge connected");
        async move { connected }
    })
    .await;
    assert!(up, "no tunnel\n--- portal\n{}\n--- bridge\n{}", p.log_text(), b.log_text());
    // The bridge came in on `interconn`; `public` is another inbound.
    assert!(
        wait_port_async(local(public), Duration::from_secs(10)).await,
        "portal did not listen on {public}: {}",
        p.log_text()
    );

    // The client asks for 127.0.0.1:80/udp; the bridge's freedom redirect sends it to the UDP echo.
    let client = udp_outbound(local(public), PUBLIC_ID, 0, VmessSecurity::Aes128Gcm);
    for _ in 0..3 {
        check_udp_outbound(&client, local(80), "reverse udp").await;
    }
}
