//! WebSocket (`network: "ws"`) as V2Ray 4.34 speaks it (gorilla/websocket under Go's `net/http`):
//! the upgrade request and responses byte for byte, one binary message per write, and a reader that
//! takes text and binary messages, fragments and interleaved control frames.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::http_head::{self, HeadError, RequestHead};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest payload of one frame oxray writes (a write beyond it becomes several messages).
const MAX_WRITE_FRAME: usize = 32 * 1024;
/// Go's `MaxHeaderBytes` (2048) plus the 4096 bytes of slack its reader allows.
pub const MAX_REQUEST_HEAD: usize = 2048 + 4096;
/// Largest response head a client accepts.
const MAX_RESPONSE_HEAD: usize = 8192;

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key ‖ GUID)).
pub fn accept_key(key: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID);
    base64(ctx.finish().as_ref())
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // aws-lc's DRBG cannot fail once initialised; a zero key would still be a valid (if weak) mask.
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}

/// The client's upgrade request, as Go's `Request.Write` orders it: request line, `Host`,
/// `User-Agent`, then every other header sorted by name (byte order).
pub fn client_request(request_uri: &str, host: &str, custom: &[(String, String)], key: &str) -> Vec<u8> {
    let mut user_agent = "Go-http-client/1.1".to_string();
    let mut host = host.to_string();
    let mut fields: Vec<(String, String)> = vec![
        ("Connection".into(), "Upgrade".into()),
        ("Sec-WebSocket-Key".into(), key.into()),
        ("Sec-WebSocket-Version".into(), "13".into()),
        ("Upgrade".into(), "websocket".into()),
    ];
    for (name, value) in custom {
        match name.as_str() {
            "Host" => host = value.clone(),
            "User-Agent" => user_agent = value.clone(),
            // gorilla stores it under its own spelling.
            "Sec-Websocket-Protocol" => fields.push(("Sec-WebSocket-Protocol".into(), value.clone())),
            _ => fields.push((name.clone(), value.clone())),
        }
    }
    // Stable: several values of one name keep their order, as in Go's header map.
    fields.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = format!("GET {request_uri} HTTP/1.1\r\nHost: {host}\r\n");
    if !user_agent.is_empty() {
        out.push_str(&format!("User-Agent: {user_agent}\r\n"));
    }
    for (n, v) in fields {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Header names a client may not set (gorilla fails every dial with "duplicate header not allowed").
pub const FORBIDDEN_CLIENT_HEADERS: &[&str] =
    &["Upgrade", "Connection", "Sec-Websocket-Key", "Sec-Websocket-Version", "Sec-Websocket-Extensions"];

/// Runs the client side of the upgrade on `stream`: sends the request, checks the 101 response.
pub async fn client_handshake<S>(
    mut stream: S,
    request_uri: &str,
    host: &str,
    custom: &[(String, String)],
) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = base64(&random_bytes::<16>());
    stream.write_all(&client_request(request_uri, host, custom, &key)).await?;
    stream.flush().await?;
    let mut buf = Vec::with_capacity(512);
    let end = http_head::read_head(&mut stream, &mut buf, MAX_RESPONSE_HEAD, false).await?;
    let resp = http_head::parse_response(&buf[..end])?;
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("websocket: bad handshake ({why})"));
    if resp.status != 101 {
        return Err(bad(format!("{} {}", resp.status, resp.reason)));
    }
    if !resp.headers.has_token("Upgrade", "websocket") || !resp.headers.has_token("Connection", "upgrade") {
        return Err(bad("missing Upgrade/Connection tokens".into()));
    }
    if resp.headers.get("Sec-WebSocket-Accept") != Some(accept_key(&key).as_str()) {
        return Err(bad("wrong Sec-WebSocket-Accept".into()));
    }
    if resp.headers.get("Sec-WebSocket-Extensions").is_some_and(|v| !v.trim().is_empty()) {
        return Err(bad("the server chose an extension oxray did not offer".into()));
    }
    // Bytes after the head in the same read are frame data.
    Ok(WsStream::new(stream, Role::Client, BytesMut::from(&buf[end..])))
}

/// What a server made of one upgrade attempt.
#[derive(Debug)]
pub enum ServerOutcome {
    /// Upgraded: the stream and the `X-Forwarded-For` source, if any.
    Upgraded(Option<IpAddr>),
    /// Answered with an error response; the connection is to be closed.
    Rejected(String),
}

