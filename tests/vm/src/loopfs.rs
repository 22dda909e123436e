//! A file system of its own on a loop device, laid out like containerd's root, for the cases
//! that need a particular one (ext4's inode reuse, btrfs's device numbers); the guest's
//! snapshotter tmpfs has neither. Unmounted and removed on drop.

use std::{path::PathBuf, process::Command};

use anyhow::{ensure, Context as _, Result};
use nix::mount::{umount2, MntFlags};

pub struct LoopFs {
    pub root: PathBuf,
    /// `<root>/io.containerd.snapshotter.v1.overlayfs/snapshots`.
    pub snapshots: PathBuf,
    image: PathBuf,
}

impl LoopFs {
    /// Makes `/run/imagegate-<name>.img` of `size` bytes (sparse) with `mkfs` (the image path is
    /// appended) and mounts it as `fstype` at `/run/imagegate-<name>`.
    pub fn create(name: &str, size: u64, mkfs: &[&str], fstype: &str) -> Result<Self> {
        let image = PathBuf::from(format!("/run/imagegate-{name}.img"));
        let file = std::fs::File::create(&image).context("creating the image")?;
        file.set_len(size).context("sizing the image")?;
        drop(file);
        let (program, args) = mkfs.split_first().context("no mkfs command")?;
        let made = Command::new(program)
            .args(args)
            .arg(&image)
            .output()
            .with_context(|| format!("running {program}"))?;
        ensure!(made.status.success(), "{program} failed: {made:?}");
        let root = PathBuf::from(format!("/run/imagegate-{name}"));
        std::fs::create_dir_all(&root)?;
        let status = Command::new("mount")
            .args(["-t", fstype, "-o", "loop"])
            .arg(&image)
            .arg(&root)
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mounting the {fstype} image failed ({status})"
        );
        let snapshots = root.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
        std::fs::create_dir_all(&snapshots)?;
        Ok(Self {
            root,
            snapshots,
            image,
        })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Detaches the mounts below it too.
        let _ = umount2(self.root.as_path(), MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.image);
    }
}
