//! The VLESS request and response header decoders fed arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxray::proxy::vless::codec::fuzz_header(data);
    let _ = oxray::proxy::fallback::request_path(data);
});
