//! systemd's notify protocol (sd_notify(3)): datagrams like `READY=1` to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Written directly: it is one
//! `sendto` per message, no library needed.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends notifications to the service manager; does nothing when not started by one.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; inert when unset or unusable.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|p| !p.is_empty())
            .and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        Notifier { socket }
    }

    /// True when a service manager listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one message (`READY=1`, `STATUS=...`, newline-separated assignments). Errors are ignored:
    /// a missing manager must not stop the proxy.
    pub fn notify(&self, message: &str) {
        let Some((sock, path)) = &self.socket else { return };
        let r = match path.strip_prefix('@') {
            Some(name) => send_abstract(sock, name, message),
            None => sock.send_to(message.as_bytes(), path).map(|_| ()),
        };
        if let Err(e) = r {
            tracing::debug!("sd_notify {message:?}: {e}");
        }
    }

    /// The watchdog interval the unit asks for (`WatchdogSec=`), if it is meant for this process.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok())
            && pid != std::process::id()
        {
            return None;
        }
        (usec > 0).then(|| Duration::from_micros(usec))
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(sock: &UnixDatagram, name: &str, message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(message.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &str, _: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "abstract unix sockets"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("oxray-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { socket: Some((UnixDatagram::unbound().unwrap(), path.display().to_string())) };
        n.notify("READY=1\nSTATUS=up");
        let mut buf = [0u8; 64];
        server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_socket_no_error() {
        let n = Notifier { socket: None };
        assert!(!n.enabled());
        n.notify("READY=1");
    }
}
