//! The OCI (and Docker v2) documents between an image name and its layer snapshots, and the
//! ones cosign stores signatures in: index → platform manifest → config → diffIDs → chainIDs.
//! containerd names each committed layer snapshot by its chainID, so the chainIDs are how the
//! catalog finds `snapshots/<id>/fs`; the registry side (`discover`) reads the same documents.
//!
//! The types are the `oci-spec` crate's, one per concept across the daemon ([`Descriptor`],
//! [`Platform`], [`ImageManifest`], [`ImageIndex`], [`ImageConfiguration`]). They parse what the
//! spec allows; the checks here are what imagegate adds, because every byte is untrusted: sizes
//! are bounded, `schemaVersion` is 2, a document's media type must be one imagegate understands,
//! a manifest that also carries `manifests` (or an index that carries `config`/`layers`) is
//! refused as containerd refuses it (CVE-2021-41190), every digest is `sha256:<64 hex>` (the
//! crate accepts any registered or made-up algorithm), and diffIDs and the rootfs type are
//! checked. Any surprise is an error, which becomes a deny for that image, never a guess.

pub use oci_spec::image::{
    Arch, Descriptor, Digest, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest,
    MediaType, Os, Platform,
};
use serde::de::IgnoredAny;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// Largest manifest, index or config imagegate reads (registries commonly cap manifests at 4 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;

/// The only `schemaVersion` of OCI and Docker v2 manifests and indexes (Docker's schema 1 is
/// unsigned and unsupported).
const SCHEMA_VERSION: u32 = 2;

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
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
    #[error("{what} is an {found} where an {expected} was expected")]
    UnexpectedKind {
        what: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("invalid digest {digest:?} (imagegate supports sha256:<64 lowercase hex> only)")]
    BadDigest { digest: String },
    #[error("content of {digest} does not match its digest")]
    DigestMismatch { digest: String },
    #[error("the index {index} has no manifest for {platform}")]
    NoPlatform { index: String, platform: String },
    #[error("manifest lists {layers} layers but its config lists {diff_ids} diffIDs")]
    LayerCountMismatch { layers: usize, diff_ids: usize },
}

/// What a manifest or index document turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one short-lived document at a time, matched on at once"
)]
pub enum Document {
    /// An image index (or Docker manifest list).
    Index(ImageIndex),
    /// An image manifest (OCI or Docker schema 2).
    Manifest(ImageManifest),
}

impl Document {
    fn kind(&self) -> &'static str {
        match self {
            Document::Index(_) => "index",
            Document::Manifest(_) => "manifest",
        }
    }
}

/// The fields that decide what a document is, read before the full parse: the media type, and
/// whether it carries an index's or a manifest's fields (both at once is an ambiguous document).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<IgnoredAny>,
    #[serde(default)]
    config: Option<IgnoredAny>,
    #[serde(default)]
    layers: Option<IgnoredAny>,
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

fn json<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::Malformed {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

fn malformed(what: &str, detail: impl Into<String>) -> OciError {
    OciError::Malformed {
        what: what.to_owned(),
        detail: detail.into(),
    }
}

/// Checks that `bytes` hash to `digest` (`sha256:<64 hex>`; other algorithms are refused).
pub fn verify_digest(digest: &str, bytes: &[u8]) -> Result<(), OciError> {
    check_digest_syntax(digest)?;
    if hex_sha256(bytes) == digest["sha256:".len()..] {
        Ok(())
    } else {
        Err(OciError::DigestMismatch {
            digest: digest.to_owned(),
        })
    }
}

/// Refuses anything but `sha256:<64 lowercase hex>`.
pub fn check_digest_syntax(digest: &str) -> Result<(), OciError> {
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

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_descriptors<'a>(
    descriptors: impl IntoIterator<Item = &'a Descriptor>,
) -> Result<(), OciError> {
    for descriptor in descriptors {
        if *descriptor.digest().algorithm() != DigestAlgorithm::Sha256 {
            return Err(OciError::BadDigest {
                digest: descriptor.digest().to_string(),
            });
        }
    }
    Ok(())
}

fn check_schema_version(what: &str, version: u32) -> Result<(), OciError> {
    if version == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(malformed(what, format!("schemaVersion {version}, not 2")))
    }
}

