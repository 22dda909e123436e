//! Enforcement: the kernel side of a verdict. A backend keeps a table of containers (by their
//! root's writable layer directory) with their image's trust, and of layer directories
//! (`snapshots/<id>/fs`, by `(dev, ino)`) that verified images vouch for. A process of an
//! untrusted container executes nothing; a trusted container executes its own image's layers;
//! a host process executes files of layers that a verified image vouches for. The rule itself
//! is [`imagegate_common::decide`], shared by both backends.
//!
//! Backends: `bpf` (BPF LSM programs, decisions in the kernel, survive the daemon) and
//! `fanotify` (permission events answered by the daemon, for kernels without BPF LSM);
//! [`choose`] picks one by probing the kernel.

pub mod bpf;
pub mod cgroup;
pub mod event;
pub mod fanotify;
pub mod file_handle;
pub mod layer;
pub mod selftest;

pub use event::Decision;
pub use fanotify::choose::{choose, BackendKind, Choice};
pub use layer::LayerId;

/// What a backend does with a file from an unverified layer.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Report and allow (rollout).
    Audit,
    /// Deny with `EPERM` and report.
    Enforce,
}

/// What a backend does with an exec from a container's writable layer.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Drift {
    /// Treat it as unverified.
    Deny,
    /// Allow it.
    Allow,
}

/// What a trusted container may execute from outside its image (volumes, tmpfs, memfd).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum OutsideImage {
    /// Allow it (the default: volumes with tools are common).
    Allow,
    /// Deny and report it (reason `outside_image`).
    Deny,
}

impl OutsideImage {
    /// The value the kernel settings store.
    #[must_use]
    pub const fn to_raw(self) -> u32 {
        match self {
            Self::Allow => imagegate_common::outside_image::ALLOW,
            Self::Deny => imagegate_common::outside_image::DENY,
        }
    }
}

/// What the backend knows of a container, keyed by its root's writable layer directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ContainerTrust {
    /// Its image is trusted: it runs its own image's layers.
    Trusted,
    /// Its image is not trusted (untrusted, error, pending): it runs nothing.
    Untrusted,
    /// Untrusted, but its image's policy scope audits: allowed and reported.
    Audit,
}

impl ContainerTrust {
    /// The value the kernel table stores.
    #[must_use]
    pub const fn to_raw(self) -> u32 {
        match self {
            Self::Trusted => imagegate_common::container_state::TRUSTED,
            Self::Untrusted => imagegate_common::container_state::UNTRUSTED,
            Self::Audit => imagegate_common::container_state::AUDIT,
        }
    }

    /// From the kernel table's value (anything unknown is untrusted).
    #[must_use]
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            imagegate_common::container_state::TRUSTED => Self::Trusted,
            imagegate_common::container_state::AUDIT => Self::Audit,
            _ => Self::Untrusted,
        }
    }
}

/// What the backend holds for a container: its image's trust and, when its image's policy scope
/// sets one, what it may execute from outside its image (else the backend's setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ContainerState {
    /// The image's trust.
    pub trust: ContainerTrust,
    /// The scope's `outside_image`, if it sets one.
    pub outside_image: Option<OutsideImage>,
}

impl From<ContainerTrust> for ContainerState {
    fn from(trust: ContainerTrust) -> Self {
        Self {
            trust,
            outside_image: None,
        }
    }
}

impl ContainerState {
    /// The value the kernel table stores: the state and its flags.
    #[must_use]
    pub const fn to_raw(self) -> u32 {
        use imagegate_common::container_state::{OUTSIDE_ALLOW, OUTSIDE_SET};
        let flags = match self.outside_image {
            None => 0,
            Some(OutsideImage::Deny) => OUTSIDE_SET,
            Some(OutsideImage::Allow) => OUTSIDE_SET | OUTSIDE_ALLOW,
        };
        self.trust.to_raw() | flags
    }

    /// From the kernel table's value.
    #[must_use]
    pub const fn from_raw(raw: u32) -> Self {
        use imagegate_common::container_state::{OUTSIDE_ALLOW, OUTSIDE_SET, STATE_MASK};
        Self {
            trust: ContainerTrust::from_raw(raw & STATE_MASK),
            outside_image: if raw & OUTSIDE_SET == 0 {
                None
            } else if raw & OUTSIDE_ALLOW != 0 {
                Some(OutsideImage::Allow)
            } else {
                Some(OutsideImage::Deny)
            },
        }
    }
}

