//! DNS-over-HTTPS servers (RFC 8484) as 4.34 has them (`app/dns/nameserver_doh.go`): each query is one
//! POST of the wire-format message with `Content-Type` and `Accept` `application/dns-message`; a
//! non-200 status is a failure. `https://` servers are dialled through the dispatcher as a TCP
//! connection from the resolver's tag (routed; the router never resolves for it), `https+local://`
//! ones straight from this host. TLS is oxray's client (system roots, which honour `SSL_CERT_FILE`),
//! ALPN `h2` then `http/1.1` as Go offers; one connection per server, kept and reused, dropped after a
//! failure or a timeout so that the next query dials afresh.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::proxy::BoxStream;
use crate::session::{Address, Destination};
use crate::transport::settings::TlsSettings;
use crate::transport::tls::TlsClient;

use super::Upstream;
use super::message::{self, Answer};
use hickory_proto::rr::{Name, RecordType};

const DNS_MESSAGE: &str = "application/dns-message";
/// A DNS message never exceeds this; a longer body is not an answer.
const MAX_BODY: usize = 65_535;
/// Once one family has answered, how long to wait for the other (as the UDP servers).
const OTHER_FAMILY_GRACE: Duration = Duration::from_secs(1);

/// One DoH server.
pub(super) struct Doh {
    /// Absolute URL (HTTP/2 requests carry it; HTTP/1.1 ones its path with a `Host` header).
    uri: Uri,
    target: Destination,
    local: bool,
    /// Built on first use: reading the system trust store is not free.
    tls: OnceLock<TlsClient>,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

enum Sender {
    H2(http2::SendRequest<Full<Bytes>>),
    H1(http1::SendRequest<Full<Bytes>>),
}

/// A live connection: its request handle and the task driving it (aborted when dropped, so a server
/// that stalls or a resolver that goes away leaves no task or socket behind).
struct Conn {
    sender: Sender,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a query needs from the resolver: where to route it, under which inbound tag.
#[derive(Clone)]
pub(super) struct Route {
    pub upstream: Option<Arc<dyn Upstream>>,
    pub tag: Arc<str>,
}

impl Doh {
    pub fn new(url: &str, host: &Address, port: u16, local: bool) -> Option<Doh> {
        Some(Doh {
            uri: url.parse().ok()?,
            target: Destination::tcp(host.clone(), port),
            local,
            tls: OnceLock::new(),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// Sends one query per type at once and collects the answers until `deadline` (a short grace after
    /// the first family answered). A failed exchange leaves its slot empty (the server then counts as
    /// timed out, and the next one is asked at once rather than after 4.34's full deadline).
    pub async fn ask(
        self: &Arc<Self>,
        route: &Route,
        wire: &Name,
        types: &[RecordType],
        client_ip: Option<std::net::IpAddr>,
        deadline: Instant,
    ) -> Vec<Option<Answer>> {
        let mut answers: Vec<Option<Answer>> = vec![None; types.len()];
        let mut set = JoinSet::new();
        for (i, t) in types.iter().enumerate() {
            let (me, route, wire, t) = (self.clone(), route.clone(), wire.clone(), *t);
            set.spawn(async move { (i, me.one(&route, &wire, t, client_ip, deadline).await) });
        }
        let mut until = deadline;
        loop {
            match tokio::time::timeout_at(until, set.join_next()).await {
                Ok(Some(Ok((i, Some(a))))) => {
                    answers[i] = Some(a);
                    until = until.min(Instant::now() + OTHER_FAMILY_GRACE);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // Dropping the set aborts what is still running.
        answers
    }

    async fn one(
        &self,
        route: &Route,
        wire: &Name,
        t: RecordType,
        client_ip: Option<std::net::IpAddr>,
        deadline: Instant,
    ) -> Option<Answer> {
        // The HTTP exchange ties the answer to the query: no id is needed to match it (RFC 8484 §4.1).
        let q = message::query(0, wire, t, client_ip)?;
        let body = match tokio::time::timeout_at(deadline, self.exchange(route, q)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::debug!(server = %self.uri, "dns: DoH query failed: {e}");
                self.reset().await;
                return None;
            }
            Err(_) => {
                tracing::debug!(server = %self.uri, "dns: DoH query timed out");
                self.reset().await;
                return None;
            }
        };
        let mut a = message::parse_answer_any_id(&body, wire, t)?;
        // 4.34 reads a DoH RCODE as an empty answer, and keeps only IPv6 addresses of an AAAA answer.
        if a.rcode != 0 {
            a = Answer { rcode: 0, ips: Vec::new(), min_ttl: a.min_ttl };
        }
        if t == RecordType::AAAA {
            a.ips.retain(std::net::IpAddr::is_ipv6);
        }
        Some(a)
    }

    /// Drops the connection so that the next query dials again (after an error or a stall).
    async fn reset(&self) {
        *self.conn.lock().await = None;
    }

    async fn exchange(&self, route: &Route, query: Vec<u8>) -> Result<Bytes, String> {
        let mut guard = self.conn.lock().await;
        let live = match guard.as_ref().map(|c| &c.sender) {
            Some(Sender::H2(s)) => !s.is_closed(),
            Some(Sender::H1(s)) => !s.is_closed(),
            None => false,
        };
        if !live {
            *guard = Some(self.connect(route).await?);
        }
        let Some(conn) = guard.as_mut() else { return Err("no connection".into()) };
        let resp = match &mut conn.sender {
            Sender::H2(s) => {
                // HTTP/2 multiplexes: the lock is not held during the exchange.
                let mut s = s.clone();
                drop(guard);
                s.ready().await.map_err(|e| e.to_string())?;
                let resp = s.send_request(self.request(true, query)?).await.map_err(|e| e.to_string())?;
                read_body(resp).await?
            }
            Sender::H1(s) => {
                // One request at a time on an HTTP/1.1 connection: the other family waits for it.
                s.ready().await.map_err(|e| e.to_string())?;
                let resp = s.send_request(self.request(false, query)?).await.map_err(|e| e.to_string())?;
                read_body(resp).await?
            }
        };
        Ok(resp)
    }

    fn request(&self, h2: bool, query: Vec<u8>) -> Result<Request<Full<Bytes>>, String> {
        let mut b = Request::builder().method(Method::POST);
        if h2 {
            b = b.uri(self.uri.clone());
        } else {
            let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
            let host = self.uri.authority().map_or("", |a| a.as_str());
            b = b.uri(path).header(HOST, host);
        }
        b.header(ACCEPT, DNS_MESSAGE)
            .header(CONTENT_TYPE, DNS_MESSAGE)
            .body(Full::new(Bytes::from(query)))
            .map_err(|e| e.to_string())
    }

    async fn connect(&self, route: &Route) -> Result<Conn, String> {
        let stream: BoxStream = match (&route.upstream, self.local) {
            (Some(up), false) => {
                up.open_stream(route.tag.clone(), self.target.clone()).await.map_err(|e| e.to_string())?
            }
            _ => {
                let s = match &self.target.address {
                    Address::Ip(ip) => TcpStream::connect((*ip, self.target.port)).await,
                    Address::Domain(d) => TcpStream::connect((d.as_ref(), self.target.port)).await,
                }
                .map_err(|e| format!("dial {}: {e}", self.target))?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
        };
        let tls = self.tls.get_or_init(|| TlsClient::new(&TlsSettings::default(), false));
        let tls = tls.connect(stream, &self.target.address).await.map_err(|e| format!("TLS: {e}"))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.map_err(|e| e.to_string())?;
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn { sender: Sender::H2(sender), task })
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn { sender: Sender::H1(sender), task })
        }
    }
}

async fn read_body(resp: hyper::Response<hyper::body::Incoming>) -> Result<Bytes, String> {
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|e| e.to_string())?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!("DoH server returned code {}", status.as_u16()));
    }
    Ok(body)
}
