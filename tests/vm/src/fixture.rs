//! The guest's containerd-like layout: a tmpfs holding
//! `io.containerd.snapshotter.v1.overlayfs/snapshots/<id>/fs` layers and real overlay mounts
//! over them, plus an overlay outside the snapshots directory.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use imagegate::enforce::LayerId;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Host paths inside the guest that the layers copy from (xtask puts them there).
pub const BUSYBOX: &str = "/bin/busybox";
const PRELOAD_LIB: &str = "/fixtures/preload.so";
const DYNAMIC_BINARY: &str = "/fixtures/true-dyn";
const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const INTERPRETER: &str = "/lib64/ld-linux-x86-64.so.2";

/// Directories nested below a layer root for the walk-bound cases.
const DEEP_LEVELS: usize = 70;
const SHALLOW_LEVELS: usize = 50;

/// Layers: (name, snapshot id, verified by default).
const LAYERS: &[(&str, u32, bool)] = &[
    ("verified", 1, true),
    ("unverified", 2, false),
    ("upper", 3, false),
    ("interp-verified", 4, true),
    ("interp-unverified", 5, false),
    ("interp-upper-good", 6, false),
    ("interp-upper-bad", 7, false),
];

pub struct Fixture {
    pub root: PathBuf,
    pub snapshots: PathBuf,
    pub scope: LayerId,
    /// Overlay: unverified over verified, upper = "upper".
    pub merged: PathBuf,
    /// Overlay outside the snapshots directory (same file system).
    pub other_merged: PathBuf,
    /// Overlay roots for the interpreter case.
    pub interp_good: PathBuf,
    pub interp_bad: PathBuf,
    mounts: Vec<PathBuf>,
}

pub fn deep_path(top: &str) -> PathBuf {
    let mut path = PathBuf::from(top);
    for _ in 0..DEEP_LEVELS {
        path.push("d");
    }
    path.join("busybox")
}

pub fn shallow_path() -> PathBuf {
    let mut path = PathBuf::from("shallow-verified");
    for _ in 0..SHALLOW_LEVELS {
        path.push("d");
    }
    path.join("busybox")
}

