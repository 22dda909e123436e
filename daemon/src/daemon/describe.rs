//! Turning a kernel decision into an event a person can act on: which images hold the layer,
//! which container the process ran in, and the file's path as the process saw it.
//!
//! The kernel reports identities only (file and layer `(dev, ino)`, pid, command). The rest is
//! recovered in userspace from what the daemon already follows:
//! - the path: the layer directory is the container's root for the files it holds, so the path
//!   inside the container is the file's path under its layer directory, found by a bounded walk
//!   of that directory and remembered;
//! - the container: a container's root file system is its writable snapshot over its image's
//!   layers, so a decision on a writable layer names the container that owns it, and one on an
//!   image layer names the containers made from an image holding that layer (containerd's
//!   container records, kept for a while after deletion because a denied entrypoint usually
//!   ends its container before the event is written out). The process's cgroup id, which the
//!   kernel reports with the decision, names the container exactly when the daemon saw that
//!   container's task created (it notes each task's cgroup). Otherwise, when several containers
//!   qualify, the process's cgroup path (which names the container id under both `ctr` and the
//!   CRI plugin) picks one if the process still lives.

use std::{
    collections::HashMap,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use imagegate_common::kernel_dev;

use crate::{catalog::ContainerRecord, enforce::LayerId};

/// How long a deleted container is still named in events.
pub(crate) const RETAIN_DELETED: Duration = Duration::from_secs(300);
/// Entries a path search reads before giving up (a layer of a large image has ~10^4 files).
const WALK_LIMIT: usize = 200_000;
/// Remembered paths; the oldest half is dropped when full.
const PATH_CACHE: usize = 4096;

/// Containers containerd has (or had until recently).
#[derive(Debug, Default)]
pub struct Containers {
    by_key: HashMap<(String, String), (ContainerRecord, Option<Instant>)>,
    /// Cgroup ids of containers' tasks (namespace, container id), noted when a task is created
    /// and dropped with the container's record; `None` for a cgroup seen holding several
    /// containers, which then names none of them.
    by_cgroup: HashMap<u64, Option<(String, String)>>,
    /// Each container's last decision events, for `imagegate explain`: at most
    /// [`crate::explain::MAX_DENIALS`] each, dropped with the container's record.
    denials: HashMap<(String, String), std::collections::VecDeque<crate::explain::Denial>>,
}

impl Containers {
    /// Records a live container.
    pub fn insert(&mut self, record: ContainerRecord) {
        self.by_key.insert(
            (record.namespace.clone(), record.id.clone()),
            (record, None),
        );
    }

    /// Marks a container deleted (still named for [`RETAIN_DELETED`]).
    pub fn delete(&mut self, namespace: &str, id: &str) {
        if let Some((_, gone)) = self.by_key.get_mut(&(namespace.to_owned(), id.to_owned())) {
            gone.get_or_insert_with(Instant::now);
        }
        self.prune();
    }

    /// Replaces every live record (after a reconcile); deleted ones age out as usual.
    pub fn replace_live(&mut self, live: Vec<ContainerRecord>) {
        let now = Instant::now();
        for (_, gone) in self.by_key.values_mut() {
            gone.get_or_insert(now);
        }
        for record in live {
            self.insert(record);
        }
        self.prune();
    }

    fn prune(&mut self) {
        self.by_key
            .retain(|_, (_, gone)| gone.is_none_or(|at| at.elapsed() < RETAIN_DELETED));
        let by_key = &self.by_key;
        self.by_cgroup
            .retain(|_, key| key.as_ref().is_none_or(|key| by_key.contains_key(key)));
        self.denials.retain(|key, _| by_key.contains_key(key));
    }

    /// Remembers a decision event of a known container (the newest
    /// [`crate::explain::MAX_DENIALS`]); one of a container without a record is not kept.
    pub fn note_denial(&mut self, namespace: &str, id: &str, denial: crate::explain::Denial) {
        let key = (namespace.to_owned(), id.to_owned());
        if !self.by_key.contains_key(&key) {
            return;
        }
        let kept = self.denials.entry(key).or_default();
        if kept.len() >= crate::explain::MAX_DENIALS {
            kept.pop_front();
        }
        kept.push_back(denial);
    }

    /// A container's remembered decision events, oldest first.
    #[must_use]
    pub fn denials(&self, namespace: &str, id: &str) -> Vec<crate::explain::Denial> {
        self.denials
            .get(&(namespace.to_owned(), id.to_owned()))
            .map(|kept| kept.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The containers `target` names, in `namespace` or any: the one whose id it is, else those
    /// whose id starts with it (a short id, as `crictl ps` prints); each with whether containerd
    /// removed it. Live ones first.
    #[must_use]
    pub fn find(&self, target: &str, namespace: Option<&str>) -> Vec<(&ContainerRecord, bool)> {
        let in_namespace =
            |record: &&ContainerRecord| namespace.is_none_or(|n| record.namespace == n);
        let mut found: Vec<(&ContainerRecord, bool)> = self
            .by_key
            .values()
            .filter(|(record, _)| record.id == target)
            .filter(|(record, _)| in_namespace(&record))
            .map(|(record, gone)| (record, gone.is_some()))
            .collect();
        if found.is_empty() && !target.is_empty() {
            found = self
                .by_key
                .values()
                .filter(|(record, _)| record.id.starts_with(target))
                .filter(|(record, _)| in_namespace(&record))
                .map(|(record, gone)| (record, gone.is_some()))
                .collect();
        }
        found.sort_by(|a, b| (a.1, &a.0.namespace, &a.0.id).cmp(&(b.1, &b.0.namespace, &b.0.id)));
        found
    }

    /// Notes that a task of container `id` runs in cgroup `cgroup` (a container's processes all
    /// share its cgroup, so exec'd processes need no note of their own). A cgroup noted for two
    /// containers names neither from then on.
    pub fn note_cgroup(&mut self, namespace: &str, id: &str, cgroup: u64) {
        let key = (namespace.to_owned(), id.to_owned());
        self.by_cgroup
            .entry(cgroup)
            .and_modify(|known| {
                if known.as_ref() != Some(&key) {
                    *known = None;
                }
            })
            .or_insert(Some(key));
    }

    /// The container whose task ran in cgroup `cgroup`, if it is (or until recently was) known.
    /// A cgroup not noted yet (its task's `/tasks/create` event can arrive after the decision)
    /// is looked up in the cgroup hierarchy while it exists, and named by the one known
    /// container whose id its path carries.
    #[must_use]
    pub fn by_cgroup(&self, cgroup: u64) -> Option<&ContainerRecord> {
        match self.by_cgroup.get(&cgroup) {
            Some(key) => self.by_key.get(key.as_ref()?).map(|(record, _)| record),
            None => named_by(
                &crate::enforce::cgroup::path_of_id(cgroup)?,
                self.by_key.values().map(|(record, _)| record),
            ),
        }
    }

    /// A container's record, live or deleted within [`RETAIN_DELETED`].
    #[must_use]
    pub fn get(&self, namespace: &str, id: &str) -> Option<&ContainerRecord> {
        self.by_key
            .get(&(namespace.to_owned(), id.to_owned()))
            .map(|(record, _)| record)
    }

    /// Live container records.
    pub fn live_records(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.by_key
            .values()
            .filter(|(_, gone)| gone.is_none())
            .map(|(record, _)| record)
    }

    /// Live containers.
    pub fn live(&self) -> usize {
        self.by_key
            .values()
            .filter(|(_, gone)| gone.is_none())
            .count()
    }

    /// The container whose writable snapshot is `key` in `namespace`.
    #[must_use]
    pub fn by_snapshot(&self, namespace: &str, key: &str) -> Option<&ContainerRecord> {
        self.by_key
            .values()
            .map(|(record, _)| record)
            .find(|r| r.namespace == namespace && r.snapshot_key == key)
    }

    /// Containers made from one of `images` (namespace, name), live ones first.
    #[must_use]
    pub fn from_images(&self, images: &[(String, String)]) -> Vec<&ContainerRecord> {
        let mut found: Vec<(&ContainerRecord, bool)> = self
            .by_key
            .values()
            .filter(|(r, _)| {
                images
                    .iter()
                    .any(|(namespace, name)| r.namespace == *namespace && r.image == *name)
            })
            .map(|(r, gone)| (r, gone.is_some()))
            .collect();
        found.sort_by(|a, b| (a.1, &a.0.id).cmp(&(b.1, &b.0.id)));
        found.into_iter().map(|(r, _)| r).collect()
    }
}

/// Picks the container a process ran in among `candidates`: the only one, or the one whose id
/// the process's cgroup path names (while the process lives).
#[must_use]
pub fn pick_container<'a>(
    candidates: &[&'a ContainerRecord],
    tgid: u32,
) -> Option<&'a ContainerRecord> {
    match candidates {
        [] => None,
        [only] => Some(only),
        _ => named_by(
            &crate::enforce::cgroup::path_of(tgid)?,
            candidates.iter().copied(),
        ),
    }
}

/// The one container among `records` that cgroup `path` names; `None` for none or several.
fn named_by<'a>(
    path: &str,
    records: impl Iterator<Item = &'a ContainerRecord>,
) -> Option<&'a ContainerRecord> {
    let mut named =
        records.filter(|record| crate::enforce::cgroup::names_container(path, &record.id));
    match (named.next(), named.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// Paths of judged files inside their layer directories, found by a bounded walk and
/// remembered (image layers do not change; a writable layer's file keeps its inode).
#[derive(Debug)]
pub struct PathFinder {
    /// Found paths, and files a complete walk did not find (`None`): neither is walked again.
    known: HashMap<(LayerId, LayerId), Option<PathBuf>>,
    /// Entries the walks may still read before [`Self::refill`]: a flood of decisions on
    /// distinct files costs the event loop at most this much per drain.
    budget: usize,
}

impl Default for PathFinder {
    fn default() -> Self {
        Self {
            known: HashMap::new(),
            budget: WALK_BUDGET,
        }
    }
}

/// Entries all walks together read between two drains of the decision queue.
const WALK_BUDGET: usize = WALK_LIMIT;

impl PathFinder {
    /// The path of `file` as a process whose root is the layer at `layer_dir` sees it, e.g.
    /// `/usr/local/bin/busybox`; `None` when it is not found within the walk limit, or when
    /// this drain's walk budget is spent (then it is looked for again at a later decision).
    pub fn path_in(&mut self, layer: LayerId, layer_dir: &Path, file: LayerId) -> Option<PathBuf> {
        if let Some(path) = self.known.get(&(layer, file)) {
            return path.clone();
        }
        if self.budget == 0 {
            return None;
        }
        let limit = self.budget.min(WALK_LIMIT);
        let (found, read) = find_inode(layer_dir, file, limit);
        self.budget = self.budget.saturating_sub(read);
        // A walk cut short by the budget (not by the limit) may find the file next time.
        if found.is_none() && read >= limit && limit < WALK_LIMIT {
            return None;
        }
        if self.known.len() >= PATH_CACHE {
            let drop: Vec<_> = self.known.keys().take(PATH_CACHE / 2).copied().collect();
            for key in drop {
                self.known.remove(&key);
            }
        }
        let path = found.map(|found| Path::new("/").join(found));
        self.known.insert((layer, file), path.clone());
        path
    }

    /// A new drain: the walk budget is full again.
    pub fn refill(&mut self) {
        self.budget = WALK_BUDGET;
    }
}

/// The path of `file` relative to `root`, by a breadth-first walk that does not follow symlinks
/// or leave `root`'s file system, reading at most `limit` entries; and the entries read.
fn find_inode(root: &Path, file: LayerId, limit: usize) -> (Option<PathBuf>, usize) {
    let Ok(root_meta) = std::fs::symlink_metadata(root) else {
        return (None, 0);
    };
    let root_dev = root_meta.dev();
    let mut queue = std::collections::VecDeque::from([PathBuf::new()]);
    let mut read = 0usize;
    while let Some(relative) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(root.join(&relative)) else {
            continue;
        };
        for entry in entries.flatten() {
            read += 1;
            if read > limit {
                return (None, limit);
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = relative.join(entry.file_name());
            if entry.ino() == file.ino {
                if let Ok(meta) = std::fs::symlink_metadata(entry.path()) {
                    if kernel_dev(meta.dev()) == file.dev && meta.ino() == file.ino {
                        return (Some(path), read);
                    }
                }
            }
            if kind.is_dir() {
                if let Ok(meta) = entry.metadata() {
                    if meta.dev() == root_dev {
                        queue.push_back(path);
                    }
                }
            }
        }
    }
    (None, read)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(namespace: &str, id: &str, image: &str) -> ContainerRecord {
        ContainerRecord {
            namespace: namespace.into(),
            id: id.into(),
            image: image.into(),
            snapshot_key: id.into(),
            kubernetes: None,
        }
    }

    #[test]
    fn files_are_found_under_their_layer_directory() {
        let dir = std::env::temp_dir().join(format!("ig-describe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("fs/usr/local/bin")).unwrap();
        std::fs::write(dir.join("fs/usr/local/bin/tool"), b"x").unwrap();
        std::fs::write(dir.join("fs/other"), b"y").unwrap();
        let layer = LayerId::of(&dir.join("fs")).unwrap();
        let file = LayerId::of(&dir.join("fs/usr/local/bin/tool")).unwrap();
        let mut finder = PathFinder::default();
        assert_eq!(
            finder.path_in(layer, &dir.join("fs"), file),
            Some(PathBuf::from("/usr/local/bin/tool"))
        );
        // Remembered: found again after the directory is gone.
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            finder.path_in(layer, &dir.join("fs"), file),
            Some(PathBuf::from("/usr/local/bin/tool"))
        );
        let missing = LayerId::new(file.dev, file.ino + 1_000_000);
        assert_eq!(finder.path_in(layer, &dir.join("fs"), missing), None);
    }

    /// A file not found is remembered (it is not walked for again at every decision), and the
    /// walks of one drain read at most the budget.
    #[test]
    fn misses_are_remembered_and_walks_are_budgeted() {
        let dir = std::env::temp_dir().join(format!("imagegate-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("fs/d")).unwrap();
        std::fs::write(dir.join("fs/d/f"), b"x").unwrap();
        let layer = LayerId::of(&dir.join("fs")).unwrap();
        let real = LayerId::of(&dir.join("fs/d/f")).unwrap();
        let missing = LayerId::new(real.dev, real.ino + 1_000_000);
        let mut finder = PathFinder::default();
        assert_eq!(finder.path_in(layer, &dir.join("fs"), missing), None);
        let spent = WALK_BUDGET - finder.budget;
        assert!(spent > 0);
        assert_eq!(finder.path_in(layer, &dir.join("fs"), missing), None);
        assert_eq!(
            WALK_BUDGET - finder.budget,
            spent,
            "a known miss is not walked again"
        );
        finder.budget = 0;
        assert_eq!(
            finder.path_in(layer, &dir.join("fs"), real),
            None,
            "budget spent: not walked"
        );
        finder.refill();
        assert_eq!(
            finder.path_in(layer, &dir.join("fs"), real),
            Some(PathBuf::from("/d/f"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn containers_are_named_while_live_and_for_a_while_after_deletion() {
        let mut containers = Containers::default();
        containers.insert(record("default", "a", "img:1"));
        containers.insert(record("default", "b", "other:1"));
        containers.insert(record("k8s.io", "c", "img:1"));
        let images = [("default".to_owned(), "img:1".to_owned())];
        let found = containers.from_images(&images);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, "a");
        assert_eq!(pick_container(&found, 0).map(|c| c.id.as_str()), Some("a"));
        containers.delete("default", "a");
        assert_eq!(containers.live(), 2);
        assert_eq!(
            containers.from_images(&images).len(),
            1,
            "kept after deletion"
        );
        assert_eq!(
            containers
                .by_snapshot("default", "b")
                .map(|c| c.id.as_str()),
            Some("b")
        );
        containers.insert(record("default", "a2", "img:1"));
        let found = containers.from_images(&images);
        assert_eq!(found[0].id, "a2", "live containers first");
        // Two candidates and no process to ask: nobody is named rather than a guess.
        assert_eq!(pick_container(&found, u32::MAX), None);
        containers.replace_live(vec![record("default", "b", "other:1")]);
        assert_eq!(containers.live(), 1);
    }

    fn denial(path: &str) -> crate::explain::Denial {
        crate::explain::Denial {
            time: 1.0,
            verdict: "denied".into(),
            reason: "untrusted_image".into(),
            hook: "exec".into(),
            command: "sh".into(),
            pid: 1,
            path: Some(path.into()),
        }
    }

    /// `explain`'s memory of a container's denials is bounded and goes with its record.
    #[test]
    fn denials_are_kept_per_container_bounded_and_dropped_with_it() {
        let mut containers = Containers::default();
        containers.insert(record("default", "c1", "img:1"));
        containers.insert(record("k8s.io", "c10", "img:1"));
        for n in 0..40 {
            containers.note_denial("default", "c1", denial(&format!("/f{n}")));
        }
        containers.note_denial("default", "unknown", denial("/x"));
        let kept = containers.denials("default", "c1");
        assert_eq!(kept.len(), crate::explain::MAX_DENIALS);
        assert_eq!(kept[0].path.as_deref(), Some("/f24"), "the oldest dropped");
        assert_eq!(kept[15].path.as_deref(), Some("/f39"));
        assert!(containers.denials("default", "unknown").is_empty());
        // Found by id, by a unique prefix, in a namespace.
        let ids = |found: Vec<(&ContainerRecord, bool)>| {
            found
                .iter()
                .map(|(r, gone)| (r.id.clone(), *gone))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(containers.find("c1", None)), [("c1".to_owned(), false)]);
        assert_eq!(ids(containers.find("c", None)).len(), 2);
        assert_eq!(
            ids(containers.find("c", Some("k8s.io"))),
            [("c10".to_owned(), false)]
        );
        assert!(containers.find("nope", None).is_empty());
        containers.delete("default", "c1");
        assert_eq!(ids(containers.find("c1", None)), [("c1".to_owned(), true)]);
        assert_eq!(
            containers.denials("default", "c1").len(),
            16,
            "kept while named"
        );
        containers.by_key.retain(|(_, id), _| id != "c1");
        containers.prune();
        assert!(
            containers.denials("default", "c1").is_empty(),
            "dropped with the record"
        );
    }

    #[test]
    fn a_cgroup_not_noted_yet_is_found_in_the_hierarchy() {
        use std::os::unix::fs::MetadataExt as _;
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: making a cgroup needs root");
            return;
        }
        // A container's cgroup the daemon has not heard of (its /tasks/create event is late).
        let Some(root) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|dir| dir.join("cgroup.procs").exists())
        else {
            panic!("no cgroup2 hierarchy");
        };
        let id = format!("imagegate-late-{}", std::process::id());
        let dir = root.join(&id);
        std::fs::create_dir(&dir).unwrap();
        let cgroup = std::fs::metadata(&dir).unwrap().ino();
        let mut containers = Containers::default();
        containers.insert(record("default", &id, "img:1"));
        containers.insert(record("default", "other", "img:1"));
        let named = containers.by_cgroup(cgroup).map(|c| c.id.clone());
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(named, Some(id));
        assert!(
            containers.by_cgroup(cgroup).is_none(),
            "gone with its cgroup"
        );
    }

    #[test]
    fn a_noted_cgroup_names_its_container_until_the_record_is_gone() {
        let mut containers = Containers::default();
        containers.insert(record("default", "a", "img:1"));
        containers.insert(record("default", "b", "img:1"));
        containers.note_cgroup("default", "b", u64::MAX - 77);
        assert_eq!(
            containers.by_cgroup(u64::MAX - 77).map(|c| c.id.as_str()),
            Some("b")
        );
        assert!(containers.by_cgroup(u64::MAX - 78).is_none());
        containers.note_cgroup("default", "b", u64::MAX - 77);
        assert_eq!(
            containers.by_cgroup(u64::MAX - 77).map(|c| c.id.as_str()),
            Some("b")
        );
        // Two containers in one cgroup: naming either would be a guess.
        containers.note_cgroup("default", "a", u64::MAX - 79);
        containers.note_cgroup("default", "b", u64::MAX - 79);
        assert!(containers.by_cgroup(u64::MAX - 79).is_none());
        containers.delete("default", "b");
        assert_eq!(
            containers.by_cgroup(u64::MAX - 77).map(|c| c.id.as_str()),
            Some("b"),
            "still named after deletion"
        );
        // Once the record ages out, its cgroup goes with it.
        containers.by_key.retain(|(_, id), _| id != "b");
        containers.prune();
        assert!(containers.by_cgroup(u64::MAX - 77).is_none());
        assert_eq!(
            containers.by_cgroup.len(),
            1,
            "only the ambiguous mark is left"
        );
    }
}
