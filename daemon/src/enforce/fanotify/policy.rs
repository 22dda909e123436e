//! The decision table as the workers see it: an immutable snapshot (scopes, layers, containers,
//! settings, marked overlays) swapped whole on every change, so a decision reads one consistent
//! version without holding a lock, and the facts the shared rule
//! ([`imagegate_common::decide`], the BPF programs' rule) is given.

use std::{collections::HashMap, os::fd::OwnedFd, path::PathBuf, sync::Arc};

use imagegate_common::{container_state, drift, mode, reason, Origin, Process, Settings};

use super::{overlay::Overlay, process::Root};
use crate::enforce::{ContainerState, Drift, LayerId, LayerState, Mode, OutsideImage};

/// A snapshotter `snapshots` directory whose layers are judged.
#[derive(Debug)]
pub struct Scope {
    /// `(dev, ino)` of the directory.
    pub id: LayerId,
    /// Its path as seen through `mount_fd`'s mount, with a trailing `/`: a judged file's host
    /// path starts with it.
    pub prefix: PathBuf,
    /// A directory on a mount of the scope's file system from which paths are reported
    /// (`open_by_handle_at` needs one).
    pub mount_fd: Arc<OwnedFd>,
    /// Its file system gives inodes generations, which their file handles carry: a handle then
    /// names one file for good (a reused inode number gets another one), so where a file was
    /// found may be remembered by its handle ([`super::resolve::Remembered`]).
    pub generations: bool,
}

/// One consistent version of everything a decision depends on.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    pub drift: Drift,
    pub outside_image: OutsideImage,
    pub scopes: Vec<Arc<Scope>>,
    pub layers: HashMap<LayerId, LayerState>,
    /// Containers by their root's writable layer directory.
    pub containers: HashMap<LayerId, ContainerState>,
    /// Overlays marked because a layer of theirs is in a scope (kernels before 6.5), by the
    /// overlay's kernel device.
    pub overlays: HashMap<u64, Arc<Overlay>>,
    /// `(dev, ino)` of container runtime binaries (runc) whose exec first rescans the mounts
    /// (kernels before 6.5): it closes the window between a rootfs mount and its mark.
    pub runtimes: Vec<(u64, u64)>,
}

impl Policy {
    pub fn new(mode: Mode, drift: Drift, outside_image: OutsideImage) -> Self {
        Self {
            mode,
            drift,
            outside_image,
            scopes: Vec::new(),
            layers: HashMap::new(),
            containers: HashMap::new(),
            overlays: HashMap::new(),
            runtimes: Vec::new(),
        }
    }

    /// Scopes on the file system with kernel device `dev`.
    pub fn scopes_on(&self, dev: u64) -> impl Iterator<Item = &Arc<Scope>> {
        self.scopes.iter().filter(move |scope| scope.id.dev == dev)
    }
}

/// Where a judged file's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Not below any scope: a host file, another overlay's file, a scope's own files.
    OutOfScope,
    /// In the layer directory `layer` (`<scope>/<id>/<dir>`).
    Layer { layer: LayerId },
    /// On a judged file system or overlay, but the layer could not be told (a path that does not
    /// lead back to the file, a whiteout, a vanished mount): fail closed, like the programs'
    /// `unreadable`.
    Unknown { layer: Option<LayerId> },
}

/// Why a decision event was written when the shared rule did not make it: the backend could
/// not decide in time.
pub const TIMEOUT: &str = "timeout";

/// What to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The shared rule's answer.
    pub decision: imagegate_common::Decision,
    /// The kernel may stop asking about this inode (an ignore mark): only a host process's
    /// allowed file outside every layer. A layer file may be asked for by an untrusted
    /// container next, and a writable one changes.
    pub cacheable: bool,
}

impl Policy {
    /// The process's trust, from its root.
    #[must_use]
    pub fn process(&self, root: &Root) -> Process {
        let Some(key) = root.key else {
            return Process::Host;
        };
        let state = if root.writable {
            self.containers.get(&key).map_or(0, |state| state.to_raw())
        } else {
            // A read-only root is judged by its top layer.
            match self.layers.get(&key) {
                Some(LayerState::Verified) => container_state::TRUSTED,
                Some(LayerState::Audit) => container_state::AUDIT,
                _ => container_state::UNTRUSTED,
            }
        };
        Process::Container { state }
    }

    /// Where a located file comes from, seen from a process with root `root`.
    #[must_use]
    pub fn origin(&self, root: &Root, location: Location) -> Origin {
        match location {
            Location::OutOfScope => Origin::OutsideScopes,
            Location::Unknown { .. } => Origin::Undetermined {
                reason: reason::UNREADABLE,
            },
            Location::Layer { layer } => {
                if root.writable && root.key == Some(layer) {
                    Origin::OwnWritable
                } else if root.key.is_some() && root.lowers.contains(&layer) {
                    Origin::OwnLayer
                } else {
                    Origin::Layer {
                        state: self.layers.get(&layer).map_or(0, |state| state.to_raw()),
                    }
                }
            }
        }
    }

