//! The stats API's connection handler (HTTP/2 + gRPC + StatsService) on arbitrary client bytes: it
//! never panics and the connection ends once the client has sent everything and closed.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use oxray::config::SystemPolicy;
use oxray::ops::traffic::Traffic;
use oxray::stats::Stats;
use oxray::stats::api::ApiOutbound;
use tokio::io::AsyncWriteExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let traffic = Arc::new(Traffic::new(["in"], ["out"]).with_user_counters(true));
        let all = SystemPolicy { inbound_uplink: true, inbound_downlink: true, outbound_uplink: true, outbound_downlink: true };
        let stats = Arc::new(Stats::new(traffic, all, ["in".to_string()], ["out".to_string()]));
        let api = ApiOutbound::new(Some(stats), true, Duration::from_secs(1));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        // Half the inputs start with a valid preface, so the frame layer behind it is reached.
        let input = if data.first().is_some_and(|b| b & 1 == 1) { [PREFACE, &data[1..]].concat() } else { data.to_vec() };
        let feed = async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            // Keep reading so the server's replies never block it.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        };
        let served = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(api.serve(Box::new(server)), feed) });
        assert!(served.await.is_ok(), "api connection did not end");
    });
});
