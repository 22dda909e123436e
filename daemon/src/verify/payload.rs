//! cosign's "simple signing" payload (legacy format): what a legacy signature actually claims.
//! The digest claim binds the signature to one manifest; `critical.type` stops other signed JSON
//! documents being replayed as image signatures; `docker-reference` optionally binds a repository.

use serde::Deserialize;

use super::error::VerifyError;
use super::reference::{is_valid_digest, ImageRef};

/// Media type of a legacy cosign signature layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The only `critical.type` cosign image signatures carry.
pub const COSIGN_SIGNATURE_TYPE: &str = "cosign container image signature";
/// Largest payload we parse; real ones are a few hundred bytes.
pub const MAX_PAYLOAD_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, Deserialize)]
struct Raw {
    critical: Critical,
    #[serde(default)]
    #[allow(dead_code)]
    optional: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The claims of a parsed, type-checked simple-signing payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleSigning {
    pub docker_reference: String,
    pub manifest_digest: String,
}

impl SimpleSigning {
    /// Parse and check `critical.type`. Call only after the signature over `bytes` verified.
    pub fn parse(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(VerifyError::PayloadFormat {
                detail: format!("payload of {} bytes is too large", bytes.len()),
            });
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| VerifyError::PayloadFormat {
            detail: e.to_string(),
        })?;
        if raw.critical.kind != COSIGN_SIGNATURE_TYPE {
            return Err(VerifyError::PayloadType {
                found: raw.critical.kind,
            });
        }
        let d = raw.critical.image.docker_manifest_digest;
        if !is_valid_digest(&d) {
            return Err(VerifyError::PayloadFormat {
                detail: format!("docker-manifest-digest {d:?} is not sha256:<hex>"),
            });
        }
        Ok(SimpleSigning {
            docker_reference: raw.critical.identity.docker_reference,
            manifest_digest: d,
        })
    }

    /// The digest claim must name the image being verified.
    pub fn check_digest(&self, expected: &str) -> Result<(), VerifyError> {
        if self.manifest_digest != expected {
            return Err(VerifyError::ManifestDigest {
                claimed: self.manifest_digest.clone(),
                expected: expected.to_string(),
            });
        }
        Ok(())
    }
}

/// How a signature's `docker-reference` must relate to the image (containers/image's
/// `signedIdentity`). cosign itself ignores the claim; that is `Any`, the default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SignedIdentity {
    #[default]
    Any,
    /// Same repository as the image (tags and digests ignored).
    MatchRepository,
    /// If the image is referenced by digest, same repository; if by tag, the exact reference.
    MatchRepoDigestOrExact,
    /// Exactly the image's reference.
    MatchExact,
    /// Exactly this reference.
    ExactReference(String),
    /// This repository.
    ExactRepository(String),
    /// Rewrite the image's `prefix` to `signed_prefix` (mirrors), then MatchRepoDigestOrExact.
    Remap {
        prefix: String,
        signed_prefix: String,
    },
}

fn parse_claim(claim: &str, expected: &str) -> Result<ImageRef, VerifyError> {
    ImageRef::parse(claim).map_err(|_| VerifyError::DockerReference {
        claimed: claim.to_string(),
        expected: format!("{expected} (claim is not a valid reference)"),
    })
}

impl SignedIdentity {
    /// Check the payload's claim against the image reference being verified.
    pub fn check(&self, claim: &str, image: &ImageRef) -> Result<(), VerifyError> {
        let mismatch = |expected: String| VerifyError::DockerReference {
            claimed: claim.to_string(),
            expected,
        };
        match self {
            SignedIdentity::Any => Ok(()),
            SignedIdentity::MatchRepository => {
                let c = parse_claim(claim, &image.name())?;
                if c.name() == image.name() {
                    Ok(())
                } else {
                    Err(mismatch(format!("repository {}", image.name())))
                }
            }
            SignedIdentity::MatchExact => {
                let c = parse_claim(claim, &image.to_string())?;
                if c == *image {
                    Ok(())
                } else {
                    Err(mismatch(format!("exactly {image}")))
                }
            }
            SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(claim, image),
            SignedIdentity::ExactReference(r) => {
                let want =
                    ImageRef::parse(r).map_err(|_| mismatch(format!("exactly {r} (invalid)")))?;
                let c = parse_claim(claim, r)?;
                if c == want {
                    Ok(())
                } else {
                    Err(mismatch(format!("exactly {want}")))
                }
            }
            SignedIdentity::ExactRepository(r) => {
                let want = ImageRef::parse(r)
                    .map_err(|_| mismatch(format!("repository {r} (invalid)")))?;
                let c = parse_claim(claim, r)?;
                if c.name() == want.name() {
                    Ok(())
                } else {
                    Err(mismatch(format!("repository {}", want.name())))
                }
            }
            SignedIdentity::Remap {
                prefix,
                signed_prefix,
            } => {
                let full = image.to_string();
                let remapped = match full.strip_prefix(prefix.as_str()) {
                    Some(rest)
                        if rest.is_empty()
                            || rest.starts_with(['/', ':', '@'])
                            || prefix.ends_with('/') =>
                    {
                        let s = format!("{signed_prefix}{rest}");
                        ImageRef::parse(&s)
                            .map_err(|_| mismatch(format!("remapped {s} (invalid)")))?
                    }
                    _ => image.clone(),
                };
                repo_digest_or_exact(claim, &remapped)
            }
        }
    }
}

fn repo_digest_or_exact(claim: &str, image: &ImageRef) -> Result<(), VerifyError> {
    let c = parse_claim(claim, &image.to_string())?;
    let ok = if image.digest.is_some() {
        c.name() == image.name()
    } else {
        c == *image
    };
    if ok {
        Ok(())
    } else {
        Err(VerifyError::DockerReference {
            claimed: claim.to_string(),
            expected: format!("{image} (repo if by digest, else exact)"),
        })
    }
}
