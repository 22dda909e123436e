//! Which container a process belongs to, for the fanotify backend: its root file system
//! (`/proc/<pid>/root`), which a container cannot change. runc pivots into the container's
//! overlay before the entrypoint's exec, so the exec already comes from inside it. The overlay's
//! `upperdir=` (from the process's own mountinfo) is the container's writable snapshot
//! directory, the key the daemon records containers under; its `lowerdir=`s are the image's
//! layers. A root is looked up once per overlay and remembered by device, inode and mount id.

use std::{ffi::CString, os::fd::AsFd as _, path::Path, sync::Arc};

use imagegate_common::kernel_dev;

use super::{
    memo::Memo,
    overlay::{layer_dirs, parse_mountinfo, scope_layer},
    policy::{Location, Policy, Scope},
    resolve, sys,
};
use crate::enforce::LayerId;

/// Roots remembered; the memo is emptied when full (overlays come and go with containers).
const MAX_ROOTS: usize = 4096;

/// A process's root, as trust goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Root {
    /// The container's key: its writable layer directory, or the top layer of a read-only
    /// root; `None` for a process outside every judged container (the host).
    pub key: Option<LayerId>,
    /// Whether the root has a writable layer (else its trust comes from its top layer).
    pub writable: bool,
    /// The image's layers under the root (the overlay's lower directories).
    pub lowers: Vec<LayerId>,
}

impl Root {
    /// A process outside every judged container.
    #[must_use]
    pub fn host() -> Self {
        Self::default()
    }
}

/// `(dev, ino, mount id)` of a process's root directory: a new overlay may reuse a device
/// number, but not with the same root inode and mount id while the old one is mounted.
type RootId = (u64, u64, u64);

/// Remembered roots.
pub struct Roots {
    memo: Memo<RootId, Arc<Root>>,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            memo: Memo::new(MAX_ROOTS),
        }
    }
}

impl Roots {
    /// The root of process `pid`, `None` when it cannot be read (the process is gone).
    pub fn of(&self, pid: i32, policy: &Policy) -> Option<Arc<Root>> {
        let id = root_id(pid)?;
        if let Some(root) = self.memo.get(&id) {
            return Some(root);
        }
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
        let root = match root_from_mountinfo(&mountinfo, id.0, &policy.scopes) {
            Found::Root(root) => root,
            Found::NotOverlay => bind_root(pid, policy),
        };
        let root = Arc::new(root);
        self.memo.insert(id, Arc::clone(&root));
        Some(root)
    }

    /// Forgets every remembered root (scopes changed).
    pub fn clear(&self) {
        self.memo.clear();
    }
}

fn root_id(pid: i32) -> Option<RootId> {
    let path = CString::new(format!("/proc/{pid}/root")).ok()?;
    // SAFETY: statx writes into `st`; the path is NUL-terminated.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let ret = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            0,
            libc::STATX_INO | libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if ret != 0 {
        return None;
    }
    let dev = kernel_dev(libc::makedev(st.stx_dev_major, st.stx_dev_minor));
    Some((dev, st.stx_ino, st.stx_mnt_id))
}

/// What the process's mountinfo says of its root.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// An overlay (a container's, or another runtime's: then the host).
    Root(Root),
    /// Not an overlay: the host's root, or a bind mount of a layer directory (a read-only
    /// single-layer container), told apart by [`bind_root`].
    NotOverlay,
}

/// A root that is not an overlay is a container's when it is a layer directory under a scope
/// itself (`snapshots/<id>/fs`, bind-mounted read-only for a one-layer image): found like an
/// executed file's layer, by the root's host path through the scope's mount.
fn bind_root(pid: i32, policy: &Policy) -> Root {
    let Ok(root) = std::fs::File::open(format!("/proc/{pid}/root")) else {
        return Root::host();
    };
    let Ok(st) = sys::fstat(root.as_fd()) else {
        return Root::host();
    };
    match resolve::locate(policy, root.as_fd(), &st, None) {
        Location::Layer { layer } => Root {
            key: Some(layer),
            writable: false,
            lowers: vec![layer],
        },
        _ => Root::host(),
    }
}

/// The root from the process's mountinfo: the mount on `/` of device `dev` (the last such line:
/// mounts stack).
#[must_use]
pub fn root_from_mountinfo(mountinfo: &str, dev: u64, scopes: &[Arc<Scope>]) -> Found {
    let mounts = parse_mountinfo(mountinfo);
    let Some(mount) = mounts
        .iter()
        .rev()
        .find(|mount| mount.mount_point == Path::new("/") && mount.dev == dev)
    else {
        return Found::Root(Root::host());
    };
    if mount.fs_type != "overlay" {
        return Found::NotOverlay;
    }
    let (upper, lowers) = layer_dirs(&mount.super_options);
    let lowers_ids: Vec<LayerId> = lowers
        .iter()
        .filter_map(|dir| LayerId::of(dir).ok())
        .collect();
    let (key, writable) = match upper {
        Some(upper) => (scope_layer(&upper, scopes), true),
        None => (
            lowers.first().and_then(|top| scope_layer(top, scopes)),
            false,
        ),
    };
    if key.is_none() {
        // Another runtime's overlay (Docker, podman): not a container we judge.
        return Found::Root(Root::host());
    }
    Found::Root(Root {
        key,
        writable,
        lowers: lowers_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_outside_the_scopes_is_the_host_and_a_plain_mount_is_looked_at_again() {
        let mountinfo = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n";
        assert_eq!(
            root_from_mountinfo(mountinfo, 8 << 20 | 1, &[]),
            Found::NotOverlay
        );
        let overlay = "30 1 0:50 / / rw - overlay overlay rw,lowerdir=/x/1/fs,upperdir=/x/2/fs,workdir=/x/2/work\n";
        assert_eq!(
            root_from_mountinfo(overlay, 50, &[]),
            Found::Root(Root::host()),
            "no scope holds /x"
        );
    }
}
