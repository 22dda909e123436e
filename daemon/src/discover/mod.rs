//! Finding an image's signatures in its registry: OCI 1.1 referrers API, the `sha256-<hex>`
//! referrers-tag fallback, and cosign's legacy `sha256-<hex>.sig` tag. Registries are untrusted
//! input: every document is size-limited, every request has a timeout, the number of requests per
//! image is bounded, and everything fetched by digest is checked against that digest.

pub mod auth;
pub mod client;
pub mod find;
pub mod image;

use std::time::Duration;

pub use auth::{Credentials, CredentialsError};
pub use client::RegistryClient;
pub use find::find_signatures;
pub use image::{verdict_key, verify_digest, verify_image};

/// Limits and switches for registry access.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Largest manifest or index read.
    pub max_manifest_bytes: usize,
    /// Largest signature payload or bundle blob read.
    pub max_blob_bytes: usize,
    /// Most HTTP requests spent on one image (resolution and signatures).
    pub max_requests: usize,
    /// Most signature artifacts examined per image.
    pub max_signatures: usize,
    /// Timeout of each request.
    pub request_timeout: Duration,
    /// Registries reached over plain HTTP (host[:port]); all others use HTTPS.
    pub insecure_registries: Vec<String>,
    /// Accept a signature on the index when the platform manifest has none (multi-arch images
    /// signed without `--recursive`). The verdict records which digest was verified.
    pub accept_index_signatures: bool,
    /// Look for signatures in this repository instead of the image's (cosign's
    /// `COSIGN_REPOSITORY`), e.g. `registry.example.com/signatures`.
    pub signature_repository: Option<String>,
    pub credentials: Credentials,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            max_manifest_bytes: 1 << 20,
            max_blob_bytes: 2 << 20,
            max_requests: 48,
            max_signatures: 16,
            request_timeout: Duration::from_secs(10),
            insecure_registries: Vec::new(),
            accept_index_signatures: true,
            signature_repository: None,
            credentials: Credentials::default(),
        }
    }
}

/// Why the registry could not tell us about an image's signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoverError {
    #[error("request to {url} failed: {detail}")]
    Http { url: String, detail: String },
    #[error("request to {url} timed out")]
    Timeout { url: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: document exceeds the {limit}-byte limit")]
    TooLarge { url: String, limit: usize },
    #[error("more than {limit} registry requests needed for one image")]
    RequestBudget { limit: usize },
    #[error("{url}: {source}")]
    Document {
        url: String,
        #[source]
        source: crate::oci::OciError,
    },
    #[error("{url}: content digest {actual} is not the requested {expected}")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: authentication failed: {detail}")]
    Auth { url: String, detail: String },
    #[error("image reference {reference:?} is invalid: {detail}")]
    Reference { reference: String, detail: String },
}
