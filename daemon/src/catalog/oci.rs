//! The OCI (and Docker v2) documents between an image name and its layer snapshots: index →
//! platform manifest → config → diffIDs → chainIDs. containerd names each committed layer
//! snapshot by its chainID, so the chainIDs are how the catalog finds `snapshots/<id>/fs`.
//!
//! Everything here parses untrusted bytes: sizes are bounded, media types are checked, and any
//! surprise is an error (which becomes a deny for that image), never a guess.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// Largest manifest, index or config imagegate reads (registries commonly cap manifests at 4 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;

/// Manifest media types imagegate understands.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
}

/// Why an image's documents could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OciError {
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    #[error("{what} is not valid JSON of the expected shape: {detail}")]
    Malformed { what: String, detail: String },
    #[error("unsupported media type {media_type} for {what}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("invalid digest {digest:?}")]
    BadDigest { digest: String },
    #[error("content of {digest} does not match its digest")]
    DigestMismatch { digest: String },
    #[error("the index {index} has no manifest for {platform}")]
    NoPlatform { index: String, platform: String },
    #[error("manifest lists {layers} layers but its config lists {diff_ids} diffIDs")]
    LayerCountMismatch { layers: usize, diff_ids: usize },
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// For index entries.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// A platform in an index entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `linux`, ...
    pub os: String,
    /// `v8`, ...
    #[serde(default)]
    pub variant: Option<String>,
}

/// What a manifest or index document turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// An image index (or Docker manifest list).
    Index(Vec<Descriptor>),
    /// An image manifest: its config and layers.
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct RawConfig {
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

fn check_size(what: &str, bytes: &[u8]) -> Result<(), OciError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(OciError::TooLarge {
            what: what.to_owned(),
            size: bytes.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    Ok(())
}

/// Checks that `bytes` hash to `digest` (`sha256:<64 hex>`; other algorithms are refused).
pub fn verify_digest(digest: &str, bytes: &[u8]) -> Result<(), OciError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| OciError::BadDigest {
            digest: digest.to_owned(),
        })?;
    if hex_sha256(bytes) == hex {
        Ok(())
    } else {
        Err(OciError::DigestMismatch {
            digest: digest.to_owned(),
        })
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses a manifest or index; `declared` is the media type from the referring descriptor or
/// image record, used when the document itself names none (Docker v2 always does, OCI may not).
pub fn parse_document(what: &str, declared: &str, bytes: &[u8]) -> Result<Document, OciError> {
    check_size(what, bytes)?;
    let raw: RawDocument = serde_json::from_slice(bytes).map_err(|e| OciError::Malformed {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    let media_type = raw.media_type.as_deref().unwrap_or(declared);
    let malformed = |detail: &str| OciError::Malformed {
        what: what.to_owned(),
        detail: detail.to_owned(),
    };
    match media_type {
        media_type::OCI_INDEX | media_type::DOCKER_LIST => Ok(Document::Index(
            raw.manifests
                .ok_or_else(|| malformed("index without manifests"))?,
        )),
        media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST => Ok(Document::Manifest {
            config: raw
                .config
                .ok_or_else(|| malformed("manifest without config"))?,
            layers: raw
                .layers
                .ok_or_else(|| malformed("manifest without layers"))?,
        }),
        other => Err(OciError::UnsupportedMediaType {
            what: what.to_owned(),
            media_type: other.to_owned(),
        }),
    }
}

/// The diffIDs listed in an image config.
pub fn parse_config_diff_ids(what: &str, bytes: &[u8]) -> Result<Vec<String>, OciError> {
    check_size(what, bytes)?;
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| OciError::Malformed {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    if raw.rootfs.kind != "layers" {
        return Err(OciError::Malformed {
            what: what.to_owned(),
            detail: format!("rootfs type {:?}", raw.rootfs.kind),
        });
    }
    for diff_id in &raw.rootfs.diff_ids {
        verify_digest_syntax(diff_id)?;
    }
    Ok(raw.rootfs.diff_ids)
}

fn verify_digest_syntax(digest: &str) -> Result<(), OciError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(OciError::BadDigest {
            digest: digest.to_owned(),
        })
    }
}

/// chainIDs from diffIDs, as the OCI image spec defines them:
/// `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
#[must_use]
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(previous) => format!(
                "sha256:{}",
                hex_sha256(format!("{previous} {diff_id}").as_bytes())
            ),
        };
        out.push(next);
    }
    out
}

