//! cosign's legacy signature format, written from its description (docs/verification.md): a
//! simple-signing JSON payload naming the image digest, signed with ECDSA P-256 over the payload's
//! SHA-256 (DER, base64 in the `dev.cosignproject.cosign/signature` annotation), stored as the
//! single layer of a manifest tagged `sha256-<hex>.sig` in the image's repository.

use base64::Engine as _;
use p256::ecdsa::{signature::Signer as _, DerSignature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};

use crate::{image::digest, io, registry::Client, Error, Result};

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// An ECDSA P-256 signing key, made fresh for a demo or test run.
pub struct Key {
    key: SigningKey,
}

impl Key {
    /// A new random key (bytes from the kernel's CSPRNG; a scalar out of range is redrawn).
    pub fn generate() -> Result<Self> {
        use std::io::Read as _;
        let mut urandom = std::fs::File::open("/dev/urandom").map_err(io("/dev/urandom"))?;
        for _ in 0..16 {
            let mut bytes = [0u8; 32];
            urandom
                .read_exact(&mut bytes)
                .map_err(io("reading /dev/urandom"))?;
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                return Ok(Self { key });
            }
        }
        Err(Error::Key("no valid P-256 scalar in 16 draws".into()))
    }

    /// The public key as a PEM `PUBLIC KEY` (what a policy's `[[scope.keys]]` names).
    pub fn public_pem(&self) -> Result<String> {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::Key(e.to_string()))
    }

    /// Base64 of the DER ECDSA signature over SHA-256(`message`).
    pub fn sign_b64(&self, message: &[u8]) -> String {
        let signature: DerSignature = self.key.sign(message);
        base64::engine::general_purpose::STANDARD.encode(signature.as_bytes())
    }
}

/// The simple-signing payload binding `docker_reference` (a repository, e.g.
/// `127.0.0.1:5000/demo/signed`) to `manifest_digest`. Keys are emitted in sorted order, as
/// cosign's own payloads are.
pub fn payload(docker_reference: &str, manifest_digest: &str) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    })
    .to_string()
    .into_bytes()
}

/// The blobs of one legacy signature artifact.
pub struct SignatureArtifact {
    pub payload: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    /// `sha256-<hex>.sig` for the signed digest.
    pub tag: String,
}

/// Builds the `.sig` artifact signing `manifest_digest` (pulled as `docker_reference`) with `key`.
pub fn legacy_artifact(
    key: &Key,
    docker_reference: &str,
    manifest_digest: &str,
) -> SignatureArtifact {
    let payload = payload(docker_reference, manifest_digest);
    let payload_digest = digest(&payload);
    // cosign writes a minimal image config naming the payload as the only diff id.
    let config = serde_json::json!({
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::image::MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": SIMPLE_SIGNING_MEDIA_TYPE,
            "digest": payload_digest,
            "size": payload.len(),
            "annotations": {SIGNATURE_ANNOTATION: key.sign_b64(&payload)},
        }],
    })
    .to_string()
    .into_bytes();
    SignatureArtifact {
        payload,
        config,
        manifest,
        tag: format!("{}.sig", manifest_digest.replacen(':', "-", 1)),
    }
}

/// Signs `repo@manifest_digest` in the registry behind `client`: pushes the payload, the config
/// and the `.sig` manifest. `registry` is the host:port the image is pulled from (it goes into
/// the payload's docker-reference).
pub fn sign_legacy(
    client: &Client,
    key: &Key,
    registry: &str,
    repo: &str,
    manifest_digest: &str,
) -> Result<SignatureArtifact> {
    let artifact = legacy_artifact(key, &format!("{registry}/{repo}"), manifest_digest);
    client.push_blob(repo, &artifact.payload)?;
    client.push_blob(repo, &artifact.config)?;
    client.push_manifest(
        repo,
        &artifact.tag,
        crate::image::MANIFEST_MEDIA_TYPE,
        &artifact.manifest,
    )?;
    Ok(artifact)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::ecdsa::{signature::Verifier as _, VerifyingKey};
    use p256::pkcs8::DecodePublicKey as _;

    #[test]
    fn artifact_verifies_with_the_public_key_and_names_the_digest() {
        let key = Key::generate().unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let artifact = legacy_artifact(&key, "127.0.0.1:5000/demo/signed", &digest);
        assert_eq!(artifact.tag, format!("sha256-{}.sig", "ab".repeat(32)));
        assert_eq!(
            String::from_utf8(artifact.payload.clone()).unwrap(),
            format!(
                "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"127.0.0.1:5000/demo/signed\"}},\
                 \"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\
                 \"type\":\"cosign container image signature\"}},\"optional\":null}}"
            )
        );
        let manifest: serde_json::Value = serde_json::from_slice(&artifact.manifest).unwrap();
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
        let der = base64::engine::general_purpose::STANDARD
            .decode(layer["annotations"][SIGNATURE_ANNOTATION].as_str().unwrap())
            .unwrap();
        let public = VerifyingKey::from_public_key_pem(&key.public_pem().unwrap()).unwrap();
        let signature = p256::ecdsa::DerSignature::try_from(der.as_slice()).unwrap();
        public.verify(&artifact.payload, &signature).unwrap();
        let other = Key::generate().unwrap();
        let other = VerifyingKey::from_public_key_pem(&other.public_pem().unwrap()).unwrap();
        assert!(other.verify(&artifact.payload, &signature).is_err());
    }
}
