//! imagegate: verify container images' cosign signatures and enforce the verdict in the kernel.
pub mod verify;
pub mod policy;
pub mod verdict;
pub mod discover;
