//! Every case of the shared cosign test vectors (tests/fixtures/testvectors, copied from
//! shared/testvectors with its PROVENANCE) must give its expected verdict: real cosign outputs
//! accepted, each tampered or mismatched variant rejected with a typed error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagegate::verify::{
    self, cert::Cert, identity::check_identity, rekor, trust::LogKey, Authority, BundleExpectation, Expectation,
    FailureKind, IdentityMatcher, LegacySignature, PublicKey, SignedIdentity, Signer, TrustMaterial, TrustedKey,
    VerifyError,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/testvectors")
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(rel).display()))
}

fn s<'a>(case: &'a Value, k: &str) -> Option<&'a str> {
    case.get(k).and_then(Value::as_str)
}

fn trust_for(dir: &Path, case: &Value) -> TrustMaterial {
    let mut tm = TrustMaterial::default();
    if let Some(p) = s(case, "trusted_root_json") {
        tm.extend(TrustMaterial::from_trusted_root_json(read(dir, p).as_bytes()).expect("trusted_root"));
    }
    if let Some(p) = s(case, "trusted_roots_pem") {
        tm.add_ca_pem(&read(dir, p)).expect("roots");
    }
    if let Some(p) = s(case, "intermediates_pem") {
        tm.add_intermediates_pem(&read(dir, p)).expect("intermediates");
    }
    if let Some(p) = s(case, "rekor_public_key") {
        tm.add_rekor_key_pem(&read(dir, p)).expect("rekor key");
    }
    tm
}

fn identities(case: &Value) -> Vec<IdentityMatcher> {
    let id = case.get("identity").expect("identity");
    vec![IdentityMatcher::exact(s(id, "san").expect("san"), s(id, "issuer"))]
}

fn run_legacy(dir: &Path, case: &Value) -> Result<(), VerifyError> {
    let payload = std::fs::read(dir.join(s(case, "payload").unwrap())).unwrap();
    let signature_b64 = read(dir, s(case, "signature").unwrap());
    let digest = match s(case, "expected_manifest_digest") {
        Some(d) => d.to_string(),
        None => match s(case, "manifest") {
            Some(m) => format!("sha256:{}", hex::encode(Sha256::digest(std::fs::read(dir.join(m)).unwrap()))),
            // No image at all (media-type case): any digest, the layer must be refused first.
            None => format!("sha256:{}", "0".repeat(64)),
        },
    };
    if let (Some(m), Some(_)) = (s(case, "manifest"), s(case, "expected_manifest_digest")) {
        // The fixture's manifest really has the digest the case verifies against.
        let d = format!("sha256:{}", hex::encode(Sha256::digest(std::fs::read(dir.join(m)).unwrap())));
        assert_eq!(d, digest, "manifest fixture digest");
    }
    let sig = LegacySignature {
        media_type: s(case, "media_type").unwrap_or(verify::payload::SIMPLE_SIGNING_MEDIA_TYPE).to_string(),
        payload: payload.clone(),
        signature_b64: signature_b64.clone(),
        certificate_pem: s(case, "certificate").map(|p| read(dir, p)),
        chain_pem: s(case, "chain").map(|p| read(dir, p)),
        bundle_json: s(case, "rekor_bundle").map(|p| read(dir, p)),
    };
    if case.get("skip_chain").and_then(Value::as_bool) == Some(true) {
        // Upstream has no CA for this certificate: only signature-vs-certificate and identity.
        let cert = Cert::from_pem(sig.certificate_pem.as_deref().unwrap(), "cert")?;
        let raw = rekor::b64decode(&signature_b64).unwrap();
        cert.public_key().verify(&payload, &raw, verify::HashAlg::Sha256)?;
        verify::payload::SimpleSigning::parse(&payload)?.check_digest(&digest)?;
        check_identity(&cert, &identities(case))?;
        return Ok(());
    }
    let signer = match s(case, "public_key") {
        Some(p) => Signer::Keys(PublicKey::all_from_pem(&read(dir, p)).unwrap().into_iter().map(TrustedKey::new).collect()),
        None => Signer::Certificate {
            identities: identities(case),
            require_sct: case.get("check_sct").and_then(Value::as_bool).unwrap_or(false),
        },
    };
    let auth = Authority {
        name: "case".into(),
        signer,
        trust: Arc::new(trust_for(dir, case)),
        require_tlog: case.get("require_tlog").and_then(Value::as_bool).unwrap_or(false),
        signed_identity: SignedIdentity::Any,
    };
    verify::verify_legacy(&sig, &auth, &Expectation { digest: &digest, image: None }).map(|_| ())
}

fn run_bundle(dir: &Path, case: &Value) -> Result<(), VerifyError> {
    let mut tm = trust_for(dir, case);
    if let Some(p) = s(case, "rekor_public_key_override") {
        // Keep the log ids, swap every log key: the SET must then fail to verify.
        let key = PublicKey::from_pem(&read(dir, p)).unwrap();
        for l in tm.tlogs.iter_mut() {
            l.key = key.clone();
        }
    }
    let auth = Authority {
        name: "case".into(),
        signer: Signer::Certificate { identities: identities(case), require_sct: true },
        trust: Arc::new(tm),
        require_tlog: true,
        signed_identity: SignedIdentity::Any,
    };
    let json = std::fs::read(dir.join(s(case, "bundle").unwrap())).unwrap();
    let want = BundleExpectation {
        digest: s(case, "expected_digest").unwrap(),
        predicate_type: s(case, "expected_predicate_type"),
    };
    verify::verify_bundle(&json, &auth, &want).map(|_| ())
}

fn run_rekor_set(dir: &Path, case: &Value) -> Result<(), VerifyError> {
    let bundle = rekor::LegacyBundle::parse(&read(dir, s(case, "rekor_bundle").unwrap()))?;
    let key = PublicKey::from_pem(&read(dir, s(case, "rekor_public_key").unwrap())).unwrap();
    if case.get("force_key").and_then(Value::as_bool) == Some(true) {
        return rekor::verify_set_with_key(&bundle.payload, &bundle.signed_entry_timestamp, &LogKey::new(key));
    }
    let mut log = LogKey::new(key);
    if let Some(id) = s(case, "rekor_key_id") {
        log.log_id = hex::decode(id).unwrap().try_into().unwrap();
    }
    let tm = TrustMaterial { tlogs: vec![log], ..Default::default() };
    rekor::verify_set(&bundle.payload, &bundle.signed_entry_timestamp, &tm).map(|_| ())
}

fn kind_name(k: FailureKind) -> String {
    serde_json::to_value(k).unwrap().as_str().unwrap().to_string()
}

#[test]
fn every_test_vector_case_gives_its_expected_verdict() {
    let mut sets: Vec<PathBuf> = Vec::new();
    for cat in std::fs::read_dir(root()).unwrap() {
        let cat = cat.unwrap().path();
        if !cat.is_dir() {
            continue;
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
                    let members: Vec<&str> = case["members"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
                    let passed = outcomes.iter().filter(|(n, ok)| *ok && members.contains(&n.as_str())).count();
                    let threshold = case["threshold"].as_u64().unwrap() as usize;
                    if passed >= threshold { Ok(()) } else { Err(VerifyError::SignatureInvalid { key: "threshold".into() }) }
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
    assert!(ran >= 45, "only {ran} cases found");
    assert!(failures.is_empty(), "wrong verdicts:\n{}", failures.join("\n"));
}
