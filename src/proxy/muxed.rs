//! An outbound with `mux.enabled`: flows become Mux.Cool sessions over a few connections of the inner
//! outbound, as V2Ray's mux client does (at most `concurrency` active and 128 total sessions each).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::MuxConfig;
use crate::mux::MUX_COOL_DOMAIN;
use crate::mux::client::{MuxClient, MuxClientConfig};
use crate::proxy::{BoxPacketConn, BoxStream, Outbound, ProxyError};
use crate::session::{Address, Destination, Session, Wear};

/// V2Ray's cap on sessions ever opened on one mux connection.
const MAX_TOTAL_SESSIONS: u32 = 128;
/// V2Ray's mux idle tick: a connection with no session at a tick is closed.
const IDLE_CLOSE: Duration = Duration::from_secs(16);
/// The port V2Ray's mux client puts on the `v1.mux.cool` target.
const MUX_COOL_PORT: u16 = 9527;

/// Wraps an outbound so its flows share Mux.Cool connections.
pub struct Muxed {
    inner: Arc<dyn Outbound>,
    config: MuxConfig,
    clients: std::sync::Mutex<Vec<Arc<MuxClient>>>,
}

impl Muxed {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Outbound>, config: MuxConfig) -> Self {
        Muxed { inner, config, clients: std::sync::Mutex::new(Vec::new()) }
    }

    /// The first connection with room, or a new one. The lock is never held across the dial: a dial
    /// that stalls (a black-holed server) must not queue every other flow behind it; flows that find
    /// no room meanwhile dial their own carriers.
    async fn client(&self, session: &Session) -> Result<Arc<MuxClient>, ProxyError> {
        if let Some(c) = self.with_room() {
            return Ok(c);
        }
        let mut carrier = session.clone();
        carrier.target = Destination::tcp(Address::Domain(Arc::from(MUX_COOL_DOMAIN)), MUX_COOL_PORT);
        carrier.wear = Some(Wear::new());
        let stream = self.inner.connect(&carrier).await?;
        let client = MuxClient::new(
            stream,
            MuxClientConfig {
                max_concurrency: Some(u32::from(self.config.concurrency)),
                max_total: Some(MAX_TOTAL_SESSIONS),
                idle_close: Some(IDLE_CLOSE),
                // A worn carrier takes no new flow: the next one dials a fresh carrier.
                wear: carrier.wear.clone(),
            },
        );
        self.lock().push(client.clone());
        Ok(client)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<MuxClient>>> {
        // A poisoned lock only means a panic elsewhere mid-push; a Vec of Arcs stays consistent.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_room(&self) -> Option<Arc<MuxClient>> {
        let mut clients = self.lock();
        clients.retain(|c| !c.is_closed());
        // A worn client is never reused here: a new one can be dialled at once.
        clients.iter().find(|c| !c.is_full() && !c.is_worn()).cloned()
    }
}

#[async_trait]
impl Outbound for Muxed {
    async fn connect(&self, session: &Session) -> Result<BoxStream, ProxyError> {
        let mut last = None;
        for _ in 0..3 {
            let client = self.client(session).await?;
            match client.open_stream(session.target.clone()) {
                Ok(s) => return Ok(Box::new(s)),
                Err(e) => last = Some(e),
            }
        }
        Err(ProxyError::Refused(format!("mux: {}", last.map_or_else(String::new, |e| e.to_string()))))
    }

    async fn connect_packet(&self, session: &Session) -> Result<BoxPacketConn, ProxyError> {
        let client = self.client(session).await?;
        client
            .open_packet(session.target.clone())
            .map(|p| Box::new(p) as BoxPacketConn)
            .map_err(|e| ProxyError::Refused(format!("mux: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::{MuxHandler, MuxPacket, MuxServer, MuxStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Echo;

    #[async_trait]
    impl MuxHandler for Echo {
        async fn stream(&self, _t: Destination, mut s: MuxStream) {
            let mut b = [0u8; 64];
            while let Ok(n) = s.read(&mut b).await {
                if n == 0 || s.write_all(&b[..n]).await.is_err() {
                    return;
                }
            }
        }
        async fn packet(&self, _t: Destination, _p: MuxPacket) {}
    }

    /// The first dial never completes (a black-holed server); later ones reach a Mux server.
    struct FirstDialHangs(AtomicUsize);

    #[async_trait]
    impl Outbound for FirstDialHangs {
        async fn connect(&self, _session: &Session) -> Result<BoxStream, ProxyError> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            let (a, b) = tokio::io::duplex(64 * 1024);
            // The server runs until the stream ends (the test's runtime ends it).
            let _server = MuxServer::start(Box::new(b), Arc::new(Echo));
            Ok(Box::new(a))
        }
    }

    /// A dial that stalls does not hold the pool's lock: the next flow dials its own carrier and is served.
    #[tokio::test]
    async fn a_stalled_dial_does_not_queue_the_next_flow() {
        let inner = Arc::new(FirstDialHangs(AtomicUsize::new(0)));
        let muxed = Arc::new(Muxed::new(inner.clone(), MuxConfig { concurrency: 8 }));
        let session = Session::new(None, None, Destination::tcp(Address::parse("example.com"), 80));
        let (m, s) = (muxed.clone(), session.clone());
        let stalled = tokio::spawn(async move { m.connect(&s).await.map(|_| ()) });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while inner.0.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the first dial never started");
            tokio::task::yield_now().await;
        }
        let mut stream = tokio::time::timeout(Duration::from_secs(2), muxed.connect(&session))
            .await
            .expect("the second flow waited behind the stalled dial")
            .unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut b)).await.unwrap().unwrap();
        assert_eq!(&b, b"ping");
        assert!(!stalled.is_finished());
        stalled.abort();
    }
}
