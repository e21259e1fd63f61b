//! DNS-over-HTTPS servers in the `dns` object (`https://` routed, `https+local://` direct), against a
//! DoH responder run by the test on 127.0.0.1 (TLS with a test CA, HTTP/2 or HTTP/1.1 by ALPN,
//! answering from a table), on oxray and on V2Ray 4.34 with the same config: the routing decisions
//! (`IPIfNonMatch`), the address freedom `UseIPv4` dials, the requests' shape, and the fallback past
//! servers that stall (one never answers its HTTP request, one never finishes the TLS handshake).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pki::Pki;
use common::{
    Impl, Proc, connect_when_listening, decision, free_port, impls, local, probe, probe_inbounds, temp_dir, v2ray,
    wait_port_async,
};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use oxray::dns::responder::{Rec, Seen, respond};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

fn rec(ips: &[&str]) -> Rec {
    Rec { ips: ips.iter().map(|s| s.parse().unwrap()).collect(), ttl: 300, ..Default::default() }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Answers from the table.
    Answer,
    /// Reads the HTTP request and never answers it.
    StallHttp,
    /// Accepts TCP and never speaks TLS.
    StallTls,
}

/// One HTTP request the responder received.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    version: hyper::Version,
    content_type: String,
    accept: String,
}

/// A DoH responder on 127.0.0.1; its tasks stop when it is dropped.
struct DohServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    reqs: Arc<Mutex<Vec<Req>>>,
    /// TCP connections accepted.
    conns: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl Drop for DohServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DohServer {
    async fn start(pki: &Pki, zone: HashMap<String, Rec>, mode: Mode, alpn: &[&str]) -> DohServer {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&pki.cert).unwrap().collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let reqs: Arc<Mutex<Vec<Req>>> = Arc::default();
        let conns: Arc<Mutex<usize>> = Arc::default();
        let zone = Arc::new(zone);
        let task = {
            let (seen, reqs, conns) = (seen.clone(), reqs.clone(), conns.clone());
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    *conns.lock().unwrap() += 1;
                    if mode == Mode::StallTls {
                        // Keep the socket open and silent (the test's lifetime bounds it).
                        held.push(tcp);
                        continue;
                    }
                    let (acceptor, zone, seen, reqs) = (acceptor.clone(), zone.clone(), seen.clone(), reqs.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (zone, seen, reqs) = (zone.clone(), seen.clone(), reqs.clone());
                            async move {
                                let header =
                                    |n| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                                let r = Req {
                                    method: req.method().to_string(),
                                    path: req.uri().path().to_string(),
                                    version: req.version(),
                                    content_type: header("content-type"),
                                    accept: header("accept"),
                                };
                                reqs.lock().unwrap().push(r);
                                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                if mode == Mode::StallHttp {
                                    std::future::pending::<()>().await;
                                }
                                match respond(&body, "doh", &zone, &seen) {
                                    Some(answer) => Response::builder()
                                        .header("content-type", "application/dns-message")
                                        .body(Full::new(Bytes::from(answer))),
                                    None => Response::builder().status(StatusCode::BAD_REQUEST).body(Full::default()),
                                }
                            }
                        });
                        let io = TokioIo::new(tls);
                        if h2 {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                        }
                    });
                }
            })
        };
        DohServer { addr, seen, reqs, conns, task }
    }

    fn names(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|s| s.name.clone()).collect()
    }

    fn reqs(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }

    fn conns(&self) -> usize {
        *self.conns.lock().unwrap()
    }
}

/// Writes and runs `config` with `which`, trusting the test CA through `SSL_CERT_FILE` (oxray's system
/// roots and Go's both read it).
fn spawn(which: Impl, dir: &Path, config: &str, pki: &Pki) -> Proc {
    let cfg = common::write_file(dir, "config.json", config);
    let cfg = cfg.to_str().unwrap().to_string();
    let log = dir.join("run.log");
    let ca = pki.ca.to_str().unwrap().to_string();
    let env = [("SSL_CERT_FILE", ca.as_str())];
    match which {
        Impl::Oxray => Proc::spawn("oxray", &common::oxray_bin(), &["run", "-c", &cfg], &log, &env),
        Impl::V2ray => Proc::spawn("v2ray", &v2ray().unwrap(), &["-config", &cfg], &log, &env),
    }
}

