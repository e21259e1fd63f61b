//! The few pieces of HTTP/1.x the transports need: reading a header block off a stream, parsing a
//! request or response head from untrusted bytes, Go-style header names, the `Date` format, and a
//! stream that replays bytes read past a header.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP (or not the kind of head expected).
    #[error("malformed HTTP head: {0}")]
    Malformed(&'static str),
    /// The header block is larger than allowed.
    #[error("HTTP header block larger than {0} bytes")]
    TooLarge(usize),
    /// The peer closed before the head was complete.
    #[error("connection closed inside the HTTP head")]
    Eof,
}

impl From<HeadError> for io::Error {
    fn from(e: HeadError) -> Self {
        let kind = if e == HeadError::Eof { io::ErrorKind::UnexpectedEof } else { io::ErrorKind::InvalidData };
        io::Error::new(kind, e)
    }
}

/// The end of the first header block in `buf` (the index just past `\r\n\r\n`).
pub fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// True when `buf` cannot be the start of an HTTP head: a control byte other than CR, LF and tab
/// (a TLS ClientHello or raw VMess fails here at once instead of waiting for more bytes).
pub fn clearly_not_http(buf: &[u8]) -> bool {
    buf.iter().any(|&b| (b < 0x20 && b != b'\r' && b != b'\n' && b != b'\t') || b == 0x7f)
}

/// Reads from `s` into `buf` until it holds a whole header block of at most `limit` bytes; returns
/// the block's length (bytes after it stay in `buf`). With `early_reject`, bytes that cannot be HTTP
/// fail at once.
pub async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limit: usize,
    early_reject: bool,
) -> Result<usize, HeadError> {
    let mut scanned: usize = 0;
    loop {
        // Resume the search a little before the old end, so a terminator split across reads is found.
        if let Some(end) = find_end(&buf[scanned.saturating_sub(3)..]) {
            let end = end + scanned.saturating_sub(3);
            if end > limit {
                return Err(HeadError::TooLarge(limit));
            }
            return Ok(end);
        }
        if buf.len() >= limit {
            return Err(HeadError::TooLarge(limit));
        }
        if early_reject && clearly_not_http(buf) {
            return Err(HeadError::Malformed("not an HTTP request"));
        }
        scanned = buf.len();
        let mut chunk = [0u8; 2048];
        let want = (limit + 4 - buf.len()).min(chunk.len());
        let n = s.read(&mut chunk[..want]).await.map_err(|_| HeadError::Eof)?;
        if n == 0 {
            return Err(HeadError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Header fields in the order they came, names as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of a header (name compared case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether any value of `name`, as a comma-separated token list, contains `token`
    /// (case-insensitive), as gorilla/websocket's `tokenListContainsValue`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// HTTP minor version (`HTTP/1.x`).
    pub minor: u8,
    /// Header fields.
    pub headers: Headers,
}

impl RequestHead {
    /// The decoded path of the target without its query (Go's `URL.Path`), or None if the
    /// target's escapes are invalid. An absolute-form target (`http://h/p`) gives its path.
    pub fn path(&self) -> Option<String> {
        let mut t = self.target.as_str();
        if let Some(rest) = t.strip_prefix("http://").or_else(|| t.strip_prefix("https://")) {
            t = rest.find('/').map_or("/", |i| &rest[i..]);
        }
        let raw = t.split('?').next().unwrap_or("");
        percent_decode(raw)
    }
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// Header fields.
    pub headers: Headers,
}

fn lines(head: &[u8]) -> Result<Vec<&str>, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("not UTF-8"))?;
    let text = text.strip_suffix("\r\n\r\n").ok_or(HeadError::Malformed("no blank line"))?;
    Ok(text.split("\r\n").collect())
}

fn parse_fields(lines: &[&str]) -> Result<Headers, HeadError> {
    let mut h = Vec::with_capacity(lines.len());
    for l in lines {
        let (name, value) = l.split_once(':').ok_or(HeadError::Malformed("header line without ':'"))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HeadError::Malformed("invalid header name"));
        }
        h.push((name.to_string(), value.trim_matches([' ', '\t']).to_string()));
    }
    Ok(Headers(h))
}

fn version_minor(v: &str) -> Result<u8, HeadError> {
    match v {
        "HTTP/1.1" => Ok(1),
        "HTTP/1.0" => Ok(0),
        _ => Err(HeadError::Malformed("unsupported HTTP version")),
    }
}

/// Parses a request head (the block including its final `\r\n\r\n`).
pub fn parse_request(head: &[u8]) -> Result<RequestHead, HeadError> {
    let lines = lines(head)?;
    let (first, rest) = lines.split_first().ok_or(HeadError::Malformed("empty head"))?;
    let mut parts = first.splitn(3, ' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(HeadError::Malformed("bad request line"));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(HeadError::Malformed("bad method"));
    }
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HeadError::Malformed("bad request target"));
    }
    Ok(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        minor: version_minor(version)?,
        headers: parse_fields(rest)?,
    })
}

