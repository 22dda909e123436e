//! Offline verification of cosign signatures: legacy simple-signing layers and sigstore bundles,
//! key-based and keyless, with Rekor and CT evidence checked against local trust material.
//!
//! Implemented on RustCrypto crates rather than the `sigstore` crate, whose keyless path accepts
//! signatures that do not verify when only identity constraints are given; see
//! docs/verification.md. Every check fails closed with a typed [`VerifyError`].

pub mod authority;
pub mod bundle;
pub mod cert;
pub mod detached;
pub mod error;
pub mod identity;
pub mod keys;
pub mod legacy;
pub mod merkle;
pub mod payload;
pub mod public_good;
pub mod reference;
pub mod rekor;
pub mod sct;
pub mod time;
pub mod timestamp;
pub mod trust;
pub mod witness;

pub use authority::{
    Authority, Evidence, SignatureFormat, Signer, SignerInfo, TrustedKey, Verified,
};
pub use bundle::{verify_artifact_bundle, verify_bundle, BundleExpectation};
pub use error::{FailureKind, VerifyError};
pub use identity::{IdentityMatcher, SanKind, StringMatcher};
pub use keys::{HashAlg, PublicKey};
pub use legacy::{verify_legacy, Expectation, LegacySignature};
pub use payload::SignedIdentity;
pub use reference::ImageRef;
pub use trust::TrustMaterial;
