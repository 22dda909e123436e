//! Legacy cosign signatures: one layer of the `sha256-<hex>.sig` manifest, with the payload as
//! blob and signature, certificate, chain and Rekor bundle as annotations.

use sha2::{Digest, Sha256};
use tracing::debug;

use super::authority::{
    check_certificate, verify_with_cert, verify_with_keys, Authority, Evidence, SignatureFormat,
    Signer, SignerInfo, Verified,
};
use super::cert::Cert;
use super::error::VerifyError;
use super::payload::{SimpleSigning, SIMPLE_SIGNING_MEDIA_TYPE};
use super::reference::ImageRef;
use super::rekor::{b64decode, body_kind, match_body, verify_set, ExpectedEntry, LegacyBundle};
use super::time::now_unix;
use super::timestamp::verify_timestamp;

/// Annotation holding the base64 signature.
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// Annotation holding the PEM signing certificate.
pub const ANNOTATION_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
/// Annotation holding the PEM chain (intermediates, root).
pub const ANNOTATION_CHAIN: &str = "dev.sigstore.cosign/chain";
/// Annotation holding the Rekor bundle (SET).
pub const ANNOTATION_BUNDLE: &str = "dev.sigstore.cosign/bundle";
/// Annotation holding an RFC 3161 timestamp over the raw signature:
/// `{"SignedRFC3161Timestamp": "<base64 TimeStampResp>"}`.
pub const ANNOTATION_RFC3161: &str = "dev.sigstore.cosign/rfc3161timestamp";

/// One legacy signature layer, as found in the registry.
#[derive(Debug, Clone, Default)]
pub struct LegacySignature {
    /// The layer's media type.
    pub media_type: String,
    /// The layer blob: the exact signed bytes.
    pub payload: Vec<u8>,
    /// `dev.cosignproject.cosign/signature` (line breaks allowed).
    pub signature_b64: String,
    pub certificate_pem: Option<String>,
    pub chain_pem: Option<String>,
    pub bundle_json: Option<String>,
    /// `dev.sigstore.cosign/rfc3161timestamp`.
    pub rfc3161_json: Option<String>,
}

#[derive(serde::Deserialize)]
struct Rfc3161Annotation {
    #[serde(rename = "SignedRFC3161Timestamp")]
    signed: String,
}

/// What the signature must be about.
#[derive(Debug, Clone)]
pub struct Expectation<'a> {
    /// `sha256:<hex>` of the manifest being verified.
    pub digest: &'a str,
    /// The image reference, for the optional `docker-reference` binding.
    pub image: Option<&'a ImageRef>,
}