/// Routing with `IPIfNonMatch` and freedom `UseIPv4` through a DoH server: `https://` over HTTP/2 (its
/// connection routed by the `dns-app` rule to freedom) and `https+local://` over HTTP/1.1; hosts first;
/// a DoH NXDOMAIN is an empty answer (final: routed to the default). oxray keeps one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_servers_resolve_for_routing_and_freedom_like_v2ray() {
    let dir0 = temp_dir("dns-doh-pki");
    let pki = Pki::new(&dir0);
    // freedom UseIPv4 dials f.oxt's A record, 127.0.0.5.
    let (target_port, mut hit_rx, accept) = common::hit_recorder([127, 0, 0, 5]).await;
    let zone: HashMap<String, Rec> = [
        ("r10.oxt", rec(&["10.10.1.1", "fd00::10"])),
        ("r20.oxt", rec(&["10.20.1.1"])),
        ("MIXED.oxt", rec(&["10.10.7.7"])),
        ("f.oxt", rec(&["127.0.0.5", "::1"])),
    ]
    .into_iter()
    .map(|(n, r)| (n.to_string(), r))
    .collect();
    let probes: &[(&str, &str)] = &[
        ("r10.oxt", "hit10"),
        ("r20.oxt", "hit20"),
        ("nx.oxt", "default"),
        ("h.oxt", "hit20"),
        ("MIXED.oxt", "hit10"),
        ("r10.oxt", "hit10"),
    ];
    for (scheme, alpn, version) in [
        ("https", &["h2", "http/1.1"][..], hyper::Version::HTTP_2),
        ("https+local", &["http/1.1"][..], hyper::Version::HTTP_11),
    ] {
        for which in impls() {
            let doh = DohServer::start(&pki, zone.clone(), Mode::Answer, alpn).await;
            let dir = temp_dir(&format!("dns-doh-{scheme}-{which:?}"));
            let hosts: Vec<&str> = probes.iter().map(|(h, _)| *h).collect();
            let ports: Vec<u16> = probes.iter().map(|_| free_port()).collect();
            let (fport, ready) = (free_port(), free_port());
            let access = dir.join("access.log");
            let config = format!(
                r#"{{"log": {{"loglevel": "debug", "access": "{access}", "error": "{error}"}},
  "dns": {{"tag": "dns-app", "servers": ["{scheme}://127.0.0.1:{doh}/dns-query"], "hosts": {{"h.oxt": "10.20.9.9"}}}},
  "inbounds": [{{"tag": "f", "listen": "127.0.0.1", "port": {fport}, "protocol": "dokodemo-door",
                 "settings": {{"address": "f.oxt", "port": {target_port}}}}},
               {inbounds}],
  "outbounds": [{{"protocol": "blackhole", "tag": "default"}}, {{"protocol": "blackhole", "tag": "hit10"}},
                {{"protocol": "blackhole", "tag": "hit20"}}, {{"protocol": "freedom", "tag": "direct"}},
                {{"protocol": "freedom", "tag": "v4", "settings": {{"domainStrategy": "UseIPv4"}}}}],
  "routing": {{"domainStrategy": "IPIfNonMatch", "rules": [
    {{"type": "field", "inboundTag": ["dns-app"], "outboundTag": "direct"}},
    {{"type": "field", "inboundTag": ["f"], "outboundTag": "v4"}},
    {{"type": "field", "ip": ["10.10.0.0/16"], "outboundTag": "hit10"}},
    {{"type": "field", "ip": ["10.20.0.0/16"], "outboundTag": "hit20"}}]}}}}"#,
                access = access.display(),
                error = dir.join("error.log").display(),
                doh = doh.addr.port(),
                inbounds = probe_inbounds(&hosts, &ports, ready),
            );
            let mut proc = spawn(which, &dir, &config, &pki);
            assert!(wait_port_async(local(ready), Duration::from_secs(10)).await, "{which:?}: {}", proc.log_text());
            // 4.34 dispatches each routed DoH query on its own pipe and sometimes loses one ("failed to
            // retrieve response ... read/write on closed pipe" in its log, then a 4 s timeout): a 4.34
            // bug, not a decision to compare. Only that logged loss excuses V2Ray; oxray is always held.
            let v2ray_lost = || {
                which == Impl::V2ray
                    && scheme == "https"
                    && std::fs::read_to_string(dir.join("error.log"))
                        .unwrap_or_default()
                        .contains("failed to retrieve response")
            };
            let mut lost = false;
            for (i, ((host, want), port)) in probes.iter().zip(&ports).enumerate() {
                probe(*port).await;
                let got = decision(&access, &format!("tcp:{host}:{}", 1000 + i), Duration::from_secs(10)).await;
                if got.as_deref() != Some(*want) && v2ray_lost() {
                    eprintln!(
                        "!!!!!!!! V2Ray 4.34 lost its own routed DoH query for {host} (its log: \"failed to retrieve \
                         response\"); the rest of its https comparison is skipped !!!!!!!!"
                    );
                    lost = true;
                    break;
                }
                assert_eq!(
                    got.as_deref(),
                    Some(*want),
                    "{which:?} {scheme}: {host}\n{}\n{}",
                    std::fs::read_to_string(&access).unwrap_or_default(),
                    proc.log_text()
                );
            }
            if lost {
                continue;
            }
            // freedom UseIPv4: an A query only, and the dial goes to its answer.
            let a_before = doh.seen.lock().unwrap().iter().filter(|s| s.name == "f.oxt").count();
            assert_eq!(a_before, 0, "{which:?}");
            let mut s = connect_when_listening(local(fport), Duration::from_secs(10)).await.unwrap();
            s.write_all(b"hi").await.unwrap();
            let mut buf = [0u8; 2];
            let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await;
            if !matches!(read, Ok(Ok(_))) && v2ray_lost() {
                eprintln!(
                    "!!!!!!!! V2Ray 4.34 lost its own routed DoH query for f.oxt; its freedom check is skipped !!!!!!!!"
                );
                continue;
            }
            read.unwrap_or_else(|_| panic!("{which:?} {scheme}: no answer through freedom\n{}", proc.log_text()))
                .unwrap();
            let hit = tokio::time::timeout(Duration::from_secs(5), hit_rx.recv()).await.unwrap().unwrap();
            assert_eq!(hit.ip().to_string(), "127.0.0.5", "{which:?}");
            let f: Vec<_> = doh.seen.lock().unwrap().iter().filter(|s| s.name == "f.oxt").map(|s| s.rtype).collect();
            assert_eq!(f, vec![hickory_proto::rr::RecordType::A], "{which:?} {scheme}: only an A query");

            let names = doh.names();
            assert!(!names.iter().any(|n| n == "h.oxt"), "{which:?}: hosts answer first: {names:?}");
            assert!(names.iter().any(|n| n == "MIXED.oxt"), "{which:?}: case kept: {names:?}");
            // The second r10.oxt lookup is a cache hit: each family asked once.
            assert_eq!(names.iter().filter(|n| *n == "r10.oxt").count(), 2, "{which:?} {scheme}: {names:?}");
            for r in doh.reqs() {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str(), r.content_type.as_str(), r.accept.as_str()),
                    ("POST", "/dns-query", "application/dns-message", "application/dns-message"),
                    "{which:?}"
                );
                assert_eq!(r.version, version, "{which:?} {scheme}");
            }
            if which == Impl::Oxray {
                assert_eq!(doh.conns(), 1, "oxray {scheme}: one connection per server, reused");
            }
            proc.terminate(Duration::from_secs(5));
        }
    }
    accept.abort();
}

