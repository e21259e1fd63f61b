//! HTTP/1.x proxy messages (TRANSPORTS.md §6): request/response heads, the proxy's rewriting rules,
//! body framing and a chunked-body scanner. Pure: no I/O.

use crate::session::Address;

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// Why an HTTP message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head is larger than [`MAX_HEAD`].
    #[error("header block larger than {MAX_HEAD} bytes")]
    TooLong,
    /// Not HTTP/1.x.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A request target the proxy cannot use.
    #[error("bad request target: {0}")]
    Target(String),
}

/// A decoded request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method as sent.
    pub method: String,
    /// Request target as sent.
    pub target: String,
    /// Minor version (HTTP/1.0 or HTTP/1.1).
    pub minor: u8,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
}

/// A decoded response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Minor version.
    pub minor: u8,
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
}

/// The first value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// True if any comma-separated token of any `name` header equals `token` (trimmed, any case).
pub fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// Finds the end of the head (`\r\n\r\n` or `\n\n`); returns the head length including the blank line.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&c| c == b'\n') {
        let nl = i + p;
        // The line after this newline is empty ("\n" or "\r\n").
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

fn lines(head: &[u8]) -> Result<Vec<&str>, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed("header (not UTF-8)"))?;
    Ok(text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).take_while(|l| !l.is_empty()).collect())
}

fn version(s: &str) -> Result<u8, HttpError> {
    match s {
        "HTTP/1.1" => Ok(1),
        "HTTP/1.0" => Ok(0),
        _ => Err(HttpError::Malformed("HTTP version")),
    }
}

fn fields(lines: &[&str]) -> Result<Vec<(String, String)>, HttpError> {
    lines
        .iter()
        .map(|l| {
            let (n, v) = l.split_once(':').ok_or(HttpError::Malformed("header line"))?;
            if !is_token(n) {
                return Err(HttpError::Malformed("header name"));
            }
            Ok((n.to_string(), v.trim_matches(|c| c == ' ' || c == '\t').to_string()))
        })
        .collect()
}

/// Decodes a request head from the front of `buf`.
pub fn decode_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let Some(end) = head_end(buf) else {
        return if buf.len() > MAX_HEAD { Err(HttpError::TooLong) } else { Ok(None) };
    };
    if end > MAX_HEAD {
        return Err(HttpError::TooLong);
    }
    // Tolerate blank lines before the request line, as Go does for keep-alive leftovers.
    let ls = lines(&buf[..end])?;
    let first = *ls.first().ok_or(HttpError::Malformed("request line"))?;
    let mut parts = first.splitn(3, ' ');
    let (Some(method), Some(target), Some(ver)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(HttpError::Malformed("request line"));
    };
    if !is_token(method) || target.is_empty() || target.bytes().any(|c| c <= b' ' || c == 0x7f) {
        return Err(HttpError::Malformed("request line"));
    }
    let minor = version(ver)?;
    let headers = fields(&ls[1..])?;
    Ok(Some((RequestHead { method: method.to_string(), target: target.to_string(), minor, headers }, end)))
}

