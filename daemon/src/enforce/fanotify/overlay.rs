//! Kernels before 6.5 open overlayfs's real files `FMODE_NONOTIFY`, so a mark on the snapshotter's
//! file system never sees a container exec. There the backend marks each overlay mount that has a
//! layer in a scope (found in `/proc/self/mountinfo`) and, per event, finds which layer holds the
//! executed path: the upper directory first, then the lower ones in order, as overlayfs does.

use std::{
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use super::{
    policy::{Location, Scope},
    sys,
};
use crate::enforce::LayerId;

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// Kernel device of the mounted file system (`MAJOR << 20 | MINOR`).
    pub dev: u64,
    /// The directory of the file system mounted here (`/` unless a bind mount).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub super_options: String,
}

/// Undoes mountinfo's `\ooo` escapes (space, tab, newline, backslash, and `,` in options).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo; malformed lines are skipped.
#[must_use]
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let (major, minor) = fields.get(2)?.split_once(':')?;
            let major: u64 = major.parse().ok()?;
            let minor: u64 = minor.parse().ok()?;
            let mut right = right.split(' ');
            let fs_type = right.next()?.to_owned();
            let _source = right.next()?;
            let super_options = right.next().unwrap_or_default().to_owned();
            Some(MountInfo {
                dev: (major << 20) | (minor & 0xf_ffff),
                root: PathBuf::from(unescape(fields.get(3)?)),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fs_type,
                super_options,
            })
        })
        .collect()
}

/// `(upperdir, lowerdirs in order)` from an overlay's super options.
#[must_use]
pub fn layer_dirs(super_options: &str) -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut upper = None;
    let mut lowers = Vec::new();
    for option in super_options.split(',') {
        if let Some(dir) = option.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(unescape(dir)));
        } else if let Some(dirs) = option.strip_prefix("lowerdir=") {
            lowers.extend(
                dirs.split(':')
                    .filter(|dir| !dir.is_empty())
                    .map(|dir| PathBuf::from(unescape(dir))),
            );
        } else if let Some(dir) = option.strip_prefix("lowerdir+=") {
            lowers.push(PathBuf::from(unescape(dir)));
        }
    }
    (upper, lowers)
}

/// One layer directory of a marked overlay.
#[derive(Debug)]
pub struct OverlayLayer {
    pub dir: PathBuf,
    /// Open directory, the base of look-ups.
    pub fd: OwnedFd,
    /// Its identity when it is a layer of a scope (`<scope>/<id>/<dir>`); `None` for a
    /// directory outside every scope, whose files are out of scope.
    pub layer: Option<LayerId>,
    pub upper: bool,
}

/// An overlay mount with at least one layer in a scope.
#[derive(Debug)]
pub struct Overlay {
    /// Kernel device of the overlay.
    pub dev: u64,
    /// Where this namespace sees it: `(mount point, root inside the overlay)`, longest first.
    pub mounts: Vec<(PathBuf, PathBuf)>,
    /// Upper first, then lowers in order.
    pub layers: Vec<OverlayLayer>,
    /// What it was derived from: its mounts' `(mount point, super options)`, sorted. A device
    /// number is reused by the next overlay, so only a different key means a different overlay
    /// to re-derive (and every rescan re-marks anyway: a mark is per super block).
    pub key: Vec<(PathBuf, String)>,
}

/// The [`Overlay::key`] of a device's mounts.
#[must_use]
pub fn mounts_key(mounts: &[&MountInfo]) -> Vec<(PathBuf, String)> {
    let mut key: Vec<(PathBuf, String)> = mounts
        .iter()
        .map(|mount| (mount.mount_point.clone(), mount.super_options.clone()))
        .collect();
    key.sort();
    key
}

/// The layer identity of `dir` if its grandparent is one of `scopes`.
pub(super) fn scope_layer(dir: &Path, scopes: &[std::sync::Arc<Scope>]) -> Option<LayerId> {
    let grandparent = dir.parent()?.parent()?;
    let scope_id = LayerId::of(grandparent).ok()?;
    if scopes.iter().any(|scope| scope.id == scope_id) {
        LayerId::of(dir).ok()
    } else {
        None
    }
}

/// Derives the overlay of one device from its mounts (all of the same super block) if a layer
/// of it is in a scope. Opens and stats directories: call it without holding any lock a decision
/// needs.
#[must_use]
pub fn scoped_overlay(mounts: &[&MountInfo], scopes: &[std::sync::Arc<Scope>]) -> Option<Overlay> {
    let first = mounts.first()?;
    let (upper, lowers) = layer_dirs(&first.super_options);
    let mut layers = Vec::new();
    let mut in_scope = false;
    let dirs = upper
        .iter()
        .map(|dir| (dir, true))
        .chain(lowers.iter().map(|dir| (dir, false)));
    for (dir, is_upper) in dirs {
        let layer = scope_layer(dir, scopes);
        in_scope |= layer.is_some();
        match sys::open_dir(dir) {
            Ok(fd) => layers.push(OverlayLayer {
                dir: dir.clone(),
                fd,
                layer,
                upper: is_upper,
            }),
            // Files of a missing layer resolve to another layer's path or to nothing; the
            // look-up checks inode numbers and fails closed.
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot open an overlay layer directory");
            }
        }
    }
    if !in_scope {
        return None;
    }
    let mut points: Vec<(PathBuf, PathBuf)> = mounts
        .iter()
        .map(|mount| (mount.mount_point.clone(), mount.root.clone()))
        .collect();
    points.sort_by_key(|(point, _)| std::cmp::Reverse(point.as_os_str().len()));
    Some(Overlay {
        dev: first.dev,
        mounts: points,
        layers,
        key: mounts_key(mounts),
    })
}

