//! The UDP parsers of untrusted bytes fed arbitrary bytes: a Shadowsocks datagram (decrypt + address
//! header), and VLESS and Trojan UDP frame streams.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxray::proxy::udp::fuzz_packets(data);
});
