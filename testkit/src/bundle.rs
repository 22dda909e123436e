//! Sigstore bundles as cosign 3.1+ makes them with Rekor v2 and a timestamping authority, and
//! attached to images as OCI 1.1 referrers.
//!
//! The bundles come from `tests/signer/sign_rekor_v2.py`, run at test time with Debian's
//! `/usr/bin/python3` and `python3-cryptography` (`cargo xtask setup` installs it): a private
//! sigstore of fresh keys (Fulcio-style CA, CT log, Ed25519 Rekor v2 log, TSA), written from the
//! specifications and sharing no code with imagegate's verifier. [`attach_referrer`] stores a
//! bundle as cosign does: an artifact manifest whose `subject` is the image, and, for registries
//! without the referrers API (Debian's docker-registry), the referrers tag index `sha256-<hex>`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    image::{digest, Image, MANIFEST_MEDIA_TYPE},
    io,
    registry::Client,
    Error, Result,
};

/// The bundle's media type: the referrer's `artifactType` and its one layer's media type.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The OCI empty descriptor's media type (the referrer's config, `{}`).
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// cosign's image signature predicate.
pub const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// The Python that runs the signer: Debian's, whose `python3-cryptography` setup installs (not
/// whatever `python3` comes first on `PATH`).
pub const PYTHON: &str = "/usr/bin/python3";

/// The signer script in the workspace.
pub fn signer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/signer/sign_rekor_v2.py")
}

/// What only Rekor v2 verification catches, spoiled in one bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// The checkpoint signed by another Ed25519 key under the log's name and key hint.
    CheckpointOtherKey,
    /// The TSA's time an hour after the leaf certificate expired (a v2 entry has no other time).
    TimestampAfterCertificate,
}

impl Tamper {
    fn arg(self) -> &'static str {
        match self {
            Self::CheckpointOtherKey => "checkpoint-other-key",
            Self::TimestampAfterCertificate => "timestamp-after-certificate",
        }
    }
}

/// The Rekor v2 entry kind that records the DSSE signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `dsse` 0.0.2 (cosign with sigstore-go).
    Dsse,
    /// `hashedrekord` 0.0.2 over SHA-256 of the DSSE PAE.
    HashedRekord,
}

/// One digest to sign.
pub struct Request<'a> {
    /// File stem of the bundle: `OUT/STEM.sigstore.json`.
    pub stem: &'a str,
    /// `sha256:<hex>` of the image manifest.
    pub digest: &'a str,
    /// The repository named as the statement's subject.
    pub repository: &'a str,
    pub entry: Entry,
    pub tamper: Option<Tamper>,
}

/// What one signer run wrote.
pub struct Signed {
    /// `trusted_root.json` of the run's private sigstore.
    pub trusted_root: PathBuf,
    /// The certificates' email SAN and OIDC issuer.
    pub identity: String,
    pub issuer: String,
    /// The Rekor v2 log's checkpoint origin.
    pub log_origin: String,
    /// Signed-note verifier key of the witness that cosigned every checkpoint.
    pub witness_vkey: String,
    /// Verifier key of a witness that cosigned nothing.
    pub absent_witness_vkey: String,
    out: PathBuf,
}

impl Signed {
    /// The bundle signed for `stem`.
    pub fn bundle(&self, stem: &str) -> Result<Vec<u8>> {
        let path = self.out.join(format!("{stem}.sigstore.json"));
        std::fs::read(&path).map_err(io(format!("reading {}", path.display())))
    }
}

