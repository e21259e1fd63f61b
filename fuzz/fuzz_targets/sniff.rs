//! The HTTP/TLS/BitTorrent sniffers fed arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = oxray::proxy::sniff::sniff(data);
});
