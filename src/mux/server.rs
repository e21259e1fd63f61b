//! The Mux.Cool server: the side that accepts sessions (the reverse bridge, and any inbound whose target
//! is `v1.mux.cool`).

use std::sync::Arc;

use async_trait::async_trait;

use super::conn::{Conn, Role};
use super::stream::{MuxPacket, MuxStream};
use crate::proxy::BoxStream;
use crate::session::Destination;

/// What the server does with each session the peer opens.
#[async_trait]
pub trait MuxHandler: Send + Sync + 'static {
    /// A New TCP session; runs in its own task (first data, if any, is already readable).
    async fn stream(&self, target: Destination, stream: MuxStream);
    /// A New UDP session; runs in its own task.
    async fn packet(&self, target: Destination, packet: MuxPacket);
}

/// A Mux.Cool server over one stream.
pub struct MuxServer {
    conn: Arc<Conn>,
}

impl MuxServer {
    /// Starts serving `stream` (spawns its reader and writer). It runs until [`close`](Self::close) or the
    /// end of the stream; dropping the handle does not end it. Handler tasks are cancelled when it ends.
    pub fn start(stream: BoxStream, handler: Arc<dyn MuxHandler>) -> Arc<MuxServer> {
        Arc::new(MuxServer { conn: Conn::start(stream, Role::Server, Some(handler)) })
    }

    /// Sessions currently open.
    pub fn active_sessions(&self) -> usize {
        self.conn.active_sessions()
    }

    /// Received bytes queued for session readers (private copies, so this is their real allocation).
    pub fn queued_bytes(&self) -> usize {
        self.conn.recv_queued()
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.conn.token().cancelled().await
    }

    /// Ends the connection; every session errors out.
    pub fn close(&self) {
        self.conn.close()
    }
}
