//! containerd's root on btrfs: a btrfs file system on a loop device under the test's directory
//! (never the machine's disk), and the end-to-end case the host (fanotify) and the 6.12 guest
//! (BPF LSM) both run on it. btrfs numbers devices per subvolume: `stat` reports the
//! subvolume's, not the super block's, so a backend that keyed by the wrong one would judge
//! nothing there.

use std::path::Path;

use super::{
    containerd::PrivateContainerd,
    daemon::{self, DaemonProcess, Settings},
    image::{self, File},
    loop_mount::LoopMount,
};

/// A btrfs file system mounted at `dir/btrfs` through a loop device; unmounted (and its image
/// removed) on drop.
pub struct BtrfsMount;

impl BtrfsMount {
    /// Makes a 256 MiB (sparse) btrfs image in `dir` and mounts it at `dir/btrfs`
    /// (`mkfs.btrfs` from btrfs-progs, which `cargo xtask setup` installs).
    pub fn create(dir: &Path) -> LoopMount {
        LoopMount::create(dir, "btrfs", 256 << 20, &["mkfs.btrfs", "-q", "-f"])
    }
}

/// With containerd's root, the daemon's state and the test's files all on one btrfs file system
/// (as on a node whose `/var` is btrfs), `backend` (`fanotify`, or `auto` for BPF LSM) enforces:
/// the trusted image's container runs, the untrusted one's is denied with an event naming its
/// image, and drift in the trusted container is denied. Returns the daemon's log.
pub fn enforce_with_root_on_btrfs(dir: &Path, backend: &'static str) -> String {
    let btrfs = BtrfsMount::create(dir);
    let dir = btrfs.path.as_path();
    let containerd = PrivateContainerd::start(dir);
    std::fs::write(dir.join("policy.toml"), super::TRUSTED_ONLY_POLICY).expect("policy");
    let busybox = std::fs::read("/bin/busybox").expect("busybox (apt-get install busybox-static)");
    let trusted = image::image(vec![image::layer(&[File::new(
        "bin/busybox",
        busybox.clone(),
        0o755,
    )])]);
    let untrusted = image::image(vec![image::layer(&[
        File::new("bin/busybox", busybox, 0o755),
        File::new("etc/untrusted", "x", 0o644),
    ])]);
    for (name, img) in [
        ("registry.test/trusted/app:1", &trusted),
        ("registry.test/untrusted/app:1", &untrusted),
    ] {
        let archive = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        image::write_archive(&archive, name, img, false);
        containerd.import("default", &archive);
    }
    let settings = Settings {
        mode: "enforce",
        backend,
        insecure: Vec::new(),
        tag: "btrfs",
    };
    let daemon = DaemonProcess::start(dir, &settings.write(dir, &containerd), "btrfs");
    daemon.wait_for_verdicts(
        dir,
        &[
            ("registry.test/trusted/app:1".to_owned(), "trusted"),
            ("registry.test/untrusted/app:1".to_owned(), "untrusted"),
        ],
    );

    let out = containerd.run(
        "registry.test/trusted/app:1",
        "c-btrfs-trusted",
        &["/bin/busybox", "echo", "hello"],
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "hello",
        "trusted container on btrfs failed: {out:?}\n{}",
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    let out = containerd.run(
        "registry.test/untrusted/app:1",
        "c-btrfs-untrusted",
        &["/bin/busybox", "echo", "hello"],
    );
    daemon::assert_denied(&out, "untrusted container on btrfs");
    let event = daemon::wait_for_event(&settings.events(dir), |e| {
        e["verdict"] == "denied" && e["container"]["id"] == "c-btrfs-untrusted"
    });
    assert_eq!(event["reason"], "untrusted_image", "{event}");
    assert_eq!(
        event["container"]["digest"],
        untrusted.manifest_digest(),
        "{event}"
    );
    // Drift: a binary the trusted container writes into its writable layer (on btrfs).
    let out = containerd.run(
        "registry.test/trusted/app:1",
        "c-btrfs-drift",
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox cp /bin/busybox /drifted && /drifted echo drifted",
        ],
    );
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("drifted"),
        "drift ran on btrfs: {out:?}"
    );
    daemon::wait_for_event(&settings.events(dir), |e| {
        e["reason"] == "drift" && e["container"]["id"] == "c-btrfs-drift"
    });
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    drop(daemon);
    drop(containerd);
    log
}