/// Whether a layer in the table is vouched for or a container's writable layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerState {
    /// At least one trusted image contains it.
    Verified,
    /// A container's upper directory: executing from it is drift.
    Writable,
    /// Untrusted, but contained only in images whose policy scope audits: allowed and reported
    /// whatever the global mode.
    Audit,
}

impl LayerState {
    /// The value the kernel table stores.
    #[must_use]
    pub const fn to_raw(self) -> u32 {
        match self {
            Self::Verified => imagegate_common::layer_state::VERIFIED,
            Self::Writable => imagegate_common::layer_state::WRITABLE,
            Self::Audit => imagegate_common::layer_state::AUDIT,
        }
    }

    /// From the kernel table's value.
    #[must_use]
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            imagegate_common::layer_state::VERIFIED => Some(Self::Verified),
            imagegate_common::layer_state::WRITABLE => Some(Self::Writable),
            imagegate_common::layer_state::AUDIT => Some(Self::Audit),
            _ => None,
        }
    }
}

/// What every enforcement backend offers the daemon: the same table, scope and settings, and the
/// same decision events, whether the kernel decides (BPF LSM) or the daemon does (fanotify).
pub trait Backend {
    /// The backend's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Short name for logs and `status` (`bpf-lsm`, `fanotify`).
    fn name(&self) -> &'static str;
    /// Whether enforcement goes on after the daemon exits (BPF LSM's pinned programs and maps
    /// do; fanotify's permission events end with the process).
    fn enforces_after_exit(&self) -> bool {
        false
    }
    /// Whether `error` says the layer table is full (a capacity, not a failure): the daemon
    /// then leaves the layer unverified (denied) and stays up, degraded.
    fn is_full(_error: &Self::Error) -> bool {
        false
    }
    /// Sets audit or enforce; takes effect for the next decision.
    fn set_mode(&mut self, mode: Mode) -> Result<(), Self::Error>;
    /// Sets the drift policy; takes effect for the next decision.
    fn set_drift(&mut self, drift: Drift) -> Result<(), Self::Error>;
    /// Sets what trusted containers may execute from outside their image.
    fn set_outside_image(&mut self, outside: OutsideImage) -> Result<(), Self::Error>;
    /// Records a container by its root's writable layer directory (`snapshots/<id>/fs`): its
    /// processes are judged by `trust` from the next decision on.
    fn set_container(&mut self, root: LayerId, state: ContainerState) -> Result<(), Self::Error>;
    /// Forgets a container: a process whose root it is counts as a container not judged yet
    /// (untrusted).
    fn remove_container(&mut self, root: LayerId) -> Result<(), Self::Error>;
    /// Every container the backend holds (the daemon mirrors its table at startup).
    fn containers(&self) -> Result<Vec<(LayerId, ContainerState)>, Self::Error>;
    /// Judges files in layers under `snapshots_dir` (a snapshotter's `snapshots` directory).
    fn add_scope(&mut self, snapshots_dir: &std::path::Path) -> Result<LayerId, Self::Error>;
    /// Stops judging files under the scope `id`.
    fn remove_scope(&mut self, id: LayerId) -> Result<(), Self::Error>;
    /// Records a layer directory (`snapshots/<id>/fs`) as verified or writable.
    fn set_layer(&mut self, layer: LayerId, state: LayerState) -> Result<(), Self::Error>;
    /// Forgets a layer: its files are unverified from the next decision on.
    fn remove_layer(&mut self, layer: LayerId) -> Result<(), Self::Error>;
    /// Sets (`Some`) or forgets (`None`) many layers, in order; a backend that rebuilds state
    /// per change (fanotify's copy-on-write table) does it once for the whole batch.
    fn apply_layers(
        &mut self,
        changes: &[(LayerId, Option<LayerState>)],
    ) -> Result<(), Self::Error> {
        for (layer, state) in changes {
            match state {
                Some(state) => self.set_layer(*layer, *state)?,
                None => self.remove_layer(*layer)?,
            }
        }
        Ok(())
    }
    /// Decision events queued since the last call.
    fn drain_events(&mut self) -> Vec<Decision>;
    /// Every layer the backend holds, with its state: the daemon compares it with its table at
    /// startup, because pinned BPF maps outlive the daemon that filled them.
    fn layers(&self) -> Result<Vec<(LayerId, LayerState)>, Self::Error>;
}
