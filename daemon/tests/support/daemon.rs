//! Talking to a running `imagegate daemon` in end-to-end tests: starting and stopping it by pid,
//! its configuration, its status socket and its JSON-lines event log.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::containerd::PrivateContainerd;

/// The `imagegate` binary under test: `IMAGEGATE_BIN` when set (a QEMU guest runs the release
/// build shipped beside the test binary, whose cargo paths do not exist there), else cargo's.
pub fn imagegate_bin() -> PathBuf {
    std::env::var_os("IMAGEGATE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_imagegate")),
        PathBuf::from,
    )
}

/// How long waits for the daemon last: `IMAGEGATE_E2E_WAIT_SECS` (guests under software
/// emulation are several times slower), else 10 s.
pub fn wait_limit() -> Duration {
    Duration::from_secs(
        std::env::var("IMAGEGATE_E2E_WAIT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    )
}

/// Writes `dir/imagegate-<mode>.toml` for a daemon over `containerd` with `backend`, its state,
/// events (`dir/events-<mode>.jsonl`) and status socket (`dir/status.sock`) under `dir`, the
/// policy `dir/policy.toml`, and `insecure_registry` (host:port) reached over plain HTTP.
pub fn write_config(
    dir: &Path,
    containerd: &PrivateContainerd,
    mode: &str,
    backend: &str,
    insecure_registry: Option<&str>,
) -> PathBuf {
    let config = dir.join(format!("imagegate-{mode}.toml"));
    let mut text = format!(
        "mode = \"{mode}\"\ndrift = \"deny\"\nbackend = \"{backend}\"\npolicy = \"{policy}\"\n\
         state_dir = \"{state}\"\nevent_log = \"{events}\"\nstatus_socket = \"{status}\"\n\
         [containerd]\nsocket = \"{socket}\"\nroot = \"{root}\"\n",
        policy = dir.join("policy.toml").display(),
        state = dir.join(format!("state-{mode}")).display(),
        events = events_path(dir, mode).display(),
        status = dir.join("status.sock").display(),
        socket = containerd.socket.display(),
        root = containerd.data.join("root").display(),
    );
    if let Some(addr) = insecure_registry {
        text += &format!("[registry]\ninsecure = [\"{addr}\"]\ntimeout_seconds = 5\n");
    }
    std::fs::write(&config, text).expect("write the daemon config");
    config
}

/// The event log of the daemon configured by [`write_config`] for `mode`.
pub fn events_path(dir: &Path, mode: &str) -> PathBuf {
    dir.join(format!("events-{mode}.jsonl"))
}

/// The daemon under test, stopped by its pid (SIGTERM, then SIGKILL) when stopped or dropped.
pub struct DaemonProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl DaemonProcess {
    /// Starts `imagegate daemon --config CONFIG`, stderr (its log) to `log`, stdout beside it.
    pub fn start(config: &Path, log: &Path) -> Self {
        let child = Command::new(imagegate_bin())
            .args(["daemon", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(log.with_extension("stdout")).expect("daemon stdout"))
            .stderr(std::fs::File::create(log).expect("daemon log"))
            .spawn()
            .expect("start imagegate daemon");
        Self {
            child: Some(child),
            log: log.to_owned(),
        }
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its status socket at `dir/status.sock` answers, and returns the status.
    pub fn wait_up(&self, dir: &Path) -> Value {
        let started = Instant::now();
        loop {
            if let Some(status) = status(dir) {
                return status;
            }
            assert!(
                started.elapsed() < 3 * wait_limit(),
                "daemon not up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the daemon has a verdict for every `(image name, outcome)` and asserts each
    /// outcome; returns the status.
    pub fn wait_for_verdicts(&self, dir: &Path, expected: &[(String, &str)]) -> Value {
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
            assert!(
                started.elapsed() < 3 * wait_limit(),
                "verdicts missing: {now}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then SIGKILL after 5 s; always reaped.
    pub fn stop(mut self) {
        if let Some(child) = self.child.take() {
            imagegate_testkit::registry::stop_child(child, Duration::from_secs(5));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            imagegate_testkit::registry::stop_child(child, Duration::from_secs(5));
        }
    }
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

/// The verdict outcome (`trusted`, `untrusted`, ...) the status reports for image `name`.
pub fn outcome(status: &Value, name: &str) -> Option<String> {
    status["verdicts"]
        .as_array()?
        .iter()
        .find(|v| v["image"] == name)
        .and_then(|v| v["outcome"].as_str().map(str::to_owned))
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

/// The first event with `verdict` (`denied` or `audit`) naming image `name`.
pub fn verdict_for(path: &Path, verdict: &str, name: &str) -> Value {
    wait_for_event(path, |e| e["verdict"] == verdict && names_image(e, name))
}

/// An unverified-layer decision that names image `name` with manifest `digest`.
pub fn assert_names_image(event: &Value, name: &str, digest: &str) {
    assert_eq!(event["reason"], "unverified_layer", "{event}");
    let owner = event["images"]
        .as_array()
        .and_then(|images| images.iter().find(|i| i["image"]["name"] == name))
        .unwrap_or_else(|| panic!("the event does not name {name}: {event}"));
    assert_eq!(owner["manifest_digest"], digest, "{event}");
}

/// A `ctr run` that failed because the kernel refused the exec.
pub fn assert_denied(out: &Output, what: &str) {
    assert!(!out.status.success(), "{what} ran: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("operation not permitted"),
        "{what} failed otherwise: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
