//! Reverse Control message decoder on arbitrary bytes: never panics, and whatever decodes re-encodes to a
//! message that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxray::reverse::control::Control;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Control::decode(data) {
        let mut out = Vec::new();
        c.encode(&mut out);
        assert_eq!(Control::decode(&out).as_ref(), Ok(&c));
    }
});
