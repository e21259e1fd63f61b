//! The Mux.Cool client: the side that opens sessions (the reverse portal, and outbounds with `mux` on).

use std::sync::Arc;
use std::time::Duration;

use super::MuxError;
use super::conn::{Conn, Role};
use super::stream::{MuxPacket, MuxStream};
use crate::proxy::BoxStream;
use crate::session::{Destination, Network, Wear};

/// Limits of one client connection.
#[derive(Clone, Debug, Default)]
pub struct MuxClientConfig {
    /// Most sessions open at once (`mux.concurrency`); None = unlimited.
    pub max_concurrency: Option<u32>,
    /// Most sessions ever opened on the connection (128 for normal mux); None = unlimited (portal).
    pub max_total: Option<u32>,
    /// Idle-close tick (V2Ray: 16 s): at a tick with no open session the connection closes.
    pub idle_close: Option<Duration>,
    /// The carrier's nonce wear: a worn connection is retired (callers pick it only when nothing else
    /// can take a session; see [`MuxClient::is_worn`]), and the sessions on it finish.
    pub wear: Option<Arc<Wear>>,
}

/// A Mux.Cool client over one stream.
pub struct MuxClient {
    conn: Arc<Conn>,
    config: MuxClientConfig,
}

impl MuxClient {
    /// Starts the client over `stream` (spawns its reader, writer and idle ticker). The connection runs
    /// until [`close`](Self::close), the idle tick, or the end of the stream; dropping the handle does not end it.
    pub fn new(stream: BoxStream, config: MuxClientConfig) -> Arc<MuxClient> {
        let conn = Conn::start(stream, Role::Client, None);
        if let Some(period) = config.idle_close {
            crate::task::spawn(idle_ticker(conn.clone(), period));
        }
        Arc::new(MuxClient { conn, config })
    }

    /// Opens a TCP session to `target` (sends New at once).
    pub fn open_stream(&self, target: Destination) -> Result<MuxStream, MuxError> {
        let target = Destination { network: Network::Tcp, ..target };
        self.check_room()?;
        Ok(MuxStream::new(self.conn.open(target)?))
    }

    /// Opens a UDP session to `target` (sends New at once).
    pub fn open_packet(&self, target: Destination) -> Result<MuxPacket, MuxError> {
        let target = Destination { network: Network::Udp, ..target };
        self.check_room()?;
        Ok(MuxPacket::new(self.conn.open(target)?))
    }

    fn check_room(&self) -> Result<(), MuxError> {
        if self.conn.is_closed() {
            return Err(MuxError::Closed);
        }
        if self.is_full() {
            return Err(MuxError::Full);
        }
        Ok(())
    }

    /// Sessions currently open (until both Ends, or the handle is dropped).
    pub fn active_sessions(&self) -> usize {
        self.conn.active_sessions()
    }

    /// Received bytes queued for session readers (private copies, so this is their real allocation).
    pub fn queued_bytes(&self) -> usize {
        self.conn.recv_queued()
    }

    /// Sessions ever allocated on this connection (the portal's drain rule counts these).
    pub fn total_sessions(&self) -> u32 {
        self.conn.total_sessions()
    }

    /// True when the connection takes no new session (limits reached, ids used up, or closed). Wear is
    /// not a limit here: a worn carrier still has a quarter of its nonces, and a portal whose only
    /// tunnel is worn serves visitors on it until the bridge's replacement arrives instead of refusing.
    pub fn is_full(&self) -> bool {
        let active = self.conn.active_sessions();
        active >= super::conn::MAX_SESSIONS
            || self.config.max_concurrency.is_some_and(|m| active >= m as usize)
            || self.config.max_total.is_some_and(|m| self.conn.total_sessions() >= m)
            || self.conn.ids_exhausted()
            || self.conn.is_closed()
    }

    /// True once the carrier has used most of a nonce space (see [`Wear::RETIRE_AT`]): pick another
    /// connection if there is one.
    pub fn is_worn(&self) -> bool {
        self.config.wear.as_ref().is_some_and(|w| w.is_worn())
    }

    /// Resolves once the carrier is worn; never without a wear counter.
    pub async fn worn(&self) {
        match &self.config.wear {
            Some(w) => w.worn().await,
            None => std::future::pending().await,
        }
    }

    /// Whether the connection's reader holds sessions back; goes into [`crate::session::Session::carrier`].
    pub fn carrier_hold(&self) -> std::sync::Arc<crate::session::CarrierHold> {
        self.conn.hold()
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

async fn idle_ticker(conn: Arc<Conn>, period: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if conn.active_sessions() == 0 {
                    tracing::debug!("mux: idle, closing connection");
                    conn.close();
                    return;
                }
            }
            _ = conn.token().cancelled() => return,
        }
    }
}
