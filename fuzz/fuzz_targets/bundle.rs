//! Fuzz target: sigstore bundles v0.1-v0.3, parsed and verified (verify::verify_bundle). The check and its invariant live in `imagegate_fuzz::artifacts`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: imagegate_fuzz::init("bundle"),
    |data: &[u8]| imagegate_fuzz::artifacts::check_bundle(data)
);
