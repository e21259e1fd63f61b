//! `blackhole`: refuses every flow, optionally with an HTTP 403.

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{BlackholeConfig, BlackholeResponse};
use crate::proxy::{BoxStream, Outbound, ProxyError, RelayStats};
use crate::session::Session;

const HTTP_403: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nCache-Control: max-age=3600, public\r\nContent-Length: 0\r\n\r\n";

/// The blackhole outbound.
pub struct Blackhole {
    config: BlackholeConfig,
}

impl Blackhole {
    /// Builds it from its settings.
    pub fn new(config: BlackholeConfig) -> Self {
        Blackhole { config }
    }
}

#[async_trait]
impl Outbound for Blackhole {
    async fn connect(&self, _session: &Session) -> Result<BoxStream, ProxyError> {
        Err(ProxyError::Refused("blocked by blackhole".into()))
    }

    async fn handle(&self, _session: Session, mut stream: BoxStream) -> Result<RelayStats, ProxyError> {
        if self.config.response == BlackholeResponse::Http {
            stream.write_all(HTTP_403).await?;
            stream.shutdown().await?;
            // Read what the client sent (for up to V2Ray's one second): closing with unread input makes
            // the kernel send a reset, and the client would lose the answer.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        Ok(RelayStats::default())
    }
}
