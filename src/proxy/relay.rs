//! Copies both directions of a flow, forwarding half-close and enforcing the policy's idle timeouts.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::config::LevelPolicy;
use crate::proxy::PacketConn;

/// Relay buffer per direction. Large buffers mean fewer syscalls and fewer, larger VMess/Mux chunks.
const RELAY_BUF: usize = 64 * 1024;

/// Bytes moved by a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Client → target.
    pub uplink: u64,
    /// Target → client.
    pub downlink: u64,
}

/// Shared clock of the last byte seen in either direction, in ms since the relay started.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

async fn copy_half<R, W>(mut from: R, mut to: W, activity: Arc<Activity>) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUF];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Half-close: tell the other side we are done writing, keep the other direction going.
            to.shutdown().await?;
            return Ok(total);
        }
        activity.touch();
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        total += n as u64;
        activity.touch();
    }
}

/// Relays `client` ⇄ `target` until both directions end, an error occurs, or an idle timeout fires.
///
/// Idle rules (V2Ray's): `connIdle` while both directions are open; once the uplink (client → target)
/// has ended the limit becomes `downlinkOnly`, once the downlink has ended it becomes `uplinkOnly`.
pub async fn relay<A, B>(client: A, target: B, policy: &LevelPolicy) -> io::Result<RelayStats>
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let activity = Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0) });
    let (cr, cw) = tokio::io::split(client);
    let (tr, tw) = tokio::io::split(target);
    let up = copy_half(cr, tw, activity.clone());
    let down = copy_half(tr, cw, activity.clone());
    tokio::pin!(up, down);

    let mut up_done: Option<u64> = None;
    let mut down_done: Option<u64> = None;
    loop {
        let limit = match (up_done.is_some(), down_done.is_some()) {
            (false, false) => policy.conn_idle,
            (true, false) => policy.downlink_only,
            (false, true) => policy.uplink_only,
            (true, true) => break,
        };
        let remaining = limit.saturating_sub(activity.idle_for());
        tokio::select! {
            r = &mut up, if up_done.is_none() => up_done = Some(r?),
            r = &mut down, if down_done.is_none() => down_done = Some(r?),
            _ = tokio::time::sleep(remaining) => {
                if activity.idle_for() >= limit {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("idle for {limit:?}")));
                }
            }
        }
    }
    Ok(RelayStats { uplink: up_done.unwrap_or(0), downlink: down_done.unwrap_or(0) })
}

/// Copies datagrams both ways between two packet flows until either ends.
pub async fn relay_packets(a: &dyn PacketConn, b: &dyn PacketConn) {
    let up = async {
        while let Ok(Some(p)) = a.recv().await {
            if b.send(p).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        while let Ok(Some(p)) = b.recv().await {
            if a.send(p).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