fn error_response(status: &str, body: &str, date: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nSec-Websocket-Version: 13\r\n\
         X-Content-Type-Options: nosniff\r\nDate: {date}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn closing_response(status: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n{status}")
        .into_bytes()
}

/// Decides what to answer to one request on a WebSocket listener of `path` (the normalized path;
/// only the part before `?` is compared, as Go's handler sees `URL.Path`).
fn judge(req: &RequestHead, path: &str, date: &str) -> Result<String, (Vec<u8>, bool, String)> {
    if req.minor == 1 && req.headers.get("Host").is_none() {
        let s = "400 Bad Request: missing required Host header";
        return Err((closing_response(s), true, s.into()));
    }
    let want = path.split('?').next().unwrap_or("");
    match req.path() {
        Some(p) if p == want => {}
        Some(p) => {
            let r = format!("HTTP/1.1 404 Not Found\r\nDate: {date}\r\nContent-Length: 0\r\n\r\n").into_bytes();
            // A request with a body cannot be skipped cheaply: close instead of keeping it alive.
            let has_body = req.headers.get("Content-Length").is_some_and(|v| v.trim() != "0")
                || req.headers.get("Transfer-Encoding").is_some();
            return Err((r, req.minor == 0 || has_body, format!("path {p:?} is not {want:?}")));
        }
        None => return Err((closing_response("400 Bad Request"), true, "invalid escapes in the path".into())),
    }
    let bad = |why: &str| (error_response("400 Bad Request", "Bad Request\n", date), true, why.to_string());
    if !req.headers.has_token("Connection", "upgrade") {
        return Err(bad("'upgrade' token not found in 'Connection' header"));
    }
    if !req.headers.has_token("Upgrade", "websocket") {
        return Err(bad("'websocket' token not found in 'Upgrade' header"));
    }
    if req.method != "GET" {
        let r = error_response("405 Method Not Allowed", "Method Not Allowed\n", date);
        return Err((r, true, format!("method {} is not GET", req.method)));
    }
    if !req.headers.has_token("Sec-Websocket-Version", "13") {
        return Err(bad("unsupported version: 13 not found in 'Sec-Websocket-Version' header"));
    }
    match req.headers.get("Sec-Websocket-Key") {
        Some(k) if !k.is_empty() => Ok(k.to_string()),
        _ => Err(bad("'Sec-WebSocket-Key' header is missing or blank")),
    }
}

/// Runs the server side of the upgrade: answers wrong paths with 404 (keeping the connection for the
/// next request, as Go's server does), bad upgrades with 400/405/431, a good one with 101. Frames the
/// client sent before reading the 101 are kept (4.34 drops such clients; oxray accepts them).
pub async fn server_handshake<S>(mut stream: S, path: &str) -> io::Result<(WsStream<S>, Option<IpAddr>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    loop {
        let end = match http_head::read_head(&mut stream, &mut buf, MAX_REQUEST_HEAD, true).await {
            Ok(end) => end,
            Err(HeadError::TooLarge(_)) => {
                let _ = stream.write_all(&closing_response("431 Request Header Fields Too Large")).await;
                let _ = stream.shutdown().await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, "websocket: request head too large"));
            }
            Err(HeadError::Eof) => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before an HTTP request"));
            }
            Err(e) => {
                let _ = stream.write_all(&closing_response("400 Bad Request")).await;
                let _ = stream.shutdown().await;
                return Err(e.into());
            }
        };
        let req = match http_head::parse_request(&buf[..end]) {
            Ok(r) => r,
            Err(e) => {
                let _ = stream.write_all(&closing_response("400 Bad Request")).await;
                let _ = stream.shutdown().await;
                return Err(e.into());
            }
        };
        let date = http_head::http_date(SystemTime::now());
        match judge(&req, path, &date) {
            Ok(key) => {
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(&key)
                );
                stream.write_all(resp.as_bytes()).await?;
                stream.flush().await?;
                let xff = req
                    .headers
                    .get("X-Forwarded-For")
                    .and_then(|v| v.split(',').next())
                    .and_then(|first| first.parse::<IpAddr>().ok());
                return Ok((WsStream::new(stream, Role::Server, BytesMut::from(&buf[end..])), xff));
            }
            Err((resp, close, why)) => {
                stream.write_all(&resp).await?;
                stream.flush().await?;
                if close {
                    let _ = stream.shutdown().await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("websocket: {why}")));
                }
                tracing::debug!("websocket: {why}; answered 404");
                buf.drain(..end);
            }
        }
    }
}