/// Parses a manifest or index; `declared` is the media type from the referring descriptor, the
/// image record or the registry's `Content-Type`, used when the document itself names none
/// (Docker v2 always does, OCI may not).
pub fn parse_document(what: &str, declared: &str, bytes: &[u8]) -> Result<Document, OciError> {
    check_size(what, bytes)?;
    let shape: Shape = json(what, bytes)?;
    let media_type = shape.media_type.as_deref().unwrap_or(declared);
    match media_type {
        media_type::OCI_INDEX | media_type::DOCKER_LIST => {
            if shape.config.is_some() || shape.layers.is_some() {
                return Err(malformed(what, "index with a manifest's config or layers"));
            }
            let index: ImageIndex = json(what, bytes)?;
            check_schema_version(what, index.schema_version())?;
            check_descriptors(index.manifests().iter().chain(index.subject()))?;
            Ok(Document::Index(index))
        }
        media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST => {
            if shape.manifests.is_some() {
                return Err(malformed(what, "manifest with an index's manifests"));
            }
            let manifest: ImageManifest = json(what, bytes)?;
            check_schema_version(what, manifest.schema_version())?;
            check_descriptors(
                std::iter::once(manifest.config())
                    .chain(manifest.layers())
                    .chain(manifest.subject()),
            )?;
            Ok(Document::Manifest(manifest))
        }
        other => Err(OciError::UnsupportedMediaType {
            what: what.to_owned(),
            media_type: other.to_owned(),
        }),
    }
}

/// Parses a document that must be an index (a referrers list, an image's top document).
pub fn parse_index(what: &str, declared: &str, bytes: &[u8]) -> Result<ImageIndex, OciError> {
    match parse_document(what, declared, bytes)? {
        Document::Index(index) => Ok(index),
        other => Err(OciError::UnexpectedKind {
            what: what.to_owned(),
            found: other.kind(),
            expected: "index",
        }),
    }
}

/// Parses a document that must be an image manifest (a platform manifest, a signature artifact).
pub fn parse_manifest(what: &str, declared: &str, bytes: &[u8]) -> Result<ImageManifest, OciError> {
    match parse_document(what, declared, bytes)? {
        Document::Manifest(manifest) => Ok(manifest),
        other => Err(OciError::UnexpectedKind {
            what: what.to_owned(),
            found: other.kind(),
            expected: "manifest",
        }),
    }
}

/// Parses an image config, checking that its rootfs is a list of sha256 layer diffIDs.
pub fn parse_config(what: &str, bytes: &[u8]) -> Result<ImageConfiguration, OciError> {
    check_size(what, bytes)?;
    let config: ImageConfiguration = json(what, bytes)?;
    let rootfs = config.rootfs();
    if rootfs.typ() != "layers" {
        return Err(malformed(what, format!("rootfs type {:?}", rootfs.typ())));
    }
    for diff_id in rootfs.diff_ids() {
        check_digest_syntax(diff_id)?;
    }
    Ok(config)
}

/// The diffIDs listed in an image config.
pub fn parse_config_diff_ids(what: &str, bytes: &[u8]) -> Result<Vec<String>, OciError> {
    Ok(parse_config(what, bytes)?.rootfs().diff_ids().clone())
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

/// A platform from its OCI names (`linux`, `amd64`, `v8`).
#[must_use]
pub fn platform(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
    let mut platform = Platform::default();
    platform
        .set_os(Os::from(os))
        .set_architecture(Arch::from(architecture))
        .set_variant(variant.map(str::to_owned));
    platform
}

/// The running machine's platform in OCI terms (arm64 with containerd's normalised variant v8).
#[must_use]
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    platform(
        "linux",
        architecture,
        (architecture == "arm64").then_some("v8"),
    )
}

/// `os/architecture[/variant]`, as containerd and docker write platforms.
#[must_use]
pub fn platform_name(platform: &Platform) -> String {
    let mut name = format!("{}/{}", platform.os(), platform.architecture());
    if let Some(variant) = platform.variant() {
        name.push('/');
        name.push_str(variant);
    }
    name
}

