//! `oxray demo`: a portal, a bridge and a tiny HTTP service in one process, on free loopback ports,
//! using the reverse-proxy configs of V2Ray's documentation.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::config::{self, ConfigErrors};
use crate::instance::{Instance, InstanceError, Running};

/// The body the demo's service answers with.
pub const DEMO_BODY: &str = "Hello from the service behind the bridge. You reached it through the portal.\n";

/// Why the demo could not start or check.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A generated config did not load (a bug).
    #[error("demo config: {0}")]
    Config(#[from] ConfigErrors),
    /// An instance did not start.
    #[error("{0}")]
    Instance(#[from] InstanceError),
    /// A socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The check request did not get the expected answer in time.
    #[error("no answer through the tunnel: {0}")]
    Check(String),
}

/// A running demo.
pub struct Demo {
    /// The portal's config, as a file a user could save.
    pub portal_config: String,
    /// The bridge's config.
    pub bridge_config: String,
    /// Where the public reaches the service.
    pub url: String,
    public: SocketAddr,
    portal: Running,
    bridge: Running,
    service: JoinHandle<()>,
}

fn portal_json(uuid: &str) -> String {
    format!(
        r#"{{
  // oxray demo: the PORTAL (public host B). Same shape as V2Ray's reverse-proxy docs.
  "log": {{"loglevel": "warning"}},
  "reverse": {{
    "portals": [{{"tag": "portal", "domain": "test.v2fly.org"}}]  // must equal the bridge's domain
  }},
  "inbounds": [
    {{
      "tag": "external",                 // the public connects here
      "listen": "127.0.0.1", "port": 0,  // 0 = any free port
      "protocol": "dokodemo-door",
      "settings": {{"address": "127.0.0.1", "port": 80, "network": "tcp"}}
    }},
    {{
      "tag": "interconn",                // the bridge connects here
      "listen": "127.0.0.1", "port": 0,
      "protocol": "vmess",
      "settings": {{"clients": [{{"id": "{uuid}"}}]}}
    }}
  ],
  "routing": {{
    "rules": [
      {{"type": "field", "inboundTag": ["external"], "outboundTag": "portal"}},
      {{"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"}}
    ]
  }}
}}
"#
    )
}

fn bridge_json(uuid: &str, interconn: SocketAddr, service: SocketAddr) -> String {
    format!(
        r#"{{
  // oxray demo: the BRIDGE (private host A, behind NAT). It dials out to the portal.
  "log": {{"loglevel": "warning"}},
  "reverse": {{
    "bridges": [{{"tag": "bridge", "domain": "test.v2fly.org"}}]
  }},
  "outbounds": [
    {{
      "tag": "out",
      "protocol": "freedom",
      "settings": {{"redirect": "{service}"}}  // everything from the portal goes to the local service
    }},
    {{
      "protocol": "vmess",
      "settings": {{
        "vnext": [{{"address": "{ip}", "port": {port}, "users": [{{"id": "{uuid}"}}]}}]
      }},
      "tag": "interconn"
    }}
  ],
  "routing": {{
    "rules": [
      {{"type": "field", "inboundTag": ["bridge"], "domain": ["full:test.v2fly.org"], "outboundTag": "interconn"}},
      {{"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"}}
    ]
  }}
}}
"#,
        ip = interconn.ip(),
        port = interconn.port(),
    )
}

/// Answers every request with [`DEMO_BODY`].
async fn serve_http(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            // Read the request head (bounded), then answer and close.
            while seen.len() < 64 * 1024 && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{DEMO_BODY}",
                DEMO_BODY.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

impl Demo {
    /// Starts the service, the portal, then the bridge, all on free loopback ports.
    pub async fn start() -> Result<Demo, DemoError> {
        let uuid = uuid::Uuid::new_v4().to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let service_addr = listener.local_addr()?;
        let service = tokio::spawn(serve_http(listener));

        let portal_config = portal_json(&uuid);
        let portal = Instance::new(&config::load_str("<demo portal>", &portal_config)?)?.start().await?;
        let addr_of = |tag: &str| {
            portal
                .local_addrs()
                .iter()
                .find(|(t, _)| t.as_deref() == Some(tag))
                .map(|(_, a)| *a)
                .ok_or_else(|| DemoError::Check(format!("portal inbound {tag} did not start")))
        };
        let public = addr_of("external")?;
        let interconn = addr_of("interconn")?;
        let portal_config = portal_config
            .replacen("\"port\": 0,  // 0 = any free port", &format!("\"port\": {},", public.port()), 1)
            .replacen("\"port\": 0,", &format!("\"port\": {},", interconn.port()), 1);

        let bridge_config = bridge_json(&uuid, interconn, service_addr);
        let bridge = Instance::new(&config::load_str("<demo bridge>", &bridge_config)?)?.start().await?;
        Ok(Demo { portal_config, bridge_config, url: format!("http://{public}/"), public, portal, bridge, service })
    }

    /// Fetches the URL through the tunnel until the service answers or `deadline` passes.
    pub async fn check(&self, deadline: Duration) -> Result<String, DemoError> {
        let end = tokio::time::Instant::now() + deadline;
        let mut last = String::from("no attempt");
        while tokio::time::Instant::now() < end {
            match get(self.public).await {
                Ok(body) if body.contains(DEMO_BODY.trim_end()) => return Ok(body),
                Ok(body) => last = format!("unexpected answer: {body:?}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DemoError::Check(last))
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.bridge.shutdown(Duration::from_secs(1)).await;
        self.portal.shutdown(Duration::from_secs(1)).await;
        self.service.abort();
    }
}

async fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
