//! The HTTP proxy's request/response head parsers, rewriting and chunked scanner fed arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxray::proxy::http::codec::fuzz_head(data);
});
