//! A bounded table of UDP flows, shared by the datagram inbounds (dokodemo-door, Shadowsocks, Trojan).
//!
//! Each key (a client address, or a client and a destination) gets one flow: one routed packet
//! connection from the dispatcher, fed by a small queue. A flow ends after `idle` without a datagram in
//! either direction (4.34's `udp.Dispatcher` counts replies only, which moves one-way streams to a new
//! upstream port every 4 s). When the table is full, the least recently active flow is closed to make
//! room, so a burst of short flows (DNS from random source ports) never locks new clients out.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::dispatch::Dispatcher;
use crate::session::Session;

/// Datagrams queued per flow while its outbound opens or is slow; more are dropped (UDP may drop).
pub const FLOW_QUEUE: usize = 64;

/// Where a flow's replies go (the inbound's socket, a Trojan connection...).
#[async_trait]
pub trait ReplySink: Send + Sync + 'static {
    /// Sends one reply datagram back to the client.
    async fn reply(&self, data: Bytes) -> io::Result<()>;
}

struct Entry {
    tx: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
    last: Arc<AtomicU64>,
    id: u64,
}

/// The flows of one inbound socket (or one Trojan connection).
pub struct FlowTable<K> {
    flows: Mutex<HashMap<K, Entry>>,
    max: usize,
    idle: Duration,
    epoch: tokio::time::Instant,
    next_id: AtomicU64,
    /// Closes every flow when the table's owner goes away.
    all: CancellationToken,
}

impl<K> Drop for FlowTable<K> {
    fn drop(&mut self) {
        self.all.cancel();
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> FlowTable<K> {
    /// A table of at most `max` flows, each ending after `idle` without traffic.
    pub fn new(max: usize, idle: Duration) -> Arc<Self> {
        Arc::new(FlowTable {
            flows: Mutex::default(),
            max: max.max(1),
            idle,
            epoch: tokio::time::Instant::now(),
            next_id: AtomicU64::new(1),
            all: CancellationToken::new(),
        })
    }

    /// Flows open now.
    pub fn len(&self) -> usize {
        self.flows.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no flow is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Hands `data` to the flow of `key` if it is open; false if there is none.
    pub fn deliver_existing(&self, key: &K, data: Bytes) -> bool {
        let Ok(map) = self.flows.lock() else { return false };
        let Some(e) = map.get(key) else { return false };
        e.last.store(self.now_ms(), Ordering::Relaxed);
        if e.tx.try_send(data).is_err() {
            debug!("udp: flow queue full; datagram dropped");
        }
        true
    }

    /// Hands `data` to the flow of `key`, opening one (session from `open`) if there is none.
    pub fn deliver<R: ReplySink>(
        self: &Arc<Self>,
        key: K,
        data: Bytes,
        dispatcher: &Arc<Dispatcher>,
        open: impl FnOnce() -> (Session, R),
    ) {
        let Ok(mut map) = self.flows.lock() else { return };
        if let Some(e) = map.get(&key) {
            e.last.store(self.now_ms(), Ordering::Relaxed);
            if e.tx.try_send(data).is_err() {
                debug!("udp: flow queue full; datagram dropped");
            }
            return;
        }
        if map.len() >= self.max {
            // Evict the least recently active flow.
            if let Some(k) = map.iter().min_by_key(|(_, e)| e.last.load(Ordering::Relaxed)).map(|(k, _)| k.clone())
                && let Some(e) = map.remove(&k)
            {
                debug!(flows = self.max, "udp: flow table full; closing the least recently active flow");
                e.cancel.cancel();
            }
        }
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let _ = tx.try_send(data);
        let cancel = self.all.child_token();
        let last = Arc::new(AtomicU64::new(self.now_ms()));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key.clone(), Entry { tx, cancel: cancel.clone(), last: last.clone(), id });
        drop(map);
        let (session, sink) = open();
        // The task holds the table weakly: when its owner drops it, every flow is cancelled.
        let table = Arc::downgrade(self);
        let (epoch, idle) = (self.epoch, self.idle);
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = run_flow(session, rx, sink, &last, &dispatcher, epoch, idle) => {}
            }
            if let Some(t) = table.upgrade() {
                t.remove(&key, id);
            }
        });
    }

    fn remove(&self, key: &K, id: u64) {
        if let Ok(mut m) = self.flows.lock()
            && m.get(key).is_some_and(|e| e.id == id)
        {
            m.remove(key);
        }
    }
}

