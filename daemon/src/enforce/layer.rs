//! Identity of layer and scope directories as the kernel sees them.
//!
//! A directory is known by its device, inode number and inode generation. The generation is
//! what a new directory cannot share with a removed one: ext4 hands a freed inode number to the
//! next directory it creates, so a table entry keyed by `(dev, ino)` alone would vouch for a new
//! snapshot that reuses a removed one's number. File systems draw a fresh generation for each
//! inode. Userspace reads it with `FS_IOC_GETVERSION` (ext4, xfs, btrfs, f2fs) or, on tmpfs,
//! from the file handle; where neither works it is zero, and the BPF programs are told so per
//! device (`scope_dev::GENERATION`), so both sides always build the same key.

use std::{
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::Path,
};

use imagegate_common::{kernel_dev, DevIno};

/// A directory's `(dev, ino, generation)`, with `dev` as `stat` reports it in the kernel's
/// internal encoding: what the programs compute for a file (its super block's `s_dev`, or on
/// btrfs its subvolume's device, see [`DeviceNumbering`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct LayerId {
    /// Kernel `dev_t` (`MAJOR << 20 | MINOR`).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Inode generation (zero where the file system does not give it to userspace, and for
    /// files, which are reported, never keyed).
    pub generation: u32,
}

/// `FS_IOC_GETVERSION`: `_IOR('v', 1, long)`.
const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;
/// `statfs.f_type` of tmpfs.
const TMPFS_MAGIC: libc::c_long = 0x0102_1994;
/// `statfs.f_type` of ext2, ext3 and ext4.
const EXT4_MAGIC: libc::c_long = 0xef53;
/// `statfs.f_type` of xfs.
const XFS_MAGIC: libc::c_long = 0x5846_5342;
/// `statfs.f_type` of btrfs.
const BTRFS_MAGIC: libc::c_long = 0x9123_683e;

/// How a file system numbers the devices its files report: what the BPF programs must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceNumbering {
    /// `st_dev` is the super block's `s_dev` (ext4, xfs, tmpfs: `generic_fillattr`).
    SuperBlock,
    /// btrfs: each subvolume has its own device number (`anon_dev`), never the super block's.
    BtrfsSubvolume,
    /// Any other file system (its `statfs` type): unproven until the self-test runs on it.
    Other(libc::c_long),
}

impl DeviceNumbering {
    /// The numbering of the file system `path` is on.
    pub fn of(path: &Path) -> io::Result<Self> {
        let fd = open(path, 0)?;
        Ok(match fs_type(fd.as_fd())? {
            EXT4_MAGIC | XFS_MAGIC | TMPFS_MAGIC => Self::SuperBlock,
            BTRFS_MAGIC => Self::BtrfsSubvolume,
            other => Self::Other(other),
        })
    }
}

/// `statfs(2)`'s `f_type` of the file system `fd` is on.
fn fs_type(fd: BorrowedFd<'_>) -> io::Result<libc::c_long> {
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills the buffer on success.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), fs.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful fstatfs.
    Ok(unsafe { fs.assume_init() }.f_type)
}

impl LayerId {
    /// An identity without a generation: a file's, or one built from a kernel record.
    #[must_use]
    pub const fn new(dev: u64, ino: u64) -> Self {
        Self {
            dev,
            ino,
            generation: 0,
        }
    }

    /// A file's identity from its `stat` (no generation: files are reported, never keyed).
    #[must_use]
    pub const fn of_stat(st: &libc::stat) -> Self {
        Self::new(kernel_dev(st.st_dev), st.st_ino)
    }

    /// Opens `path` (following symlinks) and returns its identity with its generation.
    pub fn of(path: &Path) -> io::Result<Self> {
        Self::of_fd(open(path, 0)?.as_fd())
    }

    /// Like [`Self::of`], for a directory that must not be a symlink: what a layer directory
    /// found by its path is (a symlink planted there is no layer, so this fails).
    pub fn of_dir(path: &Path) -> io::Result<Self> {
        Self::of_fd(open(path, libc::O_DIRECTORY | libc::O_NOFOLLOW)?.as_fd())
    }

