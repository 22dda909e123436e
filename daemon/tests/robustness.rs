//! Hostile input never panics and never verifies: thousands of deterministic mutations of real
//! signatures, bundles, certificates, policies and manifests. (A cargo-fuzz harness can reuse
//! these entry points for longer runs.)
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod common;

use std::path::Path;
use std::sync::Arc;

use imagegate::verify::{
    self, cert::Cert, payload::SIMPLE_SIGNING_MEDIA_TYPE, rekor::b64decode, Authority,
    BundleExpectation, Expectation, IdentityMatcher, LegacySignature, PublicKey, SignedIdentity,
    Signer, TrustMaterial, TrustedKey,
};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit: flip a bit, overwrite, delete a range, duplicate a range, or truncate.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    if v.is_empty() {
        return vec![rng.next() as u8];
    }
    let i = rng.below(v.len());
    match rng.below(5) {
        0 => v[i] ^= 1 << rng.below(8),
        1 => {
            const BYTES: &[u8] = b"{}[]\",:0aZ=/+ \n\x00\xff";
            v[i] = BYTES[rng.below(BYTES.len())];
        }
        2 => {
            let end = (i + 1 + rng.below(16)).min(v.len());
            v.drain(i..end);
        }
        3 => {
            let end = (i + 1 + rng.below(64)).min(v.len());
            let dup = v[i..end].to_vec();
            v.splice(i..i, dup);
        }
        _ => v.truncate(i),
    }
    v
}

fn tv(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/testvectors")
            .join(rel),
    )
    .unwrap()
}

#[test]
fn mutated_bundles_never_verify_unless_semantically_unchanged() {
    let dir = "bundle-v03/sigstore-rs-kubewarden-controller";
    let original = tv(&format!("{dir}/bundle.sigstore.json"));
    let trust =
        TrustMaterial::from_trusted_root_json(&tv("trust/sigstore-public-good/trusted_root.json"))
            .unwrap();
    let auth = Authority {
        name: "t".into(),
        signer: Signer::Certificate {
            identities: vec![IdentityMatcher::exact(
                "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0",
                Some("https://token.actions.githubusercontent.com"),
            )],
            require_sct: true,
        },
        trust: Arc::new(trust),
        require_tlog: true,
        signed_identity: SignedIdentity::Any,
    };
    let want = BundleExpectation {
        digest: "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172",
        predicate_type: None,
    };
    verify::verify_bundle(&original, &auth, &want).expect("original verifies");
    // Fields imagegate does not rely on (documented in docs/verification.md): RFC 3161 tokens are
    // not verified and add no trust, and the DSSE keyid is a hint. Edits there may pass.
    let strip = |mut v: serde_json::Value| {
        if let Some(m) = v
            .get_mut("verificationMaterial")
            .and_then(|m| m.as_object_mut())
        {
            m.remove("timestampVerificationData");
        }
        if let Some(s) = v
            .pointer_mut("/dsseEnvelope/signatures/0")
            .and_then(|s| s.as_object_mut())
        {
            s.remove("keyid");
        }
        v
    };
    let orig_value = strip(serde_json::from_slice(&original).unwrap());
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..250 {
        let m = mutate(&mut rng, &original);
        if verify::verify_bundle(&m, &auth, &want).is_ok() {
            let v = strip(serde_json::from_slice(&m).expect("accepted bundle is JSON"));
            if v != orig_value {
                let (a, b) = (
                    serde_json::to_string_pretty(&orig_value).unwrap(),
                    serde_json::to_string_pretty(&v).unwrap(),
                );
                let diff: Vec<String> = a
                    .lines()
                    .zip(b.lines())
                    .filter(|(x, y)| x != y)
                    .map(|(x, y)| format!("- {x}\n+ {y}"))
                    .collect();
                panic!(
                    "a semantically different bundle verified:\n{}",
                    diff.join("\n")
                );
            }
        }
    }
}

