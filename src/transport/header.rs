//! The TCP "http" header (`tcpSettings.header.type: "http"`): one fake HTTP request from the client
//! and one fake response from the server at the start of a connection, raw bytes after that.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::http_head::{self, HeadError};
use super::settings::HttpHeaderSettings;

/// Largest header block either side reads (4.34's server limit).
pub const MAX_HEAD: usize = 8192;

fn pick(list: &[String]) -> &str {
    if list.len() <= 1 {
        return list.first().map_or("", String::as_str);
    }
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    &list[u32::from_ne_bytes(b) as usize % list.len()]
}

/// The request header a client sends (one random pick from every list).
pub fn request_head(h: &HttpHeaderSettings) -> Vec<u8> {
    let mut s = format!("{} {} HTTP/{}\r\n", h.request_method, pick(&h.request_paths), h.request_version);
    for (name, values) in &h.request_headers {
        s.push_str(&format!("{name}: {}\r\n", pick(values)));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// The response header a server sends; `Date` is appended (in UTC) unless one is configured.
pub fn response_head(h: &HttpHeaderSettings, now: SystemTime) -> Vec<u8> {
    let mut s = format!("HTTP/{} {} {}\r\n", h.response_version, h.response_status, h.response_reason);
    for (name, values) in &h.response_headers {
        s.push_str(&format!("{name}: {}\r\n", pick(values)));
    }
    if !h.response_headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("Date")) {
        s.push_str(&format!("Date: {}\r\n", http_head::http_date(now)));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn failure(status: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nCache-Control: private\r\nContent-Length: 0\r\nDate: {}\r\n\r\n",
        http_head::http_date(SystemTime::now())
    )
    .into_bytes()
}

/// Server side: reads and checks the request header (only its path, as 4.34), answering 404 or
/// 400 and closing on failure. The response header goes out with the first payload write.
pub async fn server_accept<S>(mut stream: S, h: &HttpHeaderSettings) -> io::Result<HeaderStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let res = match http_head::read_head(&mut stream, &mut buf, MAX_HEAD, true).await {
        Ok(end) => http_head::parse_request(&buf[..end]).map(|r| (end, r)),
        Err(e) => Err(e),
    };
    let (end, req) = match res {
        Ok(v) => v,
        Err(e) => {
            if e != HeadError::Eof {
                let _ = stream.write_all(&failure("400 Bad Request")).await;
            }
            let _ = stream.shutdown().await;
            return Err(e.into());
        }
    };
    let path = req.path().unwrap_or_default();
    if !h.request_paths.contains(&path) {
        let _ = stream.write_all(&failure("404 Not Found")).await;
        let _ = stream.shutdown().await;
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("http header: path {path:?} not configured")));
    }
    let rest = buf.split_off(end);
    Ok(HeaderStream {
        inner: stream,
        read_prefix: rest,
        read_pos: 0,
        skip_response: false,
        head_buf: Vec::new(),
        write_head: Some(response_head(h, SystemTime::now())),
        wbuf: Vec::new(),
    })
}

/// Client side: the request header goes out with the first write; the first read skips the
/// response header, however many reads it takes to arrive (4.34's client fails when it is split).
pub fn client<S>(stream: S, h: &HttpHeaderSettings) -> HeaderStream<S> {
    HeaderStream {
        inner: stream,
        read_prefix: Vec::new(),
        read_pos: 0,
        skip_response: true,
        head_buf: Vec::new(),
        write_head: Some(request_head(h)),
        wbuf: Vec::new(),
    }
}

/// A stream with a fake HTTP header in front of each direction.
pub struct HeaderStream<S> {
    inner: S,
    read_prefix: Vec<u8>,
    read_pos: usize,
    /// The peer's header has not been skipped yet (client side).
    skip_response: bool,
    head_buf: Vec<u8>,
    /// Our header, sent in front of the first payload.
    write_head: Option<Vec<u8>>,
    wbuf: Vec<u8>,
}

