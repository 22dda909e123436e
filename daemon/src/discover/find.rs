//! Where cosign keeps signatures, and how to read them. Artifacts are classified by the media
//! type of the layer inside the manifest, not by the index entry's `artifactType` (GHCR and the
//! referrers-tag fallback type cosign v3 bundles as `application/vnd.oci.empty.v1+json`).

use tracing::debug;

use super::client::{Session, MANIFEST_ACCEPT};
use super::DiscoverError;
use crate::oci::{self, media_type::OCI_INDEX, Descriptor, ImageManifest};
use crate::verdict::{Candidate, SignatureSource};
use crate::verify::legacy::{
    ANNOTATION_BUNDLE, ANNOTATION_CERTIFICATE, ANNOTATION_CHAIN, ANNOTATION_RFC3161,
    ANNOTATION_SIGNATURE,
};
use crate::verify::payload::{MAX_PAYLOAD_BYTES, SIMPLE_SIGNING_MEDIA_TYPE};
use crate::verify::{LegacySignature, VerifyError};

const BUNDLE_MEDIA_PREFIX: &str = "application/vnd.dev.sigstore.bundle";

/// The entries of a referrers list (the referrers API's answer or the `sha256-<hex>` tag's
/// index), parsed with the same checks as every other OCI document.
fn referrers_list(
    url: &str,
    declared: &str,
    bytes: &[u8],
) -> Result<Vec<Descriptor>, DiscoverError> {
    oci::parse_index(url, declared, bytes)
        .map(|index| index.manifests().clone())
        .map_err(|source| DiscoverError::Document {
            url: url.to_owned(),
            source,
        })
}

/// A signature artifact's manifest (a referrer, or the legacy `.sig` tag's); `declared` is the
/// registry's `Content-Type`, for a manifest that does not name its media type.
fn artifact_manifest(
    url: &str,
    declared: &str,
    bytes: &[u8],
) -> Result<ImageManifest, DiscoverError> {
    oci::parse_manifest(url, declared, bytes).map_err(|source| DiscoverError::Document {
        url: url.to_owned(),
        source,
    })
}

/// Signatures found for one digest, and the discovery errors met on the way (which turn a
/// non-trusted verdict into `error`: absence was not established).
#[derive(Debug, Default)]
pub struct Found {
    pub sources: Vec<SignatureSource>,
    pub errors: Vec<DiscoverError>,
}

fn unusable(
    label: String,
    digest: &str,
    location: &str,
    detail: impl std::fmt::Display,
) -> SignatureSource {
    SignatureSource {
        label,
        signed_digest: digest.to_string(),
        candidate: Candidate::Unusable(VerifyError::Artifact {
            location: location.to_string(),
            detail: detail.to_string(),
        }),
    }
}

