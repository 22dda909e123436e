//! Verdicts: the daemon's decision about one image digest under one policy, with the reasons a
//! user needs to understand it, persisted so a registry outage does not un-trust known images.

pub mod cache;
pub mod evaluate;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::policy::Mode;
use crate::verify::{Evidence, FailureKind, SignerInfo};

pub use cache::VerdictCache;
pub use evaluate::{evaluate, Candidate, SignatureSource};
pub use store::{StoreError, VerdictKey, VerdictStore};

/// The result of applying the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The requirement is met.
    Trusted,
    /// Signatures were examined (or none exist) and the requirement is not met.
    Untrusted,
    /// Verification could not be carried out (registry unreachable, oversized documents, ...).
    Error,
}

/// What happened to one signature under one authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// Which signature: where it was found (`legacy:sha256-….sig#0`, `referrer:sha256:…` from the
    /// referrers API, `referrers-tag:sha256:…` from the `sha256-<hex>` tag).
    pub signature: String,
    /// The authority it was checked against, when one applies.
    pub authority: Option<String>,
    pub accepted: bool,
    /// Failure category when rejected.
    pub kind: Option<FailureKind>,
    /// Human-readable detail (the typed error's message, or who signed).
    pub detail: String,
    /// Who signed, when accepted.
    pub signer: Option<SignerInfo>,
    /// What vouched for it besides the signer, when accepted: its transparency-log entry and
    /// timestamps (absent in verdicts stored before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<Evidence>,
}

/// The decision for one image digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The image reference as given, normalised.
    pub image: String,
    /// The digest decided on (the platform manifest that runs).
    pub digest: String,
    /// Digests whose signatures were accepted (the manifest, or its index when allowed).
    pub verified_digests: Vec<String>,
    /// The scope that applied (`default` if none matched).
    pub scope: String,
    pub mode: Mode,
    pub policy_hash: String,
    /// Authorities satisfied, and how many were needed.
    pub satisfied: Vec<String>,
    pub threshold: usize,
    pub reasons: Vec<Reason>,
    /// Unix seconds when decided.
    pub decided_at: i64,
}

impl Verdict {
    /// Whether the image may run: trusted, or any outcome in audit mode. Enforce mode fails
    /// closed on `untrusted` and `error`.
    pub fn allows(&self) -> bool {
        self.outcome == Outcome::Trusted || self.mode == Mode::Audit
    }

    /// Exit status of `imagegate verify`: 0 trusted, 1 untrusted, 2 error.
    pub fn exit_code(&self) -> i32 {
        match self.outcome {
            Outcome::Trusted => 0,
            Outcome::Untrusted => 1,
            Outcome::Error => 2,
        }
    }

    /// Whether the signatures this trusted verdict accepted may still satisfy `rule`, judged
    /// without a registry (a reload's revoke-first pass): a signature made with a key counts only
    /// while its key is among the rule's keys; a certificate-based one is left to the reload's
    /// full verification (identities and roots are judged there), as is a verdict trusted
    /// without signatures. `false`: it rests on keys the rule no longer trusts (or the rule
    /// rejects every image), so it must stop vouching before the new table is computed.
    #[must_use]
    pub fn may_still_satisfy(&self, rule: &crate::policy::Rule) -> bool {
        use crate::policy::Requirement;
        use crate::verify::Signer;
        let signers: Vec<&SignerInfo> = self
            .reasons
            .iter()
            .filter(|reason| reason.accepted)
            .filter_map(|reason| reason.signer.as_ref())
            .collect();
        match &rule.requirement {
            Requirement::Reject => false,
            Requirement::Accept => true,
            Requirement::Signatures { .. } if signers.is_empty() => true,
            Requirement::Signatures {
                authorities,
                threshold,
            } => {
                let still = authorities
                    .iter()
                    .filter(|authority| match &authority.signer {
                        Signer::Keys(keys) => signers.iter().any(|signer| {
                            matches!(signer, SignerInfo::Key { fingerprint }
                                if keys.iter().any(|k| k.key.fingerprint() == *fingerprint))
                        }),
                        Signer::Certificate { .. } => signers
                            .iter()
                            .any(|signer| matches!(signer, SignerInfo::Certificate { .. })),
                    })
                    .count();
                still >= *threshold
            }
        }
    }

    /// A verdict for a failure before any signature could be judged (fail closed).
    pub fn error(
        image: &str,
        digest: &str,
        scope: &str,
        mode: Mode,
        policy_hash: &str,
        kind: Option<FailureKind>,
        detail: String,
    ) -> Self {
        Verdict {
            outcome: Outcome::Error,
            image: image.to_string(),
            digest: digest.to_string(),
            verified_digests: Vec::new(),
            scope: scope.to_string(),
            mode,
            policy_hash: policy_hash.to_string(),
            satisfied: Vec::new(),
            threshold: 0,
            reasons: vec![Reason {
                signature: "-".into(),
                authority: None,
                accepted: false,
                kind,
                detail,
                signer: None,
                evidence: Vec::new(),
            }],
            decided_at: crate::verify::time::now_unix(),
        }
    }
}

