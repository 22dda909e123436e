//! The self-test a backend passes before it claims to enforce: on a scratch overlay laid out
//! like containerd's (`snapshots/<id>/fs`), one exec from a verified layer must run and one from
//! an unverified layer must be denied with `EPERM` and reported. Attach can succeed and never
//! fire (a kernel without `bpf` in its LSM list, a hook that moved), so only a real exec proves it.
//!
//! It runs on the scope's own file system where it can ([`scratch_for`]): the programs key files
//! by the device `stat` reports, which btrfs numbers per subvolume, not per super block, so a
//! test passed on a tmpfs proves nothing for a btrfs scope.

use std::{
    os::unix::fs::MetadataExt as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{
    bpf::{BpfBackend, BpfError},
    layer::DeviceNumbering,
    Decision, LayerId, LayerState,
};

/// Why the self-test failed: the backend must not claim enforcement.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    #[error("preparing the scratch overlay at {path}")]
    Setup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting the scratch overlay at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("backend map update")]
    Backend(#[from] BpfError),
    #[error("exec from a verified layer failed: {detail}")]
    VerifiedDenied { detail: String },
    #[error("exec from an unverified layer was not denied with EPERM: {detail}")]
    UnverifiedAllowed { detail: String },
    #[error("the denied exec produced no decision event")]
    NoEvent,
    #[error(
        "no writable self-test directory is on the file system of {scope} ({numbering:?}, which \
         numbers its devices unlike its super block): give the daemon a state_dir on it"
    )]
    NoScratchOnScope {
        scope: PathBuf,
        numbering: DeviceNumbering,
    },
}

/// Where the self-test for `scope` runs: the first of `candidates` (scratch directories the
/// daemon may create and remove) on the scope's own device, else the first on a file system of
/// the same type. With neither, the last candidate serves a scope whose files report their super
/// block's device (ext4, xfs, tmpfs: the programs read nothing file-system specific there); any
/// other scope (btrfs, or a type not known to number that way) refuses, so a backend that would
/// key its files wrongly never claims enforcement.
pub fn scratch_for(scope: &Path, candidates: &[PathBuf]) -> Result<PathBuf, SelfTestError> {
    let setup = |path: &Path| {
        let path = path.to_owned();
        move |source| SelfTestError::Setup { path, source }
    };
    let scope_dev = std::fs::metadata(scope).map_err(setup(scope))?.dev();
    let numbering = DeviceNumbering::of(scope).map_err(setup(scope))?;
    let mut same_type = None;
    for candidate in candidates {
        let Some(parent) = candidate.parent() else {
            continue;
        };
        if std::fs::create_dir_all(parent).is_err() {
            continue;
        }
        let Ok(meta) = std::fs::metadata(parent) else {
            continue;
        };
        if meta.dev() == scope_dev {
            return Ok(candidate.clone());
        }
        if same_type.is_none() && DeviceNumbering::of(parent).is_ok_and(|n| n == numbering) {
            same_type = Some(candidate.clone());
        }
    }
    match (same_type, numbering, candidates.last()) {
        (Some(found), _, _) => Ok(found),
        (None, DeviceNumbering::SuperBlock, Some(last)) => Ok(last.clone()),
        _ => Err(SelfTestError::NoScratchOnScope {
            scope: scope.to_owned(),
            numbering,
        }),
    }
}

/// What the self-test saw.
#[derive(Debug)]
pub struct SelfTestReport {
    /// The deny event for the unverified exec.
    pub deny_event: Decision,
    /// Events from other activity that were drained meanwhile (hand them on, do not drop them).
    pub other_events: Vec<Decision>,
}

/// A small executable to copy into the scratch layers.
fn probe_binary() -> PathBuf {
    ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// Runs the self-test under `scratch` (a directory on a file system overlayfs can use as a lower
/// layer: the scope's, see [`scratch_for`]). Cleans up after itself.
pub fn run(backend: &mut BpfBackend, scratch: &Path) -> Result<SelfTestReport, SelfTestError> {
    let setup = |source| SelfTestError::Setup {
        path: scratch.to_owned(),
        source,
    };
    // Left by a run that died half-way (its mount, in a namespace that outlived it).
    let _ = umount2(&scratch.join("merged"), MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(scratch);
    let snapshots = scratch.join("snapshots");
    let verified = snapshots.join("1/fs");
    let unverified = snapshots.join("2/fs");
    let merged = scratch.join("merged");
    for dir in [&verified, &unverified, &merged] {
        std::fs::create_dir_all(dir).map_err(setup)?;
    }
    let probe = probe_binary();
    std::fs::copy(&probe, verified.join("ok")).map_err(setup)?;
    std::fs::copy(&probe, unverified.join("bad")).map_err(setup)?;
    // Read-only (no upper directory): execs resolve to the lower layers' files exactly as in a
    // container, and the mount needs no CAP_DAC_OVERRIDE, which an upper directory's work
    // directory (created mode 000 by overlayfs) would; the systemd unit does not grant it.
    let options = format!("lowerdir={}:{}", unverified.display(), verified.display());
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| SelfTestError::Mount {
        path: merged.clone(),
        source,
    })?;

    let result = exercise(backend, &snapshots, &verified, &unverified, &merged);

    let _ = umount2(&merged, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(scratch);
    result
}

fn exercise(
    backend: &mut BpfBackend,
    snapshots: &Path,
    verified: &Path,
    unverified: &Path,
    merged: &Path,
) -> Result<SelfTestReport, SelfTestError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SelfTestError::Setup { path, source }
    };
    let scope = backend.add_enforcing_scope(snapshots)?;
    let verified_id = LayerId::of(verified).map_err(io(verified))?;
    let unverified_id = LayerId::of(unverified).map_err(io(unverified))?;
    backend.set_layer(verified_id, LayerState::Verified)?;

    let outcome = (|| {
        // argv[0] "true": a busybox copy picks its applet from it; coreutils ignores it.
        let run = |name: &str| {
            Command::new(merged.join(name))
                .arg0("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        match run("ok") {
            Ok(status) if status.success() => {}
            other => {
                return Err(SelfTestError::VerifiedDenied {
                    detail: format!("{other:?}"),
                })
            }
        }
        match run("bad") {
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => {}
            other => {
                return Err(SelfTestError::UnverifiedAllowed {
                    detail: format!("{other:?}"),
                })
            }
        }
        let (mine, other_events): (Vec<_>, Vec<_>) = backend
            .drain_events()
            .into_iter()
            .partition(|event| event.layer == Some(unverified_id));
        let deny_event = mine
            .into_iter()
            .find(|event| event.verdict == "denied")
            .ok_or(SelfTestError::NoEvent)?;
        Ok(SelfTestReport {
            deny_event,
            other_events,
        })
    })();

    backend.remove_layer(verified_id)?;
    backend.remove_scope(scope)?;
    outcome
}
