//! DNS messages through hickory-proto: the queries the resolver sends and what it reads back.
//! Every input here may come from the network, so nothing panics on bad bytes.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

/// One family's answer from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The response code (0 = NOERROR).
    pub rcode: u16,
    /// Every A and AAAA record of the answer section, in order (as 4.34 collects them).
    pub ips: Vec<IpAddr>,
    /// The smallest answer TTL (None: no answers).
    pub min_ttl: Option<u32>,
}

/// A name as the resolver sends it: an absolute name, case kept. None for names DNS cannot carry
/// (over-long names or labels, empty labels): those are lookup failures, never panics (4.34 T6).
pub fn wire_name(name: &str) -> Option<Name> {
    if name.is_empty() || name.len() > 253 || name.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return None;
    }
    let mut n = Name::from_ascii(name).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// A recursive query for `name`/`rtype` with this id; with `client_ip`, one EDNS0 Client Subnet option
/// (/24 for IPv4, /96 for IPv6, as 4.34 sends; UDP size 1350; no DO bit, extended RCODE 0).
pub fn query(id: u16, name: &Name, rtype: RecordType, client_ip: Option<IpAddr>) -> Option<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), rtype));
    if let Some(ip) = client_ip {
        let mut edns = Edns::new();
        edns.set_max_payload(1350);
        let prefix = if ip.is_ipv4() { 24 } else { 96 };
        edns.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(ip, prefix, 0)));
        m.set_edns(edns);
    }
    m.to_vec().ok()
}

/// Reads a response to the query (`id`, `name`, `rtype`). None if the bytes are not that response: a
/// different id or question (cache-poisoning hardening: 4.34 matches the id only), or not a response.
pub fn parse_answer(bytes: &[u8], id: u16, name: &Name, rtype: RecordType) -> Option<Answer> {
    let m = Message::from_vec(bytes).ok()?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return None;
    }
    let q = m.queries.first()?;
    if q.query_type != rtype || !q.name.eq_ignore_root(name) {
        return None;
    }
    Some(answer_of(&m))
}

/// Reads a DoH response to the question `name`/`rtype`, whatever its id (the HTTP exchange already ties
/// it to the query; RFC 8484 has the id 0). None if it is not a response to that question.
pub fn parse_answer_any_id(bytes: &[u8], name: &Name, rtype: RecordType) -> Option<Answer> {
    let m = Message::from_vec(bytes).ok()?;
    if m.metadata.message_type != MessageType::Response {
        return None;
    }
    let q = m.queries.first()?;
    if q.query_type != rtype || !q.name.eq_ignore_root(name) {
        return None;
    }
    Some(answer_of(&m))
}

/// The IPs, RCODE and TTL of a parsed response.
pub fn answer_of(m: &Message) -> Answer {
    let mut ips = Vec::new();
    let mut min_ttl: Option<u32> = None;
    for r in &m.answers {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        ips.push(ip);
        min_ttl = Some(min_ttl.map_or(r.ttl, |t| t.min(r.ttl)));
    }
    Answer { rcode: u16::from(m.metadata.response_code), ips, min_ttl }
}

/// The first question of a message when it is an A or AAAA question of class IN: what the `dns`
/// outbound answers itself. None for anything else (those are forwarded).
pub fn intercepted_question(m: &Message) -> Option<&Query> {
    if m.metadata.message_type != MessageType::Query || m.metadata.op_code != OpCode::Query {
        return None;
    }
    let q = m.queries.first()?;
    (matches!(q.query_type, RecordType::A | RecordType::AAAA) && q.query_class == DNSClass::IN).then_some(q)
}

