//! The `api` handler: an outbound registered under `api.tag`. Every connection routed to it (in V2Ray's
//! configs, from a dokodemo-door inbound by a rule `inboundTag → api`) is one cleartext HTTP/2 (prior
//! knowledge) connection carrying gRPC, as 4.34's commander serves it. Only StatsService is implemented.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tonic::Status;
use tracing::debug;

use super::Stats;
use super::proto::*;
use crate::proxy::{BoxStream, Outbound, ProxyError, RelayStats};
use crate::session::Session;

/// gRPC paths of StatsService (package `v2ray.core.app.stats.command`).
const GET_STATS: &str = "/v2ray.core.app.stats.command.StatsService/GetStats";
const QUERY_STATS: &str = "/v2ray.core.app.stats.command.StatsService/QueryStats";
const GET_SYS_STATS: &str = "/v2ray.core.app.stats.command.StatsService/GetSysStats";

/// API connections served at once; more are closed (4.34 queues 4 and closes the rest).
const MAX_CONNECTIONS: usize = 16;
/// Largest request message accepted (the real ones are a name or a pattern).
const MAX_MESSAGE: usize = 64 * 1024;
/// Concurrent RPCs per connection.
const MAX_STREAMS: u32 = 16;

/// What the API answers with.
struct Inner {
    /// None without a `stats` object (4.34's no-op manager), or when StatsService is not listed.
    stats: Option<Arc<Stats>>,
    stats_service: bool,
    started: Instant,
}

/// The API outbound.
pub struct ApiOutbound {
    inner: Arc<Inner>,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl ApiOutbound {
    /// The handler for `api.tag`; `stats` is the counter manager when the config has `stats`. An API
    /// connection with no traffic for `idle` is closed.
    pub fn new(stats: Option<Arc<Stats>>, stats_service: bool, idle: Duration) -> ApiOutbound {
        ApiOutbound {
            inner: Arc::new(Inner { stats, stats_service, started: Instant::now() }),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            idle,
        }
    }

    /// Serves one connection to its end; returns the bytes read and written.
    pub async fn serve(&self, stream: BoxStream) -> RelayStats {
        let moved = Arc::new(Moved::default());
        let io = Counted { inner: stream, moved: moved.clone() };
        let mut builder = hyper::server::conn::http2::Builder::new(OwnedExec);
        builder.timer(TokioTimer::new()).max_concurrent_streams(MAX_STREAMS);
        let conn = builder.serve_connection(TokioIo::new(io), Grpc(self.inner.clone()));
        tokio::pin!(conn);
        let check = (self.idle / 4).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
        let (mut seen, mut quiet_since) = (0u64, tokio::time::Instant::now());
        loop {
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        debug!("api connection ended: {e}");
                    }
                    break;
                }
                _ = tick.tick() => {
                    let now_total = moved.total();
                    if now_total != seen {
                        (seen, quiet_since) = (now_total, tokio::time::Instant::now());
                    } else if quiet_since.elapsed() >= self.idle {
                        debug!("api connection idle for {:?}; closing", self.idle);
                        break;
                    }
                }
            }
        }
        RelayStats { uplink: moved.read.load(Ordering::Relaxed), downlink: moved.written.load(Ordering::Relaxed) }
    }
}

#[async_trait]
impl Outbound for ApiOutbound {
    async fn connect(&self, _session: &Session) -> Result<BoxStream, ProxyError> {
        Err(ProxyError::Refused("the api handler serves connections routed to it; it does not dial".into()))
    }

    async fn handle(&self, session: Session, stream: BoxStream) -> Result<RelayStats, ProxyError> {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            return Err(ProxyError::Refused(format!("api: {MAX_CONNECTIONS} connections already being served")));
        };
        debug!(session = session.id, "api connection");
        Ok(self.serve(stream).await)
    }
}

/// Spawns HTTP/2 stream tasks owned by the instance (they end at its hard stop).
#[derive(Clone, Copy)]
struct OwnedExec;

impl<F> hyper::rt::Executor<F> for OwnedExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        crate::task::spawn(async move {
            fut.await;
        });
    }
}

#[derive(Default)]
struct Moved {
    read: AtomicU64,
    written: AtomicU64,
}

impl Moved {
    fn total(&self) -> u64 {
        self.read.load(Ordering::Relaxed).wrapping_add(self.written.load(Ordering::Relaxed))
    }
}

/// The API connection's stream, counting bytes (for the routed inbound's counters and the idle check;
/// API traffic only, never proxied data).
struct Counted {
    inner: BoxStream,
    moved: Arc<Moved>,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.moved.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            self.moved.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Reply = hyper::Response<tonic::body::Body>;

/// The HTTP/2 request handler: routes a gRPC path to its method.
#[derive(Clone)]
struct Grpc(Arc<Inner>);

impl hyper::service::Service<hyper::Request<Incoming>> for Grpc {
    type Response = Reply;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if !inner.stats_service && path.starts_with("/v2ray.core.app.stats.command.StatsService/") {
                return Ok(Status::unimplemented("StatsService is not in api.services").into_http());
            }
            Ok(match path.as_str() {
                GET_STATS => unary(req, move |r: GetStatsRequest| get_stats(&inner, r)).await,
                QUERY_STATS => unary(req, move |r: QueryStatsRequest| query_stats(&inner, r)).await,
                GET_SYS_STATS => unary(req, move |_: SysStatsRequest| Ok(sys_stats(&inner))).await,
                other => Status::unimplemented(format!("oxray's API does not implement {other}")).into_http(),
            })
        })
    }
}

