//! Fuzz target: sigstore trusted_root.json (verify::TrustMaterial::from_trusted_root_json). The check and its invariant live in `imagegate_fuzz::documents`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: imagegate_fuzz::init("trusted_root"),
    |data: &[u8]| imagegate_fuzz::documents::check_trusted_root(data)
);
