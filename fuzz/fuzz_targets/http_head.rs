//! HTTP heads on arbitrary bytes (WebSocket upgrade requests, the TCP "http" header): the parsers never
//! panic, and the WebSocket server handshake answers or fails without panicking or hanging.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxray::transport::http_head::{find_end, parse_request, parse_response};
use oxray::transport::{header, ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    if let Some(end) = find_end(data) {
        if let Ok(r) = parse_request(&data[..end]) {
            let _ = r.path();
        }
        let _ = parse_response(&data[..end]);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for server in 0..2 {
            let (a, mut b) = tokio::io::duplex(1 << 16);
            let input = data.to_vec();
            let feeder = tokio::spawn(async move {
                let _ = b.write_all(&input).await;
                let _ = b.shutdown().await;
                let mut sink = Vec::new();
                let _ = b.read_to_end(&mut sink).await;
            });
            let t = std::time::Duration::from_secs(5);
            if server == 0 {
                let _ = tokio::time::timeout(t, ws::server_handshake(a, "/ray")).await.expect("no hang");
            } else {
                let _ = tokio::time::timeout(t, header::server_accept(a, &header::defaults())).await.expect("no hang");
            }
            let _ = feeder.await;
        }
    });
});
