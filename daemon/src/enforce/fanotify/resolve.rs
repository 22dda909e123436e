//! Finding the layer of an event's file on a scope's file system.
//!
//! From 6.5 the event for a container exec is the overlay's backing (real) file, whose
//! `/proc/self/fd` link is relative to a private mount of the layer directory (`/bin/busybox`),
//! so the layer cannot be read off it. A file handle reopened through a mount of the scope's file
//! system that this namespace sees gives the host path (`<scope>/<id>/fs/bin/busybox`); a `stat`
//! of that path must lead back to the same inode, or the file is treated as unreadable (fail
//! closed), never as a host file.

use std::{
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use imagegate_common::kernel_dev;

use super::{
    policy::{Location, Policy, Scope},
    sys,
};
use crate::enforce::LayerId;

/// The host path of the file behind `fd`, as seen through `scope`'s mount.
fn host_path(fd: BorrowedFd<'_>, scope: &Scope) -> Option<PathBuf> {
    match sys::reopen_via_mount(fd, scope.mount_fd.as_fd()) {
        Ok(reopened) => sys::fd_path(reopened.as_fd()).ok(),
        // A file system without file handles: the fd's own path is the best there is; it is
        // checked like any other.
        Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => sys::fd_path(fd).ok(),
        Err(_) => None,
    }
}

/// The layer directory `<id>/<dir>` of a path relative to a scope, if it is at least two deep
/// (a file directly in `snapshots/` is no layer's, as in the programs' walk).
fn layer_dir_of(relative: &Path) -> Option<PathBuf> {
    let mut components = relative.components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(id)), Some(Component::Normal(dir))) => {
            Some(Path::new(id).join(dir))
        }
        _ => None,
    }
}

/// Locates a (non-overlay) file on a judged file system. `st` is its `fstat`.
#[must_use]
pub fn locate(policy: &Policy, fd: BorrowedFd<'_>, st: &libc::stat) -> Location {
    let dev = kernel_dev(st.st_dev);
    // Each scope's prefix is spelled through its own mount fd; scopes on one file system
    // normally share one (its root mount), so the path is usually computed once.
    let mut seen: Option<(Arc<OwnedFd>, PathBuf)> = None;
    for scope in policy.scopes_on(dev) {
        let reuse = seen
            .as_ref()
            .is_some_and(|(via, _)| Arc::ptr_eq(via, &scope.mount_fd));
        if !reuse {
            let Some(path) = host_path(fd, scope) else {
                return Location::Unknown { layer: None };
            };
            let same_file = std::fs::symlink_metadata(&path)
                .is_ok_and(|meta| meta.dev() == st.st_dev && meta.ino() == st.st_ino);
            if !same_file {
                tracing::debug!(path = %path.display(), "reported path does not lead back to the file");
                return Location::Unknown { layer: None };
            }
            seen = Some((Arc::clone(&scope.mount_fd), path));
        }
        let Some((_, path)) = &seen else { continue };
        let Ok(relative) = path.strip_prefix(&scope.prefix) else {
            continue;
        };
        let Some(layer_dir) = layer_dir_of(relative) else {
            continue;
        };
        let layer_dir = scope.prefix.join(layer_dir);
        // Opened, not stat'ed: its generation is part of its identity, so a directory that
        // reuses a removed layer's inode number is not that layer.
        return match LayerId::of_dir(&layer_dir) {
            Ok(layer) => Location::Layer { layer },
            Err(_) => Location::Unknown { layer: None },
        };
    }
    Location::OutOfScope
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_dirs_need_two_components() {
        assert_eq!(
            layer_dir_of(Path::new("12/fs/bin/sh")),
            Some(PathBuf::from("12/fs"))
        );
        assert_eq!(
            layer_dir_of(Path::new("12/evil")),
            Some(PathBuf::from("12/evil"))
        );
        assert_eq!(layer_dir_of(Path::new("evil")), None);
        assert_eq!(layer_dir_of(Path::new("")), None);
    }
}
