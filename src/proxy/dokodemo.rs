//! `dokodemo-door`: every accepted connection goes to one fixed target (or its original destination).

use std::sync::Arc;

use async_trait::async_trait;
use tracing::warn;

use crate::config::{DokodemoConfig, LevelPolicy};
use crate::dispatch::Dispatcher;
use crate::proxy::Inbound;
use crate::session::{Address, Destination, Session};
use crate::transport::Accepted;

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

    fn target(&self, conn: &Accepted) -> Option<Destination> {
        if self.config.follow_redirect
            && let Some(orig) = conn.original_dst
        {
            return Some(Destination::tcp(Address::from(orig.ip()), orig.port()));
        }
        self.config.address.clone().map(|a| Destination::tcp(a, self.config.port))
    }
}

#[async_trait]
impl Inbound for Dokodemo {
    fn wants_original_dst(&self) -> bool {
        self.config.follow_redirect
    }

    async fn accept(&self, conn: Accepted, dispatcher: &Arc<Dispatcher>) {
        let peer = conn.peer;
        let Some(target) = self.target(&conn) else {
            warn!(%peer, "dokodemo-door: no original destination and no address configured");
            return;
        };
        let mut session = Session::new(self.tag.clone(), Some(peer), target);
        if self.config.user_level != 0 {
            session.user = Some(crate::session::User { email: None, level: self.config.user_level });
        }
        let timeout = self.config.timeout.filter(|_| self.config.user_level == 0);
        dispatcher
            .dispatch_with(session, conn.stream, move |p: &mut LevelPolicy| {
                if let Some(t) = timeout {
                    p.conn_idle = t;
                }
            })
            .await;
    }
}
