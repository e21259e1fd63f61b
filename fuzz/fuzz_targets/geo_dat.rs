//! geoip.dat / geosite.dat decoder on arbitrary bytes (a user may point `ext:` at any file): never
//! panics, and every code the file lists can be asked for (as a site list, with and without an
//! attribute, and as an IP list) without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxray::router::geo::{codes, parse_ip, parse_site};

fuzz_target!(|data: &[u8]| {
    let Ok(list) = codes(data) else { return };
    for code in list.iter().take(8) {
        let _ = parse_site(data, code, &[]);
        let _ = parse_site(data, code, &["ads".to_string()]);
        if let Ok(ip) = parse_ip(data, code) {
            let _ = ip.contains("10.0.0.1".parse().unwrap());
            let _ = ip.contains("::1".parse().unwrap());
        }
    }
});
