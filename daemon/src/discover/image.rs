//! The entry points: verify an image reference (tag or digest) or a known digest against the
//! policy, with registry discovery, caching and fail-closed error verdicts.

use tracing::warn;

use super::client::{RegistryClient, Session, MANIFEST_ACCEPT};
use super::find::find_signatures;
use super::DiscoverError;
use crate::oci::{self, Document, Platform};
use crate::policy::{Policy, Requirement, SignedManifest};
use crate::verdict::{evaluate, Outcome, Reason, Verdict, VerdictCache, VerdictKey};
use crate::verify::{FailureKind, ImageRef};

fn error_verdict(
    policy: &Policy,
    image: Option<&ImageRef>,
    reference: &str,
    digest: &str,
    e: &DiscoverError,
) -> Verdict {
    let (scope, mode) = match image {
        Some(i) => {
            let r = policy.rule_for(i);
            (r.scope.clone(), r.mode)
        }
        None => (policy.default.scope.clone(), policy.default.mode),
    };
    Verdict::error(
        reference,
        digest,
        &scope,
        mode,
        &policy.hash,
        Some(FailureKind::Artifact),
        e.to_string(),
    )
}

/// Verify `reference` (a tag or digest reference) as `imagegate verify IMAGE` does: resolve it
/// in the registry (choosing `platform` from an index), find its signatures and apply the
/// policy. Never panics and never returns an allow on error: failures give an `error` verdict.
pub async fn verify_image(
    client: &RegistryClient,
    policy: &Policy,
    cache: Option<&VerdictCache>,
    reference: &str,
    platform: &Platform,
) -> Verdict {
    let image = match ImageRef::parse(reference) {
        Ok(i) => i,
        Err(e) => {
            let err = DiscoverError::Reference {
                reference: reference.to_string(),
                detail: e.reason.to_string(),
            };
            return error_verdict(policy, None, reference, "", &err);
        }
    };
    if !matches!(
        policy.rule_for(&image).requirement,
        Requirement::Signatures { .. }
    ) {
        // reject/accept need no registry access.
        return evaluate(policy, &image, image.digest.as_deref().unwrap_or(""), &[]);
    }
    let session = client.session();
    match resolve(
        &session,
        &image,
        platform,
        client.config().max_manifest_bytes,
    )
    .await
    {
        Ok((digest, index)) => {
            verify_digest(client, policy, cache, &image, &digest, index.as_deref()).await
        }
        Err(e) => error_verdict(
            policy,
            Some(&image),
            &image.to_string(),
            image.digest.as_deref().unwrap_or(""),
            &e,
        ),
    }
}

