//! The cgroup (v2) a process runs in: its path, which names the container under both `ctr`
//! (`/<namespace>/<id>`) and the CRI plugin (`.../cri-containerd-<id>.scope`), and its id, the
//! inode number of its directory in the cgroup2 hierarchy, which is what BPF's
//! `bpf_get_current_cgroup_id` reports. Decision events carry the id, so the daemon can name a
//! process's container after the process (and its cgroup) are gone.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// Where the cgroup2 hierarchy is mounted: `/sys/fs/cgroup` on a unified system,
/// `/sys/fs/cgroup/unified` on a hybrid (v1 + v2) one; `None` without cgroup2.
fn cgroup2_root() -> Option<&'static Path> {
    static ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    ROOT.get_or_init(|| {
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|dir| {
                nix::sys::statfs::statfs(dir)
                    .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            })
    })
    .as_deref()
}

/// The cgroup2 path of process `pid` (`/default/c1`); `None` when it has exited or the system
/// has no cgroup2 hierarchy.
#[must_use]
pub fn path_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    path_in(&text)
}

/// The cgroup2 entry (`0::<path>`) of a `/proc/<pid>/cgroup` text.
fn path_in(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The id of the cgroup at `path` (as [`path_of`] gives it); `None` for the root cgroup (which
/// every process outside a container shares, so it names nothing), and when the cgroup is gone
/// or lies outside this process's cgroup namespace (the path then starts with `/..`).
#[must_use]
pub fn id_of(path: &str) -> Option<u64> {
    let relative = path.strip_prefix('/')?;
    if relative.is_empty() || relative.split('/').any(|part| part == "..") {
        return None;
    }
    std::fs::metadata(cgroup2_root()?.join(relative))
        .ok()
        .filter(std::fs::Metadata::is_dir)
        .map(|meta| meta.ino())
}

/// The cgroup id of process `pid`, while it lives.
#[must_use]
pub fn id_of_process(pid: u32) -> Option<u64> {
    id_of(&path_of(pid)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cgroup2_entry() {
        let hybrid = "12:cpuset:/x\n1:name=systemd:/user.slice\n0::/default/c1\n";
        assert_eq!(path_in(hybrid).as_deref(), Some("/default/c1"));
        assert_eq!(path_in("1:name=systemd:/x\n"), None);
        assert_eq!(id_of("/../outside"), None, "outside our cgroup namespace");
        assert_eq!(id_of("relative"), None);
    }

    #[test]
    fn a_child_cgroup_id_is_its_directory_inode() {
        // A cgroup of our own under the cgroup2 root (this machine is hybrid: v1 + unified).
        let root = cgroup2_root().expect("a cgroup2 hierarchy");
        let name = format!("imagegate-test-{}", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        let id = id_of(&format!("/{name}"));
        let inode = std::fs::metadata(&dir).unwrap().ino();
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(id, Some(inode));
        assert_eq!(id_of(&format!("/{name}")), None, "gone with its directory");
        assert_eq!(id_of("/"), None, "the root cgroup names no container");
    }
}
