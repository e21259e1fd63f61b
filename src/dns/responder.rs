//! A small authoritative DNS responder on 127.0.0.1 (UDP and TCP on one port) for tests: a table of
//! names, names it stays silent for (per type), and a log of every query it saw. Not for production.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// What the responder knows about one name.
#[derive(Debug, Clone, Default)]
pub struct Rec {
    /// Addresses (both families; the query type picks).
    pub ips: Vec<IpAddr>,
    /// TTL of every record.
    pub ttl: u32,
    /// RCODE to answer with (0 = NOERROR).
    pub rcode: u16,
    /// Query types it never answers for this name.
    pub silent: Vec<RecordType>,
    /// TXT strings.
    pub txt: Vec<String>,
}

/// One query the responder received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `udp` or `tcp`.
    pub proto: &'static str,
    /// The question name as sent, without the final dot.
    pub name: String,
    /// The question type.
    pub rtype: RecordType,
    /// The message id.
    pub id: u16,
    /// Whether an EDNS Client Subnet option came with it.
    pub ecs: Option<IpAddr>,
}

/// A running responder; its tasks stop when it is dropped.
pub struct Responder {
    /// Its address (UDP and TCP).
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

type Zone = Arc<HashMap<String, Rec>>;

impl Responder {
    /// Starts one answering from `zone` (unknown names: NXDOMAIN). `silent_all` answers nothing at all.
    pub async fn start(zone: HashMap<String, Rec>, silent_all: bool) -> std::io::Result<Responder> {
        let zone: Zone = Arc::new(zone);
        let seen = Arc::new(Mutex::new(Vec::new()));
        // UDP on an ephemeral port, then TCP on the same one (a few tries if it is taken for TCP).
        let mut last = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    let tasks = vec![
                        tokio::spawn(serve_udp(udp, zone.clone(), seen.clone(), silent_all)),
                        tokio::spawn(serve_tcp(tcp, zone.clone(), seen.clone(), silent_all)),
                    ];
                    return Ok(Responder { addr, seen, tasks });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no port")))
    }

    /// Every query so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The answer to one query from `zone`, logged in `seen` (for a DoH responder a test runs).
pub fn respond(
    bytes: &[u8],
    proto: &'static str,
    zone: &HashMap<String, Rec>,
    seen: &Mutex<Vec<Seen>>,
) -> Option<Vec<u8>> {
    answer(bytes, proto, zone, seen, false)
}

/// The answer to one query, or None to stay silent.
fn answer(
    bytes: &[u8],
    proto: &'static str,
    zone: &HashMap<String, Rec>,
    seen: &Mutex<Vec<Seen>>,
    silent_all: bool,
) -> Option<Vec<u8>> {
    let req = Message::from_vec(bytes).ok()?;
    let q = req.queries.first()?.clone();
    let name = q.name.to_ascii();
    let name = name.strip_suffix('.').unwrap_or(&name).to_string();
    let ecs = req.edns.as_ref().and_then(|e| match e.option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet) {
        Some(hickory_proto::rr::rdata::opt::EdnsOption::Subnet(s)) => Some(s.addr()),
        _ => None,
    });
    if let Ok(mut s) = seen.lock() {
        s.push(Seen { proto, name: name.clone(), rtype: q.query_type, id: req.metadata.id, ecs });
    }
    if silent_all {
        return None;
    }
    let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(q.clone());
    match zone.get(&name) {
        None => m.metadata.response_code = ResponseCode::NXDomain,
        Some(rec) => {
            if rec.silent.contains(&q.query_type) {
                return None;
            }
            m.metadata.response_code = ResponseCode::from((rec.rcode >> 4) as u8, (rec.rcode & 0xf) as u8);
            for ip in &rec.ips {
                let data = match (ip, q.query_type) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A((*v4).into()),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA((*v6).into()),
                    _ => continue,
                };
                m.add_answer(Record::from_rdata(q.name.clone(), rec.ttl, data));
            }
            if q.query_type == RecordType::TXT && !rec.txt.is_empty() {
                m.add_answer(Record::from_rdata(q.name.clone(), rec.ttl, RData::TXT(TXT::new(rec.txt.clone()))));
            }
        }
    }
    m.to_vec().ok()
}

async fn serve_udp(sock: UdpSocket, zone: Zone, seen: Arc<Mutex<Vec<Seen>>>, silent_all: bool) {
    let mut buf = vec![0u8; 4096];
    while let Ok((n, from)) = sock.recv_from(&mut buf).await {
        if let Some(reply) = answer(&buf[..n], "udp", &zone, &seen, silent_all) {
            let _ = sock.send_to(&reply, from).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Zone, seen: Arc<Mutex<Vec<Seen>>>, silent_all: bool) {
    while let Ok((mut s, _)) = listener.accept().await {
        let (zone, seen) = (zone.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut msg = vec![0u8; u16::from_be_bytes(len).into()];
                if s.read_exact(&mut msg).await.is_err() {
                    return;
                }
                if let Some(reply) = answer(&msg, "tcp", &zone, &seen, silent_all) {
                    let Ok(n) = u16::try_from(reply.len()) else { return };
                    if s.write_all(&n.to_be_bytes()).await.is_err() || s.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}
