//! A file system of its own on a loop device under the test's directory (never the machine's
//! disk): btrfs, or ext4 where a removed directory's inode number goes to the next one.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A file system mounted at `path`; unmounted (and its image removed) on drop.
pub struct LoopMount {
    pub path: PathBuf,
    image: PathBuf,
}

impl LoopMount {
    /// Makes a sparse image `dir/NAME.img` of `size` bytes with `mkfs` (the image path is
    /// appended) and mounts it at `dir/NAME` as `fstype`.
    pub fn create(dir: &Path, fstype: &str, size: u64, mkfs: &[&str]) -> Self {
        let image = dir.join(format!("{fstype}.img"));
        let file = std::fs::File::create(&image).expect("create the file system image");
        file.set_len(size).expect("size the file system image");
        drop(file);
        let (program, args) = mkfs.split_first().expect("an mkfs command");
        let made = Command::new(program)
            .args(args)
            .arg(&image)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(made.status.success(), "{program} failed: {made:?}");
        let path = dir.join(fstype);
        std::fs::create_dir_all(&path).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", fstype, "-o", "loop"])
            .arg(&image)
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            mounted.status.success(),
            "mounting {fstype} failed: {mounted:?}"
        );
        Self { path, image }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // The loop device goes with the last reference (mount sets it to clear itself).
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.image);
    }
}