/// Decodes a response head from the front of `buf`.
pub fn decode_response(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HttpError> {
    let Some(end) = head_end(buf) else {
        return if buf.len() > MAX_HEAD { Err(HttpError::TooLong) } else { Ok(None) };
    };
    if end > MAX_HEAD {
        return Err(HttpError::TooLong);
    }
    let ls = lines(&buf[..end])?;
    let first = *ls.first().ok_or(HttpError::Malformed("status line"))?;
    let mut parts = first.splitn(3, ' ');
    let (Some(ver), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HttpError::Malformed("status line"));
    };
    let minor = version(ver)?;
    let status = match code.parse::<u16>() {
        Ok(s) if code.len() == 3 && (100..=999).contains(&s) => s,
        _ => return Err(HttpError::Malformed("status code")),
    };
    let reason = parts.next().unwrap_or("").to_string();
    Ok(Some((ResponseHead { minor, status, reason, headers: fields(&ls[1..])? }, end)))
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host[:port]` (port 80 when missing, as 4.34).
    Connect(Address, u16),
    /// Plain forwarding: host, port, the `Host` to send and the origin-form path.
    Forward {
        /// Target host.
        host: Address,
        /// Target port.
        port: u16,
        /// Authority for the `Host` header.
        authority: String,
        /// Path and query.
        path: String,
    },
    /// An origin-form request (`GET /x`) with no host in the URI.
    Origin,
}

/// Splits `host[:port]` (IPv6 in brackets) with a default port.
pub fn split_authority(a: &str, default_port: u16) -> Result<(Address, u16), HttpError> {
    let bad = || HttpError::Target(a.to_string());
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad()),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err(bad()),
            None => (a, None),
        }
    };
    if host.is_empty()
        || !host.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-:".contains(&c))
        || host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err()
    {
        return Err(bad());
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p.parse::<u16>().map_err(|_| bad())?,
    };
    Ok((Address::parse(host), port))
}

/// The request's target (TRANSPORTS.md §6.2 step 3).
pub fn target(req: &RequestHead) -> Result<Target, HttpError> {
    if req.method.eq_ignore_ascii_case("CONNECT") {
        let (h, p) = split_authority(&req.target, 80)?;
        return Ok(Target::Connect(h, p));
    }
    let lower = req.target.get(..8).map(|s| s.to_ascii_lowercase()).unwrap_or_default();
    let (rest, default_port) = if lower.starts_with("http://") {
        (&req.target[7..], 80)
    } else if lower.starts_with("https://") {
        (&req.target[8..], 443)
    } else if req.target.starts_with('/') || req.target == "*" {
        return Ok(Target::Origin);
    } else {
        return Err(HttpError::Target(req.target.clone()));
    };
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..cut];
    // user:pass@host in a proxy URI is not forwarded.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = split_authority(authority, default_port)?;
    let path = match &rest[cut..] {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    Ok(Target::Forward { host, port, authority: authority.to_string(), path })
}

/// Go's `CanonicalMIMEHeaderKey`: `x-keep` → `X-Keep`.
pub fn canonical(name: &str) -> String {
    let mut up = true;
    name.chars()
        .map(|c| {
            let r = if up { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            up = c == '-';
            r
        })
        .collect()
}

const HOP_BY_HOP: &[&str] = &[
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "connection",
    "keep-alive",
];

/// Headers without the hop-by-hop ones (and those named in `Connection`), sorted by canonical name
/// (the order Go writes them in), values in their original order.
pub fn end_to_end(headers: &[(String, String)]) -> Vec<(String, String)> {
    let named: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| {
            let l = n.to_ascii_lowercase();
            !HOP_BY_HOP.contains(&l.as_str()) && !named.contains(&l)
        })
        .map(|(n, v)| (canonical(n), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, HttpError> {
    let mut found = None;
    for (_, v) in headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        let n = v.trim().parse::<u64>().map_err(|_| HttpError::Malformed("Content-Length"))?;
        if found.is_some_and(|f| f != n) {
            return Err(HttpError::Malformed("Content-Length (conflicting values)"));
        }
        found = Some(n);
    }
    Ok(found)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .any(|(_, v)| v.split(',').next_back().is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked")))
}

/// The body of a request.
pub fn request_body(req: &RequestHead) -> Result<Body, HttpError> {
    if is_chunked(&req.headers) {
        return Ok(Body::Chunked);
    }
    Ok(match content_length(&req.headers)? {
        Some(0) | None => Body::Empty,
        Some(n) => Body::Length(n),
    })
}

/// The body of a response to a request with `method`.
pub fn response_body(method: &str, resp: &ResponseHead) -> Result<Body, HttpError> {
    if method.eq_ignore_ascii_case("HEAD") || resp.status < 200 || resp.status == 204 || resp.status == 304 {
        return Ok(Body::Empty);
    }
    if is_chunked(&resp.headers) {
        return Ok(Body::Chunked);
    }
    Ok(match content_length(&resp.headers)? {
        Some(0) => Body::Empty,
        Some(n) => Body::Length(n),
        None => Body::UntilClose,
    })
}

/// The request as sent upstream (one connection per request, `Connection: close`), like 4.34's.
pub fn rewrite_request(req: &RequestHead, authority: &str, path: &str, body: Body, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{} {} HTTP/1.1\r\nHost: {}\r\n", req.method, path, authority).as_bytes());
    let mut rest = end_to_end(&req.headers);
    if let Some(i) = rest.iter().position(|(n, _)| n == "User-Agent") {
        let (_, ua) = rest.remove(i);
        out.extend_from_slice(format!("User-Agent: {ua}\r\n").as_bytes());
    }
    rest.retain(|(n, _)| n != "Host" && n != "Content-Length");
    match body {
        Body::Length(n) => out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
        Body::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Body::Empty | Body::UntilClose => {}
    }
    rest.push(("Connection".into(), "close".into()));
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (n, v) in rest {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The response as sent to the client. `keep_alive` is the idle limit (seconds) when the connection
/// is kept for another request; None means it closes after this response.
pub fn rewrite_response(resp: &ResponseHead, body: Body, keep_alive: Option<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("HTTP/1.{} {} {}\r\n", resp.minor, resp.status, resp.reason).as_bytes());
    let mut rest = end_to_end(&resp.headers);
    if body == Body::Chunked {
        rest.retain(|(n, _)| n != "Content-Length");
        rest.push(("Transfer-Encoding".into(), "chunked".into()));
    }
    match keep_alive {
        Some(t) => {
            rest.push(("Connection".into(), "keep-alive".into()));
            rest.push(("Keep-Alive".into(), format!("timeout={t}")));
            rest.push(("Proxy-Connection".into(), "keep-alive".into()));
        }
        None => {
            rest.push(("Connection".into(), "close".into()));
            rest.push(("Proxy-Connection".into(), "close".into()));
        }
    }
    for (n, v) in rest {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether the client asked to keep the connection: HTTP/1.1 unless `close` is said, HTTP/1.0 only
/// with an explicit `keep-alive` (in `Connection` or `Proxy-Connection`).
pub fn client_keep_alive(req: &RequestHead) -> bool {
    let says = |t| has_token(&req.headers, "connection", t) || has_token(&req.headers, "proxy-connection", t);
    if says("close") {
        return false;
    }
    req.minor == 1 || says("keep-alive")
}

/// Finds where a chunked body ends, fed piece by piece.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    line: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size; `Some` once a digit was seen.
    #[default]
    Size,
    SizeDigits(u64),
    /// Extension bytes up to the end of the size line.
    SizeExt(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer lines; `bool` = the current line is empty so far.
    Trailer(bool),
    TrailerLf(bool),
    Done,
}

impl Chunked {
    /// Consumes bytes of `data`; returns `Some(n)` when the body ends after the first `n` bytes, None
    /// when all of `data` belongs to the body and more is needed.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, HttpError> {
        use ChunkState::*;
        let bad = |w| Err(HttpError::Malformed(w));
        if self.state == Done {
            return Ok(Some(0));
        }
        let mut i = 0;
        while i < data.len() {
            if let Data(left) = self.state {
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                self.state = if take == left { DataCr } else { Data(left - take) };
                continue;
            }
            let c = data[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return bad("chunk line too long");
            }
            self.state = match (self.state, c) {
                (Size, c) if c.is_ascii_hexdigit() => SizeDigits(hex(c)),
                (Size, _) => return bad("chunk size"),
                (SizeDigits(n), c) if c.is_ascii_hexdigit() => {
                    match n.checked_mul(16).and_then(|n| n.checked_add(hex(c))) {
                        Some(n) => SizeDigits(n),
                        None => return bad("chunk size"),
                    }
                }
                (SizeDigits(n) | SizeExt(n), b'\n') => {
                    self.line = 0;
                    if n == 0 { Trailer(true) } else { Data(n) }
                }
                (SizeDigits(n) | SizeExt(n), _) => SizeExt(n),
                (DataCr, b'\r') => DataLf,
                (DataCr | DataLf, b'\n') => {
                    self.line = 0;
                    Size
                }
                (DataCr | DataLf, _) => return bad("chunk data terminator"),
                (Trailer(empty) | TrailerLf(empty), b'\n') => {
                    self.line = 0;
                    if empty {
                        self.state = Done;
                        return Ok(Some(i));
                    }
                    Trailer(true)
                }
                (Trailer(empty), b'\r') => TrailerLf(empty),
                (Trailer(_), _) => Trailer(false),
                (TrailerLf(_), _) => return bad("trailer line"),
                (Data(_), _) | (Done, _) => return Ok(Some(i - 1)),
            };
        }
        Ok(None)
    }
}

fn hex(c: u8) -> u64 {
    (c as char).to_digit(16).unwrap_or(0) as u64
}

/// Standard base64 (for Basic credentials).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `407` exactly as 4.34 sends it.
pub const RESP_407: &[u8] =
    b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"proxy\"\r\n\r\n";
/// `400` for an origin-form request without `allowTransparent`.
pub const RESP_400: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n";
/// `503` when the upstream gave no response.
pub const RESP_503: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n";
/// The CONNECT success reply.
pub const RESP_CONNECTED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Decodes arbitrary bytes as every parser here would see them, for the fuzz target: never panics.
pub fn fuzz_head(data: &[u8]) {
    if let Ok(Some((req, used))) = decode_request(data) {
        let _ = target(&req);
        if let Ok(b) = request_body(&req) {
            let mut out = Vec::new();
            rewrite_request(&req, "h", "/", b, &mut out);
        }
        let _ = Chunked::default().feed(&data[used..]);
    }
    if let Ok(Some((resp, _))) = decode_response(data)
        && let Ok(b) = response_body("GET", &resp)
    {
        let mut out = Vec::new();
        rewrite_response(&resp, b, Some(4), &mut out);
    }
    let _ = Chunked::default().feed(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(text: &str) -> RequestHead {
        decode_request(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn rewrite_like_434() {
        let r = req(
            "GET http://127.0.0.1:20081/a?q=1 HTTP/1.0\r\nHost: other\r\nx-keep: yes\r\nConnection: X-Drop\r\nX-Drop: 1\r\nProxy-Connection: keep-alive\r\nTE: x\r\n\r\n",
        );
        let Target::Forward { host, port, authority, path } = target(&r).unwrap() else { panic!() };
        assert_eq!(
            (host, port, authority.as_str(), path.as_str()),
            (Address::parse("127.0.0.1"), 20081, "127.0.0.1:20081", "/a?q=1")
        );
        let mut out = Vec::new();
        rewrite_request(&r, &authority, &path, request_body(&r).unwrap(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?q=1 HTTP/1.1\r\nHost: 127.0.0.1:20081\r\nConnection: close\r\nX-Keep: yes\r\n\r\n"
        );
        assert!(client_keep_alive(&r));
    }

    #[test]
    fn targets() {
        assert_eq!(
            target(&req("CONNECT example.com HTTP/1.1\r\n\r\n")).unwrap(),
            Target::Connect(Address::parse("example.com"), 80)
        );
        assert_eq!(
            target(&req("CONNECT [::1]:443 HTTP/1.1\r\n\r\n")).unwrap(),
            Target::Connect(Address::parse("::1"), 443)
        );
        assert_eq!(target(&req("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")).unwrap(), Target::Origin);
        let Target::Forward { port, path, .. } = target(&req("GET https://h?x HTTP/1.1\r\n\r\n")).unwrap() else {
            panic!()
        };
        assert_eq!((port, path.as_str()), (443, "/?x"));
        assert!(target(&req("GET http://h:99999/ HTTP/1.1\r\n\r\n")).is_err());
        assert!(target(&req("GET ftp://h/ HTTP/1.1\r\n\r\n")).is_err());
    }

    #[test]
    fn heads() {
        assert_eq!(decode_request(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert!(decode_request(b"GET / SPDY/3\r\n\r\n").is_err());
        assert!(decode_request(b"\x16\x03\x01\x02\x00\x01\r\n\r\n").is_err());
        assert!(decode_request(&vec![b'a'; MAX_HEAD + 10]).is_err());
        let (r, n) = decode_request(b"GET / HTTP/1.1\nHost: a\n\nBODY").unwrap().unwrap();
        assert_eq!((n, header(&r.headers, "host")), (24, Some("a")));
        let (resp, _) = decode_response(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Up\r\nX-Up: 1\r\nKeep-Alive: timeout=99\r\n\r\n").unwrap().unwrap();
        assert_eq!(response_body("GET", &resp), Ok(Body::Length(5)));
        assert_eq!(response_body("HEAD", &resp), Ok(Body::Empty));
        let mut out = Vec::new();
        rewrite_response(&resp, Body::Length(5), Some(4), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=4\r\nProxy-Connection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn chunked_end() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        assert_eq!(Chunked::default().feed(body), Ok(Some(body.len() - 4)));
        let mut c = Chunked::default();
        for (i, b) in body.iter().enumerate() {
            let r = c.feed(std::slice::from_ref(b)).unwrap();
            if i == body.len() - 5 {
                assert_eq!(r, Some(1));
                break;
            }
            assert_eq!(r, None, "byte {i}");
        }
        assert!(Chunked::default().feed(b"zz\r\n").is_err());
        assert!(Chunked::default().feed(b"ffffffffffffffffff\r\n").is_err());
        assert_eq!(Chunked::default().feed(b"0\n\n"), Ok(Some(3)));
    }

    #[test]
    fn base64_vectors() {
        assert_eq!(base64(b"u1:p1"), "dTE6cDE=");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            fuzz_head(&data);
        }

        #[test]
        fn chunked_split_anywhere(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6), cut in 0usize..400) {
            let mut body = Vec::new();
            for p in &parts {
                if p.is_empty() { continue; }
                body.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
                body.extend_from_slice(p);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            let total = body.len();
            body.extend_from_slice(b"GET");
            let cut = cut.min(total);
            let mut c = Chunked::default();
            let first = c.feed(&body[..cut]).unwrap();
            let end = match first { Some(n) => n, None => cut + c.feed(&body[cut..]).unwrap().unwrap() };
            prop_assert_eq!(end, total);
        }
    }
}
