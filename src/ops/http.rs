//! A minimal HTTP/1.1 server for the operations listener: GET, and POST /reload; one request per connection
//! (`Connection: close`), bounded header size, read deadline and connection count. Five fixed
//! endpoints and one event stream do not need a general HTTP stack.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{LiveSource, ReloadRequests};

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// A client must send its request within this.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once (event streams included); more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Event stream period.
const EVENT_PERIOD: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("page.html");

pub(super) struct State {
    source: LiveSource,
    token: Option<String>,
    slots: Arc<Semaphore>,
    reload: Option<ReloadRequests>,
}

impl State {
    pub(super) fn new(source: LiveSource, token: Option<String>, reload: Option<ReloadRequests>) -> Self {
        State { source, token, slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)), reload }
    }
}

/// Most a reload may take before `POST /reload` answers 504 (it goes on; the log has the outcome).
const RELOAD_DEADLINE: Duration = Duration::from_secs(30);

async fn reload(stream: &mut TcpStream, state: &State) {
    let Some(requests) = &state.reload else {
        respond(stream, "404 Not Found", "text/plain", "", b"reload is not available here\n").await;
        return;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if requests.send(tx).await.is_err() {
        respond(stream, "503 Service Unavailable", "text/plain", "", b"shutting down\n").await;
        return;
    }
    match tokio::time::timeout(RELOAD_DEADLINE, rx).await {
        Ok(Ok(a)) => {
            let status = if a.applied { "200 OK" } else { "422 Unprocessable Entity" };
            respond(stream, status, "text/plain", "", format!("{}\n", a.text).as_bytes()).await;
        }
        Ok(Err(_)) => respond(stream, "503 Service Unavailable", "text/plain", "", b"shutting down\n").await,
        Err(_) => {
            let body = format!("no answer within {RELOAD_DEADLINE:?}; see the log\n");
            respond(stream, "504 Gateway Timeout", "text/plain", "", body.as_bytes()).await
        }
    }
}

pub(super) async fn serve(listener: TcpListener, state: Arc<State>, tracker: TaskTracker, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = state.slots.clone().try_acquire_owned() else {
                    debug!(%peer, "ops: too many connections; closing");
                    continue;
                };
                let state = state.clone();
                let stop = shutdown.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        _ = connection(stream, &state) => {}
                        _ = stop.cancelled() => {}
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("ops: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A parsed request line and the one header the listener reads.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, …
    pub method: String,
    /// The target before `?`.
    pub path: String,
    /// The target after `?` (empty when none).
    pub query: String,
    /// The `Authorization` header's value.
    pub authorization: Option<String>,
}

/// Parses a request head (everything before the blank line); None when it is not HTTP/1.x.
pub fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let line = lines.next()?;
    if line.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut authorization = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.trim().to_string());
        }
    }
    Some(Request { method: method.into(), path: path.into(), query: query.into(), authorization })
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

/// Constant-time comparison, so response timing does not leak how much of a token matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(req: &Request, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let header = req.authorization.as_deref().and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
    // Browsers cannot set headers on EventSource or a typed URL: the page passes `?token=`.
    let given = header.or_else(|| query_param(&req.query, "token"));
    given.is_some_and(|g| same(g.as_bytes(), token.as_bytes()))
}

async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Some(buf);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, extra: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Connection: close\r\n{extra}\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