/// Runs the signer once for every request (one private sigstore for all of them), writing under
/// `out`; `identity` and `issuer` go into the certificates.
pub fn sign_rekor_v2(
    out: &Path,
    identity: &str,
    issuer: &str,
    requests: &[Request<'_>],
) -> Result<Signed> {
    let mut command = Command::new(PYTHON);
    command.arg(signer_script()).arg("--out").arg(out).args([
        "--identity",
        identity,
        "--issuer",
        issuer,
    ]);
    for r in requests {
        command.args(["--sign", r.stem, r.digest, r.repository]);
        if r.entry == Entry::HashedRekord {
            command.args(["--entry", &format!("{}=hashedrekord", r.stem)]);
        }
        if let Some(tamper) = r.tamper {
            command.args(["--tamper", &format!("{}={}", r.stem, tamper.arg())]);
        }
    }
    let output = command.output().map_err(io(format!(
        "running {PYTHON} {}",
        signer_script().display()
    )))?;
    if !output.status.success() {
        return Err(Error::Signer(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let summary_path = out.join("signer.json");
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&summary_path).map_err(io(format!("reading {}", summary_path.display())))?,
    )
    .map_err(|e| Error::Signer(format!("{}: {e}", summary_path.display())))?;
    let text = |key: &str| {
        summary[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Signer(format!("{} has no {key}", summary_path.display())))
    };
    Ok(Signed {
        trusted_root: out.join("trusted_root.json"),
        identity: text("identity")?,
        issuer: text("issuer")?,
        log_origin: text("log_origin")?,
        witness_vkey: text("witness_vkey")?,
        absent_witness_vkey: text("absent_witness_vkey")?,
        out: out.to_owned(),
    })
}

/// The manifest of a bundle referrer of `subject` (a descriptor of the image manifest), as
/// cosign writes it: `artifactType` the bundle's media type, the empty config, the bundle as
/// the one layer.
pub fn referrer_manifest(subject: &serde_json::Value, bundle: &[u8]) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": BUNDLE_MEDIA_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": digest(b"{}"), "size": 2},
        "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "digest": digest(bundle), "size": bundle.len()}],
        "subject": subject,
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": SIGN_PREDICATE,
        },
    })
    .to_string()
    .into_bytes()
}

/// Attaches `bundle` to `image` (pushed as `repo`'s manifest) as an OCI 1.1 referrer: the empty
/// config and the bundle blobs, the referrer manifest by its digest, and the referrers tag
/// `sha256-<hex>` (an index listing it with its `artifactType`), which is where a registry
/// without the referrers API (Debian's docker-registry) lets clients find it. Returns the
/// referrer manifest's digest.
pub fn attach_referrer(
    client: &Client,
    repo: &str,
    image: &Image,
    bundle: &[u8],
) -> Result<String> {
    let subject = serde_json::json!({
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": image.manifest_digest(),
        "size": image.manifest.len(),
    });
    client.push_blob(repo, b"{}")?;
    client.push_blob(repo, bundle)?;
    let manifest = referrer_manifest(&subject, bundle);
    let referrer = digest(&manifest);
    client.push_manifest(repo, &referrer, MANIFEST_MEDIA_TYPE, &manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": referrer,
            "size": manifest.len(),
            "artifactType": BUNDLE_MEDIA_TYPE,
            "annotations": {"dev.sigstore.bundle.predicateType": SIGN_PREDICATE},
        }],
    })
    .to_string()
    .into_bytes();
    let tag = image.manifest_digest().replacen(':', "-", 1);
    client.push_manifest(repo, &tag, INDEX_MEDIA_TYPE, &index)?;
    Ok(referrer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn referrer_manifest_names_its_subject_the_bundle_and_the_empty_config() {
        let image = crate::image::image(vec![b"layer".to_vec()], &["/bin/true"]);
        let subject = crate::image::manifest_descriptor(&image);
        let manifest: serde_json::Value =
            serde_json::from_slice(&referrer_manifest(&subject, b"{\"bundle\":1}")).unwrap();
        assert_eq!(manifest["artifactType"], BUNDLE_MEDIA_TYPE);
        assert_eq!(manifest["subject"]["digest"], image.manifest_digest());
        assert_eq!(manifest["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(manifest["config"]["digest"], digest(b"{}"));
        assert_eq!(manifest["layers"][0]["mediaType"], BUNDLE_MEDIA_TYPE);
        assert_eq!(manifest["layers"][0]["digest"], digest(b"{\"bundle\":1}"));
    }
}
