//! `dokodemo-door`: every accepted connection (TCP) or client (UDP) goes to one fixed target, or to its
//! original destination with `followRedirect` (REDIRECT/TPROXY for TCP, TPROXY for UDP).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::config::{DokodemoConfig, LevelPolicy};
use crate::dispatch::Dispatcher;
use crate::proxy::Inbound;
use crate::proxy::udp::{FlowTable, ReplySink};
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

    fn udp(&self) -> bool {
        self.config.network.udp
    }

    fn tcp(&self) -> bool {
        self.config.network.tcp
    }

    fn bind_udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        if self.config.follow_redirect {
            return tproxy::bind(addr);
        }
        let s = std::net::UdpSocket::bind(addr)?;
        s.set_nonblocking(true)?;
        UdpSocket::from_std(s)
    }

    async fn serve_udp(&self, socket: Arc<UdpSocket>, dispatcher: Arc<Dispatcher>) {
        self.serve_datagrams(socket, dispatcher).await
    }

    async fn accept(&self, conn: Accepted, dispatcher: &Arc<Dispatcher>) {
        // The flow is set up by a plain function: locals of this future (the session) would stay in
        // it, and so in every held connection's task, for the connection's life.
        if let Some(flow) = self.flow(conn, dispatcher) {
            flow.await
        }
    }
}

impl Dokodemo {
    /// The dispatch of one accepted TCP connection, or None (logged) when it has nowhere to go.
    fn flow<'a>(
        &self,
        conn: Accepted,
        dispatcher: &'a Arc<Dispatcher>,
    ) -> Option<impl Future<Output = ()> + Send + 'a> {
        let peer = conn.peer;
        let Some(target) = self.target(&conn) else {
            warn!(%peer, "dokodemo-door: no original destination and no address configured");
            return None;
        };
        let mut session = Session::new(self.tag.clone(), Some(peer), target);
        if self.config.user_level != 0 {
            session.user = Some(crate::session::User { email: None, level: self.config.user_level });
        }
        let timeout = self.config.timeout.filter(|_| self.config.user_level == 0);
        Some(dispatcher.dispatch_with(session, conn.stream, move |p: &mut LevelPolicy| {
            if let Some(t) = timeout {
                p.conn_idle = t;
            }
        }))
    }
}

/// Most UDP flows one dokodemo-door socket keeps at once (the least recently active is closed first).
const MAX_UDP_FLOWS: usize = 1024;

/// A UDP flow's key: the client, and the datagram's original destination under `followRedirect`.
type DokoKey = (SocketAddr, Option<SocketAddr>);

impl Dokodemo {
    /// The UDP flow idle limit: `timeout` at level 0, else the level's `connIdle`.
    fn udp_idle(&self, dispatcher: &Dispatcher) -> Duration {
        self.config
            .timeout
            .filter(|_| self.config.user_level == 0)
            .unwrap_or(dispatcher.policy(self.config.user_level).conn_idle)
    }

    /// Serves the UDP socket: one flow per client (and original destination), replies from this socket,
    /// or under TPROXY from a transparent socket bound to the original destination.
    async fn serve_datagrams(&self, socket: Arc<UdpSocket>, dispatcher: Arc<Dispatcher>) {
        let flows: Arc<FlowTable<DokoKey>> = FlowTable::new(MAX_UDP_FLOWS, self.udp_idle(&dispatcher));
        let local = socket.local_addr().ok();
        let mut buf = vec![0u8; 65536];
        loop {
            let got = if self.config.follow_redirect {
                tproxy::recv_with_dst(&socket, &mut buf).await
            } else {
                socket.recv_from(&mut buf).await.map(|(n, from)| (n, from, None))
            };
            let (n, from, dst) = match got {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors of one peer surface here on Linux; they do not end the socket.
                    debug!("dokodemo-door udp: recv failed: {e}");
                    continue;
                }
            };
            if n == 0 {
                continue;
            }
            // Without TPROXY the "original" destination is this socket itself: not a redirect.
            let dst = dst.filter(|d| !local.is_some_and(|l| is_self(l, *d)));
            let target = match (dst, &self.config.address) {
                (Some(d), _) => Destination::udp(Address::from(d.ip()), d.port()),
                (None, Some(a)) => Destination::udp(a.clone(), self.config.port),
                (None, None) => {
                    debug!(%from, "dokodemo-door udp: no original destination and no address configured; dropped");
                    continue;
                }
            };
            let data = Bytes::copy_from_slice(&buf[..n]);
            let (tag, level) = (self.tag.clone(), self.config.user_level);
            let socket = socket.clone();
            let weak_flows = Arc::downgrade(&flows);
            flows.deliver((from, dst), data, &dispatcher, move || {
                let mut session = Session::new(tag, Some(from), target);
                if level != 0 {
                    session.user = Some(crate::session::User { email: None, level });
                }
                let sink = match dst.map(|d| tproxy::reply_socket(d, from)) {
                    Some(Ok(s)) => {
                        // The kernel hands the client's later datagrams to this connected socket (it matches
                        // their addresses best): read them into the same flow, as 4.34 does.
                        let s = Arc::new(s);
                        let stop = tokio_util::sync::CancellationToken::new();
                        let (reader, guard) = (s.clone(), stop.clone());
                        let key = (from, dst);
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65536];
                            loop {
                                let n = tokio::select! {
                                    _ = guard.cancelled() => return,
                                    r = reader.recv(&mut buf) => match r {
                                        Ok(n) => n,
                                        Err(_) => continue,
                                    },
                                };
                                let Some(flows) = weak_flows.upgrade() else { return };
                                if !flows.deliver_existing(&key, Bytes::copy_from_slice(&buf[..n])) {
                                    return;
                                }
                            }
                        });
                        DokoReply::Transparent { socket: s, _stop: stop.drop_guard() }
                    }
                    Some(Err(e)) => {
                        warn!(%from, "dokodemo-door udp: cannot open a transparent reply socket ({e}); replying from the listening socket");
                        DokoReply::Listener(socket, from)
                    }
                    None => DokoReply::Listener(socket, from),
                };
                (session, sink)
            });
        }
    }
}

