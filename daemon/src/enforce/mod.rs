//! Enforcement: the kernel side of a verdict. A backend keeps a table of layer directories
//! (`snapshots/<id>/fs`, by `(dev, ino)`) that verified images vouch for, and denies exec and
//! executable mappings of files from any other layer under a scope.
//!
//! Backends: `bpf` (BPF LSM programs, decisions in the kernel, survive the daemon) and, later,
//! `fanotify` (permission events answered by the daemon).

pub mod bpf;
pub mod event;
pub mod layer;
pub mod selftest;

pub use event::Decision;
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

/// Whether a layer in the table is vouched for or a container's writable layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerState {
    /// At least one trusted image contains it.
    Verified,
    /// A container's upper directory: executing from it is drift.
    Writable,
}

impl LayerState {
    /// The value the kernel table stores.
    #[must_use]
    pub const fn to_raw(self) -> u32 {
        match self {
            Self::Verified => imagegate_common::layer_state::VERIFIED,
            Self::Writable => imagegate_common::layer_state::WRITABLE,
        }
    }

    /// From the kernel table's value.
    #[must_use]
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            imagegate_common::layer_state::VERIFIED => Some(Self::Verified),
            imagegate_common::layer_state::WRITABLE => Some(Self::Writable),
            _ => None,
        }
    }
}
