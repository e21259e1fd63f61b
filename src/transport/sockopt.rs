//! Socket options, typed and set in one place: every listener, accepted socket and dialed socket of
//! oxray goes through [`SocketOpts`].

use std::io;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};
use tracing::debug;

/// The process's soft limit on open descriptors (`RLIMIT_NOFILE`), if it can be read.
pub fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit to write into.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// TCP keepalive probing: first probe after `idle` of silence, then every `interval`, `retries` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe.
    pub idle: Duration,
    /// Pause between probes.
    pub interval: Duration,
    /// Unanswered probes before the kernel drops the connection.
    pub retries: u32,
}

/// `sockopt.tproxy`: transparent proxying. Any mode but `Off` sets `IP_TRANSPARENT` on listeners and
/// outbound sockets; `Tproxy` also makes a redirected connection's original target its local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tproxy {
    /// Not transparent.
    #[default]
    Off,
    /// iptables REDIRECT (original target from SO_ORIGINAL_DST).
    Redirect,
    /// iptables TPROXY (original target = the accepted socket's local address).
    Tproxy,
}

/// Options applied to a TCP socket. `Default` is what every oxray socket gets unless told otherwise:
/// no Nagle delay (Mux and VMess batch their own writes) and [`KEEPALIVE`], so a peer that vanished
/// without FIN or RST does not hold a socket for the kernel's two hours. Reverse tunnels add
/// [`SocketOpts::tunnel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOpts {
    /// `TCP_NODELAY`.
    pub nodelay: bool,
    /// `SO_KEEPALIVE` with these timers.
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel drops the
    /// connection (Linux only).
    pub user_timeout: Option<Duration>,
    /// `SO_MARK` (`sockopt.mark`; needs CAP_NET_ADMIN, a failure is only logged).
    pub mark: Option<u32>,
    /// `TCP_FASTOPEN` on listeners / `TCP_FASTOPEN_CONNECT` on dialers (`sockopt.tcpFastOpen`);
    /// None leaves the OS default.
    pub fast_open: Option<bool>,
    /// `sockopt.tproxy`.
    pub tproxy: Tproxy,
}

/// Keepalive of every socket: Go's (and so V2Ray's) 15 s idle and 15 s interval, but 4 probes instead
/// of the kernel's 9, so a dead idle peer is dropped after about 75 s.
pub const KEEPALIVE: Keepalive =
    Keepalive { idle: Duration::from_secs(15), interval: Duration::from_secs(15), retries: 4 };

/// Keepalive of a reverse tunnel: a tunnel is idle only when the portal's 2 s heartbeats stop, so probing
/// starts soon after and gives up after about 6 s.
pub const TUNNEL_KEEPALIVE: Keepalive =
    Keepalive { idle: Duration::from_secs(3), interval: Duration::from_secs(1), retries: 3 };

/// `TCP_USER_TIMEOUT` of a reverse tunnel: data (a heartbeat, at the latest 2 s after the link died)
/// left unacknowledged this long ends the tunnel. Long enough for several retransmissions on a lossy
/// long-haul path (RTO backoff 0.2+0.4+0.8+1.6+3.2 s), short enough that a portal stops picking a dead
/// tunnel within 10 s.
pub const TUNNEL_USER_TIMEOUT: Duration = Duration::from_secs(8);

impl Default for SocketOpts {
    fn default() -> Self {
        SocketOpts {
            nodelay: true,
            keepalive: Some(KEEPALIVE),
            user_timeout: None,
            mark: None,
            fast_open: None,
            tproxy: Tproxy::Off,
        }
    }
}

/// Linux's TCP_FASTOPEN_CONNECT (not in every libc crate version).
#[cfg(target_os = "linux")]
const TCP_FASTOPEN_CONNECT: libc::c_int = 30;

impl SocketOpts {
    /// These options with a reverse tunnel's liveness timers: [`TUNNEL_KEEPALIVE`] and
    /// [`TUNNEL_USER_TIMEOUT`] (so the kernel ends a tunnel whose peer stopped acknowledging).
    pub fn tunnel(self) -> SocketOpts {
        SocketOpts { keepalive: Some(TUNNEL_KEEPALIVE), user_timeout: Some(TUNNEL_USER_TIMEOUT), ..self }
    }

    /// Options set before `connect` (they must be on the socket before the SYN goes out). On Linux
    /// this is all of them (they stay through the handshake), so [`SocketOpts::dialed`] has nothing
    /// left to do: five system calls fewer per dialled connection.
    pub fn before_connect(&self, socket: &TcpSocket) {
        let s = SockRef::from(socket);
        self.mark_and_keepalive(&s);
        #[cfg(target_os = "linux")]
        self.nodelay_and_user_timeout(&s);
        #[cfg(target_os = "linux")]
        if let Some(on) = self.fast_open
            && let Err(e) = set_int(&s, libc::IPPROTO_TCP, TCP_FASTOPEN_CONNECT, on as libc::c_int)
        {
            debug!("TCP_FASTOPEN_CONNECT failed: {e}");
        }
    }