/// Look in all three places for signatures of `digest`, stored in `registry/repo` (the image's
/// repository or a configured signature repository).
pub async fn find_signatures(
    s: &Session,
    registry: &str,
    repo: &str,
    digest: &str,
    cfg: &super::DiscoveryConfig,
) -> Found {
    let mut found = Found::default();
    let hex = digest.trim_start_matches("sha256:");

    // 1. Referrers API, else 2. the referrers tag.
    let mut referrers: Option<Vec<Descriptor>> = None;
    // Whether the list came from the `sha256-<hex>` tag rather than the API (for the labels).
    let mut from_tag = false;
    match s
        .get(
            registry,
            repo,
            &format!("referrers/{digest}"),
            OCI_INDEX,
            cfg.max_manifest_bytes,
        )
        .await
    {
        Ok(Some(f))
            if f.content_type
                .as_deref()
                .is_none_or(|c| c == OCI_INDEX || c == "application/json") =>
        {
            // The API answers an index by definition, whether or not it names its media type.
            match referrers_list("referrers", OCI_INDEX, &f.body) {
                Ok(list) => referrers = Some(list),
                Err(e) => found.errors.push(e),
            }
        }
        Ok(_) => {}
        // Registries without the API answer 404 (handled as None) or one of these.
        Err(DiscoverError::Status {
            status: 400 | 405 | 406 | 501,
            ..
        }) => {}
        Err(e) => found.errors.push(e),
    }
    if referrers.is_none() && found.errors.is_empty() {
        match s
            .get(
                registry,
                repo,
                &format!("manifests/sha256-{hex}"),
                MANIFEST_ACCEPT,
                cfg.max_manifest_bytes,
            )
            .await
        {
            Ok(Some(f)) => match referrers_list(
                "referrers tag",
                f.content_type.as_deref().unwrap_or_default(),
                &f.body,
            ) {
                Ok(list) => {
                    referrers = Some(list);
                    from_tag = true;
                }
                Err(e) => found.errors.push(e),
            },
            Ok(None) => {}
            Err(e) => found.errors.push(e),
        }
    }
    for d in referrers.unwrap_or_default() {
        if found.sources.len() >= cfg.max_signatures {
            break;
        }
        let referrer = d.digest().to_string();
        // Where it was found: `referrer:` (the API) or `referrers-tag:` (the fallback tag).
        let label = if from_tag {
            format!("referrers-tag:{referrer}")
        } else {
            format!("referrer:{referrer}")
        };
        if d.size() > cfg.max_manifest_bytes as u64 {
            found.sources.push(unusable(
                label,
                digest,
                &referrer,
                format!("manifest size {} over limit", d.size()),
            ));
            continue;
        }
        let m = match s
            .get_by_digest(
                registry,
                repo,
                "manifests",
                &referrer,
                MANIFEST_ACCEPT,
                cfg.max_manifest_bytes,
            )
            .await
        {
            Ok(Some(f)) => match artifact_manifest(
                &label,
                f.content_type.as_deref().unwrap_or_default(),
                &f.body,
            ) {
                Ok(m) => m,
                Err(e) => {
                    found.sources.push(unusable(label, digest, &referrer, e));
                    continue;
                }
            },
            Ok(None) => continue, // listed but gone: nothing to judge
            Err(e @ DiscoverError::RequestBudget { .. }) => {
                found.errors.push(e);
                break;
            }
            Err(e) => {
                found.sources.push(unusable(label, digest, &referrer, e));
                continue;
            }
        };
        if m.subject()
            .as_ref()
            .is_some_and(|sub| sub.digest().as_ref() != digest)
        {
            found.sources.push(unusable(
                label,
                digest,
                &referrer,
                "manifest subject is another image",
            ));
            continue;
        }
        let layers = m.layers();
        let Some(layer) = layers.first().filter(|_| layers.len() == 1) else {
            found.sources.push(unusable(
                label,
                digest,
                &referrer,
                format!("{} layers, a signature artifact has one", layers.len()),
            ));
            continue;
        };
        let layer_type = layer.media_type().to_string();
        if layer_type.starts_with(BUNDLE_MEDIA_PREFIX) {
            match blob(s, registry, repo, layer, cfg.max_blob_bytes).await {
                Ok(b) => found.sources.push(SignatureSource {
                    label,
                    signed_digest: digest.to_string(),
                    candidate: Candidate::Bundle(b),
                }),
                Err(e) => found
                    .sources
                    .push(unusable(label, digest, layer.digest().as_ref(), e)),
            }
        } else {
            // SBOMs, attestations in other formats, ...: not signatures.
            debug!(media_type = %layer_type, "referrer is not a signature");
            found.sources.push(SignatureSource {
                label,
                signed_digest: digest.to_string(),
                candidate: Candidate::Unusable(VerifyError::MediaType {
                    found: layer_type,
                    expected: "application/vnd.dev.sigstore.bundle.v0.3+json",
                }),
            });
        }
    }

    // 3. Legacy `.sig` tag.
    match s
        .get(
            registry,
            repo,
            &format!("manifests/sha256-{hex}.sig"),
            MANIFEST_ACCEPT,
            cfg.max_manifest_bytes,
        )
        .await
    {
        Ok(Some(f)) => match artifact_manifest(
            "legacy .sig manifest",
            f.content_type.as_deref().unwrap_or_default(),
            &f.body,
        ) {
            Ok(m) => {
                for (i, layer) in m.layers().iter().enumerate() {
                    if found.sources.len() >= cfg.max_signatures {
                        break;
                    }
                    let label = format!("legacy:sha256-{}.sig#{i}", &hex[..hex.len().min(12)]);
                    let layer_type = layer.media_type().to_string();
                    if layer_type != SIMPLE_SIGNING_MEDIA_TYPE {
                        found.sources.push(SignatureSource {
                            label,
                            signed_digest: digest.to_string(),
                            candidate: Candidate::Unusable(VerifyError::MediaType {
                                found: layer_type,
                                expected: SIMPLE_SIGNING_MEDIA_TYPE,
                            }),
                        });
                        continue;
                    }
                    match blob(s, registry, repo, layer, MAX_PAYLOAD_BYTES).await {
                        Ok(payload) => {
                            let annotation = |key: &str| {
                                layer
                                    .annotations()
                                    .as_ref()
                                    .and_then(|a| a.get(key))
                                    .filter(|value| !value.is_empty())
                                    .cloned()
                            };
                            let sig = LegacySignature {
                                media_type: layer_type,
                                payload,
                                signature_b64: annotation(ANNOTATION_SIGNATURE).unwrap_or_default(),
                                certificate_pem: annotation(ANNOTATION_CERTIFICATE),
                                chain_pem: annotation(ANNOTATION_CHAIN),
                                bundle_json: annotation(ANNOTATION_BUNDLE),
                                rfc3161_json: annotation(ANNOTATION_RFC3161),
                            };
                            found.sources.push(SignatureSource {
                                label,
                                signed_digest: digest.to_string(),
                                candidate: Candidate::Legacy(sig),
                            });
                        }
                        Err(e) => {
                            found
                                .sources
                                .push(unusable(label, digest, layer.digest().as_ref(), e))
                        }
                    }
                }
            }
            Err(e) => found
                .sources
                .push(unusable("legacy:.sig".into(), digest, "sha256-….sig", e)),
        },
        Ok(None) => {}
        Err(e) => found.errors.push(e),
    }
    found
}

async fn blob(
    s: &Session,
    registry: &str,
    repo: &str,
    d: &Descriptor,
    limit: usize,
) -> Result<Vec<u8>, DiscoverError> {
    let digest = d.digest().as_ref();
    if d.size() > limit as u64 {
        return Err(DiscoverError::TooLarge {
            url: digest.to_owned(),
            limit,
        });
    }
    match s
        .get_by_digest(registry, repo, "blobs", digest, "*/*", limit)
        .await?
    {
        Some(f) => Ok(f.body),
        None => Err(DiscoverError::Status {
            url: format!("{registry}/{repo}/blobs/{digest}"),
            status: 404,
        }),
    }
}
