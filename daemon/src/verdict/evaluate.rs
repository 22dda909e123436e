//! Apply a policy rule to the signatures found for an image and produce a [`Verdict`].

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::info;

use super::{Outcome, Reason, Verdict};
use crate::policy::{Policy, Requirement};
use crate::verify::{
    verify_bundle, verify_legacy, Authority, BundleExpectation, Expectation, FailureKind, ImageRef,
    LegacySignature, VerifyError,
};

/// A signature artifact as found in the registry.
#[derive(Debug, Clone)]
pub enum Candidate {
    /// One layer of a legacy `.sig` manifest.
    Legacy(LegacySignature),
    /// A sigstore bundle (JSON bytes).
    Bundle(Vec<u8>),
    /// An artifact that could not be used (unknown media type, oversized, malformed manifest).
    Unusable(VerifyError),
}

/// A candidate and where it came from.
#[derive(Debug, Clone)]
pub struct SignatureSource {
    /// Where it was found, for reasons.
    pub label: String,
    /// The digest the signature is attached to: the image manifest, or its index.
    pub signed_digest: String,
    pub candidate: Candidate,
}

/// Evaluate `image@digest` under `policy` given the signatures found. Pure and synchronous:
/// the registry work happens before, the caching around it.
pub fn evaluate(
    policy: &Policy,
    image: &ImageRef,
    digest: &str,
    sources: &[SignatureSource],
) -> Verdict {
    let rule = policy.rule_for(image);
    let mut v = Verdict {
        outcome: Outcome::Untrusted,
        image: image.to_string(),
        digest: digest.to_string(),
        verified_digests: Vec::new(),
        scope: rule.scope.clone(),
        mode: rule.mode,
        policy_hash: policy.hash.clone(),
        satisfied: Vec::new(),
        threshold: 0,
        reasons: Vec::new(),
        decided_at: crate::verify::time::now_unix(),
    };
    let reason = |signature: &str, authority: Option<&str>, detail: String| Reason {
        signature: signature.to_string(),
        authority: authority.map(str::to_string),
        accepted: false,
        kind: None,
        detail,
        signer: None,
        evidence: Vec::new(),
    };
    match &rule.requirement {
        Requirement::Reject => {
            v.reasons.push(reason(
                "-",
                None,
                format!("scope {} rejects every image", rule.scope),
            ));
        }
        Requirement::Accept => {
            v.outcome = Outcome::Trusted;
            v.reasons.push(Reason {
                accepted: true,
                ..reason(
                    "-",
                    None,
                    format!("scope {} accepts without signatures", rule.scope),
                )
            });
        }
        Requirement::Signatures {
            authorities,
            threshold,
        } => {
            v.threshold = *threshold;
            let mut verified = BTreeSet::new();
            // An authority trusting the public-good root needs the TUF client's current one;
            // none (never fetched, expired) makes the verdict `error` unless others suffice.
            let mut root_unavailable = false;
            if sources.is_empty() {
                v.reasons
                    .push(reason("-", None, "no signatures found".into()));
            }
            for auth in authorities {
                let resolved;
                let auth = match crate::tuf::resolve(&auth.trust) {
                    Ok(trust) if Arc::ptr_eq(&trust, &auth.trust) => auth,
                    Ok(trust) => {
                        resolved = Authority {
                            trust,
                            ..auth.clone()
                        };
                        &resolved
                    }
                    Err(e) => {
                        root_unavailable = true;
                        v.reasons.push(Reason {
                            kind: Some(FailureKind::TrustRoot),
                            ..reason("-", Some(&auth.name), e.to_string())
                        });
                        continue;
                    }
                };
                let mut ok = false;
                for src in sources {
                    let res = match &src.candidate {
                        Candidate::Legacy(sig) => verify_legacy(
                            sig,
                            auth,
                            &Expectation {
                                digest: &src.signed_digest,
                                image: Some(image),
                            },
                        ),
                        Candidate::Bundle(json) => verify_bundle(
                            json,
                            auth,
                            &BundleExpectation {
                                digest: &src.signed_digest,
                                predicate_type: None,
                            },
                        ),
                        Candidate::Unusable(e) => Err(e.clone()),
                    };
                    match res {
                        Ok(good) => {
                            ok = true;
                            verified.insert(src.signed_digest.clone());
                            v.reasons.push(Reason {
                                accepted: true,
                                detail: format!("signature accepted by {}", auth.name),
                                signer: Some(good.signer),
                                evidence: good.evidence,
                                ..reason(&src.label, Some(&auth.name), String::new())
                            });
                        }
                        Err(e) => v.reasons.push(Reason {
                            kind: Some(e.kind()),
                            ..reason(&src.label, Some(&auth.name), e.to_string())
                        }),
                    }
                }
                if ok {
                    v.satisfied.push(auth.name.clone());
                }
            }
            if v.satisfied.len() >= *threshold {
                v.outcome = Outcome::Trusted;
            } else if root_unavailable {
                v.outcome = Outcome::Error;
            } else if !sources.is_empty() {
                v.reasons.push(reason(
                    "-",
                    None,
                    format!(
                        "{} of {} required authorities satisfied",
                        v.satisfied.len(),
                        threshold
                    ),
                ));
            }
            v.verified_digests = if v.outcome == Outcome::Trusted {
                verified.into_iter().collect()
            } else {
                Vec::new()
            };
        }
    }
    info!(image = %v.image, digest, outcome = ?v.outcome, scope = %v.scope, mode = ?v.mode, "verdict");
    v
}
