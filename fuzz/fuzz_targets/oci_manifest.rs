//! Fuzz target: OCI/Docker manifests, indexes and configs (imagegate::oci: the oci-spec types with imagegate's checks). The check and its invariant live in `imagegate_fuzz::documents`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: imagegate_fuzz::init("oci_manifest"),
    |data: &[u8]| imagegate_fuzz::documents::check_oci(data)
);
