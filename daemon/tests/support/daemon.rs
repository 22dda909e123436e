//! Talking to a running `imagegate daemon` in end-to-end tests: starting and stopping it by pid,
//! its configuration, its status socket and its JSON-lines event log. The same helpers serve the
//! host and a QEMU guest (`IMAGEGATE_BIN`, `IMAGEGATE_E2E_WAIT_SECS`).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The `imagegate` binary under test: `IMAGEGATE_BIN` when set (a QEMU guest runs the release
/// build shipped beside the test binary, whose cargo paths do not exist there), else cargo's.
pub fn imagegate_bin() -> std::path::PathBuf {
    std::env::var_os("IMAGEGATE_BIN").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_BIN_EXE_imagegate")),
        std::path::PathBuf::from,
    )
}

/// How long waits for an event last: `IMAGEGATE_E2E_WAIT_SECS` (guests under software
/// emulation are several times slower), else 10 s. Daemon start and verdicts get three times it.
pub fn wait_limit() -> Duration {
    Duration::from_secs(
        std::env::var("IMAGEGATE_E2E_WAIT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    )
}

/// `imagegate status` against the daemon whose status socket is `dir/status.sock`; `None`
/// until it answers.
pub fn status(dir: &Path) -> Option<Value> {
    let out = Command::new(imagegate_bin())
        .args(["status", "--socket"])
        .arg(dir.join("status.sock"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Every decision event logged so far.
pub fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The first logged event matching `what`, waited for up to [`wait_limit`].
pub fn wait_for_event(path: &Path, what: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        if let Some(event) = events(path).into_iter().find(|e| what(e)) {
            return event;
        }
        assert!(
            started.elapsed() < wait_limit(),
            "no such event in {:?}",
            events(path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a decision event names image `name` among the images holding its layer.
pub fn names_image(event: &Value, name: &str) -> bool {
    event["images"]
        .as_array()
        .is_some_and(|images| images.iter().any(|i| i["image"]["name"] == name))
}

/// Settings of a test daemon's config file; every path lives under the test's directory.
pub struct Settings<'a> {
    /// `enforce` or `audit`.
    pub mode: &'a str,
    /// `fanotify`, `bpf-lsm` or `auto`.
    pub backend: &'a str,
    /// Registries reached over plain HTTP (the test's own).
    pub insecure: Vec<String>,
    /// A name distinguishing this daemon's state, log and event files from another run's.
    pub tag: &'a str,
}

impl Settings<'_> {
    /// The event log this daemon writes.
    pub fn events(&self, dir: &Path) -> std::path::PathBuf {
        dir.join(format!("events-{}.jsonl", self.tag))
    }

    /// Writes `dir/imagegate-TAG.toml` against `containerd`, with the policy at `dir/policy.toml`
    /// and the status socket at `dir/status.sock`.
    pub fn write(
        &self,
        dir: &Path,
        containerd: &super::containerd::PrivateContainerd,
    ) -> std::path::PathBuf {
        let config = dir.join(format!("imagegate-{}.toml", self.tag));
        let insecure: Vec<String> = self.insecure.iter().map(|r| format!("\"{r}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "mode = \"{mode}\"\ndrift = \"deny\"\nbackend = \"{backend}\"\npolicy = \"{policy}\"\n\
                 state_dir = \"{state}\"\nevent_log = \"{events}\"\nstatus_socket = \"{status}\"\n\
                 verify_socket = \"{verify}\"\n\
                 [containerd]\nsocket = \"{socket}\"\nroot = \"{root}\"\n\
                 [registry]\ninsecure = [{insecure}]\ntimeout_seconds = 5\n",
                mode = self.mode,
                backend = self.backend,
                policy = dir.join("policy.toml").display(),
                // One state directory per test: verdicts persist across the daemon's restarts.
                state = dir.join("state").display(),
                events = self.events(dir).display(),
                status = dir.join("status.sock").display(),
                verify = dir.join("verify.sock").display(),
                socket = containerd.socket.display(),
                root = containerd.data.join("root").display(),
                insecure = insecure.join(", "),
            ),
        )
        .expect("write daemon config");
        config
    }
}

/// An `imagegate daemon` under test: SIGTERM by [`Self::stop`], killed by pid when dropped
/// (the fanotify kernel side then allows what is pending; BPF pins keep enforcing).
pub struct DaemonProcess {
    child: std::process::Child,
    /// Its stderr (tracing logs).
    pub log: std::path::PathBuf,
}

impl DaemonProcess {
    /// Starts `imagegate daemon --config CONFIG`, logging to `dir/daemon-TAG.log`, and waits until
    /// its status socket at `dir/status.sock` answers.
    pub fn start(dir: &Path, config: &Path, tag: &str) -> Self {
        Self::start_with_env(dir, config, tag, &[])
    }

    /// [`Self::start`] with extra environment variables (e.g. a proxy that catches any
    /// request to a registry the test did not expect).
    pub fn start_with_env(dir: &Path, config: &Path, tag: &str, env: &[(&str, &str)]) -> Self {
        let log = dir.join(format!("daemon-{tag}.log"));
        let _ = std::fs::remove_file(dir.join("status.sock"));
        let child = Command::new(imagegate_bin())
            .args(["daemon", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(log.with_extension("stdout")).expect("daemon stdout"))
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start imagegate daemon");
        let me = Self { child, log };
        let started = Instant::now();
        while status(dir).is_none() {
            assert!(
                started.elapsed() < (3 * wait_limit()).max(Duration::from_secs(60)),
                "daemon not up: {}",
                me.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reload rebuilds swapped in so far.
    pub fn reloads_done(&self) -> usize {
        reload_swaps(&self.log_text()).count()
    }

    /// Waits until the daemon has a verdict for every `(image name, outcome)`, asserts each,
    /// and returns the status.
    pub fn wait_for_verdicts(&self, dir: &Path, expected: &[(String, &str)]) -> Value {
        assert_outcomes(dir, expected, 3 * wait_limit(), &self.log_text())
    }

    /// SIGHUP: reload the policy.
    pub fn hangup(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP the daemon");
    }

    /// SIGTERM, waiting up to 5 s for it to exit (then SIGKILL on drop).
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The outcome (`trusted`, `untrusted`, `error`) `status` reports for image `name`.
pub fn outcome(status: &Value, name: &str) -> Option<String> {
    status["verdicts"]
        .as_array()?
        .iter()
        .find(|v| v["image"] == name)
        .and_then(|v| v["outcome"].as_str().map(str::to_owned))
}

/// Waits (up to `limit`) until the daemon in `dir` reports an outcome for every image in
/// `expected`, then asserts each is the expected one.
pub fn assert_outcomes(
    dir: &Path,
    expected: &[(String, &str)],
    limit: Duration,
    log: &str,
) -> Value {
    let started = Instant::now();
    loop {
        let now = status(dir).unwrap_or(Value::Null);
        let outcomes: Vec<Option<String>> = expected
            .iter()
            .map(|(name, _)| outcome(&now, name))
            .collect();
        if outcomes.iter().all(Option::is_some) {
            for ((name, want), got) in expected.iter().zip(&outcomes) {
                assert_eq!(got.as_deref(), Some(*want), "{name}: {now}");
            }
            return now;
        }
        assert!(started.elapsed() < limit, "verdicts missing: {now}\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts a container start failed because its entrypoint could not execute: runc's
/// `exec ...: operation not permitted` on the container's stderr. Under heavy load `ctr run`
/// was seen (once, 2026-12-06) to exit with the task's status 1 before copying that line from
/// the container's stderr: an exit status 1 with no output at all is taken as the same failure
/// (the callers' event checks still name the denial).
pub fn assert_denied(out: &std::process::Output, what: &str) {
    assert!(!out.status.success(), "{what} ran: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    if stderr.contains("operation not permitted") {
        return;
    }
    assert!(
        out.status.code() == Some(1) && out.stdout.is_empty() && stderr.trim().is_empty(),
        "{what} failed otherwise: {out:?}"
    );
    eprintln!("note: {what}: exit status 1 with no output (ctr lost the runtime's message)");
}

/// Asserts a container ran and printed `printed` (trimmed); a failure shows the daemon's log.
pub fn assert_ran(out: &std::process::Output, what: &str, daemon: &DaemonProcess, printed: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {out:?}\n{}",
        daemon.log_text()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), printed);
}

/// The daemon's JSON log lines with `message`.
pub fn log_lines<'a>(log: &'a str, message: &'a str) -> impl Iterator<Item = Value> + 'a {
    log.lines()
        .filter(move |line| line.contains(message))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(move |entry| entry["message"] == message)
}

/// The log lines of reload rebuilds swapped in, in order.
pub fn reload_swaps(log: &str) -> impl Iterator<Item = Value> + '_ {
    log_lines(log, "reconciled with containerd").filter(|entry| entry["reload"] == true)
}

/// The first event with `verdict` (`denied` or `audit`) naming image `name`.
pub fn verdict_for(path: &Path, verdict: &str, name: &str) -> Value {
    wait_for_event(path, |e| e["verdict"] == verdict && names_image(e, name))
}

/// A decision against a container of image `name` (manifest `digest`): reason
/// `untrusted_image`, the container's image and digest named, and the file's layer owned by it.
pub fn assert_names_image(event: &Value, name: &str, digest: &str) {
    assert_eq!(event["reason"], "untrusted_image", "{event}");
    assert_eq!(event["container"]["image"], name, "{event}");
    assert_eq!(event["container"]["digest"], digest, "{event}");
    let owner = event["images"]
        .as_array()
        .and_then(|images| images.iter().find(|i| i["image"]["name"] == name))
        .unwrap_or_else(|| panic!("the event does not name {name}: {event}"));
    assert_eq!(owner["manifest_digest"], digest, "{event}");
}
