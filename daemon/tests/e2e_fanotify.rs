//! End to end on this machine: `imagegate daemon` (fanotify backend, since this kernel refuses
//! BPF LSM programs) watching a private containerd whose root is on its own tmpfs, real runc
//! containers started with `ctr run`:
//! a trusted image's entrypoint runs; an untrusted image's cannot execute (`operation not
//! permitted`) and an event names the image and its digest; an image made of a trusted base plus
//! an untrusted top layer cannot run the top layer's binary; drift is denied; audit mode reports
//! and allows.
//!
//! Trust here comes from the policy's `accept`/`reject` scopes so that this test needs no
//! registry; signature verification has its own tests (registry.rs, testvectors.rs).

mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use support::{
    containerd::PrivateContainerd,
    daemon::{self, DaemonProcess},
    image::{self, File},
};

const POLICY: &str = r#"version = 1
[default]
require = "reject"
[[scope]]
match = "registry.test/trusted/**"
require = "accept"
"#;

fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox").expect("busybox (apt-get install busybox-static)")
}

fn write_config(dir: &Path, containerd: &PrivateContainerd, mode: &str) -> PathBuf {
    daemon::write_config(dir, containerd, mode, "fanotify", None)
}

/// Waits until `imagegate status` reports `images` judged images.
fn wait_ready(dir: &Path, images: u64, daemon_log: &Path) {
    let started = Instant::now();
    loop {
        if let Some(status) = daemon::status(dir) {
            let judged = status["images"]["trusted"].as_u64().unwrap_or(0)
                + status["images"]["untrusted"].as_u64().unwrap_or(0);
            if judged >= images {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "daemon not ready: {}",
            std::fs::read_to_string(daemon_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn daemon_enforces_on_real_containers_with_fanotify() {
    if !support::is_root() {
        eprintln!("skipping: containerd, runc and fanotify need root");
        return;
    }
    let dir = support::scratch_dir("e2e-fanotify");
    let containerd = PrivateContainerd::start_on_tmpfs(&dir);
    std::fs::write(dir.join("policy.toml"), POLICY).expect("policy");

    let base = image::layer(&[File::new("bin/busybox", busybox(), 0o755)]);
    let trusted = image::image(vec![base.clone()]);
    let untrusted = image::image(vec![image::layer(&[
        File::new("bin/busybox", busybox(), 0o755),
        File::new("etc/untrusted", "x", 0o644),
    ])]);
    let mixed = image::image(vec![
        base,
        image::layer(&[File::new("bin/evil", busybox(), 0o755)]),
    ]);
    for (name, img) in [
        ("registry.test/trusted/app:1", &trusted),
        ("registry.test/untrusted/app:1", &untrusted),
        ("registry.test/mixed/app:1", &mixed),
    ] {
        let archive = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        image::write_archive(&archive, name, img, false);
        containerd.import("default", &archive);
    }

    // Enforce mode.
    let config = write_config(&dir, &containerd, "enforce");
    let daemon_log = dir.join("daemon-enforce.log");
    let daemon = DaemonProcess::start(&config, &daemon_log);
    wait_ready(&dir, 3, &daemon_log);
    let events_path = dir.join("events-enforce.jsonl");

    let out = containerd.run(
        "registry.test/trusted/app:1",
        "c-trusted",
        &["/bin/busybox", "echo", "hello"],
    );
    assert!(
        out.status.success(),
        "trusted container failed: {out:?}\n{}",
        std::fs::read_to_string(&daemon_log).unwrap_or_default()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");

    let out = containerd.run(
        "registry.test/untrusted/app:1",
        "c-untrusted",
        &["/bin/busybox", "echo", "hello"],
    );
    assert!(!out.status.success(), "untrusted container ran: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("operation not permitted"),
        "unexpected failure: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = daemon::wait_for_event(&events_path, |e| {
        e["verdict"] == "denied" && daemon::names_image(e, "registry.test/untrusted/app:1")
    });
    let owner = event["images"].as_array().expect("images")[0].clone();
    assert_eq!(
        owner["manifest_digest"],
        untrusted.manifest_digest(),
        "{event}"
    );

    // Trusted base, untrusted top layer: the base's binary runs, the top layer's cannot.
    let out = containerd.run(
        "registry.test/mixed/app:1",
        "c-mixed-base",
        &["/bin/busybox", "true"],
    );
    assert!(
        out.status.success(),
        "base binary of the mixed image failed: {out:?}"
    );
    let out = containerd.run(
        "registry.test/mixed/app:1",
        "c-mixed-top",
        &["/bin/evil", "true"],
    );
    assert!(
        !out.status.success(),
        "top-layer binary of the mixed image ran: {out:?}"
    );

    // Drift: a binary written into the container's writable layer cannot run.
    let out = containerd.run(
        "registry.test/trusted/app:1",
        "c-drift",
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox cp /bin/busybox /dropped && /dropped true",
        ],
    );
    assert!(!out.status.success(), "drift ran: {out:?}");
    daemon::wait_for_event(&events_path, |e| e["reason"] == "drift");
    daemon.stop();

    // Audit mode: the untrusted image runs, and is reported.
    let config = write_config(&dir, &containerd, "audit");
    let daemon_log = dir.join("daemon-audit.log");
    let daemon = DaemonProcess::start(&config, &daemon_log);
    wait_ready(&dir, 3, &daemon_log);
    let out = containerd.run(
        "registry.test/untrusted/app:1",
        "c-audit",
        &["/bin/busybox", "echo", "hello"],
    );
    assert!(out.status.success(), "audit mode blocked: {out:?}");
    daemon::wait_for_event(&dir.join("events-audit.jsonl"), |e| e["verdict"] == "audit");
    daemon.stop();
}
