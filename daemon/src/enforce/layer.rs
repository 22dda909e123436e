//! Identity of layer and scope directories as the kernel sees them.

use std::{os::unix::fs::MetadataExt as _, path::Path};

use imagegate_common::{kernel_dev, DevIno};

/// A directory's `(dev, ino)`, with `dev` in the kernel's internal encoding, which is what the
/// programs compare with `super_block.s_dev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct LayerId {
    /// Kernel `dev_t` (`MAJOR << 20 | MINOR`).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl LayerId {
    /// Stats `path` (following symlinks) and returns its identity.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let metadata = std::fs::metadata(path)?;
        Ok(Self {
            dev: kernel_dev(metadata.dev()),
            ino: metadata.ino(),
        })
    }

    /// The kernel map key.
    #[must_use]
    pub const fn key(self) -> DevIno {
        DevIno {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// From a kernel map key or event field.
    #[must_use]
    pub const fn from_key(key: DevIno) -> Self {
        Self {
            dev: key.dev,
            ino: key.ino,
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
        write!(f, "{}/{}", self.device(), self.ino)
    }
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
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
