//! The Shadowsocks AEAD chunk decoder and UDP packet decoder fed arbitrary bytes (first byte picks the
//! method).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxray::proxy::shadowsocks::codec::fuzz_chunks(data);
});
