//! The VMess chunk reader fed arbitrary bytes (first 3 bytes pick security, options, stream/packet).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxray::proxy::vmess::body::fuzz_chunks(data);
});
