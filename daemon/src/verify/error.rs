//! Typed verification failures. Every failed check maps to one variant, so a verdict can say
//! precisely which rule rejected a signature, and callers can never mistake a parse problem for
//! success: there is no catch-all variant.

use serde::{Deserialize, Serialize};

/// Why one signature (or one bundle) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature layer is not a cosign simple-signing layer (or bundle) we understand.
    #[error("layer media type {found:?} is not {expected:?}")]
    MediaType {
        found: String,
        expected: &'static str,
    },
    /// The signed payload is not a well-formed simple-signing document.
    #[error("malformed simple-signing payload: {detail}")]
    PayloadFormat { detail: String },
    /// `critical.type` is not cosign's container image signature type.
    #[error("payload critical.type is {found:?}, expected \"cosign container image signature\"")]
    PayloadType { found: String },
    /// A certificate could not be parsed.
    #[error("cannot parse certificate ({what}): {detail}")]
    CertParse { what: &'static str, detail: String },
    /// A public key could not be parsed or is of a kind we refuse.
    #[error("cannot use public key: {detail}")]
    KeyParse { detail: String },
    /// The signature bytes are not valid base64 or not a valid signature encoding.
    #[error("malformed signature encoding: {detail}")]
    SignatureEncoding { detail: String },
    /// The signature does not verify against any candidate key.
    #[error("signature does not verify with {key}")]
    SignatureInvalid { key: String },
    /// The payload's `docker-manifest-digest` is not the digest of the image being verified.
    #[error("payload claims manifest digest {claimed}, image digest is {expected}")]
    ManifestDigest { claimed: String, expected: String },
    /// The payload's `docker-reference` does not satisfy the scope's identity binding.
    #[error("payload docker-reference {claimed:?} does not match {expected}")]
    DockerReference { claimed: String, expected: String },
    /// A Rekor signed entry timestamp (SET) is missing a key, malformed, or does not verify.
    #[error("Rekor SET rejected: {detail}")]
    TlogSet { detail: String },
    /// The Rekor entry was signed by a log we do not trust.
    #[error("transparency log id {log_id} is not trusted")]
    TlogKeyUnknown { log_id: String },
    /// The Rekor entry's body is about another signature, payload or signer.
    #[error("Rekor entry body does not match the signature: {field} differs")]
    TlogBody { field: &'static str },
    /// The policy requires a transparency log entry and there is none.
    #[error("transparency log entry required but none present")]
    TlogMissing,
    /// The inclusion proof or its checkpoint is invalid.
    #[error("inclusion proof rejected: {detail}")]
    TlogProof { detail: String },
    /// The certificate does not chain to a trusted CA valid at signing time.
    #[error("certificate chain rejected: {detail}")]
    CertChain { detail: String },
    /// A certificate is required (keyless) but the signature carries none.
    #[error("signature carries no certificate")]
    CertMissing,
    /// Signed certificate timestamps are missing or invalid.
    #[error("signed certificate timestamp rejected: {detail}")]
    Sct { detail: String },
    /// The certificate identity (issuer, subject, extensions) matches no allowed identity.
    #[error("certificate identity (subjects {subjects:?}, issuer {issuer:?}) matches no allowed identity")]
    Identity {
        subjects: Vec<String>,
        issuer: Option<String>,
    },
    /// A sigstore bundle is not in a format we accept.
    #[error("bundle rejected: {detail}")]
    BundleFormat { detail: String },
    /// The in-toto statement or message digest names another artifact.
    #[error("signed subject digest does not include {expected}")]
    SubjectDigest { expected: String },
    /// Trust material (trusted_root.json, PEM files) is unusable.
    #[error("trust material rejected: {detail}")]
    TrustRoot { detail: String },
    /// An RFC 3161 timestamp is malformed, untrusted, or not over this signature.
    #[error("RFC 3161 timestamp rejected: {detail}")]
    Timestamp { detail: String },
    /// A signature artifact could not be fetched or read from the registry.
    #[error("signature artifact {location} unusable: {detail}")]
    Artifact { location: String, detail: String },
    /// No trustworthy time is known for a certificate-based signature.
    #[error("no verified signing time (needs a Rekor SET or a trusted RFC 3161 timestamp)")]
    NoSigningTime,
}

/// Stable, machine-readable category of a failure (the vocabulary of the test vectors'
/// `fail_reason`), for verdicts, metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    MediaType,
    PayloadFormat,
    CertParse,
    KeyParse,
    Signature,
    ManifestDigest,
    DockerReference,
    TlogSet,
    TlogKeyUnknown,
    TlogBody,
    TlogMissing,
    TlogProof,
    CertChain,
    Sct,
    Identity,
    BundleFormat,
    SubjectDigest,
    TrustRoot,
    Artifact,
    Timestamp,
}

impl VerifyError {
    /// The category of this failure.
    pub fn kind(&self) -> FailureKind {
        use VerifyError::*;
        match self {
            MediaType { .. } => FailureKind::MediaType,
            PayloadFormat { .. } | PayloadType { .. } => FailureKind::PayloadFormat,
            CertParse { .. } | CertMissing => FailureKind::CertParse,
            KeyParse { .. } => FailureKind::KeyParse,
            SignatureEncoding { .. } | SignatureInvalid { .. } => FailureKind::Signature,
            ManifestDigest { .. } => FailureKind::ManifestDigest,
            DockerReference { .. } => FailureKind::DockerReference,
            TlogSet { .. } => FailureKind::TlogSet,
            TlogKeyUnknown { .. } => FailureKind::TlogKeyUnknown,
            TlogBody { .. } => FailureKind::TlogBody,
            TlogMissing | NoSigningTime => FailureKind::TlogMissing,
            TlogProof { .. } => FailureKind::TlogProof,
            CertChain { .. } => FailureKind::CertChain,
            Sct { .. } => FailureKind::Sct,
            Identity { .. } => FailureKind::Identity,
            BundleFormat { .. } => FailureKind::BundleFormat,
            SubjectDigest { .. } => FailureKind::SubjectDigest,
            TrustRoot { .. } => FailureKind::TrustRoot,
            Artifact { .. } => FailureKind::Artifact,
            Timestamp { .. } => FailureKind::Timestamp,
        }
    }
}
