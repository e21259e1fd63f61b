//! Process figures for `/metrics` (from /proc/self) and TCP_INFO of tunnel sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// What Prometheus' usual `process_*` metrics report.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    /// User + system CPU time.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub resident_bytes: u64,
    /// Virtual memory size.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on file descriptors.
    pub max_fds: u64,
    /// Start time, seconds since the epoch.
    pub start_time_seconds: f64,
    /// OS threads.
    pub threads: u64,
}

/// Reads /proc/self; missing figures stay 0 (non-Linux, restricted /proc).
pub fn stats() -> ProcessStats {
    let mut s = ProcessStats::default();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..])
    {
        // Fields after the command: state is field 3; utime 14, stime 15, threads 20, starttime 22,
        // vsize 23, rss 24 (1-based, as in proc(5)).
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        s.cpu_seconds = (num(14) + num(15)) as f64 / tick;
        s.threads = num(20);
        s.virtual_bytes = num(23);
        s.resident_bytes = num(24) * page;
        if let Some(boot) = boot_time() {
            s.start_time_seconds = boot + num(22) as f64 / tick;
        }
    }
    s.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    if let Some(limit) = crate::transport::sockopt::open_files_limit() {
        s.max_fds = limit;
    }
    s
}

fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse::<f64>().ok()
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(crate::session::canonical_ip(IpAddr::V6(ip)), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

fn peer_of(fd: i32) -> Option<SocketAddr> {
    // SAFETY: zeroed sockaddr_storage is a valid out-buffer of the length passed.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: fd is any integer (a non-socket gives ENOTSOCK); ss/len are valid.
    let r = unsafe { libc::getpeername(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) };
    if r != 0 {
        return None;
    }
    sockaddr_to_std(&ss)
}

fn rtt_of(fd: i32) -> Option<Duration> {
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid out-pointers; a non-TCP fd fails.
    let r = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len)
    };
    (r == 0 && info.tcpi_rtt > 0).then(|| Duration::from_micros(u64::from(info.tcpi_rtt)))
}

/// The smoothed RTT of the one TCP socket of this process whose peer is `peer` (None if there is
/// none or more than one). The socket is found through /proc/self/fd: the tunnel code never sees raw
/// sockets, and this runs only when a snapshot is taken.
pub fn tcp_rtt_by_peer(peer: SocketAddr) -> Option<Duration> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    let want = SocketAddr::new(crate::session::canonical_ip(peer.ip()), peer.port());
    let mut found = None;
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let is_socket = std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        if !is_socket || peer_of(fd) != Some(want) {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(fd);
    }
    found.and_then(rtt_of)
}