/// The running machine's platform in OCI terms.
#[must_use]
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        architecture: architecture.to_owned(),
        os: "linux".to_owned(),
        variant: (architecture == "arm64").then(|| "v8".to_owned()),
    }
}

/// Picks the manifest for `platform` from an index, as containerd's default platform matcher
/// would for this host (os and architecture must match; a variant, when both name one, too).
pub fn select_platform<'a>(
    index_digest: &str,
    entries: &'a [Descriptor],
    platform: &Platform,
) -> Result<&'a Descriptor, OciError> {
    entries
        .iter()
        .find(|entry| {
            entry.platform.as_ref().is_some_and(|p| {
                p.os == platform.os
                    && p.architecture == platform.architecture
                    && match (&p.variant, &platform.variant) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            })
        })
        .ok_or_else(|| OciError::NoPlatform {
            index: index_digest.to_owned(),
            platform: format!("{}/{}", platform.os, platform.architecture),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const DIFF_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn chain_ids_follow_the_spec() {
        let ids = chain_ids(&[DIFF_A.to_owned(), DIFF_B.to_owned()]);
        assert_eq!(ids[0], DIFF_A);
        let expected = format!(
            "sha256:{}",
            hex_sha256(format!("{DIFF_A} {DIFF_B}").as_bytes())
        );
        assert_eq!(ids[1], expected);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn known_chain_id_of_two_layers() {
        // Computed independently: printf '%s %s' A B | sha256sum
        let ids = chain_ids(&[DIFF_A.to_owned(), DIFF_B.to_owned()]);
        assert_eq!(
            ids[1],
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
    }

    #[test]
    fn parses_manifest_and_index() {
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:cc","size":2},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:11","size":3}]}"#;
        match parse_document("m", "", manifest).expect("manifest") {
            Document::Manifest { config, layers } => {
                assert_eq!(config.digest, "sha256:cc");
                assert_eq!(layers.len(), 1);
            }
            Document::Index(_) => panic!("parsed as an index"),
        }
        let index = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:arm","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:amd","size":1,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let Document::Index(entries) =
            parse_document("i", media_type::OCI_INDEX, index).expect("index")
        else {
            panic!("not an index");
        };
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(
            select_platform("sha256:i", &entries, &amd64)
                .expect("amd64")
                .digest,
            "sha256:amd"
        );
        let s390 = Platform {
            architecture: "s390x".into(),
            os: "linux".into(),
            variant: None,
        };
        assert!(matches!(
            select_platform("sha256:i", &entries, &s390),
            Err(OciError::NoPlatform { .. })
        ));
    }

    #[test]
    fn hostile_documents_are_errors() {
        assert!(matches!(
            parse_document("m", "", b"{not json"),
            Err(OciError::Malformed { .. })
        ));
        assert!(matches!(
            parse_document("m", "", br#"{"mediaType":"application/x-evil"}"#),
            Err(OciError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            parse_document("m", media_type::OCI_MANIFEST, br#"{"layers":[]}"#),
            Err(OciError::Malformed { .. })
        ));
        let huge = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert!(matches!(
            parse_document("m", "", &huge),
            Err(OciError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_config_diff_ids(
                "c",
                br#"{"rootfs":{"type":"layers","diff_ids":["sha256:XYZ"]}}"#
            ),
            Err(OciError::BadDigest { .. })
        ));
        assert!(matches!(
            parse_config_diff_ids("c", br#"{"rootfs":{"type":"other","diff_ids":[]}}"#),
            Err(OciError::Malformed { .. })
        ));
    }

    #[test]
    fn digests_are_checked() {
        let digest = format!("sha256:{}", hex_sha256(b"hello"));
        assert_eq!(verify_digest(&digest, b"hello"), Ok(()));
        assert!(matches!(
            verify_digest(&digest, b"hellO"),
            Err(OciError::DigestMismatch { .. })
        ));
        assert!(matches!(
            verify_digest("md5:abc", b"x"),
            Err(OciError::BadDigest { .. })
        ));
    }
}
