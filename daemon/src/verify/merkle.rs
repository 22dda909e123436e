//! Transparency-log inclusion proofs (RFC 6962/9162 Merkle audit paths) and Rekor checkpoints
//! (signed notes). Together they show the entry is in the log the checkpoint key vouches for.

use sha2::{Digest, Sha256};

use super::error::VerifyError;
use super::keys::HashAlg;
use super::trust::LogKey;
use super::witness::Witnesses;

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

/// Parse a Rekor checkpoint (a C2SP signed note) and verify its signature with the log key;
/// check it commits to `tree_size` and `root`.
///
/// The note must be well formed throughout (C2SP signed-note, tlog-checkpoint): text and
/// signatures split at the last blank line; text lines origin, decimal tree size, base64 root
/// hash, then optional non-empty extension lines; every signature line `— <name> <base64>` with
/// at least a 4-byte key hint and a signature. Signatures by other keys (witness cosignatures,
/// other logs) are ignored; one by the log key (its name is the origin, its hint the first four
/// bytes of the log id) must verify. Then the `witnesses` configured must have cosigned it
/// ([`Witnesses::check`]); returns the names of those that did.
pub fn verify_checkpoint(
    envelope: &str,
    key: &LogKey,
    witnesses: &Witnesses,
    tree_size: u64,
    root: &[u8; 32],
) -> Result<Vec<String>, VerifyError> {
    use base64::Engine;
    if envelope.len() > 64 << 10 {
        return Err(proof_err("checkpoint too large"));
    }
    let split = envelope
        .rfind("\n\n")
        .ok_or_else(|| proof_err("checkpoint has no signature block"))?;
    let text = &envelope[..split + 1];
    if envelope.len() == split + 2 {
        return Err(proof_err(
            "checkpoint carries no signature by the log key (no signature lines)",
        ));
    }
    let sigs = envelope[split + 2..]
        .strip_suffix('\n')
        .ok_or_else(|| proof_err("checkpoint signature block does not end with a newline"))?;
    let lines: Vec<&str> = text[..text.len() - 1].split('\n').collect();
    if lines.iter().any(|l| l.is_empty()) {
        return Err(proof_err("checkpoint text has an empty line"));
    }
    let [origin, size, root_line, ..] = lines.as_slice() else {
        return Err(proof_err(
            "checkpoint text needs origin, tree size and root hash",
        ));
    };
    let size: u64 = Some(*size)
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()) && (*s == "0" || !s.starts_with('0')))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| proof_err("checkpoint tree size is not a number"))?;
    let cp_root = base64::engine::general_purpose::STANDARD
        .decode(root_line)
        .map_err(|_| proof_err("checkpoint root hash is not base64"))?;
    if size != tree_size || cp_root.as_slice() != root.as_slice() {
        return Err(proof_err(
            "checkpoint does not commit to the proof's tree size and root",
        ));
    }
    // Parse every signature line first: one malformed line makes the note malformed.
    let mut parsed = Vec::new();
    for line in sigs.split('\n') {
        let malformed = || proof_err(format!("malformed checkpoint signature line {line:?}"));
        let rest = line.strip_prefix("\u{2014} ").ok_or_else(malformed)?;
        let (name, b64) = rest.split_once(' ').ok_or_else(malformed)?;
        if name.is_empty() || name.contains('+') || b64.contains(' ') {
            return Err(malformed());
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| malformed())?;
        if raw.len() < 5 {
            return Err(malformed());
        }
        parsed.push((name, raw));
    }
    let hint = &key.log_id[..4];
    let by_log = parsed.iter().find(|(name, raw)| {
        // The signer's name must be the log the note is about (Rekor v1: "<host> - <tree id>").
        let names_log = origin == name
            || origin
                .strip_prefix(name)
                .is_some_and(|r| r.starts_with(" - "));
        names_log && &raw[..4] == hint
    });
    let Some((_, raw)) = by_log else {
        return Err(proof_err("checkpoint carries no signature by the log key"));
    };
    if key
        .key
        .verify(text.as_bytes(), &raw[4..], HashAlg::Sha256)
        .is_err()
    {
        return Err(proof_err(
            "checkpoint signature does not verify with the log key",
        ));
    }
    witnesses.check(text, &parsed)
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

    /// A Rekor v2 style log: an Ed25519 key whose log id is the C2SP key id of its name.
    fn log(name: &str) -> (ed25519_dalek::SigningKey, LogKey) {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut spki = hex::decode("302a300506032b6570032100").unwrap();
        spki.extend_from_slice(sk.verifying_key().as_bytes());
        let mut id = Sha256::new();
        id.update(name.as_bytes());
        id.update(b"\n\x01");
        id.update(sk.verifying_key().as_bytes());
        let key = LogKey {
            log_id: id.finalize().into(),
            key: super::super::keys::PublicKey::from_spki_der(&spki).unwrap(),
            valid_from: None,
            valid_until: None,
        };
        (sk, key)
    }

    fn sig_line(sk: &ed25519_dalek::SigningKey, name: &str, hint: &[u8], text: &str) -> String {
        use base64::Engine;
        use ed25519_dalek::Signer;
        let mut raw = hint[..4].to_vec();
        raw.extend_from_slice(&sk.sign(text.as_bytes()).to_bytes());
        format!(
            "\u{2014} {name} {}\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// A checkpoint of tree size 736 of the log `log.example`, and the log's signature line.
    struct LogNote {
        name: &'static str,
        sk: ed25519_dalek::SigningKey,
        key: LogKey,
        root: [u8; 32],
        root_b64: String,
        text: String,
        own: String,
    }

    impl LogNote {
        fn new() -> Self {
            use base64::Engine;
            let name = "log.example";
            let (sk, key) = log(name);
            let root = [5u8; 32];
            let root_b64 = base64::engine::general_purpose::STANDARD.encode(root);
            let text = format!("{name}\n736\n{root_b64}\n");
            let own = sig_line(&sk, name, &key.log_id, &text);
            LogNote {
                name,
                sk,
                key,
                root,
                root_b64,
                text,
                own,
            }
        }
    }

    /// C2SP signed-note rules for checkpoints: the log's line verifies wherever it is, other
    /// well-formed lines are ignored, and anything malformed refuses the note.
    #[test]
    fn checkpoints_are_read_as_signed_notes() {
        let LogNote {
            name,
            sk,
            key,
            root,
            root_b64,
            text,
            own,
        } = LogNote::new();
        let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let witness = sig_line(&other, "witness.example", &[1, 2, 3, 4], &text);
        let same_name_other_key = sig_line(&other, name, &[1, 2, 3, 4], &text);
        let none = Witnesses::default();
        let check = |note: &str| verify_checkpoint(note, &key, &none, 736, &root);
        let detail = |note: &str| check(note).unwrap_err().to_string();

        check(&format!("{text}\n{own}")).unwrap();
        check(&format!("{text}\n{witness}{own}")).unwrap();
        check(&format!("{text}\n{own}{witness}")).unwrap();
        check(&format!("{text}\n{same_name_other_key}{own}")).unwrap();
        // Extension lines are signed text.
        let ext = format!("{name}\n736\n{root_b64}\nTimestamp: 1\n");
        check(&format!(
            "{ext}\n{}",
            sig_line(&sk, name, &key.log_id, &ext)
        ))
        .unwrap();

        assert!(detail(&format!("{text}\n{witness}")).contains("no signature by the log key"));
        assert!(detail(&format!("{text}\n")).contains("no signature by the log key"));
        let forged = sig_line(&other, name, &key.log_id, &text);
        assert!(detail(&format!("{text}\n{forged}")).contains("does not verify"));
        // Signed by the log's key under another name: not the log's line.
        let renamed = sig_line(&sk, "other.example", &key.log_id, &text);
        assert!(detail(&format!("{text}\n{renamed}")).contains("no signature by the log key"));
        for malformed in [
            format!("{text}\n\u{2014} {name}\n{own}"),
            format!("{text}\nnot a signature line\n{own}"),
            format!("{text}\n\u{2014} {name} AAAA\n{own}"),
            format!("{text}\n{own}").trim_end().to_string(),
        ] {
            assert!(check(&malformed).is_err(), "{malformed:?}");
        }
        // Junk before a blank line and the real signature block: split at the last blank line,
        // so the junk is signed text the signature does not cover.
        let junk = format!("{text}\n\u{2014} {name} junk=\n\n{own}");
        assert!(check(&junk).is_err());
        for (size, root_line) in [
            ("0736", root_b64.as_str()),
            ("736", "not base64"),
            ("+736", root_b64.as_str()),
        ] {
            let t = format!("{name}\n{size}\n{root_line}\n");
            assert!(check(&format!("{t}\n{}", sig_line(&sk, name, &key.log_id, &t))).is_err());
        }
        let blank_ext = format!("{name}\n736\n{root_b64}\n\nx\n");
        assert!(check(&format!(
            "{blank_ext}\n{}",
            sig_line(&sk, name, &key.log_id, &blank_ext)
        ))
        .is_err());
        // Another tree size or root than the proof's.
        assert!(verify_checkpoint(&format!("{text}\n{own}"), &key, &none, 737, &root).is_err());
        assert!(verify_checkpoint(&format!("{text}\n{own}"), &key, &none, 736, &[6; 32]).is_err());
    }

    /// Witnesses configured: a checkpoint needs cosignatures by `threshold` of them, on top of
    /// the log's own signature; a configured witness's line that does not verify refuses it.
    #[test]
    fn configured_witnesses_must_cosign_the_checkpoint() {
        use super::super::witness::{testing::TestWitness, Witness};
        use base64::Engine;
        let LogNote {
            name,
            key,
            root,
            root_b64,
            text,
            own,
            ..
        } = LogNote::new();
        let (w1, w2) = (
            TestWitness::new("witness.example/w1", 3),
            TestWitness::new("witness.example/w2", 4),
        );
        let set = |threshold| {
            Witnesses::new(
                vec![
                    Witness::from_vkey(&w1.vkey(4)).unwrap(),
                    Witness::from_vkey(&w2.vkey(1)).unwrap(),
                ],
                threshold,
            )
            .unwrap()
        };
        let check = |note: String, w: &Witnesses| verify_checkpoint(&note, &key, w, 736, &root);
        let c1 = w1.cosign(&text, 1_700_000_000);
        let c2 = w2.note_sign(&text);

        assert_eq!(
            check(format!("{text}\n{own}{c1}{c2}"), &set(None)).unwrap(),
            ["witness.example/w1", "witness.example/w2"]
        );
        assert_eq!(
            check(format!("{text}\n{c2}{own}"), &set(Some(1))).unwrap(),
            ["witness.example/w2"]
        );
        let e = check(format!("{text}\n{own}{c1}"), &set(None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "cosigned by 1 of the witnesses, 2 required (no cosignature by witness.example/w2)"
            ),
            "{e}"
        );
        // Cosignatures without the log's own signature prove nothing.
        let e = check(format!("{text}\n{c1}{c2}"), &set(None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no signature by the log key"), "{e}");
        // A cosignature over another tree, or at another time than it claims, does not verify.
        let other = format!("{name}\n737\n{root_b64}\n");
        let stale = w1.cosign(&other, 1_700_000_000);
        let e = check(format!("{text}\n{own}{stale}{c2}"), &set(Some(1)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cosignature by witness witness.example/w1 does not verify"),
            "{e}"
        );
        let mut retimed = base64::engine::general_purpose::STANDARD
            .decode(c1.trim_end().rsplit(' ').next().unwrap())
            .unwrap();
        retimed[11] ^= 1;
        let retimed = format!(
            "\u{2014} witness.example/w1 {}\n",
            base64::engine::general_purpose::STANDARD.encode(retimed)
        );
        assert!(check(format!("{text}\n{own}{retimed}{c2}"), &set(Some(1))).is_err());
        // Unconfigured witnesses are ignored, configured or not.
        let stranger = TestWitness::new("witness.example/w3", 5).cosign(&text, 1);
        assert!(check(format!("{text}\n{own}{stranger}"), &set(Some(1))).is_err());
        assert!(
            check(format!("{text}\n{own}{stranger}"), &Witnesses::default())
                .unwrap()
                .is_empty()
        );
    }
}