async fn connection(mut stream: TcpStream, state: &State) {
    let head = match tokio::time::timeout(READ_DEADLINE, read_head(&mut stream)).await {
        Ok(Some(h)) => h,
        _ => return,
    };
    let Some(req) = parse_head(&head) else {
        respond(&mut stream, "400 Bad Request", "text/plain", "", b"bad request\n").await;
        return;
    };
    let is_reload = req.path == "/reload";
    if is_reload && req.method != "POST" {
        respond(&mut stream, "405 Method Not Allowed", "text/plain", "Allow: POST\r\n", b"POST only\n").await;
        return;
    }
    if !is_reload && req.method != "GET" {
        respond(&mut stream, "405 Method Not Allowed", "text/plain", "Allow: GET\r\n", b"GET only\n").await;
        return;
    }
    if !authorized(&req, state.token.as_deref()) {
        let extra = "WWW-Authenticate: Bearer realm=\"oxray\"\r\n";
        respond(&mut stream, "401 Unauthorized", "text/plain", extra, b"a bearer token is required\n").await;
        return;
    }
    if is_reload {
        return reload(&mut stream, state).await;
    }
    match req.path.as_str() {
        "/livez" => respond(&mut stream, "200 OK", "text/plain", "", b"ok\n").await,
        "/readyz" => {
            let tunnels = matches!(query_param(&req.query, "tunnels"), Some("1" | "true"));
            let reasons = state.source.snapshot().not_ready(tunnels);
            if reasons.is_empty() {
                respond(&mut stream, "200 OK", "text/plain", "", b"ready\n").await;
            } else {
                let body = format!("not ready:\n{}\n", reasons.join("\n"));
                respond(&mut stream, "503 Service Unavailable", "text/plain", "", body.as_bytes()).await;
            }
        }
        "/status" => {
            let body = super::status::render(&state.source.snapshot()).to_string();
            respond(&mut stream, "200 OK", "application/json", "", body.as_bytes()).await;
        }
        "/metrics" => {
            let body = super::metrics::render(&state.source.snapshot(), &super::process::stats());
            respond(&mut stream, "200 OK", super::metrics::CONTENT_TYPE, "", body.as_bytes()).await;
        }
        "/" => {
            let csp = "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
                       style-src 'unsafe-inline'; connect-src 'self'; img-src data:\r\n";
            respond(&mut stream, "200 OK", "text/html; charset=utf-8", csp, PAGE.as_bytes()).await;
        }
        "/events" => events(stream, state).await,
        _ => respond(&mut stream, "404 Not Found", "text/plain", "", b"not found\n").await,
    }
}

/// Server-Sent Events: the `/status` document once a second until the client goes away.
async fn events(mut stream: TcpStream, state: &State) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
                Connection: close\r\n\r\nretry: 2000\n\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(EVENT_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sink = [0u8; 256];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A closed client shows as EOF on read; anything it sends is ignored.
            r = stream.read(&mut sink) => if matches!(r, Ok(0) | Err(_)) { return },
        }
        let body = super::status::render(&state.source.snapshot()).to_string();
        let frame = format!("data: {body}\n\n");
        // A client that stops reading holds one connection slot until its socket buffer fills.
        match tokio::time::timeout(READ_DEADLINE, stream.write_all(frame.as_bytes())).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_parse() {
        let r = parse_head(b"GET /readyz?tunnels=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/readyz");
        assert_eq!(r.query, "tunnels=1");
        assert_eq!(r.authorization.as_deref(), Some("Bearer abc"));
        assert!(parse_head(b"GET /\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno-colon").is_none());
        assert!(parse_head(b"\xff\xfe").is_none());
        assert!(parse_head(b"GET\n / HTTP/1.1").is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_are_refused_without_panic(head in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_head(&head);
        }

        #[test]
        fn well_formed_heads_round_trip(path in "/[a-z0-9/]{0,20}", query in "[a-z0-9=&]{0,20}", token in "[A-Za-z0-9]{1,20}") {
            let head = format!("GET {path}?{query} HTTP/1.1\r\nHost: x\r\nauthorization:  Bearer {token}");
            let r = parse_head(head.as_bytes()).expect("parses");
            proptest::prop_assert_eq!(r.path, path);
            proptest::prop_assert_eq!(r.query, query);
            proptest::prop_assert_eq!(r.authorization, Some(format!("Bearer {token}")));
        }
    }

    #[test]
    fn tokens_are_checked_from_header_or_query() {
        let req = |auth: Option<&str>, query: &str| Request {
            method: "GET".into(),
            path: "/".into(),
            query: query.into(),
            authorization: auth.map(str::to_string),
        };
        assert!(authorized(&req(None, ""), None));
        assert!(!authorized(&req(None, ""), Some("s3")));
        assert!(authorized(&req(Some("Bearer s3"), ""), Some("s3")));
        assert!(!authorized(&req(Some("Bearer s4"), ""), Some("s3")));
        assert!(!authorized(&req(Some("Basic s3"), ""), Some("s3")));
        assert!(authorized(&req(None, "a=1&token=s3"), Some("s3")));
        assert!(!authorized(&req(None, "token=s"), Some("s3")));
    }
}
