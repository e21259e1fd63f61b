//! The operations listener's request-head parser on arbitrary bytes: never panics, and what it
//! accepts is a GET-style request line whose parts contain no line break.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxray::ops::parse_request_head;

fuzz_target!(|data: &[u8]| {
    if let Some(r) = parse_request_head(data) {
        for part in [&r.method, &r.path, &r.query] {
            assert!(!part.contains('\r') && !part.contains('\n') && !part.contains(' '), "{r:?}");
        }
        assert!(!r.path.contains('?'));
    }
});
