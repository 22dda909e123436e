//! Runs one case of the test-vector schema (shared/testvectors/README.md) against the verifier;
//! shared by the test-vector sweep and the per-finding tests.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagegate::verify::{
    self, cert::Cert, identity::check_identity, rekor, trust::LogKey, Authority, BundleExpectation,
    Expectation, FailureKind, IdentityMatcher, LegacySignature, PublicKey, SignedIdentity, Signer,
    StringMatcher, TrustMaterial, TrustedKey, VerifyError,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The shared upstream vectors and the ones made by tests/fixtures/generated/gen.py.
pub fn roots() -> Vec<PathBuf> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    vec![base.join("testvectors"), base.join("generated")]
}

pub fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(rel).display()))
}

pub fn s<'a>(case: &'a Value, k: &str) -> Option<&'a str> {
    case.get(k).and_then(Value::as_str)
}

fn trust_for(dir: &Path, case: &Value) -> TrustMaterial {
    let mut tm = TrustMaterial::default();
    if let Some(p) = s(case, "trusted_root_json") {
        tm.extend(
            TrustMaterial::from_trusted_root_json(read(dir, p).as_bytes()).expect("trusted_root"),
        );
    }
    if let Some(p) = s(case, "trusted_roots_pem") {
        tm.add_ca_pem(&read(dir, p)).expect("roots");
    }
    if let Some(p) = s(case, "intermediates_pem") {
        tm.add_intermediates_pem(&read(dir, p))
            .expect("intermediates");
    }
    if let Some(p) = s(case, "rekor_public_key") {
        tm.add_rekor_key_pem(&read(dir, p)).expect("rekor key");
    }
    tm
}

fn identities(case: &Value) -> Vec<IdentityMatcher> {
    if let Some(re) = case.get("identity_regex") {
        let mut m = IdentityMatcher {
            san: None,
            subject: StringMatcher::regex(s(re, "san").unwrap()).unwrap(),
            issuer: s(re, "issuer").map(|i| StringMatcher::Exact(i.into())),
            extensions: Vec::new(),
        };
        for (oid, v) in re
            .get("ext")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            m.extensions.push((
                oid.parse().unwrap(),
                StringMatcher::Exact(v.as_str().unwrap().into()),
            ));
        }
        return vec![m];
    }
    let id = case.get("identity").expect("identity");
    vec![IdentityMatcher::exact(
        s(id, "san").expect("san"),
        s(id, "issuer"),
    )]
}

fn keys(dir: &Path, case: &Value, file: &str) -> Result<Signer, VerifyError> {
    let hash = s(case, "public_key_hash")
        .map(|h| serde_json::from_value(Value::String(h.into())).unwrap());
    Ok(Signer::Keys(
        PublicKey::all_from_pem(&read(dir, file))?
            .into_iter()
            .map(|key| TrustedKey { key, hash })
            .collect(),
    ))
}

/// A legacy case's inputs: the signature layer, the authority and the digest it must be about.
/// Also used by the fuzz targets (fuzz/), which verify mutated signatures against them.
pub struct LegacyInput {
    pub sig: LegacySignature,
    pub auth: Authority,
    pub digest: String,
}

/// The digest a legacy case verifies against (checking the manifest fixture when it has one).
fn legacy_digest(dir: &Path, case: &Value) -> String {
    let digest = match s(case, "expected_manifest_digest") {
        Some(d) => d.to_string(),
        None => match s(case, "manifest") {
            Some(m) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(std::fs::read(dir.join(m)).unwrap()))
            ),
            // No image at all (media-type case): any digest, the layer must be refused first.
            None => format!("sha256:{}", "0".repeat(64)),
        },
    };
    if let (Some(m), Some(_)) = (s(case, "manifest"), s(case, "expected_manifest_digest")) {
        // The fixture's manifest really has the digest the case verifies against.
        let d = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(std::fs::read(dir.join(m)).unwrap()))
        );
        assert_eq!(d, digest, "manifest fixture digest");
    }
    digest
}

/// The signature layer a legacy case names.
fn legacy_signature(dir: &Path, case: &Value) -> LegacySignature {
    LegacySignature {
        media_type: s(case, "media_type")
            .unwrap_or(verify::payload::SIMPLE_SIGNING_MEDIA_TYPE)
            .to_string(),
        payload: std::fs::read(dir.join(s(case, "payload").unwrap())).unwrap(),
        signature_b64: read(dir, s(case, "signature").unwrap()),
        certificate_pem: s(case, "certificate").map(|p| read(dir, p)),
        chain_pem: s(case, "chain").map(|p| read(dir, p)),
        bundle_json: s(case, "rekor_bundle").map(|p| read(dir, p)),
        rfc3161_json: s(case, "rfc3161_timestamp").map(|p| read(dir, p)),
    }
}

