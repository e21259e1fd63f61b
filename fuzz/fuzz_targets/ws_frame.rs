//! WebSocket frames on arbitrary bytes: the header parser never panics and agrees with a re-encoding
//! of what it parsed; a server-side `WsStream` fed the bytes ends (data, EOF or a protocol error)
//! without panicking or hanging.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use oxray::transport::ws::{Role, WsStream, parse_frame_head, put_frame_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = parse_frame_head(data) {
        let mut again = Vec::new();
        put_frame_head(&mut again, h.fin, h.opcode, h.mask, h.len as usize);
        let reparsed = parse_frame_head(&again).expect("re-encoded head parses").expect("complete");
        assert_eq!((reparsed.fin, reparsed.opcode, reparsed.mask, reparsed.len), (h.fin, h.opcode, h.mask, h.len));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut ws = WsStream::new(a, Role::Server, BytesMut::new());
        let input = data.to_vec();
        let feeder = tokio::spawn(async move {
            let _ = b.write_all(&input).await;
            let _ = b.shutdown().await;
            let mut sink = Vec::new();
            let _ = b.read_to_end(&mut sink).await;
        });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), ws.read_to_end(&mut out)).await.expect("no hang");
        assert!(out.len() <= data.len());
        drop(ws);
        let _ = feeder.await;
    });
});
