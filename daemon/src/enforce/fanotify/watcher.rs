//! Kernels before 6.5: finding overlays with a layer in a scope as they are mounted, and marking
//! them. `/proc/self/mountinfo` polls `POLLPRI` on every mount table change; the rescan does its
//! I/O without holding anything a decision needs and publishes the overlay before its mark.

use std::{
    collections::HashSet,
    os::fd::AsFd as _,
    path::PathBuf,
    sync::{atomic::Ordering, Arc, PoisonError},
};

use super::{engine::Shared, overlay, sys};

/// Re-reads the mount table and marks every overlay with a layer in a scope (kernels before
/// 6.5). `rebuild`: the scopes changed, so re-derive every overlay's layers. New overlays enter
/// the policy before their mark, so no event ever comes from an overlay the workers do not know.
pub fn rescan_overlays(shared: &Shared, rebuild: bool) {
    if !shared.overlay_marks {
        return;
    }
    let _serial = shared.rescan.lock().unwrap_or_else(PoisonError::into_inner);
    let text = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(%error, "reading /proc/self/mountinfo failed");
            return;
        }
    };
    let mounts = overlay::parse_mountinfo(&text);
    let policy = shared.policy();
    let changed: Vec<overlay::MountInfo> = mounts
        .iter()
        .filter(|mount| mount.fs_type == "overlay")
        .filter(|mount| {
            rebuild
                || policy.overlays.get(&mount.dev).is_none_or(|known| {
                    !known
                        .mounts
                        .iter()
                        .any(|(point, _)| *point == mount.mount_point)
                })
        })
        .cloned()
        .collect();
    let changed_devs: HashSet<u64> =
        changed.iter().map(|mount| mount.dev).collect();
    // A changed device is re-derived from all of its mounts, not only the new one.
    let affected: Vec<overlay::MountInfo> = mounts
        .iter()
        .filter(|mount| mount.fs_type == "overlay" && changed_devs.contains(&mount.dev))
        .cloned()
        .collect();
    let found = overlay::scoped_overlays(&affected, &policy.scopes);
    let present: HashSet<u64> = mounts
        .iter()
        .filter(|mount| mount.fs_type == "overlay")
        .map(|mount| mount.dev)
        .collect();
    let stale: Vec<u64> = policy
        .overlays
        .keys()
        .copied()
        .filter(|dev| !present.contains(dev) || (changed_devs.contains(dev) && rebuild))
        .filter(|dev| !found.iter().any(|overlay| overlay.dev == *dev))
        .collect();
    if found.is_empty() && stale.is_empty() {
        return;
    }
    let to_mark: Vec<(u64, PathBuf)> = found
        .iter()
        .filter_map(|overlay| {
            overlay
                .mounts
                .first()
                .map(|(point, _)| (overlay.dev, point.clone()))
        })
        .collect();
    let unmark: Vec<PathBuf> = stale
        .iter()
        .filter_map(|dev| policy.overlays.get(dev))
        .filter_map(|overlay| overlay.mounts.first().map(|(point, _)| point.clone()))
        .collect();
    shared.update(false, |next| {
        for dev in &stale {
            next.overlays.remove(dev);
        }
        for overlay in found {
            next.overlays.insert(overlay.dev, Arc::new(overlay));
        }
    });
    for (dev, point) in to_mark {
        match shared
            .group
            .mark_filesystem(true, sys::MarkAt::Path(&point))
        {
            Ok(()) => tracing::info!(mount_point = %point.display(), dev, "marked a scoped overlay"),
            Err(error) => {
                tracing::error!(mount_point = %point.display(), %error, "marking a scoped overlay failed");
            }
        }
    }
    for point in unmark {
        // Gone mounts lost their marks with their super block; a failure here is expected.
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
