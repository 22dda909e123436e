//! Issue case 9 at the daemon level: layer identity a new snapshot cannot inherit. containerd's
//! root is on a small ext4 file system (a loop device), where a removed directory's inode number
//! goes to the next directory made; the host (fanotify) and the 6.12 guest (BPF LSM, whose
//! tables outlive the daemon) both run it.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use super::{
    containerd::PrivateContainerd,
    daemon::{self, DaemonProcess, Settings},
    image::{self, File},
    loop_mount::LoopMount,
};

/// The `fs` directories of the overlay snapshotter's snapshots under containerd's `root`.
fn snapshot_dirs(root: &Path) -> Vec<PathBuf> {
    let snapshots = root.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    std::fs::read_dir(&snapshots)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("fs"))
                .filter(|fs| fs.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn import(dir: &Path, containerd: &PrivateContainerd, name: &str, marker: &str) {
    let busybox = std::fs::read("/bin/busybox").expect("busybox (apt-get install busybox-static)");
    let img = image::image(vec![image::layer(&[
        File::new("bin/busybox", busybox, 0o755),
        File::new(&format!("etc/{marker}"), marker, 0o644),
    ])]);
    let archive = dir.join(format!("{marker}.tar"));
    image::write_archive(&archive, name, &img, false);
    containerd.import("default", &archive);
}

/// Low-numbered files removed one at a time, to move where new snapshots land.
const FILLERS: usize = 40;

/// The content store's blobs under containerd's `root`.
fn blobs(root: &Path) -> BTreeSet<std::ffi::OsString> {
    std::fs::read_dir(root.join("io.containerd.content.v1.content/blobs/sha256"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes image `name` and waits until its snapshot directories `layers` are gone and the
/// content store holds `blobs_before` again (the garbage collector may remove blobs later than
/// snapshots; until it has, their inode numbers are not free).
fn remove(
    containerd: &PrivateContainerd,
    root: &Path,
    name: &str,
    layers: &[PathBuf],
    blobs_before: &BTreeSet<std::ffi::OsString>,
) {
    let out = containerd.ctr(&["images", "rm", "--sync", name]);
    assert!(out.status.success(), "removing {name}: {out:?}");
    let started = Instant::now();
    while layers.iter().any(|fs| fs.exists()) || blobs(root) != *blobs_before {
        assert!(
            started.elapsed() < daemon::wait_limit(),
            "the snapshots of {name} were not removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A trusted image S is judged by the daemon (`backend`), the daemon stops, S is removed with its
/// snapshot, and untrusted images are imported until one's snapshot `fs` directory gets S's inode
/// number (asserted: the premise); the daemon starts again. That image's container is denied from
/// its first exec (`untrusted_image`), and a host process executing its layer's busybox through
/// the snapshot directory is denied too (`unverified_layer`): nothing S's verdict left behind
/// (BPF LSM's pinned table keeps entries while the daemon is down) vouches for the new
/// directory. Returns the second daemon's log.
pub fn a_reused_inode_inherits_nothing(dir: &Path, backend: &'static str) -> String {
    // A journaled ext4 (e2fsprogs): without a journal ext4 passes over inodes deleted in the last
    // minute or more (`recently_deleted`), with one it takes the lowest free number of the group.
    let ext4 = LoopMount::create(
        dir,
        "ext4",
        64 << 20,
        &["/usr/sbin/mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096"],
    );
    // Only containerd writes there: the daemon's state, logs and the test's files stay outside, so
    // the trusted image's inode numbers are free again when the next image is imported.
    let containerd = PrivateContainerd::start_with_data(dir, &ext4.path);
    let root = containerd.data.join("root");
    std::fs::write(dir.join("policy.toml"), super::TRUSTED_ONLY_POLICY).expect("policy");
    let settings = Settings {
        mode: "enforce",
        backend,
        insecure: Vec::new(),
        tag: "inode-reuse",
    };
    let config = settings.write(dir, &containerd);

    // Files made first hold low inode numbers; removing them one by one later moves where the
    // next import's directories land (ext4 takes the lowest free number in a block group: one
    // group here, 4 KiB blocks), until a new snapshot gets the removed one's number.
    let fillers = ext4.path.join("fillers");
    std::fs::create_dir_all(&fillers).expect("fillers");
    for n in 0..FILLERS {
        std::fs::write(fillers.join(n.to_string()), "").expect("filler");
    }
    let trusted = "registry.test/trusted/app:1";
    let blobs_before = blobs(&root);
    import(dir, &containerd, trusted, "trusted");
    let daemon = DaemonProcess::start(dir, &config, "inode-reuse-1");
    daemon.wait_for_verdicts(dir, &[(trusted.to_owned(), "trusted")]);
    let trusted_layers = snapshot_dirs(&root);
    let vouched: Vec<u64> = trusted_layers
        .iter()
        .map(|fs| std::fs::metadata(fs).expect("snapshot").ino())
        .collect();
    assert!(!vouched.is_empty(), "the trusted image has no snapshot");
    daemon.stop();

    remove(&containerd, &root, trusted, &trusted_layers, &blobs_before);
    let mut reusing = None;
    for n in 0..FILLERS {
        let name = format!("registry.test/untrusted/app:{n}");
        let before = snapshot_dirs(&root);
        let blobs_before = blobs(&root);
        import(dir, &containerd, &name, &format!("untrusted-{n}"));
        let layer = snapshot_dirs(&root)
            .into_iter()
            .find(|fs| !before.contains(fs))
            .expect("the imported image's snapshot");
        let ino = std::fs::metadata(&layer).expect("snapshot").ino();
        eprintln!("import {n}: {} ino {ino}", layer.display());
        if vouched.contains(&ino) {
            reusing = Some((name, layer));
            break;
        }
        // Removed again, and one filler with it: the next import starts one number lower.
        remove(
            &containerd,
            &root,
            &name,
            std::slice::from_ref(&layer),
            &blobs_before,
        );
        std::fs::remove_file(fillers.join(n.to_string())).expect("remove a filler");
    }
    let (name, layer) = reusing.unwrap_or_else(|| {
        panic!("ext4 gave no new snapshot the removed one's inode ({vouched:?})")
    });

    let daemon = DaemonProcess::start(dir, &config, "inode-reuse-2");
    daemon.wait_for_verdicts(dir, &[(name.clone(), "untrusted")]);
    let out = containerd.run(&name, "c-reused", &["/bin/busybox", "echo", "reused ran"]);
    daemon::assert_denied(
        &out,
        "a container whose snapshot reuses a trusted one's inode",
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("reused ran"));
    let events = settings.events(dir);
    let event = daemon::wait_for_event(&events, |e| {
        e["verdict"] == "denied" && e["container"]["id"] == "c-reused"
    });
    assert_eq!(event["reason"], "untrusted_image", "{event}");
    // A host process, through the snapshot directory: the layer rule.
    let out = std::process::Command::new(layer.join("bin/busybox"))
        .args(["echo", "host ran"])
        .output();
    match out {
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EPERM),
            "host exec of the reusing layer: {e}"
        ),
        Ok(out) => panic!("a host process ran the reusing layer's file: {out:?}"),
    }
    // Judged as a host process (its root is no container's), whichever container the event
    // names by the layer's image.
    let event = daemon::wait_for_event(&events, |e| {
        e["verdict"] == "denied"
            && e["reason"] == "unverified_layer"
            && e["container_root"].is_null()
    });
    assert_eq!(
        event["layer"]["ino"],
        std::fs::metadata(&layer).expect("layer").ino(),
        "{event}"
    );
    let log = daemon.log_text();
    daemon.stop();
    drop(containerd);
    log
}
