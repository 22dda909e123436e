//! Who may sign: a set of public keys, or certificate identities under trusted CAs, plus the
//! transparency requirements. An `Authority` is one entry of a policy requirement.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cert::{verify_chain, Cert};
use super::error::VerifyError;
use super::identity::{check_identity, IdentityMatcher};
use super::keys::{HashAlg, PublicKey};
use super::payload::SignedIdentity;
use super::sct::verify_embedded_scts;
use super::trust::TrustMaterial;

/// A trusted signing key and the digest algorithm its legacy signatures use.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: PublicKey,
    /// cosign's `--signature-digest-algorithm`. `None` accepts cosign's default SHA-256 and the
    /// key's natural digest (SHA-384 for P-384), which the sigstore crate and KMS signers use.
    pub hash: Option<HashAlg>,
}

impl TrustedKey {
    pub fn new(key: PublicKey) -> Self {
        TrustedKey { key, hash: None }
    }

    /// Verify a legacy signature under this key's digest rule.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
        match self.hash {
            Some(h) => self.key.verify(msg, sig, h),
            None => match self.key.verify(msg, sig, HashAlg::Sha256) {
                Err(e) if self.key.natural_hash() != HashAlg::Sha256 => self
                    .key
                    .verify(msg, sig, self.key.natural_hash())
                    .map_err(|_| e),
                r => r,
            },
        }
    }
}

/// What signer an authority accepts.
#[derive(Debug, Clone)]
pub enum Signer {
    /// Any of these keys.
    Keys(Vec<TrustedKey>),
    /// A certificate chaining to the trust material's CAs with one of these identities.
    Certificate {
        identities: Vec<IdentityMatcher>,
        /// Require an embedded SCT from a trusted CT log (cosign's default for Fulcio).
        require_sct: bool,
    },
}

/// One way an image can be signed acceptably.
#[derive(Debug, Clone)]
pub struct Authority {
    /// Name used in verdict reasons.
    pub name: String,
    pub signer: Signer,
    pub trust: Arc<TrustMaterial>,
    /// Require a verified transparency-log entry (SET, or inclusion proof for bundles).
    pub require_tlog: bool,
    /// Legacy payload `docker-reference` binding.
    pub signed_identity: SignedIdentity,
}

/// Who signed, as recorded in a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SignerInfo {
    Key {
        fingerprint: String,
    },
    Certificate {
        subjects: Vec<String>,
        issuer: Option<String>,
    },
}

/// Which container format the signature came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureFormat {
    Legacy,
    BundleDsse,
    BundleMessageSignature,
}

/// What vouched for a signature besides its signer, as verdicts and `imagegate explain` name
/// it: the transparency-log entry, and each verified RFC 3161 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Evidence {
    /// A Rekor entry whose body records this signature: Rekor v1 (`rekor: 1`) with a verified
    /// SET and its `integrated_time`; Rekor v2 (`rekor: 2`, no SET) proven by an inclusion proof
    /// to a checkpoint signed by the log key.
    Tlog {
        rekor: u8,
        /// `kind/version` of the entry body, e.g. `dsse/0.0.2`.
        entry: String,
        log_index: i64,
        /// SET-verified integration time (Unix seconds), Rekor v1 only.
        integrated_time: Option<i64>,
        /// Whether an inclusion proof and its checkpoint were verified.
        inclusion_proof: bool,
        /// The configured witnesses that cosigned the checkpoint (none when none are required).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        witnessed_by: Vec<String>,
    },
    /// An RFC 3161 timestamp verified against a trusted timestamping authority: its `genTime`.
    Timestamp { time: i64 },
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tlog {
                rekor,
                entry,
                log_index,
                integrated_time,
                inclusion_proof,
                witnessed_by,
            } => {
                write!(f, "Rekor v{rekor} entry {entry} at log index {log_index} (")?;
                let mut parts = Vec::new();
                if let Some(t) = integrated_time {
                    parts.push(format!(
                        "SET, integrated {}",
                        super::time::format_rfc3339(*t)
                    ));
                }
                if *inclusion_proof {
                    parts.push("inclusion proof to a checkpoint signed by the log".to_owned());
                }
                if !witnessed_by.is_empty() {
                    parts.push(format!("cosigned by witness {}", witnessed_by.join(", ")));
                }
                write!(f, "{})", parts.join(", "))
            }
            Self::Timestamp { time } => write!(
                f,
                "RFC 3161 timestamp {} from a trusted TSA",
                super::time::format_rfc3339(*time)
            ),
        }
    }
}

impl Evidence {
    /// `"; vouched for by A; B"` after a signature's description, or nothing when `all` is empty
    /// (how `verify`'s text and `explain` word an accepted signature's evidence).
    #[must_use]
    pub fn vouched_for_by(all: &[Evidence]) -> String {
        if all.is_empty() {
            return String::new();
        }
        let words: Vec<String> = all.iter().map(ToString::to_string).collect();
        format!("; vouched for by {}", words.join("; "))
    }
}

