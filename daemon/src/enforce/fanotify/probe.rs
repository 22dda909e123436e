//! Which way container execs reach a file system mark on this kernel, found by trying it rather
//! than by the kernel version: from 6.5 an exec through an overlay is reported on the backing
//! (lower) file's file system; before, overlayfs opens backing files `FMODE_NONOTIFY` and the
//! lower file system's mark sees nothing. A backport or a distribution patch can move that line,
//! so the probe asks the kernel itself.
//!
//! The probe: a private tmpfs, a tiny overlay on it (one lower file, `#!` to nowhere), a new
//! `FAN_CLASS_CONTENT` group with a `FAN_MARK_FILESYSTEM` exec-permission mark on the tmpfs only,
//! and one exec through the overlay from a child thread. An event within [`PROBE_BOUND`] means
//! backing-file events (the event is denied, so nothing runs); the exec returning without one
//! means none. The mark covers the private tmpfs only, and the group is closed at the end (the
//! kernel then allows anything still pending), so the probe can hold up nothing but its own exec.
//! If the probe cannot run (no overlayfs, no mount permission), the kernel version decides.

use std::{
    os::fd::AsFd as _,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{sys, Strategy};

/// Longest wait for the probe's exec event.
pub const PROBE_BOUND: Duration = Duration::from_secs(2);

/// The strategy a kernel gets, and how it was found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StrategyChoice {
    /// `Backing` or `Overlay` (never `Auto`).
    pub strategy: Strategy,
    /// What decided it, for logs and `imagegate doctor`.
    pub how: String,
}

/// Why the probe could not run (the caller falls back to the kernel version).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{what}: {source}")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the probe's exec was neither reported nor finished within {0:?}")]
    Undecided(Duration),
}

fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProbeError {
    let what = what.into();
    move |source| ProbeError::Setup { what, source }
}

fn errno(error: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(error as i32)
}

/// A private tmpfs with an overlay on it, unmounted and removed on drop.
struct ScratchOverlay {
    root: PathBuf,
    merged: PathBuf,
    mounted_tmpfs: bool,
    mounted_overlay: bool,
}

impl ScratchOverlay {
    fn create() -> Result<Self, ProbeError> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        // The daemon's runtime directory when it exists: writable under the systemd unit and
        // in the DaemonSet (a hostPath), whose root file system is read-only, /tmp included.
        let base = Some(PathBuf::from("/run/imagegate"))
            .filter(|dir| dir.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        remove_leftovers(&base);
        let root = base.join(format!(
            "imagegate-probe-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root).map_err(setup(format!("creating {}", root.display())))?;
        let mut scratch = Self {
            merged: root.join("merged"),
            root,
            mounted_tmpfs: false,
            mounted_overlay: false,
        };
        mount(
            Some("tmpfs"),
            &scratch.root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0700,size=1m"),
        )
        .map_err(|e| setup("mounting the probe's tmpfs")(errno(e)))?;
        scratch.mounted_tmpfs = true;
        for dir in ["lower", "empty", "merged"] {
            std::fs::create_dir(scratch.root.join(dir))
                .map_err(setup(format!("creating the probe's {dir} directory")))?;
        }
        // Never run: the exec is denied, or fails on the missing interpreter.
        let program = scratch.root.join("lower/probe");
        std::fs::write(&program, "#!/nonexistent/imagegate-probe\n")
            .and_then(|()| {
                std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))
            })
            .map_err(setup("writing the probe's program"))?;
        // Read-only (two lower layers, no upper): an upper directory's work directory would
        // need CAP_DAC_OVERRIDE, which the systemd unit does not grant.
        let options = format!(
            "lowerdir={}:{}",
            scratch.root.join("lower").display(),
            scratch.root.join("empty").display()
        );
        mount(
            Some("overlay"),
            &scratch.merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| setup("mounting the probe's overlay")(errno(e)))?;
        scratch.mounted_overlay = true;
        Ok(scratch)
    }
}

/// Unmounts and removes the scratch overlays of probes whose process is gone (a daemon killed
/// while probing leaves its mounts: nothing else would ever remove them).
fn remove_leftovers(base: &std::path::Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut roots: Vec<PathBuf> = super::overlay::parse_mountinfo(&mountinfo)
        .into_iter()
        .map(|mount| mount.mount_point)
        .filter(|point| point.parent() == Some(base))
        .filter(|point| {
            point
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_prefix("imagegate-probe-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| {
                    pid != std::process::id()
                        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                })
        })
        .collect();
    roots.sort();
    roots.dedup();
    for root in roots {
        tracing::info!(dir = %root.display(), "removing a probe overlay left by a process that is gone");
        let _ = umount2(&root.join("merged"), MntFlags::MNT_DETACH);
        let _ = umount2(&root, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&root);
    }
}

