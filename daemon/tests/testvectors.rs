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