async fn run_flow<R: ReplySink>(
    session: Session,
    mut rx: mpsc::Receiver<Bytes>,
    sink: R,
    last: &AtomicU64,
    dispatcher: &Arc<Dispatcher>,
    epoch: tokio::time::Instant,
    idle: Duration,
) {
    {
        let now_ms = || epoch.elapsed().as_millis() as u64;
        let target = session.target.clone();
        let conn = match dispatcher.connect_packet(session).await {
            Ok(c) => c,
            Err(e) => {
                debug!(%target, "udp: flow refused: {e}");
                return;
            }
        };
        let up = async {
            while let Some(p) = rx.recv().await {
                if conn.send(p).await.is_err() {
                    break;
                }
            }
        };
        let down = async {
            while let Ok(Some(p)) = conn.recv().await {
                last.store(now_ms(), Ordering::Relaxed);
                if let Err(e) = sink.reply(p).await {
                    debug!(%target, "udp: reply failed: {e}");
                    break;
                }
            }
        };
        let idled = async {
            loop {
                let quiet = Duration::from_millis(now_ms().saturating_sub(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    break;
                }
                tokio::time::sleep(idle - quiet).await;
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = idled => debug!(%target, "udp: flow idle; closed"),
        }
    }
}

/// Feeds arbitrary bytes to every UDP parser of untrusted bytes (fuzz target): the first byte picks a
/// Shadowsocks method for the datagram opener, the rest is also read as a stream of VLESS and of Trojan
/// UDP frames.
pub fn fuzz_packets(data: &[u8]) {
    use crate::proxy::shadowsocks::codec::{Method, master_key};
    let method = match data.first().map(|b| b % 4) {
        Some(0) => Method::Aes128Gcm,
        Some(1) => Method::Aes256Gcm,
        Some(2) => Method::Chacha20Poly1305,
        _ => Method::None,
    };
    let rest = data.get(1..).unwrap_or_default();
    let master = master_key("fuzz", method.key_len());
    if let Some((_, _, d)) = crate::proxy::shadowsocks::open_datagram(method, &master, rest) {
        assert!(d.len() <= rest.len());
    }
    let mut v = rest;
    while let Some((r, used)) = crate::proxy::vless::codec::decode_udp_frame(v) {
        assert!(r.end <= v.len() && (2..=v.len()).contains(&used));
        v = &v[used..];
    }
    let mut t = rest;
    while let Ok(Some(f)) = crate::proxy::trojan::codec::decode_udp_frame(t) {
        assert!(f.payload.end <= t.len() && f.used <= t.len() && f.used > 0);
        assert!(f.payload.len() <= crate::proxy::trojan::codec::MAX_UDP_PAYLOAD);
        t = &t[f.used..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::shadowsocks::codec::{Method, master_key};
    use crate::proxy::shadowsocks::{open_datagram, seal_datagram};
    use crate::session::Address;
    use proptest::prelude::*;

    /// An outbound whose flows stay open and silent until dropped; counts the ones alive.
    struct Silent(Arc<std::sync::atomic::AtomicUsize>);
    struct SilentConn(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for SilentConn {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    #[async_trait]
    impl crate::proxy::PacketConn for SilentConn {
        async fn send(&self, _p: Bytes) -> io::Result<()> {
            Ok(())
        }
        async fn recv(&self) -> io::Result<Option<Bytes>> {
            std::future::pending().await
        }
    }
    #[async_trait]
    impl crate::proxy::Outbound for Silent {
        async fn connect(&self, _s: &Session) -> Result<crate::proxy::BoxStream, crate::proxy::ProxyError> {
            Err(crate::proxy::ProxyError::Unsupported("tcp"))
        }
        async fn connect_packet(&self, _s: &Session) -> Result<crate::proxy::BoxPacketConn, crate::proxy::ProxyError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(SilentConn(self.0.clone())))
        }
    }
    struct NoReply;
    #[async_trait]
    impl ReplySink for NoReply {
        async fn reply(&self, _d: Bytes) -> io::Result<()> {
            Ok(())
        }
    }

    /// A full table closes its least recently active flow for a new one, so memory and sockets stay
    /// bounded; dropping the table closes every flow; an idle flow closes on its own.
    #[tokio::test]
    async fn flows_are_capped_idle_and_closed_with_their_table() {
        let alive = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ob: Arc<dyn crate::proxy::Outbound> = Arc::new(Silent(alive.clone()));
        let router = crate::router::Router::new(&Default::default()).unwrap();
        let dispatcher = Arc::new(Dispatcher::new(
            router,
            vec![(Some("silent".into()), ob)],
            Default::default(),
            Default::default(),
        ));
        let session = || (Session::new(None, None, crate::session::Destination::udp(Address::parse("x"), 1)), NoReply);
        let table: Arc<FlowTable<u32>> = FlowTable::new(8, Duration::from_secs(3600));
        let settle = || async {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        };
        for k in 0..8 {
            table.deliver(k, Bytes::from_static(b"a"), &dispatcher, session);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        settle().await;
        assert_eq!((table.len(), alive.load(Ordering::SeqCst)), (8, 8));
        // Key 0 is refreshed; the 9th key evicts key 1 (least recently active).
        assert!(table.deliver_existing(&0, Bytes::from_static(b"b")));
        for k in 8..40 {
            table.deliver(k, Bytes::from_static(b"a"), &dispatcher, session);
            settle().await;
            assert!(table.len() <= 8 && alive.load(Ordering::SeqCst) <= 8, "over the cap at key {k}");
        }
        assert!(!table.deliver_existing(&1, Bytes::from_static(b"c")), "the least active flow was kept");
        drop(table);
        settle().await;
        assert_eq!(alive.load(Ordering::SeqCst), 0, "flows outlived their table");

        let table: Arc<FlowTable<u32>> = FlowTable::new(8, Duration::from_millis(100));
        table.deliver(1, Bytes::from_static(b"a"), &dispatcher, session);
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while !table.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(closed.is_ok(), "an idle flow stayed open");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            fuzz_packets(&data);
        }

        #[test]
        fn shadowsocks_datagrams_roundtrip_and_tampering_is_dropped(
            pick in 0..4u8,
            port: u16,
            dom in "[a-z][a-z0-9]{0,30}",
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            flip in any::<prop::sample::Index>(),
        ) {
            let method = [Method::Aes128Gcm, Method::Aes256Gcm, Method::Chacha20Poly1305, Method::None][pick as usize];
            let master = master_key("pw", method.key_len());
            let mut header = Vec::new();
            crate::proxy::addr::encode(&mut header, &Address::parse(&dom), port).unwrap();
            let packet = seal_datagram(method, &master, &header, &data);
            let (a, p, d) = open_datagram(method, &master, &packet).unwrap();
            prop_assert_eq!((a, p, &d[..]), (Address::parse(&dom), port, &data[..]));
            if method != Method::None {
                let mut bad = packet.to_vec();
                let i = flip.index(bad.len());
                bad[i] ^= 0x40;
                prop_assert!(open_datagram(method, &master, &bad).is_none());
                let other = master_key("other", method.key_len());
                prop_assert!(open_datagram(method, &other, &packet).is_none());
            }
        }
    }
}
