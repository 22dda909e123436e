//! imagegate: verify container images' cosign signatures and enforce the verdict in the kernel.
//!
//! Modules: `enforce` (kernel backends, their self-test), `btf` (kernel type information for the
//! programs' struct offsets), `doctor` (capability report), `telemetry` (logging set-up).

pub mod btf;
pub mod catalog;
pub mod doctor;
pub mod enforce;
pub mod telemetry;