impl Drop for ScratchOverlay {
    fn drop(&mut self) {
        if self.mounted_overlay {
            let _ = umount2(&self.merged, MntFlags::MNT_DETACH);
        }
        if self.mounted_tmpfs {
            let _ = umount2(&self.root, MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// Whether an exec through an overlay is reported to a file system mark on the lower layer's
/// file system (the `backing` strategy works).
pub fn backing_file_events() -> Result<bool, ProbeError> {
    let scratch = ScratchOverlay::create()?;
    let group = sys::Group::new().map_err(setup("fanotify_init(FAN_CLASS_CONTENT)"))?;
    group
        .mark_filesystem(true, sys::MarkAt::Path(&scratch.root))
        .map_err(setup("marking the probe's tmpfs"))?;
    let target = scratch.merged.join("probe");
    let (done, finished) = std::sync::mpsc::channel();
    // The child must not hold the group: its exec waits for the group's answer, and a child
    // holding the group itself keeps it open after a daemon killed mid-probe is gone, so the
    // child would wait forever (holding every descriptor it inherited, the verdict store's
    // lock among them). Without it, the group closes with the daemon and the exec goes on.
    let group_fd = std::os::fd::AsRawFd::as_raw_fd(&group.as_fd());
    let exec = std::thread::Builder::new()
        .name("fanotify-probe-exec".into())
        .spawn(move || {
            let mut command = std::process::Command::new(&target);
            // SAFETY: close(2) is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    libc::close(group_fd);
                    Ok(())
                });
            }
            let result = command
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            let _ = done.send(result.map(drop));
        })
        .map_err(setup("starting the probe's exec thread"))?;
    let seen = wait_for_event(&group, &finished);
    // Closing the group allows anything still pending, so the exec thread always ends.
    drop(group);
    let _ = exec.join();
    drop(scratch);
    seen
}

fn wait_for_event(
    group: &sys::Group,
    finished: &std::sync::mpsc::Receiver<std::io::Result<()>>,
) -> Result<bool, ProbeError> {
    let deadline = Instant::now() + PROBE_BOUND;
    let mut buffer = vec![0u8; 4096];
    loop {
        let ready = sys::poll_one(group.as_fd(), libc::POLLIN, 10).unwrap_or(false);
        if ready {
            let events = group.read_events(&mut buffer).unwrap_or_default();
            let mut seen = false;
            for event in events {
                if let Some(fd) = &event.fd {
                    // Deny: the probe's program must not run either way.
                    let _ = group.respond(fd.as_fd(), false);
                    seen |= event.mask & libc::FAN_OPEN_EXEC_PERM != 0;
                }
            }
            if seen {
                return Ok(true);
            }
        }
        // The exec returned without asking us: no backing-file events. A last look at the
        // queue covers an event that raced the check.
        if finished.try_recv().is_ok() {
            let queued = sys::poll_one(group.as_fd(), libc::POLLIN, 0).unwrap_or(false);
            if queued {
                continue;
            }
            return Ok(false);
        }
        if Instant::now() >= deadline {
            return Err(ProbeError::Undecided(PROBE_BOUND));
        }
    }
}

/// The strategy for `Strategy::Auto`: the probe's answer, or the kernel version when the probe
/// cannot run.
pub fn choose_strategy() -> StrategyChoice {
    let started = Instant::now();
    match backing_file_events() {
        Ok(true) => StrategyChoice {
            strategy: Strategy::Backing,
            how: format!(
                "probe: an exec through a scratch overlay was reported on the lower file system ({} ms)",
                started.elapsed().as_millis()
            ),
        },
        Ok(false) => StrategyChoice {
            strategy: Strategy::Overlay,
            how: format!(
                "probe: an exec through a scratch overlay was not reported on the lower file system ({} ms)",
                started.elapsed().as_millis()
            ),
        },
        Err(error) => {
            let (major, minor) = sys::kernel_version();
            let strategy = by_version((major, minor));
            tracing::warn!(%error, "the fanotify strategy probe could not run; choosing by kernel version");
            StrategyChoice {
                strategy,
                how: format!(
                    "kernel version {major}.{minor} (probe could not run: {})",
                    crate::telemetry::error_chain(&error)
                ),
            }
        }
    }
}

/// `imagegate doctor`'s line: the strategy the fanotify backend would use here, and how it was
/// found.
pub fn report() -> Result<String, String> {
    let choice = choose_strategy();
    let what = match choice.strategy {
        Strategy::Backing => {
            "backing: one file system mark per scope's file system sees every container exec"
        }
        Strategy::Overlay | Strategy::Auto => {
            "overlay: each container overlay is marked as it appears (runtime execs held until then)"
        }
    };
    Ok(format!("{what}; chosen by {}", choice.how))
}

/// The fallback rule: backing-file events from 6.5.
#[must_use]
pub const fn by_version(version: (u32, u32)) -> Strategy {
    if version.0 > 6 || (version.0 == 6 && version.1 >= 5) {
        Strategy::Backing
    } else {
        Strategy::Overlay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_fallback_follows_6_5() {
        assert_eq!(by_version((6, 1)), Strategy::Overlay);
        assert_eq!(by_version((6, 4)), Strategy::Overlay);
        assert_eq!(by_version((6, 5)), Strategy::Backing);
        assert_eq!(by_version((6, 18)), Strategy::Backing);
        assert_eq!(by_version((7, 0)), Strategy::Backing);
        assert_eq!(by_version((5, 15)), Strategy::Overlay);
    }
}