/// Two DoH servers that stall (one takes the request and never answers, one never does TLS), first for
/// `slow.oxt` by their `domains`: each costs the 4-second deadline, then the next server answers; a
/// name they do not match goes to the good server first and is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_doh_servers_fall_back_to_the_next_like_v2ray() {
    let dir0 = temp_dir("dns-doh-stall-pki");
    let pki = Pki::new(&dir0);
    let zone: HashMap<String, Rec> = [("slow.oxt", rec(&["10.20.2.2"])), ("fast.oxt", rec(&["10.10.2.2"]))]
        .into_iter()
        .map(|(n, r)| (n.to_string(), r))
        .collect();
    let probes: &[(&str, &str)] = &[("fast.oxt", "hit10"), ("slow.oxt", "hit20")];
    for which in impls() {
        let good = DohServer::start(&pki, zone.clone(), Mode::Answer, &["h2", "http/1.1"]).await;
        let http = DohServer::start(&pki, zone.clone(), Mode::StallHttp, &["h2", "http/1.1"]).await;
        let tls = DohServer::start(&pki, zone.clone(), Mode::StallTls, &["h2"]).await;
        let dir = temp_dir(&format!("dns-doh-stall-{which:?}"));
        let hosts: Vec<&str> = probes.iter().map(|(h, _)| *h).collect();
        let ports: Vec<u16> = probes.iter().map(|_| free_port()).collect();
        let ready = free_port();
        let access = dir.join("access.log");
        let config = format!(
            r#"{{"log": {{"loglevel": "debug", "access": "{access}", "error": "{error}"}},
  "dns": {{"tag": "dns-app", "servers": [
    {{"address": "https+local://127.0.0.1:{good}/dns-query"}},
    {{"address": "https+local://127.0.0.1:{http}/dns-query", "domains": ["full:slow.oxt"]}},
    {{"address": "https://127.0.0.1:{tls}/dns-query", "domains": ["domain:oxt"]}}]}},
  "inbounds": [{inbounds}],
  "outbounds": [{{"protocol": "blackhole", "tag": "default"}}, {{"protocol": "blackhole", "tag": "hit10"}},
                {{"protocol": "blackhole", "tag": "hit20"}}, {{"protocol": "freedom", "tag": "direct"}}],
  "routing": {{"domainStrategy": "IPIfNonMatch", "rules": [
    {{"type": "field", "inboundTag": ["dns-app"], "outboundTag": "direct"}},
    {{"type": "field", "ip": ["10.10.0.0/16"], "outboundTag": "hit10"}},
    {{"type": "field", "ip": ["10.20.0.0/16"], "outboundTag": "hit20"}}]}}}}"#,
            access = access.display(),
            error = dir.join("error.log").display(),
            good = good.addr.port(),
            http = http.addr.port(),
            tls = tls.addr.port(),
            inbounds = probe_inbounds(&hosts, &ports, ready),
        );
        let mut proc = spawn(which, &dir, &config, &pki);
        assert!(wait_port_async(local(ready), Duration::from_secs(10)).await, "{which:?}: {}", proc.log_text());
        for (i, ((host, want), port)) in probes.iter().zip(&ports).enumerate() {
            let start = Instant::now();
            probe(*port).await;
            let got = decision(&access, &format!("tcp:{host}:{}", 1000 + i), Duration::from_secs(15)).await;
            let took = start.elapsed();
            println!("{which:?}: {host} routed after {took:?}");
            assert_eq!(
                got.as_deref(),
                Some(*want),
                "{which:?}: {host}\n{}\n{}",
                std::fs::read_to_string(&access).unwrap_or_default(),
                proc.log_text()
            );
            match *host {
                // fast.oxt: the `domain:oxt` server (TLS stall) first: one deadline, then `good`.
                "fast.oxt" => {
                    assert!(took >= Duration::from_millis(3900), "{which:?}: {host} after {took:?}");
                    assert!(took < Duration::from_secs(7), "{which:?}: {host} after {took:?}");
                }
                // slow.oxt: full match (HTTP stall), then the domain match (TLS stall), then `good`.
                _ => {
                    assert!(took >= Duration::from_millis(7800), "{which:?}: {host} after {took:?}");
                    assert!(took < Duration::from_secs(12), "{which:?}: {host} after {took:?}");
                }
            }
        }
        assert!(!http.reqs().is_empty(), "{which:?}: the HTTP-stalling server got the query first");
        assert!(tls.conns() >= 1, "{which:?}: the TLS-stalling server was dialled");
        assert!(good.names().iter().any(|n| n == "slow.oxt"), "{which:?}: the good server answered at last");
        proc.terminate(Duration::from_secs(5));
    }
}
