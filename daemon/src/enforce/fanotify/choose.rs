//! Which backend this kernel gets: BPF LSM when its programs really load here (they survive the
//! daemon and also cover executable mappings), fanotify otherwise. Probed, like `imagegate
//! doctor`, never inferred from the kernel version.

use std::path::Path;

use crate::enforce::bpf;

/// A backend to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    BpfLsm,
    Fanotify,
}

impl BackendKind {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BpfLsm => "bpf-lsm",
            Self::Fanotify => "fanotify",
        }
    }
}

/// The choice and why the other backend was passed over.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Choice {
    pub backend: BackendKind,
    /// Why BPF LSM was not chosen (`None` when it was).
    pub bpf_unavailable: Option<String>,
}

/// Neither backend works here.
#[derive(Debug, thiserror::Error)]
#[error("no enforcement backend works on this kernel: BPF LSM: {bpf}; fanotify: {fanotify}")]
pub struct NoBackend {
    pub bpf: String,
    pub fanotify: String,
}

/// Probes BPF LSM (active in the LSM list and the programs pass the verifier), then fanotify
/// (a content-class group with an exec permission mark).
pub fn choose() -> Result<Choice, NoBackend> {
    let bpf = bpf::lsm_active()
        .and_then(|()| bpf::probe_load())
        .map_err(|error| crate::telemetry::error_chain(&error));
    let bpf_unavailable = match bpf {
        Ok(_) => {
            return Ok(Choice {
                backend: BackendKind::BpfLsm,
                bpf_unavailable: None,
            })
        }
        Err(why) => why,
    };
    match fanotify_works() {
        Ok(()) => {
            tracing::info!(bpf = %bpf_unavailable, "BPF LSM unavailable; using fanotify");
            Ok(Choice {
                backend: BackendKind::Fanotify,
                bpf_unavailable: Some(bpf_unavailable),
            })
        }
        Err(fanotify) => Err(NoBackend {
            bpf: bpf_unavailable,
            fanotify,
        }),
    }
}

/// A content-class group with an exec permission mark on a scratch directory's own inode
/// (nobody execs a directory, so nothing can wait on the probe).
fn fanotify_works() -> Result<(), String> {
    let group =
        super::sys::Group::new().map_err(|e| format!("fanotify_init(FAN_CLASS_CONTENT): {e}"))?;
    let dir = std::env::temp_dir().join(format!("imagegate-choose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let marked = mark_inode(&group, &dir);
    let _ = std::fs::remove_dir(&dir);
    marked.map_err(|e| format!("fanotify_mark(FAN_OPEN_EXEC_PERM): {e}"))
}

fn mark_inode(group: &super::sys::Group, dir: &Path) -> std::io::Result<()> {
    let fd = super::sys::open_dir(dir)?;
    use std::os::fd::AsFd as _;
    group.mark_inode_exec(fd.as_fd())
}
