//! Test and demo tooling for imagegate: runnable OCI images built in memory ([`image`]), Debian's
//! `docker-registry` on 127.0.0.1 with a small push client ([`registry`]), cosign's legacy
//! signature format written from its description ([`sign`]), and sigstore bundles signed with
//! Rekor v2 and a TSA by an independent signer and attached as OCI 1.1 referrers ([`bundle`]),
//! so the demo and the end-to-end tests produce signed images without cosign or network access.

pub mod bundle;
pub mod daemon_image;
pub mod elf;
pub mod image;
pub mod registry;
pub mod sign;

/// What can go wrong while building, pushing or signing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registry request {what}: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry refused {what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("docker-registry did not answer on {0} within 10 s")]
    RegistryStart(String),
    #[error("key: {0}")]
    Key(String),
    #[error("{0}")]
    Ldd(String),
    #[error("the Rekor v2 test signer failed: {0}")]
    Signer(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