fn copy(from: &str, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copy {from} to {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn write_script(path: &Path, body: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("script parent")?)?;
    std::fs::write(path, format!("#!/bin/busybox sh\n{body}\n"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

impl Fixture {
    pub fn create() -> Result<Self> {
        let root = PathBuf::from("/var/lib/containerd");
        std::fs::create_dir_all(&root)?;
        mount(
            Some("tmpfs"),
            &root,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0711"),
        )
        .context("mounting the snapshotter tmpfs")?;
        let snapshots = root.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
        let mut fixture = Self {
            scope: LayerId::new(0, 0),
            merged: root.join("rootfs/c1"),
            other_merged: root.join("other/merged"),
            interp_good: root.join("rootfs/interp-good"),
            interp_bad: root.join("rootfs/interp-bad"),
            snapshots,
            root,
            mounts: vec![],
        };
        for (name, _, _) in LAYERS {
            std::fs::create_dir_all(fixture.layer(name))?;
            std::fs::create_dir_all(fixture.layer(name).with_file_name("work"))?;
        }
        fixture.scope = LayerId::of(&fixture.snapshots)?;
        let self_exe = std::fs::read_link("/proc/self/exe")?;
        let self_exe = self_exe.to_str().context("exe path")?;

        let verified = fixture.layer("verified");
        copy(BUSYBOX, &verified.join("bin/ok"))?;
        copy(self_exe, &verified.join("bin/prober"))?;
        copy(PRELOAD_LIB, &verified.join("lib/good.so"))?;
        write_script(&verified.join("bin/good.sh"), "exit 0")?;
        copy(BUSYBOX, &verified.join(deep_path("deep-verified")))?;
        copy(BUSYBOX, &verified.join(shallow_path()))?;

        let unverified = fixture.layer("unverified");
        copy(BUSYBOX, &unverified.join("bin/evil"))?;
        copy(PRELOAD_LIB, &unverified.join("lib/evil.so"))?;
        write_script(&unverified.join("bin/evil.sh"), "exit 0")?;
        copy(BUSYBOX, &unverified.join(deep_path("deep-unverified")))?;

        let interp_verified = fixture.layer("interp-verified");
        copy(DYNAMIC_BINARY, &interp_verified.join("bin/dyn"))?;
        copy(LIBC, &interp_verified.join(LIBC.trim_start_matches('/')))?;
        copy(
            INTERPRETER,
            &interp_verified.join(INTERPRETER.trim_start_matches('/')),
        )?;
        copy(
            INTERPRETER,
            &fixture
                .layer("interp-unverified")
                .join(INTERPRETER.trim_start_matches('/')),
        )?;

        let merged = fixture.merged.clone();
        fixture.overlay(&merged, &["unverified", "verified"], "upper")?;
        let good = fixture.interp_good.clone();
        fixture.overlay(&good, &["interp-verified"], "interp-upper-good")?;
        let bad = fixture.interp_bad.clone();
        fixture.overlay(
            &bad,
            &["interp-unverified", "interp-verified"],
            "interp-upper-bad",
        )?;

        let other = fixture.root.join("other");
        copy(BUSYBOX, &other.join("lower/bin/evil"))?;
        for dir in ["upper", "work", "merged"] {
            std::fs::create_dir_all(other.join(dir))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            other.join("lower").display(),
            other.join("upper").display(),
            other.join("work").display()
        );
        fixture.mount_overlay(&other.join("merged"), &options)?;
        Ok(fixture)
    }

    /// `snapshots/<id>/fs` of a named layer.
    pub fn layer(&self, name: &str) -> PathBuf {
        let id = LAYERS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map_or(0, |(_, id, _)| *id);
        self.snapshots.join(id.to_string()).join("fs")
    }

    pub fn layer_id(&self, name: &str) -> Result<LayerId> {
        LayerId::of(&self.layer(name)).with_context(|| format!("stat layer {name}"))
    }

    pub fn verified_layers(&self) -> Vec<LayerId> {
        LAYERS
            .iter()
            .filter(|(_, _, verified)| *verified)
            .filter_map(|(name, _, _)| self.layer_id(name).ok())
            .collect()
    }

    pub fn all_layers(&self) -> Vec<LayerId> {
        LAYERS
            .iter()
            .filter_map(|(name, _, _)| self.layer_id(name).ok())
            .collect()
    }

    fn overlay(&mut self, target: &Path, lowers: &[&str], upper: &str) -> Result<()> {
        std::fs::create_dir_all(target)?;
        let lowerdir: Vec<String> = lowers
            .iter()
            .map(|name| self.layer(name).display().to_string())
            .collect();
        let upper_fs = self.layer(upper);
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper_fs.display(),
            upper_fs.with_file_name("work").display()
        );
        self.mount_overlay(target, &options)
    }

    fn mount_overlay(&mut self, target: &Path, options: &str) -> Result<()> {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options),
        )
        .with_context(|| format!("mount overlay {options} on {}", target.display()))?;
        self.mounts.push(target.to_owned());
        Ok(())
    }

    /// A tmpfs at `<root>/outside` holding a static busybox, once: a file from outside every
    /// layer, as a volume would be. Returns the binary's path inside `root`.
    pub fn outside_dir(&mut self, root: &Path) -> Result<String> {
        let dir = root.join("outside");
        if !self.mounts.contains(&dir) {
            std::fs::create_dir_all(&dir)?;
            mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=0755"),
            )
            .context("mounting the outside tmpfs")?;
            self.mounts.push(dir.clone());
            copy(BUSYBOX, &dir.join("busybox"))?;
        }
        Ok("/outside/busybox".to_owned())
    }

    pub fn cleanup(&mut self) {
        for target in self.mounts.drain(..).rev() {
            let _ = umount2(&target, MntFlags::MNT_DETACH);
        }
        let _ = umount2(&self.root, MntFlags::MNT_DETACH);
    }
}