/// Which end of the connection a [`WsStream`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Masks what it sends; expects unmasked frames.
    Client,
    /// Sends unmasked frames; expects masked ones.
    Server,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// Mask key, if masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
    /// Bytes the header took.
    pub header_len: usize,
}

/// A protocol violation, with the text 4.34 puts in its close frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("websocket protocol error: {0}")]
pub struct ProtocolError(pub String);

/// Parses a frame header from the start of `buf`; Ok(None) when more bytes are needed.
pub fn parse_frame_head(buf: &[u8]) -> Result<Option<FrameHead>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    for (bit, name) in [(0x40, "RSV1"), (0x20, "RSV2"), (0x10, "RSV3")] {
        if b0 & bit != 0 {
            return Err(ProtocolError(format!("{name} set")));
        }
    }
    let opcode = b0 & 0x0f;
    if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
        return Err(ProtocolError(format!("bad opcode {opcode}")));
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut pos) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else { return Ok(None) };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else { return Ok(None) };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let v = u64::from_be_bytes(a);
            if v >> 63 != 0 {
                return Err(ProtocolError("bad frame length".into()));
            }
            (v, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= 8 {
        if len > 125 {
            return Err(ProtocolError("control frame length > 125".into()));
        }
        if !fin {
            return Err(ProtocolError("control frame not final".into()));
        }
    }
    let mask = if masked {
        let Some(b) = buf.get(pos..pos + 4) else { return Ok(None) };
        pos += 4;
        Some([b[0], b[1], b[2], b[3]])
    } else {
        None
    };
    Ok(Some(FrameHead { fin, opcode, mask, len, header_len: pos }))
}

/// Writes a frame header for `len` payload bytes into `out`.
pub fn put_frame_head(out: &mut Vec<u8>, fin: bool, opcode: u8, mask: Option<[u8; 4]>, len: usize) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
}

/// XORs `data` with `key`, starting at key offset `offset` (mod 4).
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let rot = offset % 4;
    let k = [key[rot], key[(rot + 1) % 4], key[(rot + 2) % 4], key[(rot + 3) % 4]];
    let k8 = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(a) ^ k8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// Valid close codes a peer may send (RFC 6455 and gorilla's `isValidReceivedCloseCode`).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// A WebSocket connection as a byte stream: reads concatenate message payloads, each write is sent
/// as one binary message. Shutdown sends a close frame (the peer's code if it closed first, else
/// 1000) and half-closes TCP; reading goes on until the peer closes too.
pub struct WsStream<S> {
    inner: S,
    role: Role,
    rbuf: BytesMut,
    /// Payload bytes of the current data frame not yet read, its mask and mask offset.
    remaining: u64,
    mask: Option<[u8; 4]>,
    mask_off: usize,
    /// A fragmented message is open (continuation frames expected).
    in_message: bool,
    read_done: bool,
    /// Frames waiting to go out, and whether a close frame is among them (nothing may follow it).
    wbuf: Vec<u8>,
    /// `wbuf` holds data frames: only the writer may then poll the socket for writing (a socket
    /// keeps one write waker, and a reader taking it would leave the writer asleep forever).
    wbuf_has_data: bool,
    close_sent: bool,
    peer_close_code: Option<Option<u16>>,
    /// A protocol error was found: every further read fails.
    failed: Option<String>,
}

impl<S> WsStream<S> {
    /// Wraps an upgraded connection; `rbuf` holds bytes already read past the handshake.
    pub fn new(inner: S, role: Role, rbuf: BytesMut) -> Self {
        WsStream {
            inner,
            role,
            rbuf,
            remaining: 0,
            mask: None,
            mask_off: 0,
            in_message: false,
            read_done: false,
            wbuf: Vec::new(),
            wbuf_has_data: false,
            close_sent: false,
            peer_close_code: None,
            failed: None,
        }
    }

    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = (self.role == Role::Client).then(random_bytes::<4>);
        put_frame_head(&mut self.wbuf, true, opcode, mask, payload.len());
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(payload);
        if let Some(k) = mask {
            apply_mask(&mut self.wbuf[start..], k, 0);
        }
    }

    fn queue_close(&mut self, code: Option<u16>, reason: &str) {
        if self.close_sent {
            return;
        }
        let mut p = Vec::new();
        if let Some(c) = code {
            p.extend_from_slice(&c.to_be_bytes());
            p.extend_from_slice(reason.as_bytes());
        }
        self.queue_frame(8, &p);
        self.close_sent = true;
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    /// Writes out queued frames; Ready(Ok) once `wbuf` is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.drain(..n);
        }
        self.wbuf_has_data = false;
        Poll::Ready(Ok(()))
    }

    fn fail(&mut self, cx: &mut Context<'_>, why: String) -> io::Error {
        self.queue_close(Some(1002), &why);
        // Best effort: the close frame goes out if the socket takes it now.
        let _ = self.poll_drain(cx);
        self.failed = Some(why.clone());
        io::Error::new(io::ErrorKind::InvalidData, ProtocolError(why))
    }
}

