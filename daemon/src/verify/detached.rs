//! Offline verification of detached artifacts, the library side of `imagegate verify-signature`
//! and `imagegate verify-bundle` (cosign's flag names). As in cosign, certificates require the
//! transparency log and an SCT unless the caller explicitly opts out.

use std::sync::Arc;

use super::authority::{Authority, Signer, TrustedKey, Verified};
use super::bundle::{verify_artifact_bundle, verify_bundle, BundleExpectation};
use super::error::VerifyError;
use super::identity::IdentityMatcher;
use super::keys::PublicKey;
use super::legacy::{verify_legacy, Expectation, LegacySignature};
use super::payload::{SignedIdentity, SIMPLE_SIGNING_MEDIA_TYPE};
use super::trust::TrustMaterial;

/// Who must have signed: `--key`, or `--certificate-identity[-regexp]` and
/// `--certificate-oidc-issuer[-regexp]` with trust material.
#[derive(Debug, Clone)]
pub enum DetachedSigner {
    /// PEM public key(s).
    Key(String),
    /// Certificate identity to require.
    Identity(IdentityMatcher),
}

/// Inputs of `verify-signature`.
#[derive(Debug, Clone)]
pub struct DetachedSignature {
    /// `--digest sha256:HEX`.
    pub digest: String,
    /// `--payload FILE` bytes.
    pub payload: Vec<u8>,
    /// `--signature FILE` text (base64, line breaks allowed).
    pub signature_b64: String,
    /// `--certificate PEM`.
    pub certificate_pem: Option<String>,
    /// `--certificate-chain PEM`.
    pub chain_pem: Option<String>,
    /// `--rekor-bundle FILE` (the `dev.sigstore.cosign/bundle` value).
    pub rekor_bundle: Option<String>,
    pub signer: DetachedSigner,
    /// `--trusted-root` and/or `--ca-roots`, `--rekor-key`, `--ctlog-key`.
    pub trust: TrustMaterial,
    /// `--insecure-ignore-tlog`.
    pub insecure_ignore_tlog: bool,
    /// `--insecure-ignore-sct`.
    pub insecure_ignore_sct: bool,
}

fn authority(
    signer: &DetachedSigner,
    trust: TrustMaterial,
    require_tlog: bool,
    require_sct: bool,
) -> Result<Authority, VerifyError> {
    let signer = match signer {
        DetachedSigner::Key(pem) => Signer::Keys(
            PublicKey::all_from_pem(pem)?
                .into_iter()
                .map(TrustedKey::new)
                .collect(),
        ),
        DetachedSigner::Identity(m) => Signer::Certificate {
            identities: vec![m.clone()],
            require_sct,
        },
    };
    Ok(Authority {
        name: "command line".into(),
        signer,
        trust: Arc::new(trust),
        require_tlog,
        signed_identity: SignedIdentity::Any,
    })
}

/// Verify a detached legacy signature. With `--key` the log is required only if a Rekor bundle
/// is given (cosign 2+ requires it unless `--insecure-ignore-tlog`; we follow cosign: required
/// unless ignored). With a certificate, log and SCT are required unless ignored.
pub fn verify_detached_signature(d: &DetachedSignature) -> Result<Verified, VerifyError> {
    let is_cert = matches!(d.signer, DetachedSigner::Identity(_));
    let auth = authority(
        &d.signer,
        d.trust.clone(),
        !d.insecure_ignore_tlog,
        is_cert && !d.insecure_ignore_sct,
    )?;
    let sig = LegacySignature {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
        payload: d.payload.clone(),
        signature_b64: d.signature_b64.clone(),
        certificate_pem: d.certificate_pem.clone(),
        chain_pem: d.chain_pem.clone(),
        bundle_json: d.rekor_bundle.clone(),
        rfc3161_json: None,
    };
    verify_legacy(
        &sig,
        &auth,
        &Expectation {
            digest: &d.digest,
            image: None,
        },
    )
}

/// How `verify-bundle` reads its subject, and which of cosign's opt-outs apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct BundleOptions {
    /// The digest names an artifact (the sigstore client protocol's `FILE_OR_DIGEST`): any
    /// in-toto predicate type is accepted unless one is asked for. Otherwise it is an image
    /// manifest digest and the predicate defaults to cosign's image signature.
    pub artifact: bool,
    /// `--insecure-ignore-tlog`.
    pub insecure_ignore_tlog: bool,
    /// `--insecure-ignore-sct`.
    pub insecure_ignore_sct: bool,
}

/// Verify a sigstore bundle file (`verify-bundle`): `--type` is the in-toto predicate type. As in
/// cosign, a log entry is required, and for certificates an SCT, unless explicitly ignored.
pub fn verify_detached_bundle(
    digest: &str,
    bundle_json: &[u8],
    signer: &DetachedSigner,
    trust: TrustMaterial,
    predicate_type: Option<&str>,
    options: BundleOptions,
) -> Result<Verified, VerifyError> {
    let is_cert = matches!(signer, DetachedSigner::Identity(_));
    let auth = authority(
        signer,
        trust,
        !options.insecure_ignore_tlog,
        is_cert && !options.insecure_ignore_sct,
    )?;
    let want = BundleExpectation {
        digest,
        predicate_type,
    };
    if options.artifact {
        verify_artifact_bundle(bundle_json, &auth, &want)
    } else {
        verify_bundle(bundle_json, &auth, &want)
    }
}