    /// The identity of the open file `fd`, with its generation.
    pub fn of_fd(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let meta = std::fs::File::from(fd.try_clone_to_owned()?).metadata()?;
        Ok(Self {
            dev: kernel_dev(meta.dev()),
            ino: meta.ino(),
            generation: generation(fd)?.unwrap_or(0),
        })
    }

    /// The kernel map key.
    #[must_use]
    pub const fn key(self) -> DevIno {
        DevIno {
            dev: self.dev,
            ino: self.ino,
            generation: self.generation,
            pad: 0,
        }
    }

    /// From a kernel map key or event field.
    #[must_use]
    pub const fn from_key(key: DevIno) -> Self {
        Self {
            dev: key.dev,
            ino: key.ino,
            generation: key.generation,
        }
    }

    /// `major:minor` of the device, for people.
    #[must_use]
    pub fn device(self) -> String {
        format!("{}:{}", self.dev >> 20, self.dev & 0xf_ffff)
    }
}

impl std::fmt::Display for LayerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.device(), self.ino)?;
        if self.generation != 0 {
            write!(f, "/{}", self.generation)?;
        }
        Ok(())
    }
}

/// Whether the file system `path` is on gives userspace its inode generations (then keys on its
/// device carry them).
pub fn has_generations(path: &Path) -> io::Result<bool> {
    Ok(generation(open(path, 0)?.as_fd())?.is_some())
}

fn open(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid C string; O_NONBLOCK so a FIFO does not block the open.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK | flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The inode generation of `fd`, or `None` where its file system does not give it.
fn generation(fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    // ext4, xfs, btrfs and f2fs answer FS_IOC_GETVERSION with `inode->i_generation`, as an int.
    let mut value: libc::c_long = 0;
    // SAFETY: the ioctl writes at most a long into `value`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETVERSION, &raw mut value) } == 0 {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "the kernel writes a 32-bit int"
        )]
        return Ok(Some(value as u32));
    }
    let error = io::Error::last_os_error();
    if !matches!(
        error.raw_os_error(),
        Some(libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP)
    ) {
        return Err(error);
    }
    // tmpfs has no such ioctl; its file handle starts with the generation (`shmem_encode_fh`).
    if fs_type(fd)? != TMPFS_MAGIC {
        return Ok(None);
    }
    // Type 1 with three words: generation, inode number low and high halves.
    let handle = super::file_handle::FileHandle::of(fd)?;
    if handle.kind != 1 || handle.bytes != 12 {
        return Ok(None);
    }
    Ok(handle.word(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_matches_stat_and_differs_between_directories() {
        let dir = std::env::temp_dir().join(format!("imagegate-layer-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).expect("mkdir");
        std::fs::create_dir_all(dir.join("b")).expect("mkdir");
        let a = LayerId::of(&dir.join("a")).expect("stat a");
        let b = LayerId::of(&dir.join("b")).expect("stat b");
        assert_eq!(a.dev, b.dev, "same file system");
        assert_ne!(a.ino, b.ino);
        assert_eq!(a.ino, std::fs::metadata(dir.join("a")).expect("stat").ino());
        assert_eq!(LayerId::from_key(a.key()), a);
        assert_eq!(LayerId::of_dir(&dir.join("a")).expect("open a"), a);
        std::os::unix::fs::symlink(dir.join("a"), dir.join("link")).expect("symlink");
        assert!(
            LayerId::of_dir(&dir.join("link")).is_err(),
            "a symlink is no layer directory"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A directory created where a removed one was gets another identity, even when the file
    /// system hands it the same inode number (ext4 does; tmpfs and ext4 both give generations).
    #[test]
    fn a_new_directory_does_not_inherit_a_removed_ones_identity() {
        let dir = std::env::temp_dir().join(format!("imagegate-layer-gen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        if !has_generations(&dir).expect("probe") {
            eprintln!("skipped: {} gives no inode generations", dir.display());
            std::fs::remove_dir_all(&dir).expect("cleanup");
            return;
        }
        let mut seen = std::collections::HashSet::new();
        for round in 0..50 {
            let path = dir.join(format!("d{round}"));
            std::fs::create_dir(&path).expect("mkdir");
            let id = LayerId::of(&path).expect("id");
            assert!(seen.insert(id), "identity {id} seen twice");
            std::fs::remove_dir(&path).expect("rmdir");
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