#[test]
fn mutated_legacy_signatures_never_verify() {
    let set = "keyless/cimage-fulcio-rekor";
    let s = |f: &str| String::from_utf8(tv(&format!("{set}/{f}"))).unwrap();
    let mut trust = TrustMaterial::default();
    trust
        .add_ca_pem(&String::from_utf8(tv("trust/containers-image/fulcio_v1.crt.pem")).unwrap())
        .unwrap();
    trust
        .add_rekor_key_pem(&String::from_utf8(tv("trust/containers-image/rekor.pub")).unwrap())
        .unwrap();
    let auth = Authority {
        name: "t".into(),
        signer: Signer::Certificate {
            identities: vec![IdentityMatcher::exact(
                "mitr@redhat.com",
                Some("https://github.com/login/oauth"),
            )],
            require_sct: false,
        },
        trust: Arc::new(trust),
        require_tlog: true,
        signed_identity: SignedIdentity::Any,
    };
    let base = LegacySignature {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
        payload: tv(&format!("{set}/payload.json")),
        signature_b64: s("signature.b64"),
        certificate_pem: Some(s("cert.pem")),
        chain_pem: Some(s("chain.pem")),
        bundle_json: Some(s("bundle.json")),
        rfc3161_json: None,
    };
    let want = Expectation {
        digest: "sha256:0489474da8ea22426ece86ace6c1c0026ab2fd3cdfbbd62b7e94650266c37d9a",
        image: None,
    };
    verify::verify_legacy(&base, &auth, &want).expect("original verifies");
    let sig_bytes = b64decode(&base.signature_b64).unwrap();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for round in 0..500 {
        let mut m = base.clone();
        let field = round % 5;
        match field {
            0 => m.payload = mutate(&mut rng, &base.payload),
            1 => {
                m.signature_b64 =
                    String::from_utf8_lossy(&mutate(&mut rng, base.signature_b64.as_bytes()))
                        .into_owned()
            }
            2 => {
                m.certificate_pem = Some(
                    String::from_utf8_lossy(&mutate(&mut rng, s("cert.pem").as_bytes()))
                        .into_owned(),
                )
            }
            3 => {
                m.chain_pem = Some(
                    String::from_utf8_lossy(&mutate(&mut rng, s("chain.pem").as_bytes()))
                        .into_owned(),
                )
            }
            _ => {
                m.bundle_json = Some(
                    String::from_utf8_lossy(&mutate(&mut rng, s("bundle.json").as_bytes()))
                        .into_owned(),
                )
            }
        }
        if verify::verify_legacy(&m, &auth, &want).is_ok() {
            // Only edits that leave the signed facts identical may pass (e.g. PEM whitespace).
            assert_eq!(
                m.payload, base.payload,
                "round {round}: changed payload verified"
            );
            assert_eq!(
                b64decode(&m.signature_b64).ok(),
                Some(sig_bytes.clone()),
                "round {round}: changed signature verified"
            );
            if field == 2 {
                let c = Cert::from_pem(m.certificate_pem.as_deref().unwrap(), "c").unwrap();
                assert_eq!(
                    c.der(),
                    Cert::from_pem(&s("cert.pem"), "c").unwrap().der(),
                    "round {round}: other certificate verified"
                );
            }
        }
    }
}

#[test]
fn mutated_keys_payloads_policies_and_manifests_never_panic() {
    let mut rng = Rng(42);
    let key = tv("trust/containers-image/cosign.pub");
    let cert = tv("keyless/cimage-fulcio-rekor/cert.pem");
    let root = tv("trust/sigstore-public-good/trusted_root.json");
    let payload = tv("legacy-key/cimage-cosign-key/payload.json");
    let pol = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/policy/example.toml"),
    )
    .unwrap();
    let json_pol = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/policy/containers-policy.json"),
    )
    .unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/policy");
    let keys = vec![TrustedKey::new(
        PublicKey::from_pem(&String::from_utf8(key.clone()).unwrap()).unwrap(),
    )];
    let auth = Authority {
        name: "k".into(),
        signer: Signer::Keys(keys),
        trust: Arc::default(),
        require_tlog: false,
        signed_identity: SignedIdentity::Any,
    };
    let sig = String::from_utf8(tv("legacy-key/cimage-cosign-key/signature.b64")).unwrap();
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
    for _ in 0..500 {
        let _ = PublicKey::all_from_pem(&String::from_utf8_lossy(&mutate(&mut rng, &key)));
        let _ = Cert::all_from_pem(&String::from_utf8_lossy(&mutate(&mut rng, &cert)), "c");
        let _ = TrustMaterial::from_trusted_root_json(&mutate(&mut rng, &root));
        let _ = imagegate::policy::file::parse(
            &fixtures.join("m.toml"),
            &String::from_utf8_lossy(&mutate(&mut rng, &pol)),
        );
        let _ = imagegate::policy::containers::parse(
            &fixtures.join("m.json"),
            &String::from_utf8_lossy(&mutate(&mut rng, &json_pol)),
        );
        let _ = imagegate::discover::find::Manifest::parse(&mutate(&mut rng, manifest), "m");
        let m = LegacySignature {
            media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
            payload: mutate(&mut rng, &payload),
            signature_b64: sig.clone(),
            ..Default::default()
        };
        let d = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";
        if verify::verify_legacy(
            &m,
            &auth,
            &Expectation {
                digest: d,
                image: None,
            },
        )
        .is_ok()
        {
            assert_eq!(m.payload, payload);
        }
    }
}
