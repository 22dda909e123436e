//! A file's handle as its file system encodes it (`name_to_handle_at`): how the fanotify backend
//! reopens a backing file through a mount of its file system, and where tmpfs keeps the inode
//! generation that keys carry.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `struct file_handle` with room for the largest handle.
#[derive(Clone)]
#[repr(C)]
pub struct FileHandle {
    /// Bytes of `data` in use.
    pub bytes: libc::c_uint,
    /// The file system's handle type.
    pub kind: libc::c_int,
    /// The handle, in the file system's own layout.
    pub data: [u8; libc::MAX_HANDLE_SZ as usize],
}

impl FileHandle {
    /// The handle of the open file `fd`.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let mut handle = Self {
            bytes: libc::MAX_HANDLE_SZ as libc::c_uint,
            kind: 0,
            data: [0; libc::MAX_HANDLE_SZ as usize],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: handle has room for MAX_HANDLE_SZ bytes, as its header says; "" is a valid path.
        let result = unsafe {
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                c"".as_ptr(),
                (&raw mut handle).cast(),
                &raw mut mount_id,
                libc::AT_EMPTY_PATH,
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(handle)
    }

    /// The handle's type and bytes in use: with the device, a file's identity for as long as the
    /// file system keeps inode generations in its handles (ext4, xfs, btrfs, tmpfs).
    #[must_use]
    pub fn key(&self) -> (i32, &[u8]) {
        (
            self.kind,
            self.data.get(..self.bytes as usize).unwrap_or(&self.data),
        )
    }

    /// The handle's `index`th 32-bit word, if it has one.
    #[must_use]
    pub fn word(&self, index: usize) -> Option<u32> {
        let start = index.checked_mul(4)?;
        if start + 4 > self.bytes as usize {
            return None;
        }
        let bytes: [u8; 4] = self.data.get(start..start + 4)?.try_into().ok()?;
        Some(u32::from_ne_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsFd as _, os::unix::fs::MetadataExt as _, process::Command};

    use super::*;

    /// What the fanotify backend's memo of file locations rests on: ext4 hands a removed file's
    /// inode number to the next file it creates, and the new file's handle still differs (it
    /// carries the inode's generation).
    #[test]
    fn a_reused_inode_number_gets_another_handle() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping: a loop mount needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("ext4.img");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(16 << 20))
            .expect("image");
        let made = Command::new("mke2fs")
            .arg("-F")
            .arg("-q")
            .arg(&image)
            .output()
            .expect("mke2fs (e2fsprogs)");
        assert!(made.status.success(), "{made:?}");
        let root = dir.path().join("mnt");
        std::fs::create_dir(&root).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&image)
            .arg(&root)
            .status()
            .expect("mount");
        assert!(mounted.success());
        let result = std::panic::catch_unwind(|| {
            let first = root.join("first");
            std::fs::write(&first, "1").expect("write");
            let (ino, handle) = {
                let file = std::fs::File::open(&first).expect("open");
                let ino = file.metadata().expect("stat").ino();
                (ino, FileHandle::of(file.as_fd()).expect("handle"))
            };
            std::fs::remove_file(&first).expect("remove");
            let second = root.join("second");
            std::fs::write(&second, "2").expect("write");
            let file = std::fs::File::open(&second).expect("open");
            assert_eq!(
                file.metadata().expect("stat").ino(),
                ino,
                "ext4 did not reuse the inode number: the test proves nothing"
            );
            let again = FileHandle::of(file.as_fd()).expect("handle");
            assert_ne!(again.key(), handle.key(), "a reused inode kept its handle");
        });
        let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
