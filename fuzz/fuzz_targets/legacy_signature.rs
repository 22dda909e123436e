//! Fuzz target: legacy simple-signing payloads and signatures, parsed and verified (verify::verify_legacy). The check and its invariant live in `imagegate_fuzz::artifacts`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: imagegate_fuzz::init("legacy_signature"),
    |data: &[u8]| imagegate_fuzz::artifacts::check_legacy(data)
);