/// Human-readable report, as `imagegate verify` prints it.
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match self.outcome {
            Outcome::Trusted => "TRUSTED",
            Outcome::Untrusted => "UNTRUSTED",
            Outcome::Error => "ERROR",
        };
        // The image as named, and the digest decided on unless the name already says it (a
        // `REPO@DIGEST` reference would otherwise print its digest twice).
        match self.image.rsplit_once('@') {
            Some((_, named)) if named == self.digest => writeln!(f, "{outcome}: {}", self.image)?,
            Some(_) => writeln!(f, "{outcome}: {} (manifest {})", self.image, self.digest)?,
            None if self.digest.is_empty() => writeln!(f, "{outcome}: {}", self.image)?,
            None => writeln!(f, "{outcome}: {}@{}", self.image, self.digest)?,
        }
        let mode = match self.mode {
            Mode::Audit => "audit (allowed whatever the outcome)",
            Mode::Enforce => "enforce",
        };
        writeln!(f, "  scope: {}  mode: {mode}", self.scope)?;
        if self.threshold > 0 {
            writeln!(
                f,
                "  authorities satisfied: {}/{} {:?}",
                self.satisfied.len(),
                self.threshold,
                self.satisfied
            )?;
        }
        if !self.verified_digests.is_empty() {
            writeln!(f, "  signed digests: {}", self.verified_digests.join(", "))?;
        }
        for r in &self.reasons {
            let mark = if r.accepted { "ok  " } else { "FAIL" };
            let kind = r
                .kind
                .map(|k| {
                    format!(
                        "[{}] ",
                        serde_json::to_value(k)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            let auth = r
                .authority
                .as_deref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default();
            let evidence = Evidence::vouched_for_by(&r.evidence);
            writeln!(
                f,
                "  {mark} {}{auth}: {kind}{}{evidence}",
                r.signature, r.detail
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::verify::ImageRef;

    fn rule_with_keys(
        dir: &std::path::Path,
        keys: &[&str],
        threshold: usize,
    ) -> crate::policy::Rule {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/generated/legacy-keys");
        let mut text = format!(
            "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"r.test/**\"\n\
             require = \"signatures\"\nthreshold = {threshold}\n"
        );
        for key in keys {
            text.push_str(&format!(
                "[[scope.keys]]\npath = \"{}\"\n",
                fixtures.join(format!("{key}.pub")).display()
            ));
        }
        let policy = crate::policy::file::parse(&dir.join("p.toml"), &text).unwrap();
        policy
            .rule_for(&ImageRef::parse("r.test/app:1").unwrap())
            .clone()
    }

    fn signed_by(fingerprints: &[String]) -> Verdict {
        let mut verdict = Verdict::error(
            "r.test/app:1",
            "sha256:x",
            "r.test/**",
            Mode::Enforce,
            "h",
            None,
            String::new(),
        );
        verdict.outcome = Outcome::Trusted;
        verdict.reasons = fingerprints
            .iter()
            .map(|fingerprint| Reason {
                signature: "legacy:…".into(),
                authority: Some("k".into()),
                accepted: true,
                kind: None,
                detail: String::new(),
                signer: Some(SignerInfo::Key {
                    fingerprint: fingerprint.clone(),
                }),
                evidence: Vec::new(),
            })
            .collect();
        verdict
    }

    fn fingerprint(key: &str) -> String {
        let pem = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../tests/fixtures/generated/legacy-keys/{key}.pub")),
        )
        .unwrap();
        crate::verify::PublicKey::from_pem(&pem)
            .unwrap()
            .fingerprint()
    }

    /// A reload that drops the key an image was signed with revokes it before any registry
    /// round trip; one that keeps the key (or adds others) leaves it to the rebuild.
    #[test]
    fn a_verdict_resting_on_a_dropped_key_may_not_satisfy_the_new_rule() {
        let dir = tempfile::tempdir().unwrap();
        let by_p256 = signed_by(&[fingerprint("p256")]);
        assert!(by_p256.may_still_satisfy(&rule_with_keys(dir.path(), &["p256", "p384"], 1)));
        assert!(!by_p256.may_still_satisfy(&rule_with_keys(dir.path(), &["p384"], 1)));
        // Two authorities required, the image signed by one of them.
        assert!(!by_p256.may_still_satisfy(&rule_with_keys(dir.path(), &["p256", "p384"], 2)));
        let by_both = signed_by(&[fingerprint("p256"), fingerprint("p384")]);
        assert!(by_both.may_still_satisfy(&rule_with_keys(dir.path(), &["p256", "p384"], 2)));
        assert!(by_both.may_still_satisfy(&rule_with_keys(dir.path(), &["p384", "rsa2048"], 1)));
        // Trusted without signatures (an `accept` scope before): judged by the rebuild.
        assert!(signed_by(&[]).may_still_satisfy(&rule_with_keys(dir.path(), &["p384"], 1)));
    }
}

#[cfg(test)]
mod display_tests {
    use super::*;

    fn verdict(image: &str, digest: &str) -> Verdict {
        Verdict::error(
            image,
            digest,
            "default",
            Mode::Enforce,
            "h",
            None,
            "x".into(),
        )
    }

    /// `imagegate verify REPO@DIGEST` printed `REPO@DIGEST@DIGEST` (issue 13).
    #[test]
    fn the_first_line_names_the_digest_once() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let first = |v: Verdict| v.to_string().lines().next().unwrap_or_default().to_owned();
        assert_eq!(
            first(verdict(&format!("r.test/app@{digest}"), &digest)),
            format!("ERROR: r.test/app@{digest}")
        );
        assert_eq!(
            first(verdict("r.test/app:1", &digest)),
            format!("ERROR: r.test/app:1@{digest}")
        );
        // Named by an index digest, decided on its platform manifest: both, each once.
        let index = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            first(verdict(&format!("r.test/app@{index}"), &digest)),
            format!("ERROR: r.test/app@{index} (manifest {digest})")
        );
        assert_eq!(first(verdict("r.test/app:1", "")), "ERROR: r.test/app:1");
    }
}