/// The inputs of a legacy case that verifies through an [`Authority`] (all but `skip_chain`).
pub fn legacy_input(dir: &Path, case: &Value) -> Result<LegacyInput, VerifyError> {
    let signer = match s(case, "public_key") {
        Some(p) => keys(dir, case, p)?,
        None => Signer::Certificate {
            identities: identities(case),
            require_sct: case
                .get("check_sct")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
    };
    let auth = Authority {
        name: "case".into(),
        signer,
        trust: Arc::new(trust_for(dir, case)),
        require_tlog: case
            .get("require_tlog")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        signed_identity: SignedIdentity::Any,
    };
    Ok(LegacyInput {
        sig: legacy_signature(dir, case),
        auth,
        digest: legacy_digest(dir, case),
    })
}

pub fn run_legacy(dir: &Path, case: &Value) -> Result<(), VerifyError> {
    if case.get("skip_chain").and_then(Value::as_bool) == Some(true) {
        // Upstream has no CA for this certificate: only signature-vs-certificate and identity.
        let sig = legacy_signature(dir, case);
        let digest = legacy_digest(dir, case);
        let cert = Cert::from_pem(sig.certificate_pem.as_deref().unwrap(), "cert")?;
        let raw = rekor::b64decode(&sig.signature_b64).unwrap();
        cert.public_key()
            .verify(&sig.payload, &raw, verify::HashAlg::Sha256)?;
        verify::payload::SimpleSigning::parse(&sig.payload)?.check_digest(&digest)?;
        check_identity(&cert, &identities(case))?;
        return Ok(());
    }
    let input = legacy_input(dir, case)?;
    verify::verify_legacy(
        &input.sig,
        &input.auth,
        &Expectation {
            digest: &input.digest,
            image: None,
        },
    )
    .map(|_| ())
}

/// A bundle case's inputs: the bundle JSON, the authority, the digest and predicate type.
pub struct BundleInput {
    pub json: Vec<u8>,
    pub auth: Authority,
    pub digest: String,
    pub predicate_type: Option<String>,
}

/// The inputs of a bundle case.
pub fn bundle_input(dir: &Path, case: &Value) -> Result<BundleInput, VerifyError> {
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
        signer: match s(case, "public_key") {
            Some(p) => keys(dir, case, p)?,
            None => Signer::Certificate {
                identities: identities(case),
                require_sct: true,
            },
        },
        trust: Arc::new(tm),
        require_tlog: true,
        signed_identity: SignedIdentity::Any,
    };
    Ok(BundleInput {
        json: std::fs::read(dir.join(s(case, "bundle").unwrap())).unwrap(),
        auth,
        digest: s(case, "expected_digest").unwrap().to_owned(),
        predicate_type: s(case, "expected_predicate_type").map(str::to_owned),
    })
}

pub fn run_bundle(dir: &Path, case: &Value) -> Result<(), VerifyError> {
    let input = bundle_input(dir, case)?;
    let want = BundleExpectation {
        digest: &input.digest,
        predicate_type: input.predicate_type.as_deref(),
    };
    verify::verify_bundle(&input.json, &input.auth, &want).map(|_| ())
}

pub fn run_rekor_set(dir: &Path, case: &Value) -> Result<(), VerifyError> {
    let bundle = rekor::LegacyBundle::parse(&read(dir, s(case, "rekor_bundle").unwrap()))?;
    let key = PublicKey::from_pem(&read(dir, s(case, "rekor_public_key").unwrap())).unwrap();
    if case.get("force_key").and_then(Value::as_bool) == Some(true) {
        return rekor::verify_set_with_key(
            &bundle.payload,
            &bundle.signed_entry_timestamp,
            &LogKey::new(key),
        );
    }
    let mut log = LogKey::new(key);
    if let Some(id) = s(case, "rekor_key_id") {
        log.log_id = hex::decode(id).unwrap().try_into().unwrap();
    }
    let tm = TrustMaterial {
        tlogs: vec![log],
        ..Default::default()
    };
    rekor::verify_set(&bundle.payload, &bundle.signed_entry_timestamp, &tm).map(|_| ())
}

pub fn kind_name(k: FailureKind) -> String {
    serde_json::to_value(k)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// Run a single case of a set directory by name (`multi` cases are not supported here).
pub fn run_case(set: &str, name: &str) -> Result<(), VerifyError> {
    let dir = roots()
        .iter()
        .map(|r| r.join(set))
        .find(|d| d.join("expected.json").exists())
        .expect("set");
    let exp: Value = serde_json::from_str(&read(&dir, "expected.json")).unwrap();
    let case = exp["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| s(c, "name") == Some(name))
        .expect("case")
        .clone();
    run_value(&dir, &case)
}

/// Run a case given as JSON (possibly modified by the caller).
pub fn run_value(dir: &Path, case: &Value) -> Result<(), VerifyError> {
    match s(case, "type").unwrap() {
        "legacy" => run_legacy(dir, case),
        "bundle" => run_bundle(dir, case),
        "rekor-set" => run_rekor_set(dir, case),
        other => panic!("unsupported case type {other}"),
    }
}

/// Load a case's JSON for modification.
pub fn case_value(set: &str, name: &str) -> (PathBuf, Value) {
    let dir = roots()
        .iter()
        .map(|r| r.join(set))
        .find(|d| d.join("expected.json").exists())
        .expect("set");
    let exp: Value = serde_json::from_str(&read(&dir, "expected.json")).unwrap();
    let case = exp["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| s(c, "name") == Some(name))
        .expect("case")
        .clone();
    (dir, case)
}

/// Every case of every set under [`roots`] (directories holding an `expected.json`), with its
/// set directory, in a stable order.
pub fn all_cases() -> Vec<(PathBuf, Value)> {
    fn sets(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
        if dir.join("expected.json").is_file() {
            out.push(dir.to_path_buf());
        }
        if depth == 0 {
            return;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        entries.sort();
        for entry in entries {
            sets(&entry, depth - 1, out);
        }
    }
    let mut dirs = Vec::new();
    for root in roots() {
        sets(&root, 2, &mut dirs);
    }
    let mut out = Vec::new();
    for dir in dirs {
        let exp: Value = serde_json::from_str(&read(&dir, "expected.json")).unwrap();
        for case in exp["cases"].as_array().into_iter().flatten() {
            out.push((dir.clone(), case.clone()));
        }
    }
    out
}