fn eof_in_frame() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "websocket: EOF inside a frame")
}

impl<S: AsyncRead + Unpin> WsStream<S> {
    /// Reads more bytes into `rbuf`; Ready(Ok(0)) at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.rbuf.reserve(32 * 1024);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.rbuf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(why) = &this.failed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, ProtocolError(why.clone()))));
        }
        // Pongs queued by an earlier read go out whenever the socket takes them (behind data frames,
        // the writer sends them).
        if !this.wbuf.is_empty() && !this.wbuf_has_data {
            let _ = this.poll_drain(cx)?;
        }
        loop {
            if this.read_done || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.remaining > 0 {
                let want = (this.remaining.min(out.remaining() as u64)) as usize;
                if !this.rbuf.is_empty() {
                    let n = want.min(this.rbuf.len());
                    let mut chunk = this.rbuf.split_to(n);
                    if let Some(k) = this.mask {
                        apply_mask(&mut chunk, k, this.mask_off);
                    }
                    out.put_slice(&chunk);
                    this.mask_off += n;
                    this.remaining -= n as u64;
                    return Poll::Ready(Ok(()));
                }
                if ready!(this.poll_fill(cx))? == 0 {
                    return Poll::Ready(Err(eof_in_frame()));
                }
                continue;
            }
            let head = match parse_frame_head(&this.rbuf) {
                Ok(h) => h,
                Err(ProtocolError(why)) => return Poll::Ready(Err(this.fail(cx, why))),
            };
            let control_complete =
                head.is_some_and(|h| h.opcode < 8 || this.rbuf.len() >= h.header_len + h.len as usize);
            let Some(h) = head.filter(|_| control_complete) else {
                if ready!(this.poll_fill(cx))? == 0 {
                    if this.rbuf.is_empty() && !this.in_message {
                        this.read_done = true;
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(eof_in_frame()));
                }
                continue;
            };
            let expect_masked = this.role == Role::Server;
            if h.mask.is_some() != expect_masked {
                return Poll::Ready(Err(this.fail(cx, "bad MASK".into())));
            }
            match h.opcode {
                0 if !this.in_message => return Poll::Ready(Err(this.fail(cx, "continuation after FIN".into()))),
                1 | 2 if this.in_message => return Poll::Ready(Err(this.fail(cx, "data before FIN".into()))),
                0..=2 => {
                    this.rbuf.advance(h.header_len);
                    this.in_message = !h.fin;
                    this.remaining = h.len;
                    this.mask = h.mask;
                    this.mask_off = 0;
                }
                _ => {
                    this.rbuf.advance(h.header_len);
                    let mut payload = this.rbuf.split_to(h.len as usize);
                    if let Some(k) = h.mask {
                        apply_mask(&mut payload, k, 0);
                    }
                    match h.opcode {
                        9 => {
                            if !this.close_sent {
                                this.queue_frame(10, &payload);
                                if !this.wbuf_has_data {
                                    let _ = this.poll_drain(cx)?;
                                }
                            }
                        }
                        10 => {}
                        _ => {
                            // Close: the peer sends nothing more. Our close frame (echoing its code)
                            // goes out when our side shuts down, so a half-closed peer still gets data.
                            let code = match payload.len() {
                                0 => None,
                                1 => return Poll::Ready(Err(this.fail(cx, "bad close frame".into()))),
                                _ => {
                                    let c = u16::from_be_bytes([payload[0], payload[1]]);
                                    if !valid_close_code(c) {
                                        return Poll::Ready(Err(this.fail(cx, format!("bad close code {c}"))));
                                    }
                                    if std::str::from_utf8(&payload[2..]).is_err() {
                                        return Poll::Ready(Err(
                                            this.fail(cx, "invalid utf8 payload in close frame".into())
                                        ));
                                    }
                                    Some(c)
                                }
                            };
                            this.peer_close_code = Some(code);
                            this.read_done = true;
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "websocket: close already sent")));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(MAX_WRITE_FRAME);
        this.queue_frame(2, &data[..n]);
        this.wbuf_has_data = true;
        // Start sending now; whatever the socket does not take stays queued for the next call.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_sent {
            let code = this.peer_close_code.unwrap_or(Some(1000));
            this.queue_close(code, "");
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[test]
    fn rfc_accept_key() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    /// The request 4.34 sent for `path: "ray"`, `headers: {"host":"example.com","x-test":"1","User-Agent":"ua-test"}`
    /// (TRANSPORTS.md §3.2), with its key.
    #[test]
    fn request_bytes_match_go() {
        let custom = vec![
            ("Host".to_string(), "example.com".to_string()),
            ("X-Test".to_string(), "1".to_string()),
            ("User-Agent".to_string(), "ua-test".to_string()),
        ];
        let got = client_request("/ray", "127.0.0.1:1234", &custom, "WcIgMpL64CbaKOQyQMFhbw==");
        let want = "GET /ray HTTP/1.1\r\nHost: example.com\r\nUser-Agent: ua-test\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: WcIgMpL64CbaKOQyQMFhbw==\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\
                    X-Test: 1\r\n\r\n";
        assert_eq!(String::from_utf8(got).unwrap(), want);
        let plain = client_request("/", "h:80", &[], "k");
        assert!(
            String::from_utf8(plain)
                .unwrap()
                .starts_with("GET / HTTP/1.1\r\nHost: h:80\r\nUser-Agent: Go-http-client/1.1\r\n")
        );
    }

    async fn pair() -> (WsStream<tokio::io::DuplexStream>, WsStream<tokio::io::DuplexStream>, Option<IpAddr>) {
        let (a, b) = duplex(1 << 16);
        let client = tokio::spawn(async move {
            client_handshake(a, "/ray?ed=2048", "h", &[("X-Forwarded-For".into(), "203.0.113.7, 10.0.0.1".into())])
                .await
        });
        let (server, xff) = server_handshake(b, "/ray").await.unwrap();
        (client.await.unwrap().unwrap(), server, xff)
    }

    #[tokio::test]
    async fn roundtrip_and_half_close() {
        let (mut c, mut s, xff) = pair().await;
        assert_eq!(xff, Some("203.0.113.7".parse().unwrap()));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let d2 = data.clone();
        let w = tokio::spawn(async move {
            c.write_all(&d2).await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        s.write_all(b"after half-close").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(w.await.unwrap(), b"after half-close");
    }

    #[tokio::test]
    async fn server_answers_ping_and_takes_fragments_and_text() {
        let (a, b) = duplex(1 << 16);
        let srv = tokio::spawn(async move {
            let (mut s, _) = server_handshake(b, "/ray").await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut raw = a;
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        // The upgrade and frames in one write (4.34 would drop this client; oxray must not).
        let mut bytes = format!(
            "GET /ray HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        let k = [1, 2, 3, 4];
        let mut frame = |fin: bool, op: u8, p: &[u8]| {
            put_frame_head(&mut bytes, fin, op, Some(k), p.len());
            let s = bytes.len();
            bytes.extend_from_slice(p);
            apply_mask(&mut bytes[s..], k, 0);
        };
        frame(false, 1, b"hel");
        frame(true, 9, b"hello");
        frame(true, 0, b"lo ");
        frame(true, 2, b"");
        frame(true, 2, b"world");
        frame(true, 8, &[0x03, 0xe8]);
        raw.write_all(&bytes).await.unwrap();
        let mut resp = vec![0u8; 129];
        raw.read_exact(&mut resp).await.unwrap();
        let resp = String::from_utf8(resp).unwrap();
        assert_eq!(
            resp,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        let mut pong = [0u8; 7];
        raw.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"\x8a\x05hello");
        assert_eq!(srv.await.unwrap(), b"hello world");
    }

    async fn probe(request: &[u8]) -> (String, bool) {
        let (mut a, b) = duplex(1 << 16);
        let srv = tokio::spawn(async move { server_handshake(b, "/ray").await.map(|_| ()) });
        a.write_all(request).await.unwrap();
        let mut out = vec![0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), a.read(&mut out)).await.unwrap().unwrap();
        drop(a);
        let failed = srv.await.unwrap().is_err();
        (String::from_utf8_lossy(&out[..n]).into_owned(), failed)
    }

    #[tokio::test]
    async fn error_responses_have_go_shapes() {
        let (r, _) = probe(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\nDate: "), "{r}");
        assert!(r.ends_with(" GMT\r\nContent-Length: 0\r\n\r\n"), "{r}");
        let (r, _) = probe(b"GET /ray/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "exact match only: {r}");
        let (r, _) = probe(b"GET /ray HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nSec-Websocket-Version: 13\r\nX-Content-Type-Options: nosniff\r\nDate: "), "{r}");
        assert!(r.ends_with("Content-Length: 12\r\n\r\nBad Request\n"), "{r}");
        let (r, _) = probe(b"POST /ray HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n")
                && r.ends_with("Content-Length: 19\r\n\r\nMethod Not Allowed\n"),
            "{r}"
        );
        let (r, _) = probe(b"GET /ray HTTP/1.1\r\n\r\n").await;
        assert_eq!(
            r,
            "HTTP/1.1 400 Bad Request: missing required Host header\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request: missing required Host header"
        );
    }

    #[tokio::test]
    async fn unmasked_client_frame_is_refused_with_1002() {
        let (mut a, b) = duplex(1 << 16);
        let srv = tokio::spawn(async move {
            let (mut s, _) = server_handshake(b, "/").await.unwrap();
            let mut buf = [0u8; 16];
            s.read(&mut buf).await
        });
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n\r\n\x82\x01x").await.unwrap();
        assert!(srv.await.unwrap().is_err());
        let mut all = Vec::new();
        a.read_to_end(&mut all).await.unwrap();
        assert!(all.ends_with(b"\x88\x0a\x03\xeabad MASK"), "{all:?}");
    }

    /// A reader answering pings must not take the socket's write waker from a writer under
    /// backpressure (that writer would never wake).
    #[tokio::test]
    async fn pings_during_a_blocked_write_do_not_stall_the_writer() {
        let (a, mut raw) = duplex(1024);
        let ws = WsStream::new(a, Role::Client, BytesMut::new());
        let (mut cr, mut cw) = tokio::io::split(ws);
        let writer = tokio::spawn(async move {
            cw.write_all(&vec![7u8; 1_000_000]).await?;
            cw.flush().await
        });
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            cr.read(&mut buf).await
        });
        let peer = async {
            let (mut total, mut since_ping) = (0usize, 0usize);
            let mut buf = vec![0u8; 4096];
            while total < 1_000_000 {
                let n = match tokio::time::timeout(std::time::Duration::from_secs(2), raw.read(&mut buf)).await {
                    Ok(r) => r.unwrap(),
                    Err(_) => panic!("stalled after {total} bytes"),
                };
                assert!(n > 0);
                total += n;
                since_ping += n;
                if since_ping > 32 * 1024 {
                    since_ping = 0;
                    raw.write_all(b"\x89\x00").await.unwrap();
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), peer).await.expect("the writer stalled");
        writer.await.unwrap().unwrap();
        reader.abort();
    }

    proptest::proptest! {
        #[test]
        fn frame_heads_roundtrip(fin: bool, op in proptest::sample::select(vec![0u8, 1, 2]), len in 0usize..200_000, mask: Option<[u8; 4]>) {
            let mut b = Vec::new();
            put_frame_head(&mut b, fin, op, mask, len);
            let h = parse_frame_head(&b).unwrap().unwrap();
            proptest::prop_assert_eq!(h, FrameHead { fin, opcode: op, mask, len: len as u64, header_len: b.len() });
            for cut in 0..b.len() {
                proptest::prop_assert_eq!(parse_frame_head(&b[..cut]).unwrap(), None);
            }
        }

        #[test]
        fn frame_parser_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_frame_head(&data);
        }

        #[test]
        fn mask_is_an_involution_at_any_offset(data in proptest::collection::vec(proptest::num::u8::ANY, 0..100), key: [u8; 4], off in 0usize..8) {
            let mut d = data.clone();
            apply_mask(&mut d, key, off);
            for (i, b) in d.iter().enumerate() {
                proptest::prop_assert_eq!(*b, data[i] ^ key[(i + off) % 4]);
            }
        }
    }
}