/// `d` is `local` itself (4.34 loops onto itself when a client sends to a redirect port directly).
fn is_self(local: SocketAddr, d: SocketAddr) -> bool {
    local.port() == d.port() && (local.ip() == d.ip() || local.ip().is_unspecified() && d.ip().is_loopback())
}

enum DokoReply {
    Listener(Arc<UdpSocket>, SocketAddr),
    /// The reply socket, and the guard that stops its reader when the flow ends.
    Transparent {
        socket: Arc<UdpSocket>,
        _stop: tokio_util::sync::DropGuard,
    },
}

#[async_trait]
impl ReplySink for DokoReply {
    async fn reply(&self, data: Bytes) -> io::Result<()> {
        match self {
            DokoReply::Listener(s, to) => s.send_to(&data, *to).await.map(|_| ()),
            DokoReply::Transparent { socket, .. } => socket.send(&data).await.map(|_| ()),
        }
    }
}

/// TPROXY for UDP: the original destination of each datagram and reply sockets that carry it as source.
mod tproxy {
    use std::io;
    use std::net::SocketAddr;

    use tokio::net::UdpSocket;

    #[cfg(target_os = "linux")]
    use crate::transport::sockopt::set_int;

    /// Binds `addr` with `IP_TRANSPARENT` (needs CAP_NET_ADMIN; a failure is only logged, as 4.34) and
    /// `IP_RECVORIGDSTADDR`, so every datagram reports where it was sent.
    pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        let domain = socket2::Domain::for_address(addr);
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        #[cfg(target_os = "linux")]
        {
            let v6 = addr.is_ipv6();
            let (level, transparent, recv) = if v6 {
                (libc::SOL_IPV6, libc::IPV6_TRANSPARENT, libc::IPV6_RECVORIGDSTADDR)
            } else {
                (libc::SOL_IP, libc::IP_TRANSPARENT, libc::IP_RECVORIGDSTADDR)
            };
            if let Err(e) = set_int(&s, level, transparent, 1) {
                tracing::warn!(
                    "dokodemo-door followRedirect: cannot set IP_TRANSPARENT on udp:{addr} ({e}); it needs CAP_NET_ADMIN, TPROXY will not work"
                );
            }
            set_int(&s, level, recv, 1)?;
            if v6 {
                // A dual-stack socket also reports IPv4 destinations.
                let _ = set_int(&s, libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1);
            }
        }
        // Reply sockets bind the original destinations, which may share this port.
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        UdpSocket::from_std(s.into())
    }

    /// A socket bound to `from_addr` (not a local address: `IP_TRANSPARENT`) and connected to `client`.
    pub fn reply_socket(from_addr: SocketAddr, client: SocketAddr) -> io::Result<UdpSocket> {
        let domain = socket2::Domain::for_address(from_addr);
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        #[cfg(target_os = "linux")]
        {
            let (level, transparent) = if from_addr.is_ipv6() {
                (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
            } else {
                (libc::SOL_IP, libc::IP_TRANSPARENT)
            };
            set_int(&s, level, transparent, 1)?;
        }
        s.set_reuse_address(true)?;
        #[cfg(target_os = "linux")]
        s.set_reuse_port(true)?;
        s.bind(&from_addr.into())?;
        s.connect(&client.into())?;
        s.set_nonblocking(true)?;
        UdpSocket::from_std(s.into())
    }

    /// Receives one datagram with its original destination (from the `IP_ORIGDSTADDR` control message).
    #[cfg(target_os = "linux")]
    pub async fn recv_with_dst(s: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
        use std::os::fd::AsRawFd;
        loop {
            s.readable().await?;
            match s.try_io(tokio::io::Interest::READABLE, || recvmsg(s.as_raw_fd(), buf)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub async fn recv_with_dst(s: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
        s.recv_from(buf).await.map(|(n, from)| (n, from, None))
    }

    #[cfg(target_os = "linux")]
    fn recvmsg(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
        // SAFETY: every pointer handed to recvmsg points into a live local of the stated size; the
        // control messages are walked with the libc CMSG macros within `controllen`, and each address
        // is read only when its length matches the sockaddr type it is read as.
        unsafe {
            let mut name: libc::sockaddr_storage = std::mem::zeroed();
            let mut control = [0u64; 16];
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            let n = libc::recvmsg(fd, &mut msg, 0);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let from = sockaddr(&name as *const libc::sockaddr_storage as *const u8, msg.msg_namelen as usize)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram without a source address"))?;
            let mut dst = None;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let h = &*c;
                let ok = (h.cmsg_level == libc::SOL_IP && h.cmsg_type == libc::IP_ORIGDSTADDR)
                    || (h.cmsg_level == libc::SOL_IPV6 && h.cmsg_type == libc::IPV6_ORIGDSTADDR);
                if ok {
                    let data = libc::CMSG_DATA(c);
                    let len = h.cmsg_len as usize - (data as usize - c as usize);
                    dst = sockaddr(data, len);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            Ok((n as usize, from, dst))
        }
    }

    /// Reads a sockaddr_in / sockaddr_in6 of `len` bytes at `p` (possibly unaligned).
    #[cfg(target_os = "linux")]
    unsafe fn sockaddr(p: *const u8, len: usize) -> Option<SocketAddr> {
        use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
        // SAFETY (caller): `p` points to `len` readable bytes.
        unsafe {
            if len >= std::mem::size_of::<libc::sockaddr_in>() {
                let family = std::ptr::read_unaligned(p.cast::<libc::sa_family_t>());
                if family as i32 == libc::AF_INET {
                    let a = std::ptr::read_unaligned(p.cast::<libc::sockaddr_in>());
                    let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                    return Some(SocketAddr::from((ip, u16::from_be(a.sin_port))));
                }
                if family as i32 == libc::AF_INET6 && len >= std::mem::size_of::<libc::sockaddr_in6>() {
                    let a = std::ptr::read_unaligned(p.cast::<libc::sockaddr_in6>());
                    let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                    let v6 = SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id);
                    return Some(match ip.to_ipv4_mapped() {
                        Some(v4) => SocketAddr::from((v4, v6.port())),
                        None => SocketAddr::V6(v6),
                    });
                }
            }
            None
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn self_detection() {
        let l: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(is_self(l, l));
        assert!(!is_self(l, "127.0.0.1:5001".parse().unwrap()));
        let any: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        assert!(is_self(any, l));
        assert!(!is_self(any, "10.99.0.1:5000".parse().unwrap()));
    }

    /// The recvmsg path reports each datagram's destination, and a TPROXY reply socket sends from the
    /// original destination (a non-local address: needs CAP_NET_ADMIN, else this test says SKIPPED).
    #[tokio::test]
    async fn original_destination_and_transparent_replies() {
        let listener = tproxy::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let at = listener.local_addr().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"hello", at).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from, dst) = tproxy::recv_with_dst(&listener, &mut buf).await.unwrap();
        assert_eq!((&buf[..n], from, dst), (&b"hello"[..], client.local_addr().unwrap(), Some(at)));
        let orig: SocketAddr = "10.99.0.1:25353".parse().unwrap();
        match tproxy::reply_socket(orig, from) {
            Ok(s) => {
                s.send(b"reply").await.unwrap();
                let (n, src) =
                    tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
                assert_eq!(
                    (&buf[..n], src),
                    (&b"reply"[..], orig),
                    "the reply must come from the original destination"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                eprintln!("SKIPPED: transparent reply socket needs CAP_NET_ADMIN ({e})");
            }
            Err(e) => panic!("reply socket: {e}"),
        }
    }
}