impl Overlay {
    /// The path inside the overlay of a file whose `/proc/self/fd` link is `seen`: below one of
    /// this namespace's mount points, or (a container's own mount namespace, whose root is the
    /// overlay) already relative to the overlay's root.
    #[must_use]
    pub fn relative(&self, seen: &Path) -> PathBuf {
        for (point, root) in &self.mounts {
            if let Ok(rest) = seen.strip_prefix(point) {
                return strip_root(&root.join(rest));
            }
        }
        strip_root(seen)
    }

    /// Which layer holds the executed file, and the real file's identity. `st` is the
    /// overlay file's `stat`.
    #[must_use]
    pub fn locate(&self, fd: BorrowedFd<'_>, st: &libc::stat) -> (Location, Option<LayerId>) {
        let unknown = (Location::Unknown { layer: None }, None);
        let Ok(seen) = sys::fd_path(fd) else {
            return unknown;
        };
        if seen.as_os_str().as_bytes().ends_with(b" (deleted)") {
            return unknown;
        }
        let relative = self.relative(&seen);
        if relative.as_os_str().is_empty() {
            return unknown;
        }
        for layer in &self.layers {
            let found = match sys::open_beneath(layer.fd.as_fd(), &relative) {
                Ok(found) => found,
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(_) => return unknown,
            };
            let Ok(real) = sys::fstat(found.as_fd()) else {
                return unknown;
            };
            let file = LayerId::of_stat(&real);
            let whiteout = real.st_mode & libc::S_IFMT == libc::S_IFCHR && real.st_rdev == 0;
            // A lower file is never copied up, so overlayfs reports its inode number (layers
            // on one file system); a mismatch means the path led to another file.
            if whiteout || (!layer.upper && real.st_ino != st.st_ino) {
                return (Location::Unknown { layer: layer.layer }, Some(file));
            }
            return match layer.layer {
                Some(layer) => (Location::Layer { layer }, Some(file)),
                None => (Location::OutOfScope, Some(file)),
            };
        }
        unknown
    }
}

fn strip_root(path: &Path) -> PathBuf {
    path.strip_prefix("/").unwrap_or(path).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
90 22 0:52 / /tmp/x rw - tmpfs tmpfs rw,mode=711
91 90 0:53 / /tmp/x/rootfs/c\\0401 rw - overlay overlay rw,lowerdir=/tmp/x/s/2/fs:/tmp/x/s/1/fs,upperdir=/tmp/x/s/3/fs,workdir=/tmp/x/s/3/work
92 22 0:53 /sub /mnt/bind rw - overlay overlay rw,lowerdir=/tmp/x/s/2/fs:/tmp/x/s/1/fs,upperdir=/tmp/x/s/3/fs,workdir=/tmp/x/s/3/work
";

    #[test]
    fn parses_mountinfo_with_escapes() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].dev, 254 << 20);
        assert_eq!(mounts[2].mount_point, PathBuf::from("/tmp/x/rootfs/c 1"));
        assert_eq!(mounts[2].fs_type, "overlay");
        assert_eq!(mounts[3].root, PathBuf::from("/sub"));
        let (upper, lowers) = layer_dirs(&mounts[2].super_options);
        assert_eq!(upper, Some(PathBuf::from("/tmp/x/s/3/fs")));
        assert_eq!(
            lowers,
            vec![
                PathBuf::from("/tmp/x/s/2/fs"),
                PathBuf::from("/tmp/x/s/1/fs")
            ]
        );
        assert_eq!(unescape("a\\134b\\012"), "a\\b\n");
        assert_eq!(unescape("trailing\\"), "trailing\\");
    }

    #[test]
    fn relative_paths_strip_the_longest_mount_point() {
        let overlay = Overlay {
            dev: 53,
            mounts: vec![
                (PathBuf::from("/tmp/x/rootfs/c1"), PathBuf::from("/")),
                (PathBuf::from("/mnt/bind"), PathBuf::from("/sub")),
            ],
            layers: Vec::new(),
            key: Vec::new(),
        };
        assert_eq!(
            overlay.relative(Path::new("/tmp/x/rootfs/c1/bin/evil")),
            PathBuf::from("bin/evil")
        );
        assert_eq!(
            overlay.relative(Path::new("/mnt/bind/evil")),
            PathBuf::from("sub/evil")
        );
        // A container's namespace: the overlay is its root.
        assert_eq!(
            overlay.relative(Path::new("/bin/evil")),
            PathBuf::from("bin/evil")
        );
    }
}
