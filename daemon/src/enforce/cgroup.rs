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

/// Whether cgroup `path` is container `id`'s: a path segment that is the id (`ctr`:
/// `/<namespace>/<id>`) or a systemd scope ending in it (the CRI plugin:
/// `cri-containerd-<id>.scope`).
#[must_use]
pub fn names_container(path: &str, id: &str) -> bool {
    !id.is_empty()
        && path.split('/').any(|segment| {
            segment == id
                || segment
                    .strip_suffix(".scope")
                    .and_then(|scope| scope.strip_suffix(id))
                    .is_some_and(|prefix| prefix.ends_with('-') || prefix.ends_with(':'))
        })
}

/// Cgroup directories [`path_of_id`] reads before giving up (a node has hundreds).
const WALK_LIMIT: usize = 20_000;

/// The path of the cgroup whose id is `id`, found by walking the cgroup2 hierarchy (bounded by
/// [`WALK_LIMIT`] directories); `None` once the cgroup is gone, and for the root cgroup (where
/// processes outside containers run: it names nothing, and walking for it would read it all).
#[must_use]
pub fn path_of_id(id: u64) -> Option<String> {
    let root = cgroup2_root()?;
    if std::fs::metadata(root).is_ok_and(|meta| meta.ino() == id) {
        return None;
    }
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut read = 0usize;
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            read += 1;
            if read > WALK_LIMIT {
                return None;
            }
            let path = entry.path();
            if entry.metadata().is_ok_and(|meta| meta.ino() == id) {
                let relative = path.strip_prefix(root).ok()?;
                return Some(format!("/{}", relative.display()));
            }
            queue.push_back(path);
        }
    }
    None
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
    fn container_ids_are_matched_by_segment() {
        assert!(names_container("/default/c1", "c1"));
        assert!(names_container(
            "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc123.scope",
            "abc123"
        ));
        assert!(
            !names_container("/default/c12", "c1"),
            "a prefix is not the id"
        );
        assert!(!names_container("/default/xc1", "c1"));
        assert!(!names_container("/default/c1", ""));
    }

    #[test]
    fn a_child_cgroup_id_is_its_directory_inode() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: making a cgroup needs root");
            return;
        }
        // A cgroup of our own under the cgroup2 root (this machine is hybrid: v1 + unified).
        let root = cgroup2_root().expect("a cgroup2 hierarchy");
        let name = format!("imagegate-test-{}", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        let id = id_of(&format!("/{name}"));
        let inode = std::fs::metadata(&dir).unwrap().ino();
        let found = path_of_id(inode);
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(found, Some(format!("/{name}")), "found again by its id");
        assert_eq!(id, Some(inode));
        assert_eq!(path_of_id(inode), None, "gone with its directory");
        assert_eq!(id_of(&format!("/{name}")), None, "gone with its directory");
        assert_eq!(id_of("/"), None, "the root cgroup names no container");
    }
}
