//! What the fuzz targets share: the test-vector cases (the same loader as the verification tests,
//! `daemon/tests/common`), the input encoding of the multi-field targets, seed corpora written
//! from `tests/fixtures`, and one checking function per target.
//!
//! Each check calls the real library entry point, relies on libFuzzer to report a panic, and
//! asserts the invariant the entry point promises where there is one: above all, that an input
//! the fuzzer made never verifies unless it carries content a trusted signer really signed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

#[path = "../../daemon/tests/common/mod.rs"]
#[allow(clippy::all, dead_code)]
mod common;

pub mod artifacts;
pub mod documents;
pub mod policies;

/// Separates the fields of a multi-field input (legacy signature layers).
pub const SEPARATOR: &[u8] = b"\n@@\n";

/// Environment variable naming a directory: the target writes its seed corpus there at start.
pub const SEEDS_ENV: &str = "IMAGEGATE_FUZZ_SEEDS";

/// `tests/fixtures` of the repository.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The first byte picks a case (modulo the number of cases); the rest are fields split on
/// [`SEPARATOR`].
pub fn split(data: &[u8]) -> (u8, Vec<&[u8]>) {
    let Some((&selector, mut rest)) = data.split_first() else {
        return (0, Vec::new());
    };
    let mut fields = Vec::new();
    while let Some(at) = rest
        .windows(SEPARATOR.len())
        .position(|window| window == SEPARATOR)
    {
        fields.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    fields.push(rest);
    (selector, fields)
}

/// The inverse of [`split`].
pub fn join(selector: u8, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![selector];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEPARATOR);
        }
        out.extend_from_slice(field);
    }
    out
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits (checked here, independently of
/// the library's own check).
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.len() == 71
        && digest.starts_with("sha256:")
        && digest[7..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Every test-vector case (both fixture roots), loaded once.
fn cases() -> &'static [(PathBuf, serde_json::Value)] {
    static CASES: OnceLock<Vec<(PathBuf, serde_json::Value)>> = OnceLock::new();
    CASES.get_or_init(common::all_cases)
}

/// Called once per target process: writes the seed corpus when [`SEEDS_ENV`] is set.
pub fn init(target: &str) {
    let Some(dir) = std::env::var_os(SEEDS_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    let seeds: Vec<Vec<u8>> = match target {
        "policy_toml" => policies::toml_seeds(),
        "policy_containers" => policies::containers_seeds(),
        "legacy_signature" => artifacts::legacy_seeds(),
        "bundle" => artifacts::bundle_seeds(),
        "oci_manifest" => documents::oci_seeds(),
        "trusted_root" => documents::trusted_root_seeds(),
        other => panic!("no seeds for target {other}"),
    };
    for seed in seeds {
        let name = hex::encode(&sha256(&seed)[..8]);
        std::fs::write(dir.join(format!("seed-{name}")), &seed).expect("write a seed");
    }
}

/// Files under `dir` (not recursive), sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    entries_in(dir, Path::is_file)
}

/// Directories under `dir` (not recursive), sorted.
fn dirs_in(dir: &Path) -> Vec<PathBuf> {
    entries_in(dir, Path::is_dir)
}

/// Entries of `dir` that `keep` accepts, sorted; none when `dir` cannot be read.
fn entries_in(dir: &Path, keep: fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| keep(path))
        .collect();
    entries.sort();
    entries
}

/// A set of SHA-256 values.
type Hashes = HashSet<[u8; 32]>;
