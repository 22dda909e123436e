//! Signature artifacts: legacy simple-signing layers and sigstore bundles (v0.1-v0.3), verified
//! against the authority of a test-vector case the input's first byte picks.
//!
//! The invariant: whatever verifies carries content a trusted signer signed. For a legacy layer
//! that is a payload one of the passing vectors signed, whose digest claim is the expected
//! digest; for a bundle, a DSSE statement one of the passing vectors signed that names the
//! expected digest, or a message signature over exactly that digest.

use std::sync::OnceLock;

use base64::Engine as _;
use imagegate::verify::{self, BundleExpectation, Expectation, LegacySignature};
use serde_json::Value;

use super::common::{self, BundleInput, LegacyInput};
use super::{cases, join, sha256, split, Hashes};

struct Legacy {
    cases: Vec<LegacyInput>,
    /// SHA-256 of every payload a passing legacy case verifies.
    signed: Hashes,
}

fn legacy() -> &'static Legacy {
    static LEGACY: OnceLock<Legacy> = OnceLock::new();
    LEGACY.get_or_init(|| {
        let mut out = Legacy {
            cases: Vec::new(),
            signed: Hashes::new(),
        };
        for (dir, case) in cases() {
            if case["type"] != "legacy" || case["skip_chain"] == true {
                continue;
            }
            // Cases whose trust material itself is refused (a bad key) have no authority.
            let Ok(input) = common::legacy_input(dir, case) else {
                continue;
            };
            if case["expect"] == "pass" {
                out.signed.insert(sha256(&input.sig.payload));
            }
            out.cases.push(input);
        }
        assert!(!out.cases.is_empty() && !out.signed.is_empty());
        out
    })
}

fn text(field: Option<&&[u8]>) -> Option<String> {
    field
        .filter(|bytes| !bytes.is_empty())
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
}

/// Fields: payload, signature (base64), certificate PEM, chain PEM, Rekor bundle JSON, RFC 3161
/// annotation JSON; empty optional fields are absent.
pub fn check_legacy(data: &[u8]) {
    let legacy = legacy();
    let (selector, fields) = split(data);
    let case = &legacy.cases[usize::from(selector) % legacy.cases.len()];
    let sig = LegacySignature {
        media_type: case.sig.media_type.clone(),
        payload: fields.first().map(|f| f.to_vec()).unwrap_or_default(),
        signature_b64: text(fields.get(1)).unwrap_or_default(),
        certificate_pem: text(fields.get(2)),
        chain_pem: text(fields.get(3)),
        bundle_json: text(fields.get(4)),
        rfc3161_json: text(fields.get(5)),
    };
    let want = Expectation {
        digest: &case.digest,
        image: None,
    };
    if verify::verify_legacy(&sig, &case.auth, &want).is_ok() {
        assert!(
            legacy.signed.contains(&sha256(&sig.payload)),
            "a payload no trusted signer signed verified: {}",
            String::from_utf8_lossy(&sig.payload)
        );
        let claim: Value =
            serde_json::from_slice(&sig.payload).expect("a verified payload is JSON");
        assert_eq!(
            claim["critical"]["image"]["docker-manifest-digest"], case.digest,
            "a payload about another image verified"
        );
    }
}

pub fn legacy_seeds() -> Vec<Vec<u8>> {
    legacy()
        .cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let s = &case.sig;
            let opt = |field: &Option<String>| field.as_deref().unwrap_or("").as_bytes().to_vec();
            let fields = [
                s.payload.clone(),
                s.signature_b64.as_bytes().to_vec(),
                opt(&s.certificate_pem),
                opt(&s.chain_pem),
                opt(&s.bundle_json),
                opt(&s.rfc3161_json),
            ];
            let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
            join(u8::try_from(i % 256).unwrap_or(0), &fields)
        })
        .collect()
}

struct Bundles {
    cases: Vec<BundleInput>,
    /// SHA-256 of every DSSE payload (in-toto statement) a passing bundle case verifies.
    signed: Hashes,
}

fn bundles() -> &'static Bundles {
    static BUNDLES: OnceLock<Bundles> = OnceLock::new();
    BUNDLES.get_or_init(|| {
        let mut out = Bundles {
            cases: Vec::new(),
            signed: Hashes::new(),
        };
        for (dir, case) in cases() {
            if case["type"] != "bundle" {
                continue;
            }
            let Ok(input) = common::bundle_input(dir, case) else {
                continue;
            };
            if case["expect"] == "pass" {
                if let Some(statement) = dsse_payload(&input.json) {
                    out.signed.insert(sha256(&statement));
                }
            }
            out.cases.push(input);
        }
        assert!(!out.cases.is_empty() && !out.signed.is_empty());
        out
    })
}

fn b64(value: &Value) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()
}

/// The DSSE payload of a bundle, read independently of the library.
fn dsse_payload(json: &[u8]) -> Option<Vec<u8>> {
    let bundle: Value = serde_json::from_slice(json).ok()?;
    b64(bundle.get("dsseEnvelope")?.get("payload")?)
}

/// The whole input is the bundle JSON but for the first byte, which picks the case.
pub fn check_bundle(data: &[u8]) {
    let bundles = bundles();
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let case = &bundles.cases[usize::from(selector) % bundles.cases.len()];
    let want = BundleExpectation {
        digest: &case.digest,
        predicate_type: case.predicate_type.as_deref(),
    };
    if verify::verify_bundle(json, &case.auth, &want).is_err() {
        return;
    }
    let bundle: Value = serde_json::from_slice(json).expect("a verified bundle is JSON");
    let hex = case.digest.trim_start_matches("sha256:");
    if let Some(statement) = dsse_payload(json) {
        assert!(
            bundles.signed.contains(&sha256(&statement)),
            "a statement no trusted signer signed verified: {}",
            String::from_utf8_lossy(&statement)
        );
        let statement: Value = serde_json::from_slice(&statement).expect("statement is JSON");
        let subjects = statement["subject"].as_array().cloned().unwrap_or_default();
        assert!(
            subjects.iter().any(|s| s["digest"]["sha256"] == hex),
            "a statement about another image verified"
        );
    } else {
        let digest = b64(&bundle["messageSignature"]["messageDigest"]["digest"])
            .expect("a verified bundle has a DSSE envelope or a message digest");
        assert_eq!(
            hex::encode(digest),
            hex,
            "a message signature over another digest verified"
        );
    }
}

pub fn bundle_seeds() -> Vec<Vec<u8>> {
    bundles()
        .cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let mut seed = vec![u8::try_from(i % 256).unwrap_or(0)];
            seed.extend_from_slice(&case.json);
            seed
        })
        .collect()
}
