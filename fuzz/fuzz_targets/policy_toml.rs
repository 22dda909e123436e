//! Fuzz target: the TOML policy parser (policy::file::parse). The check and its invariant live in `imagegate_fuzz::policies`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: imagegate_fuzz::init("policy_toml"),
    |data: &[u8]| imagegate_fuzz::policies::check_toml(data)
);