    /// The verdict for a located file asked for by a process with root `root`: the rule the
    /// BPF programs apply ([`imagegate_common::decide`]).
    #[must_use]
    pub fn verdict(&self, root: &Root, location: Location) -> Verdict {
        let process = self.process(root);
        let origin = self.origin(root, location);
        let decision = imagegate_common::decide(process, origin, &self.settings(), 0);
        Verdict {
            decision,
            cacheable: decision == imagegate_common::Decision::Allow
                && process == Process::Host
                && origin == Origin::OutsideScopes,
        }
    }

    /// The settings in the kernel ABI's terms.
    #[must_use]
    pub fn settings(&self) -> Settings {
        Settings {
            mode: match self.mode {
                Mode::Enforce => mode::ENFORCE,
                Mode::Audit => mode::AUDIT,
            },
            drift: match self.drift {
                Drift::Allow => drift::ALLOW,
                Drift::Deny => drift::DENY,
            },
            abi: imagegate_common::ABI_VERSION,
            outside_image: self.outside_image.to_raw(),
        }
    }
}

#[cfg(test)]
mod tests {
    use imagegate_common::Decision;

    use super::*;
    use crate::enforce::ContainerTrust;

    fn denied(reason: u32) -> Decision {
        Decision::Untrusted {
            reason,
            mode: mode::ENFORCE,
        }
    }

    #[test]
    fn host_processes_follow_the_layer_rule_and_only_host_files_are_cached() {
        let verified = LayerId::new(1, 10);
        let writable = LayerId::new(1, 11);
        let unknown = LayerId::new(1, 12);
        let mut policy = Policy::new(Mode::Enforce, Drift::Deny, OutsideImage::Allow);
        policy.layers.insert(verified, LayerState::Verified);
        policy.layers.insert(writable, LayerState::Writable);
        let host = Root::host();
        let verdict = |policy: &Policy, location| policy.verdict(&host, location);
        assert_eq!(
            verdict(&policy, Location::OutOfScope),
            Verdict {
                decision: Decision::Allow,
                cacheable: true
            }
        );
        assert_eq!(
            verdict(&policy, Location::Layer { layer: verified }),
            Verdict {
                decision: Decision::Allow,
                cacheable: false
            },
            "a verified layer's inode is never cached: an untrusted container may ask next"
        );
        assert_eq!(
            verdict(&policy, Location::Layer { layer: unknown }).decision,
            denied(reason::UNVERIFIED_LAYER)
        );
        assert_eq!(
            verdict(&policy, Location::Layer { layer: writable }).decision,
            denied(reason::DRIFT)
        );
        assert_eq!(
            verdict(&policy, Location::Unknown { layer: None }).decision,
            denied(reason::UNREADABLE)
        );
    }

    #[test]
    fn containers_are_judged_by_their_image() {
        let base = LayerId::new(1, 20);
        let upper = LayerId::new(1, 21);
        let mut policy = Policy::new(Mode::Enforce, Drift::Deny, OutsideImage::Allow);
        policy.layers.insert(base, LayerState::Verified);
        let root = Root {
            key: Some(upper),
            writable: true,
            lowers: vec![base],
        };
        assert_eq!(
            policy
                .verdict(&root, Location::Layer { layer: base })
                .decision,
            denied(reason::UNTRUSTED_IMAGE),
            "a container not judged yet runs nothing, not even a verified base layer"
        );
        policy
            .containers
            .insert(upper, ContainerTrust::Untrusted.into());
        assert_eq!(
            policy.verdict(&root, Location::OutOfScope).decision,
            denied(reason::UNTRUSTED_IMAGE)
        );
        policy
            .containers
            .insert(upper, ContainerTrust::Trusted.into());
        let own = policy.verdict(&root, Location::Layer { layer: base });
        assert_eq!(own.decision, Decision::Allow);
        assert!(!own.cacheable);
        assert_eq!(
            policy
                .verdict(&root, Location::Layer { layer: upper })
                .decision,
            denied(reason::DRIFT)
        );
        policy.outside_image = OutsideImage::Deny;
        assert_eq!(
            policy.verdict(&root, Location::OutOfScope).decision,
            denied(reason::OUTSIDE_IMAGE)
        );
        // The container's scope overrides the global setting.
        policy.containers.insert(
            upper,
            ContainerState {
                trust: ContainerTrust::Trusted,
                outside_image: Some(OutsideImage::Allow),
            },
        );
        assert_eq!(
            policy.verdict(&root, Location::OutOfScope).decision,
            Decision::Allow
        );
    }
}