/// Resolve an image to (platform manifest digest, index digest if it came through an index).
async fn resolve(
    s: &Session,
    image: &ImageRef,
    platform: &Platform,
    limit: usize,
) -> Result<(String, Option<String>), DiscoverError> {
    let reference = image
        .digest
        .clone()
        .or(image.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let url = format!("{}/manifests/{reference}", image.name());
    let f = match &image.digest {
        Some(d) => {
            s.get_by_digest(
                &image.registry,
                &image.repository,
                "manifests",
                d,
                MANIFEST_ACCEPT,
                limit,
            )
            .await?
        }
        None => {
            s.get(
                &image.registry,
                &image.repository,
                &format!("manifests/{reference}"),
                MANIFEST_ACCEPT,
                limit,
            )
            .await?
        }
    }
    .ok_or_else(|| DiscoverError::Status {
        url: url.clone(),
        status: 404,
    })?;
    let document_error = |source| DiscoverError::Document {
        url: url.clone(),
        source,
    };
    let declared = f.content_type.as_deref().unwrap_or_default();
    match oci::parse_document(&url, declared, &f.body).map_err(document_error)? {
        Document::Manifest(_) => Ok((f.digest, None)),
        Document::Index(index) => {
            let chosen =
                oci::select_platform(&f.digest, &index, platform).map_err(document_error)?;
            Ok((chosen.digest().to_string(), Some(f.digest)))
        }
    }
}

/// Whether the index `index` (fetched by digest, so verified) lists manifest `digest`.
async fn index_lists(
    s: &Session,
    image: &ImageRef,
    index: &str,
    digest: &str,
    limit: usize,
) -> Result<bool, DiscoverError> {
    let url = format!("{}/manifests/{index}", image.name());
    let f = s
        .get_by_digest(
            &image.registry,
            &image.repository,
            "manifests",
            index,
            MANIFEST_ACCEPT,
            limit,
        )
        .await?
        .ok_or_else(|| DiscoverError::Status {
            url: url.clone(),
            status: 404,
        })?;
    let declared = f.content_type.as_deref().unwrap_or_default();
    let index =
        oci::parse_index(&url, declared, &f.body).map_err(|source| DiscoverError::Document {
            url: url.clone(),
            source,
        })?;
    Ok(index
        .manifests()
        .iter()
        .any(|m| m.digest().as_ref() == digest))
}

/// Verify a digest the caller already knows (the daemon learns name, platform manifest digest
/// and index digest from containerd). Cached and coalesced when `cache` is given.
pub async fn verify_digest(
    client: &RegistryClient,
    policy: &Policy,
    cache: Option<&VerdictCache>,
    image: &ImageRef,
    digest: &str,
    index_digest: Option<&str>,
) -> Verdict {
    let work = || async {
        if !matches!(
            policy.rule_for(image).requirement,
            Requirement::Signatures { .. }
        ) {
            return evaluate(policy, image, digest, &[]);
        }
        let cfg = client.config();
        let sig_repo = policy
            .rule_for(image)
            .signature_repository
            .as_ref()
            .or(cfg.signature_repository.as_ref());
        let (registry, repo) = match sig_repo {
            Some(r) => match ImageRef::parse(r) {
                Ok(r) => (r.registry, r.repository),
                Err(e) => {
                    let err = DiscoverError::Reference {
                        reference: r.clone(),
                        detail: e.reason.to_string(),
                    };
                    return error_verdict(policy, Some(image), &image.to_string(), digest, &err);
                }
            },
            None => (image.registry.clone(), image.repository.clone()),
        };
        let session = client.session();
        let signed_manifest = policy.rule_for(image).signed_manifest;
        let through_index = index_digest.is_some();
        let mut found = if through_index && signed_manifest == SignedManifest::Index {
            // Only the index's signatures count for an image reached through an index.
            super::find::Found::default()
        } else {
            find_signatures(&session, &registry, &repo, digest, cfg).await
        };
        let index_counts = match signed_manifest {
            SignedManifest::Index => true,
            SignedManifest::Platform => false,
            SignedManifest::Either => cfg.accept_index_signatures,
        };
        if let (true, Some(index)) = (index_counts, index_digest) {
            // An index signature vouches for the platform manifest only if the index lists it;
            // check in the registry rather than trusting the caller's pairing.
            match index_lists(&session, image, index, digest, cfg.max_manifest_bytes).await {
                Ok(true) => {
                    let more = find_signatures(&session, &registry, &repo, index, cfg).await;
                    found.sources.extend(more.sources);
                    found.errors.extend(more.errors);
                }
                Ok(false) => found.sources.push(crate::verdict::SignatureSource {
                    label: format!("index:{index}"),
                    signed_digest: index.to_string(),
                    candidate: crate::verdict::Candidate::Unusable(
                        crate::verify::VerifyError::Artifact {
                            location: index.to_string(),
                            detail: format!(
                                "index does not list {digest}; its signatures do not apply"
                            ),
                        },
                    ),
                }),
                Err(e) => found.errors.push(e),
            }
        }
        let mut v = evaluate(policy, image, digest, &found.sources);
        if v.outcome != Outcome::Trusted && !found.errors.is_empty() {
            // Absence of a valid signature was not established: this is an error, not a verdict
            // on the image (enforce mode still denies).
            v.outcome = Outcome::Error;
            for e in &found.errors {
                warn!(error = %e, image = %image, "signature discovery failed");
                v.reasons.push(Reason {
                    signature: "-".into(),
                    authority: None,
                    accepted: false,
                    kind: Some(FailureKind::Artifact),
                    detail: e.to_string(),
                    signer: None,
                    evidence: Vec::new(),
                });
            }
        }
        v
    };
    match cache {
        Some(c) => {
            c.get_or_verify(verdict_key(policy, image, digest), work)
                .await
        }
        None => work().await,
    }
}

/// The cache key of `image`'s verdict for `digest` under `policy`. The key names the
/// repository, and the tag too where the rule's signed identity depends on it (`exact`,
/// `repo-digest-or-exact` for an image named by tag, `remap`): a signature whose claim names
/// `app:1` must not vouch for `app:2` through a verdict cached for `app:1`.
#[must_use]
pub fn verdict_key(policy: &Policy, image: &ImageRef, digest: &str) -> VerdictKey {
    let by_tag = match &policy.rule_for(image).requirement {
        Requirement::Signatures { authorities, .. } => authorities
            .iter()
            .any(|a| identity_uses_tag(&a.signed_identity, image)),
        Requirement::Reject | Requirement::Accept => false,
    };
    let repository = match (&image.tag, by_tag) {
        (Some(tag), true) => format!("{}:{tag}", image.name()),
        _ => image.name(),
    };
    VerdictKey {
        policy_hash: policy.hash.clone(),
        repository,
        digest: digest.to_string(),
    }
}

/// Whether checking `identity` against `image` depends on the image's tag.
fn identity_uses_tag(identity: &crate::verify::SignedIdentity, image: &ImageRef) -> bool {
    use crate::verify::SignedIdentity;
    match identity {
        SignedIdentity::MatchExact => true,
        // The claim is compared with the (remapped) reference's tag unless it has a digest.
        SignedIdentity::MatchRepoDigestOrExact | SignedIdentity::Remap { .. } => {
            image.digest.is_none()
        }
        SignedIdentity::Any
        | SignedIdentity::MatchRepository
        | SignedIdentity::ExactReference(_)
        | SignedIdentity::ExactRepository(_) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(dir: &std::path::Path, identity: &str) -> Policy {
        let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/generated/legacy-keys/p256.pub");
        let text = format!(
            "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"r.test/**\"\n\
             require = \"signatures\"\n{identity}\n[[scope.keys]]\npath = \"{}\"\n",
            key.display()
        );
        crate::policy::file::parse(&dir.join("p.toml"), &text).unwrap()
    }

    /// A verdict cached for `app:1` must not answer for `app:2` where the signed identity
    /// compares tags; where it does not, retags share one verdict.
    #[test]
    fn the_cache_key_names_the_tag_where_the_signed_identity_uses_it() {
        let dir = tempfile::tempdir().unwrap();
        let digest = "sha256:".to_owned() + &"a".repeat(64);
        let one = ImageRef::parse("r.test/app:1").unwrap();
        let two = ImageRef::parse("r.test/app:2").unwrap();
        let by_digest = ImageRef::parse(&format!("r.test/app@{digest}")).unwrap();
        for (identity, tag_matters) in [
            ("signed_identity = { match = \"exact\" }", true),
            ("signed_identity = { match = \"repo-digest-or-exact\" }", true),
            (
                "signed_identity = { match = \"remap\", prefix = \"r.test\", signed_prefix = \"s.test\" }",
                true,
            ),
            ("signed_identity = { match = \"repository\" }", false),
            ("", false),
        ] {
            let policy = policy(dir.path(), identity);
            let (k1, k2) = (
                verdict_key(&policy, &one, &digest),
                verdict_key(&policy, &two, &digest),
            );
            assert_eq!(k1 != k2, tag_matters, "{identity}: {k1:?} {k2:?}");
            // Named by digest (no tag), every binding compares repositories only.
            assert_eq!(
                verdict_key(&policy, &by_digest, &digest).repository,
                "r.test/app",
                "{identity}"
            );
        }
    }
}