/// Picks the manifest for `platform` from an index, as containerd's default platform matcher
/// would for this host (os and architecture must match; a variant, when both name one, too).
pub fn select_platform<'a>(
    index_digest: &str,
    index: &'a ImageIndex,
    platform: &Platform,
) -> Result<&'a Descriptor, OciError> {
    index
        .manifests()
        .iter()
        .find(|entry| {
            entry.platform().as_ref().is_some_and(|p| {
                p.os() == platform.os()
                    && p.architecture() == platform.architecture()
                    && match (p.variant(), platform.variant()) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            })
        })
        .ok_or_else(|| OciError::NoPlatform {
            index: index_digest.to_owned(),
            platform: platform_name(platform),
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

    fn digest_of(text: &str) -> String {
        format!("sha256:{}", hex_sha256(text.as_bytes()))
    }

    fn manifest_json(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",{extra}
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}}]}}"#,
            digest_of("config"),
            digest_of("layer")
        )
    }

    #[test]
    fn parses_manifest_and_index() {
        match parse_document("m", "", manifest_json("").as_bytes()).expect("manifest") {
            Document::Manifest(manifest) => {
                assert_eq!(manifest.config().digest().to_string(), digest_of("config"));
                assert_eq!(manifest.layers().len(), 1);
            }
            Document::Index(_) => panic!("parsed as an index"),
        }
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            digest_of("arm"),
            digest_of("amd")
        );
        let index = parse_index("i", media_type::OCI_INDEX, index.as_bytes()).expect("index");
        assert_eq!(
            select_platform("sha256:i", &index, &platform("linux", "amd64", None))
                .expect("amd64")
                .digest()
                .to_string(),
            digest_of("amd")
        );
        // A variant on only one side matches (containerd's arm64 normalisation); two differ.
        assert!(select_platform("sha256:i", &index, &platform("linux", "arm64", None)).is_ok());
        assert!(matches!(
            select_platform("sha256:i", &index, &platform("linux", "arm64", Some("v9"))),
            Err(OciError::NoPlatform { .. })
        ));
        let s390 = platform("linux", "s390x", None);
        assert!(matches!(
            select_platform("sha256:i", &index, &s390),
            Err(OciError::NoPlatform { .. })
        ));
        assert!(matches!(
            parse_manifest(
                "i",
                media_type::OCI_INDEX,
                br#"{"schemaVersion":2,"manifests":[]}"#
            ),
            Err(OciError::UnexpectedKind { .. })
        ));
    }

    /// What `oci-spec` alone would accept and imagegate refuses: another `schemaVersion`,
    /// digests of other (or made-up) algorithms, a document that is both a manifest and an
    /// index, and repeated keys (a parser differential: Go's encoding/json keeps the last).
    #[test]
    fn strictness_beyond_the_spec_types() {
        let schema1 = manifest_json("").replace(r#""schemaVersion":2"#, r#""schemaVersion":1"#);
        assert!(matches!(
            parse_document("m", "", schema1.as_bytes()),
            Err(OciError::Malformed { detail, .. }) if detail.contains("schemaVersion 1")
        ));
        for digest in [
            format!("sha512:{}", "a".repeat(128)),
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8".to_owned(),
        ] {
            let other = manifest_json("").replace(&digest_of("layer"), &digest);
            assert_eq!(
                parse_document("m", "", other.as_bytes()),
                Err(OciError::BadDigest { digest })
            );
        }
        let ambiguous = manifest_json(r#""manifests":[],"#);
        assert!(matches!(
            parse_document("m", "", ambiguous.as_bytes()),
            Err(OciError::Malformed { detail, .. }) if detail.contains("index's manifests")
        ));
        let ambiguous_index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[],"layers":[]}}"#,
            media_type::OCI_INDEX
        );
        assert!(matches!(
            parse_document("i", "", ambiguous_index.as_bytes()),
            Err(OciError::Malformed { .. })
        ));
        for repeated in [
            manifest_json(r#""mediaType":"application/vnd.oci.image.index.v1+json","#),
            manifest_json(&format!(
                r#""layers":[{{"mediaType":"x","digest":"{}","size":1}}],"#,
                digest_of("other")
            )),
        ] {
            assert!(
                matches!(
                    parse_document("m", "", repeated.as_bytes()),
                    Err(OciError::Malformed { detail, .. }) if detail.contains("duplicate field")
                ),
                "{repeated}"
            );
        }
        // A descriptor must name its media type and size (the spec's REQUIRED fields).
        let bare = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"digest":"{}"}}]}}"#,
            media_type::OCI_INDEX,
            digest_of("x")
        );
        assert!(matches!(
            parse_document("i", "", bare.as_bytes()),
            Err(OciError::Malformed { .. })
        ));
        // Unknown fields are ignored, as the spec requires of consumers.
        let extended = manifest_json(r#""io.example.future":{"x":1},"#);
        assert!(parse_manifest("m", "", extended.as_bytes()).is_ok());
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
            parse_document("m", "", br#"{"schemaVersion":2,"manifests":[]}"#),
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
        let config =
            |rootfs: &str| format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{rootfs}}}"#);
        assert!(matches!(
            parse_config_diff_ids(
                "c",
                config(r#"{"type":"layers","diff_ids":["sha256:XYZ"]}"#).as_bytes()
            ),
            Err(OciError::BadDigest { .. })
        ));
        assert!(matches!(
            parse_config_diff_ids("c", config(r#"{"type":"other","diff_ids":[]}"#).as_bytes()),
            Err(OciError::Malformed { .. })
        ));
        let layer = digest_of("layer");
        let good = config(&format!(r#"{{"type":"layers","diff_ids":["{layer}"]}}"#));
        assert_eq!(parse_config_diff_ids("c", good.as_bytes()), Ok(vec![layer]));
        // A config without its REQUIRED os/architecture is not an image config.
        assert!(matches!(
            parse_config_diff_ids("c", br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#),
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
