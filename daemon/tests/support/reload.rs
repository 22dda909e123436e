//! Issue case 1's `ctr exec`: a container of an untrusted image never starts under enforce, so
//! `exec` into one is tried on a container started while its scope audited (a rollout), once a
//! reload turns that scope to enforce. Shared by the host (fanotify) and guest (BPF LSM) tests.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::{
    containerd::PrivateContainerd,
    daemon::{self, DaemonProcess},
};

/// The policies before and after the reload, and where the daemon reads its policy.
pub struct ScopeTurnsToEnforce<'a> {
    pub policy_path: &'a Path,
    /// In force when called: the image's scope audits.
    pub auditing: &'a str,
    /// The same with that scope enforcing.
    pub enforcing: &'a str,
}

/// Starts a container of `image` (untrusted, its scope auditing) running `sleep`, reloads the
/// policy with the scope enforcing, and asserts that `ctr tasks exec` of `program` (a file of
/// the image, e.g. of a signed base layer it shares) is denied with reason `untrusted_image` and
/// its output never appears: a running container's trust follows the reload. Puts the auditing
/// policy back and returns once both reloads are swapped in (a container started while the
/// daemon still re-catalogues may be judged before its record is read: the callers' next
/// checks are not about reloads).
pub fn exec_is_denied_once_the_scope_enforces(
    containerd: &PrivateContainerd,
    daemon: &DaemonProcess,
    events_path: &Path,
    image: &str,
    program: &str,
    policies: &ScopeTurnsToEnforce<'_>,
) {
    let id = "c-exec";
    let out = containerd.ctr(&["run", "-d", image, id, program, "sleep", "300"]);
    assert!(
        out.status.success(),
        "the audited container did not start: {out:?}"
    );
    let reloads = daemon.reloads_done();
    std::fs::write(policies.policy_path, policies.enforcing).expect("policy");
    daemon.hangup();
    // The reload re-judges every image; until then the exec is still audited (and runs).
    let started = Instant::now();
    let mut attempt = 0;
    let denied = loop {
        attempt += 1;
        let exec_id = format!("e{attempt}");
        let out = containerd.ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            &exec_id,
            id,
            program,
            "echo",
            "exec ran",
        ]);
        if !out.status.success() {
            break out;
        }
        assert!(
            started.elapsed() < 3 * daemon::wait_limit(),
            "exec into the now-enforced container still runs: {out:?}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    daemon::assert_denied(&denied, "ctr exec into a container of an untrusted image");
    assert!(!String::from_utf8_lossy(&denied.stdout).contains("exec ran"));
    let event = daemon::wait_for_event(events_path, |e| {
        e["verdict"] == "denied" && e["container"]["id"] == id
    });
    assert_eq!(event["reason"], "untrusted_image", "{event}");
    assert_eq!(event["path"], program, "{event}");
    let _ = containerd.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
    let started = Instant::now();
    while !containerd.ctr(&["tasks", "delete", id]).status.success()
        && started.elapsed() < daemon::wait_limit()
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = containerd.ctr(&["containers", "rm", id]);
    std::fs::write(policies.policy_path, policies.auditing).expect("policy");
    daemon.hangup();
    let started = Instant::now();
    while daemon.reloads_done() < reloads + 2 {
        assert!(
            started.elapsed() < 3 * daemon::wait_limit(),
            "the reloads were not swapped in: {}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
