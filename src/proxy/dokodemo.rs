//! `dokodemo-door`: every accepted connection goes to one fixed target (or its original destination).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::TcpStream;
use tracing::warn;

use crate::config::{DokodemoConfig, LevelPolicy};
use crate::dispatch::Dispatcher;
use crate::proxy::Inbound;
use crate::session::{Address, Destination, Session};

/// The dokodemo-door inbound.
pub struct Dokodemo {
    tag: Option<Arc<str>>,
    config: DokodemoConfig,
}

impl Dokodemo {
    /// Builds it for an inbound with this tag.
    pub fn new(tag: Option<String>, config: DokodemoConfig) -> Self {
        Dokodemo { tag: tag.map(Arc::from), config }
    }

    fn target(&self, stream: &TcpStream) -> Option<Destination> {
        if self.config.follow_redirect
            && let Some(orig) = original_dst(stream)
        {
            return Some(Destination::tcp(Address::from(orig.ip()), orig.port()));
        }
        self.config.address.clone().map(|a| Destination::tcp(a, self.config.port))
    }
}

#[async_trait]
impl Inbound for Dokodemo {
    async fn accept(&self, stream: TcpStream, peer: SocketAddr, dispatcher: &Arc<Dispatcher>) {
        let Some(target) = self.target(&stream) else {
            warn!(%peer, "dokodemo-door: no original destination and no address configured");
            return;
        };
        let mut session = Session::new(self.tag.clone(), Some(peer), target);
        if self.config.user_level != 0 {
            session.user = Some(crate::session::User { email: None, level: self.config.user_level });
        }
        let timeout = self.config.timeout.filter(|_| self.config.user_level == 0);
        dispatcher
            .dispatch_with(session, Box::new(stream), move |p: &mut LevelPolicy| {
                if let Some(t) = timeout {
                    p.conn_idle = t;
                }
            })
            .await;
    }
}

/// SO_ORIGINAL_DST of a redirected (iptables REDIRECT) connection.
#[cfg(target_os = "linux")]
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    sock.original_dst_v4()
        .ok()
        .and_then(|a| a.as_socket())
        .or_else(|| sock.original_dst_v6().ok().and_then(|a| a.as_socket()))
}

#[cfg(not(target_os = "linux"))]
fn original_dst(_stream: &TcpStream) -> Option<SocketAddr> {
    None
}
