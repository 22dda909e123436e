//! Every case of the shared cosign test vectors (tests/fixtures/testvectors, copied from
//! shared/testvectors with its PROVENANCE) must give its expected verdict: real cosign outputs
//! accepted, each tampered or mismatched variant rejected with a typed error.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod common;

use std::path::PathBuf;

use common::*;
use imagegate::verify::VerifyError;
use serde_json::Value;

#[test]
fn every_test_vector_case_gives_its_expected_verdict() {
    let mut sets: Vec<PathBuf> = Vec::new();
    for cat in roots().iter().flat_map(|r| std::fs::read_dir(r).unwrap()) {
        let cat = cat.unwrap().path();
        if !cat.is_dir() {
            continue;
        }
        if cat.join("expected.json").exists() {
            sets.push(cat.clone());
        }
        for set in std::fs::read_dir(&cat).unwrap() {
            let set = set.unwrap().path();
            if set.join("expected.json").exists() {
                sets.push(set);
            }
        }
    }
    sets.sort();
    let (mut ran, mut failures) = (0, Vec::new());
    for dir in &sets {
        let exp: Value = serde_json::from_str(&read(dir, "expected.json")).unwrap();
        let cases = exp["cases"].as_array().unwrap();
        let mut outcomes: Vec<(String, bool)> = Vec::new();
        for case in cases {
            let name = s(case, "name").unwrap().to_string();
            let result = match s(case, "type").unwrap() {
                "legacy" => run_legacy(dir, case),
                "bundle" => run_bundle(dir, case),
                "rekor-set" => run_rekor_set(dir, case),
                "multi" => {
                    let members: Vec<&str> = case["members"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(Value::as_str)
                        .collect();
                    let passed = outcomes
                        .iter()
                        .filter(|(n, ok)| *ok && members.contains(&n.as_str()))
                        .count();
                    let threshold = case["threshold"].as_u64().unwrap() as usize;
                    if passed >= threshold {
                        Ok(())
                    } else {
                        Err(VerifyError::SignatureInvalid {
                            key: "threshold".into(),
                        })
                    }
                }
                other => panic!("unknown case type {other}"),
            };
            ran += 1;
            let expect_pass = s(case, "expect") == Some("pass");
            let id = format!("{}::{}", exp["id"].as_str().unwrap(), name);
            match (&result, expect_pass) {
                (Ok(()), true) => println!("PASS as expected      {id}"),
                (Err(e), false) => println!(
                    "FAIL as expected      {id}: [{}] (hint {}) {e}",
                    kind_name(e.kind()),
                    s(case, "fail_reason").unwrap_or("-")
                ),
                (Ok(()), false) => failures.push(format!("{id}: accepted, expected rejection")),
                (Err(e), true) => failures.push(format!("{id}: rejected: {e}")),
            }
            outcomes.push((name, result.is_ok()));
        }
    }
    assert!(ran >= 110, "only {ran} cases found");
    assert!(
        failures.is_empty(),
        "wrong verdicts:\n{}",
        failures.join("\n")
    );
}

/// Real cosign signatures against a policy that requires a witness: a legacy signature (its
/// Rekor bundle has only a SET) and a bundle v0.3 whose checkpoint rekor.sigstore.dev signed
/// but no witness cosigned are refused for that reason, while both verify without witnesses.
#[test]
fn required_witnesses_refuse_real_signatures_without_a_cosigned_checkpoint() {
    use imagegate::verify::witness::{Witness, Witnesses};
    use imagegate::verify::{verify_bundle, verify_legacy, BundleExpectation, Expectation};
    use sha2::{Digest, Sha256};
    use std::sync::Arc;

    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut raw = vec![0x04];
    raw.extend_from_slice(key.verifying_key().as_bytes());
    let name = "witness.example/w1";
    let id = Sha256::digest([name.as_bytes(), b"\n", &raw].concat());
    let vkey = format!(
        "{name}+{}+{}",
        hex::encode(&id[..4]),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw)
    );
    let witnessed = |trust: &Arc<imagegate::verify::TrustMaterial>| {
        let mut t = (**trust).clone();
        t.witnesses = Witnesses::new(vec![Witness::from_vkey(&vkey).unwrap()], None).unwrap();
        Arc::new(t)
    };
    let proof_error = |e: VerifyError| match e {
        VerifyError::TlogProof { detail } => detail,
        other => panic!("not a tlog-proof error: {other}"),
    };

    let (dir, case) = case_value("legacy-key/cimage-cosign-key-rekor", "valid");
    let mut input = legacy_input(&dir, &case).unwrap();
    let want = Expectation {
        digest: &input.digest,
        image: None,
    };
    verify_legacy(&input.sig, &input.auth, &want).unwrap();
    input.auth.trust = witnessed(&input.auth.trust);
    let want = Expectation {
        digest: &input.digest,
        image: None,
    };
    let detail = proof_error(verify_legacy(&input.sig, &input.auth, &want).unwrap_err());
    assert!(detail.contains("only a SET"), "{detail}");

    let (dir, case) = case_value("bundle-v03/sigstore-rs-kubewarden-controller", "valid");
    let mut input = bundle_input(&dir, &case).unwrap();
    let want = BundleExpectation {
        digest: &input.digest,
        predicate_type: input.predicate_type.as_deref(),
    };
    verify_bundle(&input.json, &input.auth, &want).unwrap();
    input.auth.trust = witnessed(&input.auth.trust);
    let want = BundleExpectation {
        digest: &input.digest,
        predicate_type: input.predicate_type.as_deref(),
    };
    let detail = proof_error(verify_bundle(&input.json, &input.auth, &want).unwrap_err());
    assert!(
        detail.contains(
            "cosigned by 0 of the witnesses, 1 required (no cosignature by witness.example/w1)"
        ),
        "{detail}"
    );
}
