//! Kernels before 6.5: finding overlays with a layer in a scope as they are mounted, and marking
//! them. `/proc/self/mountinfo` polls `POLLPRI` on every mount table change; the rescan does its
//! I/O without holding anything a decision needs and publishes the overlay before its mark.

use std::{
    collections::BTreeMap,
    os::fd::AsFd as _,
    path::PathBuf,
    sync::{atomic::Ordering, Arc, PoisonError},
};

use super::{engine::Shared, overlay, sys};

/// Re-reads the mount table and marks every overlay with a layer in a scope (kernels before
/// 6.5). `rebuild`: the scopes changed, so re-derive every overlay. New overlays enter the
/// policy before their mark, so no event ever comes from an overlay the workers do not know, and
/// every scoped overlay is marked again on every rescan (cheap, idempotent): a device number and
/// a mount point can come back for a new super block that would otherwise go unmarked.
pub fn rescan_overlays(shared: &Shared, rebuild: bool) {
    if !shared.overlay_marks {
        return;
    }
    let mut unscoped = shared.rescan.lock().unwrap_or_else(PoisonError::into_inner);
    if rebuild {
        unscoped.clear();
    }
    let text = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(%error, "reading /proc/self/mountinfo failed");
            return;
        }
    };
    let mounts = overlay::parse_mountinfo(&text);
    let mut by_dev: BTreeMap<u64, Vec<&overlay::MountInfo>> = BTreeMap::new();
    for mount in mounts.iter().filter(|mount| mount.fs_type == "overlay") {
        by_dev.entry(mount.dev).or_default().push(mount);
    }
    let policy = shared.policy();
    let mut derived = Vec::new();
    let mut no_longer_scoped = Vec::new();
    let mut to_mark: Vec<PathBuf> = Vec::new();
    for (dev, dev_mounts) in &by_dev {
        let key = overlay::mounts_key(dev_mounts);
        let known = policy.overlays.get(dev);
        if !rebuild {
            if let Some(known) = known.filter(|known| known.key == key) {
                to_mark.extend(known.mounts.first().map(|(point, _)| point.clone()));
                continue;
            }
            if unscoped.get(dev) == Some(&key) {
                continue;
            }
        }
        match overlay::scoped_overlay(dev_mounts, &policy.scopes) {
            Some(found) => {
                unscoped.remove(dev);
                to_mark.extend(found.mounts.first().map(|(point, _)| point.clone()));
                derived.push(found);
            }
            None => {
                unscoped.insert(*dev, key);
                if known.is_some() {
                    no_longer_scoped.push((*dev, dev_mounts[0].mount_point.clone()));
                }
            }
        }
    }
    unscoped.retain(|dev, _| by_dev.contains_key(dev));
    let gone: Vec<u64> = policy
        .overlays
        .keys()
        .copied()
        .filter(|dev| !by_dev.contains_key(dev))
        .collect();
    tracing::debug!(derived = derived.len(), gone = ?gone, marks = to_mark.len(), "overlay rescan");
    if !derived.is_empty() || !gone.is_empty() || !no_longer_scoped.is_empty() {
        shared.update(false, |next| {
            for dev in gone
                .iter()
                .chain(no_longer_scoped.iter().map(|(dev, _)| dev))
            {
                next.overlays.remove(dev);
            }
            for found in derived {
                next.overlays.insert(found.dev, Arc::new(found));
            }
        });
    }
    for point in to_mark {
        if let Err(error) = shared
            .group
            .mark_filesystem(true, sys::MarkAt::Path(&point))
        {
            tracing::error!(mount_point = %point.display(), %error, "marking a scoped overlay failed");
        }
    }
    // A gone overlay's mark went with its super block. One that is still mounted but no longer
    // scoped loses its mark through a mount point it has now.
    for (dev, point) in no_longer_scoped {
        tracing::info!(mount_point = %point.display(), dev, "overlay no longer scoped; unmarked");
        let _ = shared
            .group
            .mark_filesystem(false, sys::MarkAt::Path(&point));
    }
}

/// Rescans on every mount table change (mountinfo polls `POLLPRI`), and once a second anyway;
/// checks `stop` five times a second.
pub fn mount_watcher(shared: &Arc<Shared>) {
    let mountinfo = match std::fs::File::open("/proc/self/mountinfo") {
        Ok(file) => file,
        Err(error) => {
            tracing::error!(%error, "cannot watch /proc/self/mountinfo; overlays found only on scope changes");
            return;
        }
    };
    let mut idle = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        let changed = sys::poll_one(mountinfo.as_fd(), libc::POLLPRI, 200).unwrap_or(false);
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        idle += 1;
        if changed || idle >= 5 {
            if idle >= 5 {
                refresh_runtimes(shared);
            }
            idle = 0;
            rescan_overlays(shared, false);
        }
    }
}

/// Marks the container runtime binaries (`runtime_paths`) for exec permission events on their
/// own inodes and records their identities; re-run every second so an upgraded runc (a new
/// inode) is marked again.
pub fn refresh_runtimes(shared: &Shared) {
    if !shared.overlay_marks || shared.runtime_paths.is_empty() {
        return;
    }
    let mut found = Vec::new();
    for path in &shared.runtime_paths {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt as _;
        let id = (meta.dev(), meta.ino());
        if !shared.policy().runtimes.contains(&id) {
            if let Err(error) = shared.group.mark_inode_path_exec(path) {
                tracing::warn!(path = %path.display(), %error, "marking a container runtime failed");
                continue;
            }
            tracing::info!(path = %path.display(), "container runtime exec rescans the mounts first");
        }
        found.push(id);
    }
    if shared.policy().runtimes != found {
        shared.update(false, |policy| policy.runtimes = found);
    }
}
