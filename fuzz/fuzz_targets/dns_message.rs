//! DNS messages from the network (answers to the resolver, queries to the dns outbound) on arbitrary
//! bytes: never panic; a reply built for an intercepted question parses back with the same id and
//! question, and the resolver's answer parser accepts it.
#![no_main]

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use oxray::dns::message::{intercepted_question, parse_answer, reply, wire_name};

fuzz_target!(|data: &[u8]| {
    if let Some(name) = wire_name("a.test") {
        let _ = parse_answer(data, 1, &name, hickory_proto::rr::RecordType::A);
    }
    let Ok(m) = Message::from_vec(data) else { return };
    let Some(q) = intercepted_question(&m) else { return };
    let ips = ["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
    let Some(bytes) = reply(&m, q, 0, &ips) else { return };
    let back = Message::from_vec(&bytes).expect("our reply parses");
    assert_eq!(back.metadata.id, m.metadata.id);
    assert_eq!(back.queries.first().map(|b| (&b.name, b.query_type)), Some((&q.name, q.query_type)));
    assert!(parse_answer(&bytes, m.metadata.id, &q.name, q.query_type).is_some());
});
