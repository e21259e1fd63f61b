//! The SOCKS4/5 server and client decoders (hello, user/pass, request, UDP datagram, replies) fed
//! arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oxray::proxy::socks::codec::fuzz_server(data);
});