    /// Options set on a listening socket before `listen`.
    /// On Linux accepted sockets inherit keepalive, TCP_NODELAY and TCP_USER_TIMEOUT from the
    /// listener, so they are set here once instead of on each accepted connection
    /// ([`SocketOpts::accepted`]).
    pub fn before_listen(&self, socket: &TcpSocket) {
        let s = SockRef::from(socket);
        self.mark_and_keepalive(&s);
        #[cfg(target_os = "linux")]
        self.nodelay_and_user_timeout(&s);
        #[cfg(target_os = "linux")]
        // The value is the queue length of pending fast-open requests (4.34 sets 1, or 0 to turn it off).
        if let Some(on) = self.fast_open
            && let Err(e) = set_int(&s, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, on as libc::c_int)
        {
            debug!("TCP_FASTOPEN failed: {e}");
        }
    }

    /// Options set on a connection dialled after [`SocketOpts::before_connect`]: none on Linux.
    pub fn dialed(&self, stream: &TcpStream) {
        #[cfg(target_os = "linux")]
        let _ = stream;
        #[cfg(not(target_os = "linux"))]
        self.established(stream);
    }

    /// Options set on a connection accepted from a listener set up with
    /// [`SocketOpts::before_listen`] with these options: none on Linux (inherited).
    pub fn accepted(&self, stream: &TcpStream) {
        #[cfg(target_os = "linux")]
        let _ = stream;
        #[cfg(not(target_os = "linux"))]
        self.established(stream);
    }

    /// Options set on an established connection (accepted or dialed), whatever its socket had.
    pub fn established(&self, stream: &TcpStream) {
        self.established_ref(&SockRef::from(stream));
    }

    /// [`SocketOpts::established`] on a borrowed socket.
    pub(crate) fn established_ref(&self, s: &SockRef<'_>) {
        // Accepted sockets do not inherit keepalive timers on every OS: set them again.
        if let Some(k) = self.keepalive {
            set_keepalive(s, k);
        }
        self.nodelay_and_user_timeout(s);
    }

    fn nodelay_and_user_timeout(&self, s: &SockRef<'_>) {
        if self.nodelay
            && let Err(e) = s.set_tcp_nodelay(true)
        {
            debug!("set_nodelay failed: {e}");
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(t) = self.user_timeout
            && let Err(e) = s.set_tcp_user_timeout(Some(t))
        {
            debug!("TCP_USER_TIMEOUT failed: {e}");
        }
    }

    fn mark_and_keepalive(&self, s: &SockRef<'_>) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(mark) = self.mark
            && let Err(e) = s.set_mark(mark)
        {
            tracing::warn!("sockopt.mark {mark}: cannot set SO_MARK ({e}); it needs CAP_NET_ADMIN");
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        if self.mark.is_some() {
            tracing::warn!("sockopt.mark is ignored on this OS");
        }
        if let Some(k) = self.keepalive {
            set_keepalive(s, k);
        }
        #[cfg(target_os = "linux")]
        if self.tproxy != Tproxy::Off
            && let Err(e) = set_int(s, libc::SOL_IP, libc::IP_TRANSPARENT, 1)
        {
            tracing::warn!("sockopt.tproxy: cannot set IP_TRANSPARENT ({e}); it needs CAP_NET_ADMIN");
        }
    }
}

fn set_keepalive(s: &SockRef<'_>, k: Keepalive) {
    let ka = socket2::TcpKeepalive::new().with_time(k.idle).with_interval(k.interval);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "freebsd"))]
    let ka = ka.with_retries(k.retries);
    if let Err(e) = s.set_tcp_keepalive(&ka) {
        debug!("SO_KEEPALIVE failed: {e}");
    }
}

/// setsockopt(2) with an int value, for options socket2 does not name.
#[cfg(target_os = "linux")]
pub(crate) fn set_int(
    s: &socket2::Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd borrowed for the call, a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn options_reach_the_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let opts = SocketOpts {
            keepalive: Some(Keepalive { idle: Duration::from_secs(7), interval: Duration::from_secs(3), retries: 4 }),
            user_timeout: Some(Duration::from_millis(4500)),
            ..SocketOpts::default()
        };
        let socket = TcpSocket::new_v4().unwrap();
        opts.before_connect(&socket);
        let (c, _) = tokio::join!(socket.connect(addr), l.accept());
        let c = c.unwrap();
        opts.established(&c);
        check(&c);
    }

    fn opts() -> SocketOpts {
        SocketOpts {
            keepalive: Some(Keepalive { idle: Duration::from_secs(7), interval: Duration::from_secs(3), retries: 4 }),
            user_timeout: Some(Duration::from_millis(4500)),
            ..SocketOpts::default()
        }
    }

    fn check(c: &TcpStream) {
        let s = SockRef::from(c);
        assert!(c.nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        {
            assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
            assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
            assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
            assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_millis(4500)));
        }
    }

    /// `dialed` and `accepted` set nothing on Linux: the options set before connect, and those the
    /// accepted socket inherits from its listener, must all be there.
    #[tokio::test]
    async fn dialed_and_accepted_sockets_carry_every_option() {
        let opts = opts();
        let ls = TcpSocket::new_v4().unwrap();
        opts.before_listen(&ls);
        ls.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = ls.listen(8).unwrap();
        let addr = l.local_addr().unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        opts.before_connect(&socket);
        let (c, a) = tokio::join!(socket.connect(addr), l.accept());
        let (c, (a, _)) = (c.unwrap(), a.unwrap());
        opts.dialed(&c);
        opts.accepted(&a);
        check(&c);
        check(&a);
    }
}