/// Verify one legacy signature layer against one authority. Every check must pass; the
/// signature is always verified with the signer's key (configured key or certificate key).
pub fn verify_legacy(
    sig: &LegacySignature,
    auth: &Authority,
    want: &Expectation<'_>,
) -> Result<Verified, VerifyError> {
    if sig.media_type != SIMPLE_SIGNING_MEDIA_TYPE {
        return Err(VerifyError::MediaType {
            found: sig.media_type.clone(),
            expected: SIMPLE_SIGNING_MEDIA_TYPE,
        });
    }
    let sig_bytes = b64decode(&sig.signature_b64).map_err(|e| VerifyError::SignatureEncoding {
        detail: format!("signature annotation: {e}"),
    })?;
    if sig_bytes.is_empty() || sig_bytes.len() > 4096 {
        return Err(VerifyError::SignatureEncoding {
            detail: format!("signature of {} bytes", sig_bytes.len()),
        });
    }

    // Signer and signature first: nothing in the payload is trusted before this passes.
    let (signer_der, signer_is_cert, leaf, key_info) = match &auth.signer {
        Signer::Keys(keys) => {
            let k = verify_with_keys(keys, &sig.payload, &sig_bytes)?;
            (
                k.key.spki_der().to_vec(),
                false,
                None,
                Some(SignerInfo::Key {
                    fingerprint: k.key.fingerprint(),
                }),
            )
        }
        Signer::Certificate { .. } => {
            let pem = sig
                .certificate_pem
                .as_deref()
                .ok_or(VerifyError::CertMissing)?;
            let leaf = Cert::from_pem(pem, "signing certificate")?;
            verify_with_cert(&leaf, &sig.payload, &sig_bytes)?;
            (leaf.der().to_vec(), true, Some(leaf), None)
        }
    };

    let claims = SimpleSigning::parse(&sig.payload)?;
    claims.check_digest(want.digest)?;

    let mut signed_at = None;
    let mut tlog_index = None;
    let mut evidence = Vec::new();
    if auth.require_tlog {
        let text = sig.bundle_json.as_deref().ok_or(VerifyError::TlogMissing)?;
        let bundle = LegacyBundle::parse(text)?;
        if !auth.trust.witnesses.is_empty() {
            return Err(VerifyError::TlogProof {
                detail: "witnesses are required and a cosign signature's Rekor bundle has no \
                         checkpoint to be cosigned (only a SET)"
                    .into(),
            });
        }
        verify_set(&bundle.payload, &bundle.signed_entry_timestamp, &auth.trust)?;
        match_body(
            &bundle.payload.body,
            &ExpectedEntry {
                payload_sha256: Sha256::digest(&sig.payload).into(),
                signature: &sig_bytes,
                signer_der: &signer_der,
                signer_is_cert,
                dsse: None,
            },
        )?;
        signed_at = Some(bundle.payload.integrated_time);
        tlog_index = Some(bundle.payload.log_index);
        evidence.push(Evidence::Tlog {
            rekor: 1,
            entry: body_kind(&bundle.payload.body).unwrap_or_default(),
            log_index: bundle.payload.log_index,
            integrated_time: signed_at,
            inclusion_proof: false,
            witnessed_by: Vec::new(),
        });
    }

    // An RFC 3161 timestamp over the raw signature, verified when TSAs are trusted.
    let mut times: Vec<i64> = signed_at.into_iter().collect();
    let mut ts_time = None;
    if let (false, Some(text)) = (auth.trust.tsas.is_empty(), sig.rfc3161_json.as_deref()) {
        let ann: Rfc3161Annotation =
            serde_json::from_str(text).map_err(|e| VerifyError::Timestamp {
                detail: format!("annotation is not JSON: {e}"),
            })?;
        let raw = b64decode(&ann.signed).map_err(|e| VerifyError::Timestamp {
            detail: format!("not base64: {e}"),
        })?;
        let t = verify_timestamp(&raw, &sig_bytes, &auth.trust)?;
        ts_time = Some(t);
        times.push(t);
        evidence.push(Evidence::Timestamp { time: t });
    }

    let signer = match (&auth.signer, leaf) {
        (
            Signer::Certificate {
                identities,
                require_sct,
            },
            Some(leaf),
        ) => {
            let intermediates = match sig.chain_pem.as_deref() {
                Some(pem) => Cert::all_from_pem(pem, "certificate chain")?,
                None => Vec::new(),
            };
            // Without a log entry or timestamp there is no trusted signing time; BYO-PKI
            // certificates are then checked as of now (they are long-lived; Fulcio's expire in
            // minutes, so those fail, as they should).
            let check_at = if times.is_empty() {
                vec![now_unix()]
            } else {
                times
            };
            check_certificate(
                &leaf,
                &intermediates,
                &auth.trust,
                identities,
                *require_sct,
                &check_at,
            )?
        }
        _ => key_info.ok_or(VerifyError::CertMissing)?,
    };

    match want.image {
        Some(image) => auth
            .signed_identity
            .check(&claims.docker_reference, image)?,
        None if auth.signed_identity != Default::default() => {
            return Err(VerifyError::DockerReference {
                claimed: claims.docker_reference,
                expected: "an image reference (none given to the verifier)".into(),
            })
        }
        None => {}
    }
    let signed_at = signed_at.or(ts_time);
    debug!(authority = %auth.name, digest = want.digest, "legacy signature verified");
    Ok(Verified {
        authority: auth.name.clone(),
        digest: want.digest.to_string(),
        signer,
        format: SignatureFormat::Legacy,
        signed_at,
        tlog_index,
        evidence,
    })
}
