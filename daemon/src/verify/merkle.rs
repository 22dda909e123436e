//! Transparency-log inclusion proofs (RFC 6962/9162 Merkle audit paths) and Rekor checkpoints
//! (signed notes). Together they show the entry is in the log the checkpoint key vouches for.

use sha2::{Digest, Sha256};

use super::error::VerifyError;
use super::keys::HashAlg;
use super::rekor::b64decode;
use super::trust::LogKey;

fn proof_err(detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::TlogProof {
        detail: detail.to_string(),
    }
}

/// Audit paths longer than this cannot come from a log of fewer than 2^64 entries.
const MAX_PROOF_HASHES: usize = 64;

fn node(left: &[u8], right: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// RFC 9162 leaf hash: SHA-256(0x00 || entry).
pub fn leaf_hash(entry: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// Recompute the root from a leaf and its audit path (RFC 9162 §2.1.3.2) and compare.
pub fn verify_inclusion(
    leaf: [u8; 32],
    index: u64,
    tree_size: u64,
    proof: &[[u8; 32]],
    root: &[u8; 32],
) -> Result<(), VerifyError> {
    if index >= tree_size {
        return Err(proof_err(format!(
            "leaf index {index} outside tree of size {tree_size}"
        )));
    }
    if proof.len() > MAX_PROOF_HASHES {
        return Err(proof_err("audit path too long"));
    }
    let (mut fn_, mut sn) = (index, tree_size - 1);
    let mut r = leaf;
    for p in proof {
        if sn == 0 {
            return Err(proof_err("audit path longer than the tree allows"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(proof_err("audit path too short"));
    }
    if &r != root {
        return Err(proof_err(
            "computed root does not match the proof's root hash",
        ));
    }
    Ok(())
}

/// Parse a Rekor checkpoint (signed note) and verify its signature with the log key; check it
/// commits to `tree_size` and `root`.
pub fn verify_checkpoint(
    envelope: &str,
    key: &LogKey,
    tree_size: u64,
    root: &[u8; 32],
) -> Result<(), VerifyError> {
    if envelope.len() > 64 << 10 {
        return Err(proof_err("checkpoint too large"));
    }
    let split = envelope
        .find("\n\n")
        .ok_or_else(|| proof_err("checkpoint has no signature block"))?;
    let text = &envelope[..split + 1];
    let sigs = &envelope[split + 2..];
    let mut lines = text.lines();
    let origin = lines
        .next()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| proof_err("checkpoint without origin"))?;
    let size: u64 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| proof_err("checkpoint tree size is not a number"))?;
    let cp_root = lines
        .next()
        .and_then(|l| b64decode(l).ok())
        .ok_or_else(|| proof_err("checkpoint root hash is not base64"))?;
    if size != tree_size || cp_root.as_slice() != root.as_slice() {
        return Err(proof_err(
            "checkpoint does not commit to the proof's tree size and root",
        ));
    }
    let hint = &key.log_id[..4];
    for line in sigs.lines() {
        let Some(rest) = line.strip_prefix("\u{2014} ") else {
            continue;
        };
        let Some((name, b64)) = rest.rsplit_once(' ') else {
            continue;
        };
        // The signer's name must be the log the note is about (Rekor v1: "<host> - <tree id>").
        if !(origin == name
            || origin
                .strip_prefix(name)
                .is_some_and(|r| r.starts_with(" - ")))
        {
            continue;
        }
        let Ok(raw) = b64decode(b64) else { continue };
        if raw.len() < 5 || &raw[..4] != hint {
            continue;
        }
        if key
            .key
            .verify(text.as_bytes(), &raw[4..], HashAlg::Sha256)
            .is_ok()
        {
            return Ok(());
        }
        return Err(proof_err(
            "checkpoint signature does not verify with the log key",
        ));
    }
    Err(proof_err("checkpoint carries no signature by the log key"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Build a tiny tree by hand and check proofs for every leaf.
    #[test]
    fn inclusion_proofs_of_a_five_leaf_tree() {
        let leaves: Vec<[u8; 32]> = (0u8..5).map(|i| leaf_hash(&[i])).collect();
        let n01 = node(&leaves[0], &leaves[1]);
        let n23 = node(&leaves[2], &leaves[3]);
        let n0123 = node(&n01, &n23);
        let root = node(&n0123, &leaves[4]);
        verify_inclusion(leaves[4], 4, 5, &[n0123], &root).unwrap();
        verify_inclusion(leaves[2], 2, 5, &[leaves[3], n01, leaves[4]], &root).unwrap();
        verify_inclusion(leaves[0], 0, 5, &[leaves[1], n23, leaves[4]], &root).unwrap();
        // wrong index, wrong sibling, truncated path
        assert!(verify_inclusion(leaves[2], 3, 5, &[leaves[3], n01, leaves[4]], &root).is_err());
        assert!(verify_inclusion(leaves[2], 2, 5, &[leaves[1], n01, leaves[4]], &root).is_err());
        assert!(verify_inclusion(leaves[2], 2, 5, &[leaves[3], n01], &root).is_err());
        assert!(verify_inclusion(leaves[2], 7, 5, &[], &root).is_err());
    }
}