/// Parses a response head (the block including its final `\r\n\r\n`).
pub fn parse_response(head: &[u8]) -> Result<ResponseHead, HeadError> {
    let lines = lines(head)?;
    let (first, rest) = lines.split_first().ok_or(HeadError::Malformed("empty head"))?;
    let mut parts = first.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HeadError::Malformed("bad status line"));
    };
    version_minor(version)?;
    if code.len() != 3 {
        return Err(HeadError::Malformed("bad status code"));
    }
    let status = code.parse::<u16>().map_err(|_| HeadError::Malformed("bad status code"))?;
    Ok(ResponseHead { status, reason: parts.next().unwrap_or("").to_string(), headers: parse_fields(rest)? })
}

/// RFC 7230 token characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Go's `CanonicalMIMEHeaderKey`: `x-test` → `X-Test`; names with characters outside tokens stay.
pub fn canonical_header_name(name: &str) -> String {
    if !name.bytes().all(is_token_byte) {
        return name.to_string();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            upper = c == '-';
            out
        })
        .collect()
}

/// Decodes `%XX` escapes; None for an invalid escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Characters Go leaves unescaped in a path (`shouldEscape(c, encodePath)` is false).
fn path_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b)
}

/// Go's `URL.EscapedPath` for a configured path: kept as written when it is a valid encoding,
/// otherwise the decoded path re-escaped (`/a b/%41` → `/a%20b/A`). None for invalid escapes.
pub fn escaped_path(raw: &str) -> Option<String> {
    let decoded = percent_decode(raw)?;
    let valid_as_is = raw.bytes().all(|b| path_safe(b) || b"!'()*[]%".contains(&b));
    if valid_as_is {
        return Some(raw.to_string());
    }
    let mut out = String::with_capacity(decoded.len() * 3);
    for b in decoded.bytes() {
        if path_safe(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Some(out)
}

/// An HTTP `Date` value (`Mon, 02 Jan 2006 15:04:05 GMT`), always in UTC.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_an_upgrade_request() {
        let r = parse_request(b"GET /ray?ed=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path().as_deref(), Some("/ray"));
        assert_eq!(r.minor, 1);
        assert!(r.headers.has_token("connection", "upgrade"));
        assert_eq!(r.headers.get("HOST"), Some("a"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_request(b"\x16\x03\x01\r\n\r\n").is_err());
        assert!(parse_request(b"GET / HTTP/2\r\n\r\n").is_err());
        assert!(parse_request(b"GET / HTTP/1.1\r\nno colon\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 1011 X\r\n\r\n").is_err());
        assert!(clearly_not_http(b"\x16\x03\x01"));
    }

    #[test]
    fn go_path_escaping() {
        assert_eq!(escaped_path("/a b/%41").as_deref(), Some("/a%20b/A"));
        assert_eq!(escaped_path("/%41").as_deref(), Some("/%41"));
        assert_eq!(escaped_path("/ray").as_deref(), Some("/ray"));
        assert_eq!(escaped_path("/%zz"), None);
        assert_eq!(canonical_header_name("x-test"), "X-Test");
        assert_eq!(canonical_header_name("user-AGENT"), "User-Agent");
    }

    #[test]
    fn date_format() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(1_136_214_245); // Go's reference time
        assert_eq!(http_date(t), "Mon, 02 Jan 2006 15:04:05 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day 2000
        assert_eq!(http_date(t), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[tokio::test]
    async fn head_split_across_reads() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(b"GET / HTTP/1.1\r\n\r").await.unwrap();
            a.flush().await.unwrap();
            tokio::task::yield_now().await;
            a.write_all(b"\nrest").await.unwrap();
        });
        let mut buf = Vec::new();
        let n = read_head(&mut b, &mut buf, 8192, true).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_request(&data);
            let _ = parse_response(&data);
            let _ = find_end(&data);
            if let Ok(s) = std::str::from_utf8(&data) {
                let _ = escaped_path(s);
            }
        }

        #[test]
        fn request_roundtrip(path in "/[a-z0-9/]{0,20}", name in "[A-Za-z][A-Za-z0-9-]{0,10}", value in "[ -~]{0,20}") {
            let text = format!("GET {path} HTTP/1.1\r\n{name}: {value}\r\n\r\n");
            let r = parse_request(text.as_bytes()).unwrap();
            proptest::prop_assert_eq!(r.path().unwrap(), path);
            proptest::prop_assert_eq!(r.headers.get(&name).unwrap(), value.trim_matches([' ', '\t']));
        }
    }
}
