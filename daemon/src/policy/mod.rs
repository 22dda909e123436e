//! The trust policy: which images need which signatures, in which mode. Read from imagegate's
//! TOML format ([`file`]) or imported from containers-policy.json ([`containers`]); either way
//! it is compiled into a [`Policy`] whose every part was understood, or refused with an error.

pub mod containers;
pub mod error;
pub mod file;
pub mod scope;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::PolicyError;
pub use scope::ScopePattern;

use crate::verify::{Authority, ImageRef};

/// Whether a failed verification blocks (enforce) or is only reported (audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Audit,
    #[default]
    Enforce,
}

/// What a scope demands of an image.
#[derive(Debug, Clone)]
pub enum Requirement {
    /// Never trusted.
    Reject,
    /// Trusted without signatures.
    Accept,
    /// At least `threshold` distinct authorities must each be satisfied by a valid signature.
    Signatures {
        authorities: Vec<Authority>,
        threshold: usize,
    },
}

/// The rule applying to one scope (or the default).
#[derive(Debug, Clone)]
pub struct Rule {
    /// The scope pattern as text, or `default`.
    pub scope: String,
    pub mode: Mode,
    pub requirement: Requirement,
    /// Where this scope's signatures are stored when not beside the image (cosign's
    /// `COSIGN_REPOSITORY`), as `registry/repository`.
    pub signature_repository: Option<String>,
}

/// A fully validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// File it came from.
    pub source: PathBuf,
    /// SHA-256 over the policy file and every file it references (keys, trust roots), hex:
    /// cached verdicts are only valid for the policy and trust material they were made with.
    pub hash: String,
    pub default: Rule,
    pub scopes: Vec<(ScopePattern, Rule)>,
}

impl Policy {
    /// Load a policy file: `.json` is containers-policy.json, anything else imagegate TOML.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        if path.extension().is_some_and(|e| e == "json") {
            containers::load(path)
        } else {
            file::load(path)
        }
    }

    /// The text of a policy file, for either format's loader.
    pub(crate) fn read(path: &Path) -> Result<String, PolicyError> {
        std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            file: path.to_path_buf(),
            source,
        })
    }

    /// The rule for an image: the most specific matching scope, else the default.
    pub fn rule_for(&self, image: &ImageRef) -> &Rule {
        match scope::most_specific(self.scopes.iter().map(|(p, _)| p), image) {
            Some(i) => &self.scopes[i].1,
            None => &self.default,
        }
    }
}

/// Accumulates the bytes that define a policy's meaning, for [`Policy::hash`].
#[derive(Default)]
pub(crate) struct PolicyHasher(sha2::Sha256);

impl PolicyHasher {
    pub(crate) fn add(&mut self, label: &str, bytes: &[u8]) {
        use sha2::Digest;
        self.0.update((label.len() as u64).to_be_bytes());
        self.0.update(label.as_bytes());
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }
    pub(crate) fn finish(self) -> String {
        use sha2::Digest;
        hex::encode(self.0.finalize())
    }
}
