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
        let _ = imagegate::oci::parse_document("m", "", &mutate(&mut rng, manifest));
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

/// Every string leaf of a JSON document, as JSON pointers.
fn string_leaves(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(_) => out.push(at),
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                string_leaves(x, format!("{at}/{i}"), out);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                string_leaves(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        _ => {}
    }
}

/// Rekor v2 bundles of the sigstore-conformance corpus (hashedrekord 0.0.2 over an artifact and
/// over a DSSE PAE, a checkpoint, RFC 3161 timestamps with and without embedded certificates):
/// every mutation of a field, at the byte level of the file and inside the decoded base64 of
/// each field (entry body, checkpoint, timestamp token, certificate, signature, proof hashes),
/// is rejected unless it leaves the bundle's meaning unchanged. Skipped if the corpus (shared/
/// beside the workspace) is absent.
#[test]
fn mutated_rekor_v2_bundles_never_verify() {
    use base64::Engine;
    let corpus =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/bundle-verify");
    if !corpus.is_dir() {
        let reason = format!("no conformance corpus at {}", corpus.display());
        if std::env::var_os("IMAGEGATE_REQUIRE_CONFORMANCE").is_some_and(|v| v == "1") {
            panic!("{reason}, and IMAGEGATE_REQUIRE_CONFORMANCE=1");
        }
        println!("SKIPPED: {reason}");
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let artifact = std::fs::read(corpus.join("a.txt")).unwrap();
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&artifact))
    );
    let mut checked = 0;
    for (case, seed) in [
        ("rekor2-happy-path", 0x5eed_0001_u64),
        ("rekor2-dsse-happy-path", 0x5eed_0002),
        ("rekor2-timestamp-without-embedded-cert", 0x5eed_0003),
        ("rekor2-timestamp-with-embedded-cert", 0x5eed_0004),
    ] {
        let dir = corpus.join(case);
        let original = std::fs::read(dir.join("bundle.sigstore.json")).unwrap();
        let trust = TrustMaterial::from_trusted_root_json(
            &std::fs::read(dir.join("trusted_root.json")).unwrap(),
        )
        .unwrap();
        let auth = Authority {
            name: "t".into(),
            signer: Signer::Certificate {
                identities: vec![IdentityMatcher::exact(
                    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main",
                    Some("https://token.actions.githubusercontent.com"),
                )],
                require_sct: true,
            },
            trust: Arc::new(trust),
            require_tlog: true,
            signed_identity: SignedIdentity::Any,
        };
        let want = BundleExpectation {
            digest: &digest,
            predicate_type: None,
        };
        verify::verify_artifact_bundle(&original, &auth, &want)
            .unwrap_or_else(|e| panic!("{case}: original verifies: {e}"));
        let orig_value: serde_json::Value = serde_json::from_slice(&original).unwrap();
        let mut leaves = Vec::new();
        string_leaves(&orig_value, String::new(), &mut leaves);
        let mut rng = Rng(seed);
        let same = |m: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(m).is_ok_and(|v| {
                // Base64 is compared decoded: an encoding variant of the same bytes is the same.
                let norm = |v: &serde_json::Value| {
                    let mut v = v.clone();
                    let mut ls = Vec::new();
                    string_leaves(&v, String::new(), &mut ls);
                    for l in ls {
                        if let Some(s) = v.pointer_mut(&l) {
                            if let Some(d) = s
                                .as_str()
                                .and_then(|t| b64.decode(t.replace('\n', "")).ok())
                            {
                                *s = serde_json::Value::String(hex::encode(d));
                            }
                        }
                    }
                    v
                };
                norm(&v) == norm(&orig_value)
            })
        };
        // The certificates a timestamp token embeds are unsigned hints: when the trusted root
        // holds the TSA's certificate, an edited embedded copy is simply not used. Compare
        // tokens without them.
        let without_embedded_certs = |m: &[u8]| -> Option<Vec<u8>> {
            let mut v: serde_json::Value = serde_json::from_slice(m).ok()?;
            let ts = v.pointer_mut(
                "/verificationMaterial/timestampVerificationData/rfc3161Timestamps/0/signedTimestamp",
            )?;
            let stripped = strip_token_certificates(&b64.decode(ts.as_str()?).ok()?)?;
            *ts = serde_json::Value::String(b64.encode(stripped));
            serde_json::to_vec(&v).ok()
        };
        // Witness cosignatures are ignored by design (their keys are not in the trusted root):
        // compare checkpoints by their text and the log's own signature lines only.
        let without_cosignatures = |m: &[u8]| -> Option<Vec<u8>> {
            let mut v: serde_json::Value = serde_json::from_slice(m).ok()?;
            let cp = v.pointer_mut(
                "/verificationMaterial/tlogEntries/0/inclusionProof/checkpoint/envelope",
            )?;
            let text = cp.as_str()?.to_string();
            let (body, sigs) = text.rsplit_once("\n\n")?;
            let origin = body.lines().next()?;
            let own: Vec<&str> = sigs
                .lines()
                .filter(|l| {
                    l.strip_prefix("\u{2014} ")
                        .is_some_and(|r| r.starts_with(&format!("{origin} ")))
                })
                .collect();
            *cp = serde_json::Value::String(format!("{body}\n\n{}\n", own.join("\n")));
            serde_json::to_vec(&v).ok()
        };
        let same = |m: &[u8]| {
            same(m)
                || without_cosignatures(m).is_some_and(|s| {
                    serde_json::from_slice::<serde_json::Value>(&s).ok()
                        == without_cosignatures(&original)
                            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o).ok())
                })
        };
        let orig_stripped = without_embedded_certs(&original).unwrap();
        let same = |m: &[u8]| {
            same(m)
                || without_embedded_certs(m).is_some_and(|s| {
                    serde_json::from_slice::<serde_json::Value>(&s).ok()
                        == serde_json::from_slice::<serde_json::Value>(&orig_stripped).ok()
                })
        };
        for round in 0..500 {
            let m = if round % 2 == 0 {
                mutate(&mut rng, &original)
            } else {
                let mut v = orig_value.clone();
                let leaf = &leaves[rng.below(leaves.len())];
                let s = v.pointer_mut(leaf).unwrap();
                let text = s.as_str().unwrap().to_string();
                *s = serde_json::Value::String(match b64.decode(&text) {
                    Ok(raw) if !raw.is_empty() && text.len() > 8 => {
                        b64.encode(mutate(&mut rng, &raw))
                    }
                    _ => String::from_utf8_lossy(&mutate(&mut rng, text.as_bytes())).into_owned(),
                });
                serde_json::to_vec(&v).unwrap()
            };
            if verify::verify_artifact_bundle(&m, &auth, &want).is_ok() && !same(&m) {
                let (a, b) = (
                    serde_json::to_string_pretty(&orig_value).unwrap(),
                    serde_json::from_slice::<serde_json::Value>(&m)
                        .map(|v| serde_json::to_string_pretty(&v).unwrap())
                        .unwrap_or_else(|_| String::from_utf8_lossy(&m).into_owned()),
                );
                let diff: Vec<String> = a
                    .lines()
                    .zip(b.lines())
                    .filter(|(x, y)| x != y)
                    .map(|(x, y)| format!("- {x}\n+ {y}"))
                    .collect();
                let _ = std::fs::write(
                    std::env::temp_dir().join("imagegate-robustness-accepted.json"),
                    &m,
                );
                panic!(
                    "{case}: a semantically different bundle verified (round {round}):\n{}",
                    diff.join("\n")
                );
            }
            checked += 1;
        }
    }
    println!("{checked} mutated Rekor v2 bundles rejected or unchanged");
}

/// A TimeStampResp or TimeStampToken without the SignedData's `certificates`, re-encoded.
fn strip_token_certificates(der_bytes: &[u8]) -> Option<Vec<u8>> {
    use cms::{content_info::ContentInfo, signed_data::SignedData};
    use der::{Any, Decode, Encode};
    let strip = |ci: ContentInfo| -> Option<ContentInfo> {
        let mut sd: SignedData = ci.content.decode_as().ok()?;
        sd.certificates = None;
        Some(ContentInfo {
            content_type: ci.content_type,
            content: Any::encode_from(&sd).ok()?,
        })
    };
    if let Ok(ci) = ContentInfo::from_der(der_bytes) {
        return strip(ci)?.to_der().ok();
    }
    let parts: Vec<Any> = Vec::from_der(der_bytes).ok()?;
    let [status, token] = parts.as_slice() else {
        return None;
    };
    let token = strip(token.decode_as().ok()?)?;
    vec![status.clone(), Any::encode_from(&token).ok()?]
        .to_der()
        .ok()
}
