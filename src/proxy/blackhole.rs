//! `blackhole`: refuses every flow, optionally with an HTTP 403.

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

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
            stream.flush().await?;
            // V2Ray waits a second before closing so the client reads the answer.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(RelayStats::default())
    }
}
