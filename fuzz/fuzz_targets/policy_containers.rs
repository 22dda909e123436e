//! Fuzz target: the containers-policy.json importer (policy::containers::parse). The check and its invariant live in `imagegate_fuzz::policies`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: imagegate_fuzz::init("policy_containers"),
    |data: &[u8]| imagegate_fuzz::policies::check_containers(data)
);
