//! The decision table as the workers see it: an immutable snapshot (scopes, layers, settings,
//! marked overlays) swapped whole on every change, so a decision reads one consistent version
//! without holding a lock, and the verdict rules, which are the BPF programs' rules.

use std::{collections::HashMap, os::fd::OwnedFd, path::PathBuf, sync::Arc};

use super::overlay::Overlay;
use crate::enforce::{Drift, LayerId, LayerState, Mode};

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
}

/// One consistent version of everything a decision depends on.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    pub drift: Drift,
    pub scopes: Vec<Arc<Scope>>,
    pub layers: HashMap<LayerId, LayerState>,
    /// Overlays marked because a layer of theirs is in a scope (kernels before 6.5), by the
    /// overlay's kernel device.
    pub overlays: HashMap<u64, Arc<Overlay>>,
    /// `(dev, ino)` of container runtime binaries (runc) whose exec first rescans the mounts
    /// (kernels before 6.5): it closes the window between a rootfs mount and its mark.
    pub runtimes: Vec<(u64, u64)>,
}

impl Policy {
    pub fn new(mode: Mode, drift: Drift) -> Self {
        Self {
            mode,
            drift,
            scopes: Vec::new(),
            layers: HashMap::new(),
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

/// Why a file was not plainly allowed; the strings are the BPF backend's reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    UnverifiedLayer,
    Drift,
    Unreadable,
    /// No decision within the bound (stuck worker, full queue).
    Timeout,
}

impl Reason {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnverifiedLayer => "unverified_layer",
            Self::Drift => "drift",
            Self::Unreadable => "unreadable",
            Self::Timeout => "timeout",
        }
    }
}

/// What to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allow; `cacheable` when the kernel may stop asking about this inode (an ignore mark):
    /// only host files and verified layers, never a writable or unverified one.
    Allow { cacheable: bool },
    /// Would deny: denied in enforce mode, allowed and reported in audit mode.
    Untrusted {
        reason: Reason,
        layer: Option<LayerId>,
        /// The layer is audit-only (`LayerState::Audit`): report and allow in any mode.
        audit_only: bool,
    },
}

impl Policy {
    /// The verdict for a located file.
    #[must_use]
    pub fn verdict(&self, location: Location) -> Verdict {
        match location {
            Location::OutOfScope => Verdict::Allow { cacheable: true },
            Location::Unknown { layer } => Verdict::Untrusted {
                audit_only: false,
                reason: Reason::Unreadable,
                layer,
            },
            Location::Layer { layer } => match self.layers.get(&layer) {
                Some(LayerState::Verified) => Verdict::Allow { cacheable: true },
                Some(LayerState::Writable) if self.drift == Drift::Allow => {
                    Verdict::Allow { cacheable: false }
                }
                Some(LayerState::Writable) => Verdict::Untrusted {
                    audit_only: false,
                    reason: Reason::Drift,
                    layer: Some(layer),
                },
                None => Verdict::Untrusted {
                    audit_only: false,
                    reason: Reason::UnverifiedLayer,
                    layer: Some(layer),
                },
                Some(LayerState::Audit) => Verdict::Untrusted {
                    audit_only: true,
                    reason: Reason::UnverifiedLayer,
                    layer: Some(layer),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_bpf_rules() {
        let verified = LayerId { dev: 1, ino: 10 };
        let writable = LayerId { dev: 1, ino: 11 };
        let unknown = LayerId { dev: 1, ino: 12 };
        let mut policy = Policy::new(Mode::Enforce, Drift::Deny);
        policy.layers.insert(verified, LayerState::Verified);
        policy.layers.insert(writable, LayerState::Writable);
        assert_eq!(
            policy.verdict(Location::OutOfScope),
            Verdict::Allow { cacheable: true }
        );
        assert_eq!(
            policy.verdict(Location::Layer { layer: verified }),
            Verdict::Allow { cacheable: true }
        );
        assert_eq!(
            policy.verdict(Location::Layer { layer: unknown }),
            Verdict::Untrusted {
                audit_only: false,
                reason: Reason::UnverifiedLayer,
                layer: Some(unknown)
            }
        );
        assert_eq!(
            policy.verdict(Location::Layer { layer: writable }),
            Verdict::Untrusted {
                audit_only: false,
                reason: Reason::Drift,
                layer: Some(writable)
            }
        );
        policy.drift = Drift::Allow;
        assert_eq!(
            policy.verdict(Location::Layer { layer: writable }),
            Verdict::Allow { cacheable: false },
            "allowed drift is never cached: the layer is writable"
        );
        assert_eq!(
            policy.verdict(Location::Unknown { layer: None }),
            Verdict::Untrusted {
                audit_only: false,
                reason: Reason::Unreadable,
                layer: None
            }
        );
    }

    #[test]
    fn an_audit_only_layer_is_untrusted_but_marked_audit() {
        let layer = LayerId { dev: 1, ino: 20 };
        let mut policy = Policy::new(Mode::Enforce, Drift::Deny);
        policy.layers.insert(layer, LayerState::Audit);
        assert_eq!(
            policy.verdict(Location::Layer { layer }),
            Verdict::Untrusted {
                audit_only: true,
                reason: Reason::UnverifiedLayer,
                layer: Some(layer),
            }
        );
    }
}
