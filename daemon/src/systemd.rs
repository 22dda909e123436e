//! The daemon's side of systemd's service protocol (`sd_notify(3)`): readiness and watchdog
//! keep-alives on `$NOTIFY_SOCKET`. Without systemd (no `$NOTIFY_SOCKET`) everything here is a
//! no-op, so the same binary runs under systemd, in a container and in tests.

use std::{future::Future, path::PathBuf, time::Duration};

/// Sends one notification (`READY=1`, `WATCHDOG=1`, `STOPPING=1`) when systemd listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket address.
        use std::os::linux::net::SocketAddrExt as _;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name) {
            let _ = socket.send_to_addr(state.as_bytes(), &addr);
        }
    } else {
        let _ = socket.send_to(state.as_bytes(), PathBuf::from(path));
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC` (systemd's advice), when the
/// watchdog is on and meant for this process (`$WATCHDOG_PID`, when set, is our pid).
#[must_use]
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Watchdog keep-alives from the event loop: the loop awaits [`Watchdog::tick`] beside its
/// other work and pings on each tick, so a loop that stops turning stops the pings and systemd
/// restarts the daemon.
pub struct Watchdog {
    interval: Option<tokio::time::Interval>,
}

impl Watchdog {
    /// From the environment systemd set; inert without a watchdog.
    #[must_use]
    pub fn from_env() -> Self {
        Self {
            interval: watchdog_interval().map(|period| {
                let mut interval = tokio::time::interval(period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            }),
        }
    }

    /// Completes when the next ping is due (never, without a watchdog).
    pub async fn tick(&mut self) {
        match self.interval.as_mut() {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Pings systemd.
    pub fn ping(&self) {
        if self.interval.is_some() {
            notify("WATCHDOG=1");
        }
    }

    /// Runs `work` (a reconciliation: bounded by registry timeouts, and outside the loop's
    /// `select!`) while pinging, so a long first reconciliation is not taken for a hang.
    pub async fn during<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                () = self.tick() => self.ping(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn pings_reach_the_notify_socket_at_half_the_watchdog_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // The environment is process-wide; this is the only test that sets these variables.
        std::env::set_var("NOTIFY_SOCKET", &path);
        std::env::set_var("WATCHDOG_USEC", "200000");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(100)));
        let mut watchdog = Watchdog::from_env();
        let value = watchdog
            .during(async {
                tokio::time::sleep(Duration::from_millis(250)).await;
                7
            })
            .await;
        assert_eq!(value, 7);
        let mut buf = [0_u8; 64];
        let mut pings = 0;
        listener.set_nonblocking(true).expect("nonblocking");
        while let Ok(n) = listener.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1");
            pings += 1;
        }
        assert!(pings >= 2, "{pings} pings in 250 ms at a 100 ms period");
        notify("READY=1");
        let n = listener.recv(&mut buf).expect("ready");
        assert_eq!(&buf[..n], b"READY=1");
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(
            watchdog_interval(),
            None,
            "a watchdog meant for another pid"
        );
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
    }
}