/// One unary RPC through tonic's codec (gRPC framing, status trailers, size limit).
async fn unary<Q, A, F>(req: hyper::Request<Incoming>, f: F) -> Reply
where
    Q: prost::Message + Default + Send + 'static,
    A: prost::Message + Send + 'static,
    F: FnOnce(Q) -> Result<A, Status> + Send + 'static,
{
    let mut grpc =
        tonic::server::Grpc::new(tonic_prost::ProstCodec::<A, Q>::default()).max_decoding_message_size(MAX_MESSAGE);
    grpc.unary(Method(Some(f), std::marker::PhantomData), req).await
}

struct Method<F, Q>(Option<F>, std::marker::PhantomData<fn(Q)>);

impl<Q, A, F> tonic::server::UnaryService<Q> for Method<F, Q>
where
    F: FnOnce(Q) -> Result<A, Status>,
{
    type Response = A;
    type Future = std::future::Ready<Result<tonic::Response<A>, Status>>;

    fn call(&mut self, request: tonic::Request<Q>) -> Self::Future {
        let r = match self.0.take() {
            Some(f) => f(request.into_inner()).map(tonic::Response::new),
            None => Err(Status::internal("method called twice")),
        };
        std::future::ready(r)
    }
}

/// 4.34's error texts (grpc-status 2, Unknown), so tools that match them keep working.
fn not_found(name: &str) -> Status {
    Status::unknown(format!("v2ray.com/core/app/stats/command: {name} not found."))
}

fn get_stats(inner: &Inner, r: GetStatsRequest) -> Result<GetStatsResponse, Status> {
    let value = inner.stats.as_ref().and_then(|s| s.get(&r.name, r.reset)).ok_or_else(|| not_found(&r.name))?;
    Ok(GetStatsResponse { stat: Some(Stat { name: r.name, value }) })
}

fn query_stats(inner: &Inner, r: QueryStatsRequest) -> Result<QueryStatsResponse, Status> {
    let Some(stats) = &inner.stats else {
        return Err(Status::unknown("v2ray.com/core/app/stats/command: QueryStats only works its own stats.Manager."));
    };
    let stat = stats.query(&r.pattern, r.reset).into_iter().map(|(name, value)| Stat { name, value }).collect();
    Ok(QueryStatsResponse { stat })
}

fn sys_stats(inner: &Inner) -> SysStatsResponse {
    let p = crate::ops::process::stats();
    let tasks = tokio::runtime::Handle::try_current().map(|h| h.metrics().num_alive_tasks()).unwrap_or(0);
    SysStatsResponse {
        num_goroutine: u32::try_from(tasks).unwrap_or(u32::MAX),
        alloc: p.resident_bytes,
        sys: p.virtual_bytes,
        uptime: u32::try_from(inner.started.elapsed().as_secs()).unwrap_or(u32::MAX),
        ..Default::default()
    }
}

/// A message in gRPC framing (flag 0, 4-byte big-endian length, protobuf), for tests and tools.
pub fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SystemPolicy;
    use crate::ops::traffic::Traffic;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn api() -> ApiOutbound {
        let traffic = Arc::new(Traffic::new(["in"], ["out"]).with_user_counters(true));
        let all = SystemPolicy {
            inbound_uplink: true,
            inbound_downlink: true,
            outbound_uplink: true,
            outbound_downlink: true,
        };
        let stats = Arc::new(Stats::new(traffic, all, ["in".to_string()], ["out".to_string()]));
        ApiOutbound::new(Some(stats), true, Duration::from_secs(1))
    }

    /// Feeds `input` as a client that then closes; returns what the server wrote, or None if the
    /// connection did not end within 10 s.
    fn serve_bytes(input: Vec<u8>) -> Option<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        rt.block_on(async {
            let api = api();
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let feed = async move {
                let _ = client.write_all(&input).await;
                let _ = client.shutdown().await;
                let mut out = Vec::new();
                let _ = client.read_to_end(&mut out).await;
                out
            };
            let both = async { tokio::join!(api.serve(Box::new(server)), feed) };
            tokio::time::timeout(Duration::from_secs(10), both).await.ok().map(|(_, out)| out)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn random_client_bytes_end_the_connection_without_panic(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            preface in any::<bool>(),
        ) {
            let input = if preface { [PREFACE, &data].concat() } else { data };
            prop_assert!(serve_bytes(input).is_some());
        }
    }

    #[test]
    fn an_http1_request_gets_no_grpc_answer() {
        let out = serve_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).expect("ends");
        assert!(!out.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn grpc_frames_are_flag_length_message() {
        let f = grpc_frame(&GetStatsRequest { name: "ab".into(), reset: true });
        assert_eq!(&f[..], &[0, 0, 0, 0, 6, 0x0a, 2, b'a', b'b', 0x10, 1]);
    }
}
