//! The trust policy: which images need which signatures, in which mode. Read from imagegate's
//! TOML format ([`file`]) or imported from containers-policy.json ([`containers`]); either way
//! it is compiled into a [`Policy`] whose every part was understood, or refused with an error.

pub mod containerd_cri;
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
    /// For an image reached through an index (multi-arch): whose signatures count.
    pub signed_manifest: SignedManifest,
    /// What a container of a trusted image of this scope may execute from outside its image;
    /// `None`: the daemon's `outside_image` setting.
    pub outside_image: Option<crate::enforce::OutsideImage>,
}

/// Whose signatures count for an image reached through an index (a multi-arch image): the
/// index's, the platform manifest's, or either. An image not reached through an index has its
/// own manifest's signatures only, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignedManifest {
    /// Signatures on the index or on the platform manifest (cosign signs either, depending on
    /// how it was given the image).
    #[default]
    Either,
    /// Only signatures on the index (an index listing the platform manifest vouches for it).
    Index,
    /// Only signatures on the platform manifest that runs.
    Platform,
}

/// A fully validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// File it came from.
    pub source: PathBuf,
    /// SHA-256 over the policy file and every file it references (keys, trust roots), and —
    /// for a policy naming the public-good root — that root's identity ([`Self::under_public_good_root`]),
    /// hex: cached verdicts are only valid for the policy and trust material they were made with.
    pub hash: String,
    pub default: Rule,
    pub scopes: Vec<(ScopePattern, Rule)>,
    /// The hash of the files alone, before a public-good root was folded in.
    files_hash: String,
}

impl Policy {
    /// A policy of `scopes` and `default` whose files hash to `hash`.
    pub(crate) fn new(
        source: PathBuf,
        hash: String,
        default: Rule,
        scopes: Vec<(ScopePattern, Rule)>,
    ) -> Policy {
        Policy {
            source,
            files_hash: hash.clone(),
            hash,
            default,
            scopes,
        }
    }

    /// This policy as judged with the public-good root `root` (its sha256, or `None` when there
    /// is no usable one: never fetched, or expired). What the policy means changes with the root
    /// TUF serves, so its hash does too: a new root, or its expiry, makes every cached verdict of
    /// a policy naming it stale, and the daemon re-judges. A policy that does not name the root
    /// keeps its hash.
    #[must_use]
    pub fn under_public_good_root(&self, root: Option<&str>) -> Policy {
        let mut policy = self.clone();
        policy.hash = if self.uses_public_good() {
            let mut hasher = PolicyHasher::default();
            hasher.add("policy files", self.files_hash.as_bytes());
            hasher.add(
                "public-good root",
                root.map_or(b"unavailable".as_slice(), str::as_bytes),
            );
            hasher.finish()
        } else {
            self.files_hash.clone()
        };
        policy
    }

    /// Load a policy file: `.json` is containers-policy.json; a containerd configuration (a
    /// TOML file with a `plugins` table) is read for its CRI `policy.v1` section only
    /// ([`containerd_cri`]); anything else is imagegate TOML.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        if path.extension().is_some_and(|e| e == "json") {
            return containers::load(path);
        }
        let text = Self::read(path)?;
        if containerd_cri::is_containerd_config(&text) {
            containerd_cri::parse(path, &text)
        } else {
            file::parse(path, &text)
        }
    }

    /// The text of a policy file, for either format's loader.
    pub(crate) fn read(path: &Path) -> Result<String, PolicyError> {
        read_bounded(path, MAX_FILE_BYTES).map_err(|source| PolicyError::Read {
            file: path.to_path_buf(),
            source,
        })
    }

    /// Whether some authority of the policy trusts the Sigstore public-good root kept current
    /// through TUF (`trusted_root = "public-good"`): the daemon refreshes it only then.
    pub fn uses_public_good(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.scopes.iter().map(|(_, rule)| rule))
            .any(|rule| match &rule.requirement {
                Requirement::Signatures { authorities, .. } => {
                    authorities.iter().any(|a| a.trust.public_good)
                }
                _ => false,
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

/// Largest policy, key or trust file read (a trusted_root.json is at most 4 MiB too).
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 20;

/// Reads a file the policy is or names: a regular file of at most `limit` bytes. A device, FIFO
/// or directory is refused rather than read (`/dev/zero` would never end, a FIFO would block
/// the daemon's start), and so is anything larger than the limit.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it has no effect on regular files).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy naming a device or a FIFO as a key gets an error, instead of reading forever or
    /// blocking the daemon's start.
    #[test]
    fn referenced_files_must_be_small_regular_files() {
        for path in ["/dev/zero", "/dev/null", "/"] {
            let error = read_bounded(Path::new(path), MAX_FILE_BYTES)
                .expect_err(&format!("{path} was read"));
            assert!(
                error.to_string().contains("not a regular file"),
                "{path}: {error}"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert!(read_bounded(&fifo, MAX_FILE_BYTES).is_err());
        let big = dir.path().join("big.pub");
        std::fs::write(&big, vec![b'a'; 11]).expect("write");
        assert!(read_bounded(&big, 10).is_err());
        assert_eq!(
            read_bounded(&big, 11).expect("at the limit"),
            "a".repeat(11)
        );
        // Through the TOML loader: a clear error naming the field, no hang.
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            "version = 1\n[default]\nrequire = \"signatures\"\n[[default.keys]]\npath = \"fifo\"\n",
        )
        .expect("write");
        let error = Policy::load(&policy).expect_err("a FIFO key was accepted");
        assert!(error.to_string().contains("not a regular file"), "{error}");
        // And the policy file itself.
        let error = Policy::load(Path::new("/dev/zero")).expect_err("/dev/zero as policy");
        assert!(error.to_string().contains("not a regular file"), "{error}");
    }
}
