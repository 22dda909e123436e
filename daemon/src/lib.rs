//! imagegate: verify container images' cosign signatures and enforce the verdict in the kernel.
//!
//! Modules: `verify` (cosign signatures), `policy` (what must be signed by whom), `verdict`
//! (results, persisted), `discover` (finding signatures in registries), `catalog` (what
//! containerd has), `oci` (the OCI documents both read, with imagegate's checks), `enforce`
//! (kernel backends, their self-test), `explain` (why a container may not run: the daemon's
//! answer and its rendering), `btf` (kernel type information for the programs' struct offsets),
//! `doctor` (capability report), `telemetry` (logging set-up), `metrics` (Prometheus metrics and
//! health endpoints), `systemd` (readiness and watchdog).

pub mod btf;
pub mod catalog;
pub mod config;
pub mod daemon;
pub mod discover;
pub mod doctor;
pub mod enforce;
pub mod explain;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod pullgate;
pub mod systemd;
pub mod telemetry;
pub mod tuf;
pub mod verdict;
pub mod verify;