/// The reply the `dns` outbound sends for `request`'s first question (4.34 `proxy/dns`): same id, QR AA
/// RD RA set, the question echoed with class IN, one record per IP with TTL 600, no OPT record.
pub fn reply(request: &Message, q: &Query, rcode: u16, ips: &[IpAddr]) -> Option<Vec<u8>> {
    let mut m = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.metadata.response_code = ResponseCode::from((rcode >> 4) as u8, (rcode & 0xf) as u8);
    let mut echoed = Query::query(q.name.clone(), q.query_type);
    echoed.set_query_class(DNSClass::IN);
    m.add_query(echoed);
    for ip in ips {
        let data = match ip {
            IpAddr::V4(v4) => RData::A((*v4).into()),
            IpAddr::V6(v6) => RData::AAAA((*v6).into()),
        };
        m.add_answer(hickory_proto::rr::Record::from_rdata(q.name.clone(), 600, data));
    }
    m.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ecs_option_bytes_are_the_ones_4_34_sends() {
        let n = wire_name("a.test").unwrap();
        let v4 = query(7, &n, RecordType::A, Some("203.0.113.9".parse().unwrap())).unwrap();
        let hex: String = v4.iter().map(|b| format!("{b:02x}")).collect();
        assert!(hex.ends_with("0008000700011800cb0071"), "{hex}");
        assert!(hex.contains("000029054600"), "UDP size 1350: {hex}");
        let v6 = query(7, &n, RecordType::AAAA, Some("2001:db8:1234:5678::1".parse().unwrap())).unwrap();
        let hex: String = v6.iter().map(|b| format!("{b:02x}")).collect();
        assert!(hex.ends_with("000800100002600020010db81234567800000000"), "{hex}");
        let plain = query(7, &n, RecordType::A, None).unwrap();
        assert_eq!(plain.len(), 12 + 8 + 4, "no OPT record without a client IP");
        // Case is kept in the question (4.34 sends `MIXED.test.`).
        let mixed = query(1, &wire_name("MIXED.test").unwrap(), RecordType::A, None).unwrap();
        assert!(mixed.windows(5).any(|w| w == b"MIXED"));
    }

    #[test]
    fn names_dns_cannot_carry_are_refused() {
        assert!(wire_name(&"a".repeat(64)).is_none());
        assert!(wire_name(&format!("{}.com", vec!["x".repeat(63); 4].join("."))).is_none());
        assert!(wire_name("a..b").is_none());
        assert!(wire_name("").is_none());
        assert!(wire_name("ok.test").is_some());
    }

    #[test]
    fn answers_must_match_id_and_question() {
        let n = wire_name("a.test").unwrap();
        let q = Message::from_vec(&query(9, &n, RecordType::A, None).unwrap()).unwrap();
        let bytes = reply(&q, &q.queries[0], 0, &["10.0.0.1".parse().unwrap()]).unwrap();
        let a = parse_answer(&bytes, 9, &n, RecordType::A).unwrap();
        assert_eq!(a, Answer { rcode: 0, ips: vec!["10.0.0.1".parse().unwrap()], min_ttl: Some(600) });
        assert!(parse_answer(&bytes, 10, &n, RecordType::A).is_none());
        assert!(parse_answer(&bytes, 9, &wire_name("b.test").unwrap(), RecordType::A).is_none());
        assert!(parse_answer(&bytes, 9, &n, RecordType::AAAA).is_none());
        // 0x20-style case changes in the echoed question still match.
        assert!(parse_answer(&bytes, 9, &wire_name("A.TEST").unwrap(), RecordType::A).is_some());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let n = wire_name("a.test").unwrap();
            let _ = parse_answer(&bytes, 1, &n, RecordType::A);
            if let Ok(m) = Message::from_vec(&bytes)
                && let Some(q) = intercepted_question(&m)
            {
                let _ = reply(&m, q, 3, &["::1".parse().unwrap()]);
            }
        }

        #[test]
        fn arbitrary_names_never_panic(name in "[ -~]{0,300}") {
            if let Some(n) = wire_name(&name) {
                let _ = query(1, &n, RecordType::AAAA, Some("10.1.2.3".parse().unwrap()));
            }
        }
    }
}
