//! Where cosign keeps signatures, and how to read them. Artifacts are classified by the media
//! type of the layer inside the manifest, not by the index entry's `artifactType` (GHCR and the
//! referrers-tag fallback type cosign v3 bundles as `application/vnd.oci.empty.v1+json`).

use std::collections::BTreeMap;

use serde::Deserialize;
use tracing::debug;

use super::client::{Session, MANIFEST_ACCEPT};
use super::DiscoverError;
use crate::verdict::{Candidate, SignatureSource};
use crate::verify::legacy::{
    ANNOTATION_BUNDLE, ANNOTATION_CERTIFICATE, ANNOTATION_CHAIN, ANNOTATION_RFC3161,
    ANNOTATION_SIGNATURE,
};
use crate::verify::payload::{MAX_PAYLOAD_BYTES, SIMPLE_SIGNING_MEDIA_TYPE};
use crate::verify::reference::is_valid_digest;
use crate::verify::{LegacySignature, VerifyError};

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const BUNDLE_MEDIA_PREFIX: &str = "application/vnd.dev.sigstore.bundle";

/// An OCI descriptor (only the fields we use).
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<PlatformDesc>,
}

/// `platform` of an index entry.
#[derive(Debug, Clone, Deserialize)]
pub struct PlatformDesc {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An OCI/Docker image manifest or index (only the fields we use).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub subject: Option<Descriptor>,
}

impl Manifest {
    /// Parse, refusing descriptors whose digest is not `sha256:<hex>`.
    pub fn parse(bytes: &[u8], url: &str) -> Result<Self, DiscoverError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| DiscoverError::Malformed {
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        for d in m.layers.iter().chain(&m.manifests).chain(m.subject.iter()) {
            if !is_valid_digest(&d.digest) {
                return Err(DiscoverError::Malformed {
                    url: url.to_string(),
                    detail: format!("unsupported digest {:?}", d.digest),
                });
            }
        }
        Ok(m)
    }
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
    match s
        .get(
            registry,
            repo,
            &format!("referrers/{digest}"),
            INDEX_MEDIA_TYPE,
            cfg.max_manifest_bytes,
        )
        .await
    {
        Ok(Some(f))
            if f.content_type
                .as_deref()
                .is_none_or(|c| c == INDEX_MEDIA_TYPE || c == "application/json") =>
        {
            match Manifest::parse(&f.body, "referrers") {
                Ok(m) => referrers = Some(m.manifests),
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
            Ok(Some(f)) => match Manifest::parse(&f.body, "referrers tag") {
                Ok(m) => referrers = Some(m.manifests),
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
        let label = format!("referrer:{}", d.digest);
        if d.size as usize > cfg.max_manifest_bytes {
            found.sources.push(unusable(
                label,
                digest,
                &d.digest,
                format!("manifest size {} over limit", d.size),
            ));
            continue;
        }
        let m = match s
            .get_by_digest(
                registry,
                repo,
                "manifests",
                &d.digest,
                MANIFEST_ACCEPT,
                cfg.max_manifest_bytes,
            )
            .await
        {
            Ok(Some(f)) => match Manifest::parse(&f.body, &label) {
                Ok(m) => m,
                Err(e) => {
                    found.sources.push(unusable(label, digest, &d.digest, e));
                    continue;
                }
            },
            Ok(None) => continue, // listed but gone: nothing to judge
            Err(e @ DiscoverError::RequestBudget { .. }) => {
                found.errors.push(e);
                break;
            }
            Err(e) => {
                found.sources.push(unusable(label, digest, &d.digest, e));
                continue;
            }
        };
        if m.subject.as_ref().is_some_and(|sub| sub.digest != digest) {
            found.sources.push(unusable(
                label,
                digest,
                &d.digest,
                "manifest subject is another image",
            ));
            continue;
        }
        let Some(layer) = m.layers.first().filter(|_| m.layers.len() == 1) else {
            found.sources.push(unusable(
                label,
                digest,
                &d.digest,
                format!("{} layers, a signature artifact has one", m.layers.len()),
            ));
            continue;
        };
        if layer.media_type.starts_with(BUNDLE_MEDIA_PREFIX) {
            match blob(s, registry, repo, layer, cfg.max_blob_bytes).await {
                Ok(b) => found.sources.push(SignatureSource {
                    label,
                    signed_digest: digest.to_string(),
                    candidate: Candidate::Bundle(b),
                }),
                Err(e) => found
                    .sources
                    .push(unusable(label, digest, &layer.digest, e)),
            }
        } else {
            // SBOMs, attestations in other formats, ...: not signatures.
            debug!(media_type = %layer.media_type, "referrer is not a signature");
            found.sources.push(SignatureSource {
                label,
                signed_digest: digest.to_string(),
                candidate: Candidate::Unusable(VerifyError::MediaType {
                    found: layer.media_type.clone(),
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
        Ok(Some(f)) => match Manifest::parse(&f.body, "legacy .sig manifest") {
            Ok(m) => {
                for (i, layer) in m.layers.iter().enumerate() {
                    if found.sources.len() >= cfg.max_signatures {
                        break;
                    }
                    let label = format!("legacy:sha256-{}.sig#{i}", &hex[..hex.len().min(12)]);
                    if layer.media_type != SIMPLE_SIGNING_MEDIA_TYPE {
                        found.sources.push(SignatureSource {
                            label,
                            signed_digest: digest.to_string(),
                            candidate: Candidate::Unusable(VerifyError::MediaType {
                                found: layer.media_type.clone(),
                                expected: SIMPLE_SIGNING_MEDIA_TYPE,
                            }),
                        });
                        continue;
                    }
                    match blob(s, registry, repo, layer, MAX_PAYLOAD_BYTES).await {
                        Ok(payload) => {
                            let a = &layer.annotations;
                            let sig = LegacySignature {
                                media_type: layer.media_type.clone(),
                                payload,
                                signature_b64: a
                                    .get(ANNOTATION_SIGNATURE)
                                    .cloned()
                                    .unwrap_or_default(),
                                certificate_pem: a
                                    .get(ANNOTATION_CERTIFICATE)
                                    .cloned()
                                    .filter(|c| !c.is_empty()),
                                chain_pem: a
                                    .get(ANNOTATION_CHAIN)
                                    .cloned()
                                    .filter(|c| !c.is_empty()),
                                bundle_json: a
                                    .get(ANNOTATION_BUNDLE)
                                    .cloned()
                                    .filter(|c| !c.is_empty()),
                                rfc3161_json: a
                                    .get(ANNOTATION_RFC3161)
                                    .cloned()
                                    .filter(|c| !c.is_empty()),
                            };
                            found.sources.push(SignatureSource {
                                label,
                                signed_digest: digest.to_string(),
                                candidate: Candidate::Legacy(sig),
                            });
                        }
                        Err(e) => found
                            .sources
                            .push(unusable(label, digest, &layer.digest, e)),
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
    if d.size as usize > limit {
        return Err(DiscoverError::TooLarge {
            url: d.digest.clone(),
            limit,
        });
    }
    match s
        .get_by_digest(registry, repo, "blobs", &d.digest, "*/*", limit)
        .await?
    {
        Some(f) => Ok(f.body),
        None => Err(DiscoverError::Status {
            url: format!("{registry}/{repo}/blobs/{}", d.digest),
            status: 404,
        }),
    }
}
