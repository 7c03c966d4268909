//! systemd's service notification protocol (`sd_notify(3)`): `READY=1` once the agent serves,
//! `WATCHDOG=1` keep-alives from its main loop, `STOPPING=1` on the way out. A datagram of
//! `KEY=value` lines to the socket in `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! one); without it (not under systemd, or `Type=simple`) nothing is sent.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// Half the watchdog period systemd asked for (`$WATCHDOG_USEC`), if it asked.
    pub keepalive: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd gives the service; the variables are removed so that
    /// processes the agent starts (shims, CNI plugins, hooks) do not talk to systemd for it.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let watchdog = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        // SAFETY: called at start, before the runtime starts any other thread.
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
        let ours = watchdog_pid.is_none_or(|p| p.parse() == Ok(std::process::id()));
        let keepalive = watchdog
            .and_then(|us| us.parse::<u64>().ok())
            .filter(|&us| us > 0 && ours)
            .map(|us| Duration::from_micros(us / 2));
        Notifier {
            socket: socket.and_then(|s| connect(&s.to_string_lossy())),
            keepalive,
        }
    }

    fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                tracing::debug!(error = %e, "sd_notify {state}");
            }
        }
    }

    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=serving");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

fn connect(path: &str) -> Option<(UnixDatagram, std::os::unix::net::SocketAddr)> {
    use std::os::linux::net::SocketAddrExt as _;
    let addr = match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name).ok()?,
        None => std::os::unix::net::SocketAddr::from_pathname(path).ok()?,
    };
    Some((UnixDatagram::unbound().ok()?, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier {
            socket: connect(path.to_str().unwrap()),
            keepalive: None,
        };
        n.ready();
        n.watchdog();
        let mut buf = [0u8; 256];
        let got = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"READY=1\nSTATUS=serving");
        let got = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"WATCHDOG=1");
        // An abstract socket, as systemd may give.
        let name = format!("nodelet-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt as _;
        let abs = UnixDatagram::bind_addr(
            &std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap(),
        )
        .unwrap();
        abs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier {
            socket: connect(&format!("@{name}")),
            keepalive: None,
        }
        .stopping();
        let got = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"STOPPING=1");
    }
}
