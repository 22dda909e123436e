//! What the fanotify tests share: a containerd-like layout on a private tmpfs with real overlay
//! mounts ([`Fixture`]), and the backend running in a child process under a watchdog
//! ([`Responder`]). The child is this same test binary, re-run on its ignored `responder_process`
//! test. Its marks cover the private tmpfs only, and if it stalls the watchdog kills it: the
//! kernel then allows whatever was pending, so a bug can fail a test but not hang the machine.

#![allow(dead_code)]

pub mod child;
pub mod fixture;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

pub use fixture::Fixture;
use imagegate::enforce::LayerId;

/// Environment variable that carries the child's configuration (JSON).
pub const CHILD_ENV: &str = "IMAGEGATE_FANOTIFY_CHILD";
/// Prefix of the child's protocol lines (libtest prints its own lines on the same stdout).
pub const REPLY: &str = "@@ ";

/// One case at a time: each runs a backend and exec storms, and the machine has few cores.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the child runs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ChildConfig {
    /// `backend` or `floor` (a minimal allow-all responder, the cost floor of a round trip).
    pub kind: String,
    pub scope: String,
    pub mode: String,
    pub bound_ms: u64,
    /// `auto`, `backing`, `overlay`.
    pub strategy: String,
    pub ignore_marks: bool,
    /// `(dev, ino, ms)`: decisions about this layer sleep first.
    pub stall: Option<(u64, u64, u32, u64)>,
    /// Stand-ins for runc: their exec marks the overlays mounted so far (before 6.5).
    pub runtimes: Vec<String>,
    /// Every event handed to a worker, none decided by the reading thread (to measure).
    pub hand_off: bool,
}

impl ChildConfig {
    pub fn backend(scope: &Path) -> Self {
        Self {
            kind: "backend".into(),
            scope: scope.display().to_string(),
            mode: "enforce".into(),
            bound_ms: 200,
            strategy: "auto".into(),
            ignore_marks: true,
            stall: None,
            runtimes: Vec::new(),
            hand_off: false,
        }
    }
}

/// The backend in a child process, killed by a watchdog after `limit`.
pub struct Responder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stop_watchdog: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    /// What the child said when ready (the strategy it uses).
    pub ready: String,
}

impl Responder {
    pub fn start(config: &ChildConfig, limit: Duration) -> Self {
        let mut responder = Self::spawn(config, limit);
        responder.wait_ready();
        responder
    }

    /// Waits for the child's `ready` line (its scope is marked).
    pub fn wait_ready(&mut self) {
        self.ready = self.read_reply();
        assert!(
            self.ready.starts_with("ready"),
            "responder did not start: {}",
            self.ready
        );
    }

    /// Starts the child without waiting for it to be ready.
    pub fn spawn(config: &ChildConfig, limit: Duration) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut command = Command::new(exe);
        command
            .args(["--ignored", "--exact", "responder_process", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_ENV, serde_json::to_string(config).expect("config"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe; the child dies with the test thread that made it.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("start the responder");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (stop, stopped) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let pid = child.id() as i32;
        let watchdog_fired = Arc::clone(&fired);
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(limit) {
                watchdog_fired.store(true, Ordering::SeqCst);
                eprintln!("watchdog: responder {pid} outlived {limit:?}; killing it");
                // SAFETY: kill by the pid of our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        Self {
            child,
            stdin,
            stdout,
            stop_watchdog: Some(stop),
            fired,
            ready: String::new(),
        }
    }

    fn read_reply(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let read = self.stdout.read_line(&mut line).unwrap_or(0);
            assert!(
                read > 0,
                "the responder exited (watchdog fired: {})",
                self.fired.load(Ordering::SeqCst)
            );
            // libtest's "test responder_process ... " may precede the first reply on its line.
            if let Some(at) = line.find(REPLY) {
                return line[at + REPLY.len()..].trim_end().to_owned();
            }
        }
    }

    /// Sends one command and returns the reply.
    pub fn send(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to the responder");
        self.stdin.flush().expect("flush");
        let reply = self.read_reply();
        assert!(!reply.starts_with("error"), "{command}: {reply}");
        reply
    }

    pub fn set_layer(&mut self, layer: LayerId, state: &str) {
        self.send(&format!(
            "layer {} {} {} {state}",
            layer.dev, layer.ino, layer.generation
        ));
    }

    pub fn remove_layer(&mut self, layer: LayerId) {
        self.send(&format!(
            "unlayer {} {} {}",
            layer.dev, layer.ino, layer.generation
        ));
    }

    /// Decision events since the last call.
    pub fn events(&mut self) -> Vec<serde_json::Value> {
        let reply = self.send("events");
        serde_json::from_str(&reply).expect("events are JSON")
    }

    pub fn stats(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.send("stats")).expect("stats are JSON")
    }

    /// Whether the watchdog had to kill the child.
    pub fn watchdog_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Kills the child now (the kernel then allows what is pending, and stops asking).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_watchdog.take() {
            let _ = stop.send(());
        }
        self.kill();
    }
}

/// Runs `path` as `true` (busybox copies pick the applet from argv[0]).
pub fn exec_true(path: &Path) -> std::io::Result<ExitStatus> {
    Command::new(path)
        .arg0("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

pub fn expect_eperm(what: &str, result: std::io::Result<ExitStatus>) {
    match result {
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => {}
        other => panic!("{what}: expected EPERM, got {other:?}"),
    }
}

pub fn expect_runs(what: &str, result: std::io::Result<ExitStatus>) {
    match result {
        Ok(status) if status.success() => {}
        other => panic!("{what}: expected to run, got {other:?}"),
    }
}

/// The layer an event names, if any.
pub fn event_layer(event: &serde_json::Value) -> Option<LayerId> {
    let layer = event.get("layer")?;
    Some(LayerId {
        dev: layer.get("dev")?.as_u64()?,
        ino: layer.get("ino")?.as_u64()?,
        generation: u32::try_from(layer.get("generation")?.as_u64()?).ok()?,
    })
}

/// The kernel's `(major, minor)`.
pub fn kernel() -> (u32, u32) {
    imagegate::enforce::fanotify::sys::kernel_version()
}
