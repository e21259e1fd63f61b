//! The Trojan request header decoder fed arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxray::proxy::trojan::codec::fuzz_header(data);
});
