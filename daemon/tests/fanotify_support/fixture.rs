//! A containerd-like snapshotter root on a private tmpfs:
//! `<root>/io.containerd.snapshotter.v1.overlayfs/snapshots/<id>/fs`, a container overlay over
//! it, an overlay outside the scope and a "host" binary on the same tmpfs (so the backend's
//! file system mark sees it and must allow it), all unmounted on drop.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use imagegate::enforce::LayerId;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// What the layers hold: a copy of this, run as `true`.
const PROGRAM: &str = "/bin/true";

pub struct Fixture {
    pub root: PathBuf,
    pub snapshots: PathBuf,
    /// Container rootfs: lower = unverified (2) over verified (1), upper = 3.
    pub merged: PathBuf,
    /// An overlay whose layers are outside the snapshots directory.
    pub other_merged: PathBuf,
    /// A binary on the tmpfs outside the scope.
    pub host_binary: PathBuf,
    /// A stand-in for runc, outside the scope.
    pub runtime: PathBuf,
    mounts: Vec<PathBuf>,
}

fn copy_program(to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(PROGRAM, to)
        .unwrap_or_else(|e| panic!("copy {PROGRAM} to {}: {e}", to.display()));
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Unmounts fixtures left by test processes that were killed.
fn clean_stale() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("imagegate-fanotify-") else {
            continue;
        };
        let pid: i32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pid == 0 || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let root = entry.path();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(1))
            .filter(|point| Path::new(point).starts_with(&root))
            .collect();
        points.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in points {
            let _ = umount2(point, MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}

impl Fixture {
    pub fn create() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        clean_stale();
        let root = PathBuf::from(format!(
            "/tmp/imagegate-fanotify-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root).expect("mkdir root");
        mount(
            Some("tmpfs"),
            &root,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0711"),
        )
        .expect("mount the private tmpfs (run as root)");
        let snapshots = root.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
        let mut fixture = Self {
            merged: root.join("rootfs/c1"),
            other_merged: root.join("other/merged"),
            host_binary: root.join("host/bin/true"),
            runtime: root.join("host/bin/runc"),
            snapshots,
            root,
            mounts: Vec::new(),
        };
        for id in 1..=3 {
            fixture.make_layer(id);
        }
        copy_program(&fixture.layer(1).join("bin/ok"));
        copy_program(&fixture.layer(2).join("bin/evil"));
        copy_program(&fixture.host_binary);
        copy_program(&fixture.runtime);
        let merged = fixture.merged.clone();
        fixture.overlay(&merged, &[2, 1], 3);

        let other = fixture.root.join("other");
        copy_program(&other.join("lower/bin/evil"));
        for dir in ["upper", "work", "merged"] {
            std::fs::create_dir_all(other.join(dir)).expect("mkdir");
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            other.join("lower").display(),
            other.join("upper").display(),
            other.join("work").display()
        );
        fixture.mount_overlay(&other.join("merged"), &options);
        fixture
    }

    /// `snapshots/<id>/fs`.
    pub fn layer(&self, id: u32) -> PathBuf {
        self.snapshots.join(id.to_string()).join("fs")
    }

    pub fn make_layer(&self, id: u32) {
        std::fs::create_dir_all(self.layer(id)).expect("mkdir layer");
        std::fs::create_dir_all(self.snapshots.join(id.to_string()).join("work")).expect("mkdir");
    }

    pub fn layer_id(&self, id: u32) -> LayerId {
        LayerId::of(&self.layer(id)).expect("stat layer")
    }

    /// Mounts an overlay of snapshot layers at `target` (lowers top first).
    pub fn overlay(&mut self, target: &Path, lowers: &[u32], upper: u32) {
        std::fs::create_dir_all(target).expect("mkdir target");
        let lowerdir: Vec<String> = lowers
            .iter()
            .map(|id| self.layer(*id).display().to_string())
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            self.layer(upper).display(),
            self.snapshots
                .join(upper.to_string())
                .join("work")
                .display()
        );
        self.mount_overlay(target, &options);
    }

    fn mount_overlay(&mut self, target: &Path, options: &str) {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options),
        )
        .unwrap_or_else(|e| panic!("mount overlay {options} on {}: {e}", target.display()));
        self.mounts.push(target.to_owned());
    }

    /// Unmounts an overlay mounted by [`Fixture::overlay`].
    pub fn unmount(&mut self, target: &Path) {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        self.mounts.retain(|mount| mount != target);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for target in self.mounts.drain(..).rev() {
            let _ = umount2(&target, MntFlags::MNT_DETACH);
        }
        let _ = umount2(&self.root, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.root);
    }
}
