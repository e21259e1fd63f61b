//! The VMess server-side request-header parser fed arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxray::proxy::vmess::header::fuzz_request_header(data);
});