/// A signature that passed every check of an authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub authority: String,
    pub digest: String,
    pub signer: SignerInfo,
    pub format: SignatureFormat,
    /// Verified integration time in the transparency log, if any.
    pub signed_at: Option<i64>,
    pub tlog_index: Option<i64>,
    /// The log entry and timestamps that vouched for it (empty when neither was required nor
    /// present, e.g. a key without `tlog`).
    pub evidence: Vec<Evidence>,
}

/// Verify `sig` over `msg` with the first matching key. Returns the key used.
pub(crate) fn verify_with_keys<'a>(
    keys: &'a [TrustedKey],
    msg: &[u8],
    sig: &[u8],
) -> Result<&'a TrustedKey, VerifyError> {
    let mut last = VerifyError::SignatureInvalid {
        key: "no configured key".into(),
    };
    for k in keys {
        match k.verify(msg, sig) {
            Ok(()) => return Ok(k),
            Err(e) => last = e,
        }
    }
    if keys.len() > 1 {
        if let VerifyError::SignatureInvalid { .. } = last {
            return Err(VerifyError::SignatureInvalid {
                key: format!("any of {} configured keys", keys.len()),
            });
        }
    }
    Err(last)
}

/// Verify `sig` over `msg` with a certificate's key: SHA-256 (cosign's default) or the key's
/// natural digest. This runs for every certificate signature, whatever identity checks follow.
pub(crate) fn verify_with_cert(cert: &Cert, msg: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
    let key = cert.public_key();
    match key.verify(msg, sig, HashAlg::Sha256) {
        Ok(()) => Ok(()),
        Err(e) if key.natural_hash() != HashAlg::Sha256 => {
            key.verify(msg, sig, key.natural_hash()).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// Chain, SCT and identity checks of a signing certificate, which must have been valid at every
/// one of the verified signing times `times` (none is an error: no trusted signing time).
pub(crate) fn check_certificate(
    leaf: &Cert,
    intermediates: &[Cert],
    trust: &TrustMaterial,
    identities: &[IdentityMatcher],
    require_sct: bool,
    times: &[i64],
) -> Result<SignerInfo, VerifyError> {
    let pool: Vec<Cert> = intermediates
        .iter()
        .chain(trust.intermediates.iter())
        .cloned()
        .collect();
    let mut path = None;
    for at in times {
        path = Some(verify_chain(leaf, &pool, &trust.cas, *at)?);
    }
    let path = path.ok_or(VerifyError::NoSigningTime)?;
    if require_sct {
        let issuer = path.get(1).ok_or_else(|| VerifyError::Sct {
            detail: "no issuer for SCT check".into(),
        })?;
        verify_embedded_scts(leaf, issuer, trust)?;
    }
    let id = check_identity(leaf, identities)?;
    Ok(SignerInfo::Certificate {
        subjects: id.subjects,
        issuer: id.issuer,
    })
}

#[cfg(test)]
mod tests {
    use super::Evidence;

    #[test]
    fn evidence_says_which_log_and_what_proved_the_entry() {
        let v2 = Evidence::Tlog {
            rekor: 2,
            entry: "dsse/0.0.2".into(),
            log_index: 6,
            integrated_time: None,
            inclusion_proof: true,
            witnessed_by: vec!["w.example/1".into(), "w.example/2".into()],
        };
        assert_eq!(
            v2.to_string(),
            "Rekor v2 entry dsse/0.0.2 at log index 6 (inclusion proof to a checkpoint signed by the \
             log, cosigned by witness w.example/1, w.example/2)"
        );
        let v1 = Evidence::Tlog {
            rekor: 1,
            entry: "hashedrekord/0.0.1".into(),
            log_index: 7,
            integrated_time: Some(1_767_225_720),
            inclusion_proof: true,
            witnessed_by: Vec::new(),
        };
        assert_eq!(
            v1.to_string(),
            "Rekor v1 entry hashedrekord/0.0.1 at log index 7 (SET, integrated 2026-01-01T00:02:00Z, \
             inclusion proof to a checkpoint signed by the log)"
        );
        assert_eq!(
            Evidence::Timestamp {
                time: 1_767_225_720
            }
            .to_string(),
            "RFC 3161 timestamp 2026-01-01T00:02:00Z from a trusted TSA"
        );
        let json = serde_json::to_value(&v2).expect("JSON");
        assert_eq!(json["kind"], "tlog");
        assert_eq!(json["rekor"], 2);
        assert_eq!(json["witnessed_by"][1], "w.example/2");
        // Evidence stored before witnesses existed still reads.
        let json = serde_json::to_value(&v1).expect("JSON");
        assert!(json.get("witnessed_by").is_none());
        assert_eq!(serde_json::from_value::<Evidence>(json).expect("read"), v1);
    }
}