impl<S: AsyncWrite + Unpin> HeaderStream<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.skip_response {
            let mut chunk = [0u8; 2048];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Err(HeadError::Eof.into()));
            }
            this.head_buf.extend_from_slice(rb.filled());
            if let Some(end) = http_head::find_end(&this.head_buf) {
                this.read_prefix = this.head_buf.split_off(end);
                this.head_buf = Vec::new();
                this.skip_response = false;
            } else if this.head_buf.len() > MAX_HEAD {
                return Poll::Ready(Err(HeadError::TooLarge(MAX_HEAD).into()));
            }
        }
        if this.read_pos < this.read_prefix.len() {
            let n = (this.read_prefix.len() - this.read_pos).min(buf.remaining());
            buf.put_slice(&this.read_prefix[this.read_pos..this.read_pos + n]);
            this.read_pos += n;
            if this.read_pos == this.read_prefix.len() {
                this.read_prefix = Vec::new();
                this.read_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if let Some(head) = this.write_head.take() {
            // The header and the first payload in one write: a 4.34 client needs the whole response
            // header in its first read.
            let n = data.len().min(16 * 1024);
            this.wbuf = head;
            this.wbuf.extend_from_slice(&data[..n]);
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// 4.34's default `request`/`response` (`infra/conf/transport_authenticators.go`).
pub fn defaults() -> HttpHeaderSettings {
    let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    HttpHeaderSettings {
        request_version: "1.1".into(),
        request_method: "GET".into(),
        request_paths: v(&["/"]),
        request_headers: vec![
            ("Host".into(), v(&["www.baidu.com", "www.bing.com"])),
            (
                "User-Agent".into(),
                v(&[
                    "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/53.0.2785.143 Safari/537.36",
                    "Mozilla/5.0 (iPhone; CPU iPhone OS 10_0_2 like Mac OS X) AppleWebKit/601.1 (KHTML, like Gecko) CriOS/53.0.2785.109 Mobile/14A456 Safari/601.1.46",
                ]),
            ),
            ("Accept-Encoding".into(), v(&["gzip, deflate"])),
            ("Connection".into(), v(&["keep-alive"])),
            ("Pragma".into(), v(&["no-cache"])),
        ],
        response_version: "1.1".into(),
        response_status: "200".into(),
        response_reason: "OK".into(),
        response_headers: vec![
            ("Content-Type".into(), v(&["application/octet-stream", "video/mpeg"])),
            ("Transfer-Encoding".into(), v(&["chunked"])),
            ("Connection".into(), v(&["keep-alive"])),
            ("Pragma".into(), v(&["no-cache"])),
            ("Cache-Control".into(), v(&["private", "no-cache"])),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    #[test]
    fn default_request_shape() {
        let r = String::from_utf8(request_head(&defaults())).unwrap();
        assert!(r.starts_with("GET / HTTP/1.1\r\nHost: www.b"), "{r}");
        assert!(
            r.ends_with("Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nPragma: no-cache\r\n\r\n"),
            "{r}"
        );
        let resp = String::from_utf8(response_head(&defaults(), std::time::UNIX_EPOCH)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\nContent-Type: "), "{resp}");
        assert!(resp.ends_with("Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n"), "{resp}");
    }

    #[tokio::test]
    async fn client_survives_a_split_response_header() {
        let (a, mut b) = duplex(1 << 16);
        let mut c = client(a, &defaults());
        c.write_all(b"payload").await.unwrap();
        let mut got = vec![0u8; 2048];
        let n = b.read(&mut got).await.unwrap();
        let text = String::from_utf8_lossy(&got[..n]).into_owned();
        assert!(text.starts_with("GET / HTTP/1.1\r\n") && text.ends_with("\r\n\r\npayload"), "{text}");
        // The response header in two pieces, the second with data behind it.
        b.write_all(b"HTTP/1.1 2").await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.map(|_| buf)
        });
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        b.write_all(b"00 OK\r\nX: y\r\n\r\ndata").await.unwrap();
        assert_eq!(&reader.await.unwrap().unwrap(), b"data");
    }

    #[tokio::test]
    async fn server_refuses_wrong_path_and_non_http() {
        for (req, want) in [
            (&b"GET /zzz HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 404 Not Found\r\n"),
            (b"\x16\x03\x01\x00", "HTTP/1.1 400 Bad Request\r\n"),
        ] {
            let (mut a, b) = duplex(1 << 16);
            let srv = tokio::spawn(async move { server_accept(b, &defaults()).await.map(|_| ()) });
            a.write_all(req).await.unwrap();
            let mut out = Vec::new();
            a.read_to_end(&mut out).await.unwrap();
            let out = String::from_utf8(out).unwrap();
            assert!(out.starts_with(want), "{out}");
            assert!(
                out.contains("Connection: close\r\nCache-Control: private\r\nContent-Length: 0\r\nDate: "),
                "{out}"
            );
            assert!(srv.await.unwrap().is_err());
        }
    }
}
