//! Finding the layer of an event's file on a scope's file system.
//!
//! From 6.5 the event for a container exec is the overlay's backing (real) file, whose
//! `/proc/self/fd` link is relative to a private mount of the layer directory (`/bin/busybox`),
//! so the layer cannot be read off it. A file handle reopened through a mount of the scope's file
//! system that this namespace sees gives the host path (`<scope>/<id>/fs/bin/busybox`); a `stat`
//! of that path must lead back to the same inode, or the file is treated as unreadable (fail
//! closed), never as a host file.
//!
//! That is several system calls with two walks of long paths per decision, and every container
//! exec is decided (no ignore marks for them). Where the scope's file system puts inode
//! generations in its file handles, a file found in a layer is remembered by its handle
//! ([`Remembered`]): the next exec of it costs one `name_to_handle_at`. A file never changes
//! layer under one handle: a layer's files stay in its directory (containerd renames a removed
//! snapshot's parent, not its `fs`, whose identity is the layer's), a container writes only to
//! its own writable layer (through its overlay, which cannot move a file across layers), and a
//! reused inode number comes with another generation, so another handle.

use std::{
    io,
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use imagegate_common::kernel_dev;

use super::{
    memo::Memo,
    policy::{Location, Policy, Scope},
    sys,
};
use crate::enforce::{file_handle::FileHandle, LayerId};

/// Files remembered (the memo is emptied when full: layers come and go with images).
const MAX_FILES: usize = 16_384;

/// A file's identity by handle: its device, the handle's type and bytes.
type FileKey = (u64, i32, Vec<u8>);

/// The layer of each file found in one, by file handle (see the module doc). Emptied when the
/// scopes change.
pub struct Remembered(Memo<FileKey, LayerId>);

impl Default for Remembered {
    fn default() -> Self {
        Self(Memo::new(MAX_FILES))
    }
}

impl Remembered {
    /// Forgets every remembered file (scopes changed).
    pub fn clear(&self) {
        self.0.clear();
    }
}

/// The host path of the file behind `fd` (whose handle is `handle`), as seen through `scope`'s
/// mount.
fn host_path(
    fd: BorrowedFd<'_>,
    handle: &io::Result<FileHandle>,
    scope: &Scope,
) -> Option<PathBuf> {
    match handle {
        Ok(handle) => sys::open_by_handle(handle, scope.mount_fd.as_fd())
            .and_then(|reopened| sys::fd_path(reopened.as_fd()))
            .ok(),
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

/// Locates a (non-overlay) file on a judged file system. `st` is its `fstat`. With `remembered`,
/// a file found in a layer before is not looked up again.
#[must_use]
pub fn locate(
    policy: &Policy,
    fd: BorrowedFd<'_>,
    st: &libc::stat,
    remembered: Option<&Remembered>,
) -> Location {
    let dev = kernel_dev(st.st_dev);
    if policy.scopes_on(dev).next().is_none() {
        return Location::OutOfScope;
    }
    let handle = FileHandle::of(fd);
    // Only where every scope's file system puts generations in its handles.
    let memo = match (&handle, remembered) {
        (Ok(handle), Some(remembered)) if policy.scopes_on(dev).all(|scope| scope.generations) => {
            let (kind, bytes) = handle.key();
            Some((remembered, (dev, kind, bytes.to_vec())))
        }
        _ => None,
    };
    if let Some(layer) = memo
        .as_ref()
        .and_then(|(remembered, key)| remembered.0.get(key))
    {
        return Location::Layer { layer };
    }
    // Each scope's prefix is spelled through its own mount fd; scopes on one file system
    // normally share one (its root mount), so the path is usually computed once.
    let mut seen: Option<(Arc<OwnedFd>, PathBuf)> = None;
    for scope in policy.scopes_on(dev) {
        let reuse = seen
            .as_ref()
            .is_some_and(|(via, _)| Arc::ptr_eq(via, &scope.mount_fd));
        if !reuse {
            let Some(path) = host_path(fd, &handle, scope) else {
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
            Ok(layer) => {
                if let Some((remembered, key)) = memo {
                    remembered.0.insert(key, layer);
                }
                Location::Layer { layer }
            }
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

    /// The file lookup of a decision, looked up each time versus remembered by handle, in one
    /// process on a private tmpfs (`cargo xtask bench --only fanotify`): the cost the memo
    /// removes from every container exec, which ignore marks never cover.
    #[test]
    #[ignore = "benchmark: cargo xtask bench --only fanotify"]
    fn locate_looked_up_vs_remembered() {
        use std::{os::fd::AsFd as _, time::Instant};

        use crate::enforce::{Drift, Mode, OutsideImage};

        assert!(
            nix::unistd::Uid::effective().is_root(),
            "a private tmpfs needs root"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data");
        nix::mount::mount(
            Some("tmpfs"),
            &data,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("tmpfs");
        let snapshots = data.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
        let bin = snapshots.join("1/fs/usr/local/bin");
        std::fs::create_dir_all(&bin).expect("layer");
        std::fs::copy("/bin/true", bin.join("true")).expect("copy");
        let mut policy = Policy::new(Mode::Enforce, Drift::Deny, OutsideImage::Allow);
        policy.scopes.push(Arc::new(
            super::super::FanotifyBackend::scope_for(&snapshots).expect("scope"),
        ));
        let file = std::fs::File::open(bin.join("true")).expect("open");
        let st = sys::fstat(file.as_fd()).expect("fstat");
        let remembered = Remembered::default();
        let expected = LayerId::of(&snapshots.join("1/fs")).expect("layer id");
        for memo in [None, Some(&remembered)] {
            assert_eq!(
                locate(&policy, file.as_fd(), &st, memo),
                Location::Layer { layer: expected }
            );
        }
        const CALLS: u32 = 2_000;
        let time = |memo: Option<&Remembered>| {
            let started = Instant::now();
            for _ in 0..CALLS {
                std::hint::black_box(locate(&policy, file.as_fd(), &st, memo));
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS)
        };
        let (mut looked_up, mut from_memo, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..30 {
            // Alternating order, so neither always runs first.
            let (a, b) = if round % 2 == 0 {
                let a = time(None);
                (a, time(Some(&remembered)))
            } else {
                let b = time(Some(&remembered));
                (time(None), b)
            };
            looked_up.push(a);
            from_memo.push(b);
            ratios.push(b / a);
        }
        let median = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        println!(
            "bench fanotify file lookup per decision: looked up {:.2} us, remembered {:.2} us (medians of 30 rounds x {CALLS})",
            median(&mut looked_up),
            median(&mut from_memo)
        );
        println!(
            "bench fanotify file lookup remembered/looked up: median ratio {:.3} per round",
            median(&mut ratios)
        );
        drop(file);
        let _ = nix::mount::umount2(&data, nix::mount::MntFlags::MNT_DETACH);
    }
}
