//! The sigstore-conformance `bundle-verify` corpus (`shared/conformance/bundle-verify`, beside the
//! workspace), driven through `imagegate verify-bundle` exactly as the suite drives a client
//! (its `docs/cli_protocol.md`): `--bundle`, `--key` or `--certificate-identity` /
//! `--certificate-oidc-issuer`, `--trusted-root` when the case has one (else the built-in
//! public-good root), and the artifact as the last argument, once as a path and once as
//! `sha256:<hex>`. Every valid case must verify; every `_fail` case must be rejected for the
//! reason it names: the error kind `--output json` prints and a phrase of its message. There is
//! no expected-failure list.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

const DEFAULT_IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const DEFAULT_ISSUER: &str = "https://token.actions.githubusercontent.com";

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/bundle-verify")
}

/// The corpus, or `None` (with the reason printed) when it is absent. With
/// `IMAGEGATE_REQUIRE_CONFORMANCE=1` (set by `cargo xtask test`) an absent corpus fails.
fn corpus_or_skip() -> Option<PathBuf> {
    let root = corpus();
    if root.is_dir() {
        return Some(root);
    }
    let reason = format!(
        "the conformance corpus is not at {} (shared/ beside the workspace)",
        root.display()
    );
    if std::env::var_os("IMAGEGATE_REQUIRE_CONFORMANCE").is_some_and(|v| v == "1") {
        panic!("{reason}, and IMAGEGATE_REQUIRE_CONFORMANCE=1");
    }
    println!("SKIPPED: {reason}");
    None
}

/// Why each `_fail` case must be rejected: (error kind, phrase of the message). A kind of
/// `usage` means the input itself is refused (exit 2, the phrase on stderr).
fn expected_rejections() -> BTreeMap<&'static str, (&'static str, &'static str)> {
    BTreeMap::from([
        (
            "bundle-empty-certificate-chain_fail",
            ("bundle-format", "empty certificate chain"),
        ),
        (
            "bundle-from-wrong-instance_fail",
            ("tlog-key-unknown", "is not trusted"),
        ),
        (
            "bundle-invalid-base64-signature_fail",
            ("bundle-format", "message signature is not base64"),
        ),
        (
            "bundle-malformed-json_fail",
            ("bundle-format", "malformed bundle"),
        ),
        (
            "bundle-negative-log-index_fail",
            ("bundle-format", "logIndex -1 is negative"),
        ),
        (
            "bundle-unknown-version_fail",
            ("bundle-format", "unsupported bundle mediaType"),
        ),
        (
            "bundle-with-root-cert_fail",
            ("cert-chain", "includes a root"),
        ),
        (
            "checkpoint-bad-keyhint_fail",
            ("tlog-proof", "no signature by the log key"),
        ),
        (
            "checkpoint-wrong-roothash_fail",
            (
                "tlog-proof",
                "does not commit to the proof's tree size and root",
            ),
        ),
        (
            "dsse-invalid-sig_fail",
            ("signature", "signature does not verify"),
        ),
        (
            "dsse-mismatch-envelope_fail",
            ("tlog-body", "payload hash differs"),
        ),
        ("dsse-mismatch-sig_fail", ("tlog-body", "signature differs")),
        (
            "inclusion-proof-corrupted-hash_fail",
            ("tlog-proof", "computed root does not match"),
        ),
        (
            "incorrect-public-key_fail",
            ("tlog-body", "signer key or certificate differs"),
        ),
        (
            "integrated-time-in-future_fail",
            ("cert-chain", "is not valid at 1778168051"),
        ),
        (
            "intoto-expired-certificate_fail",
            ("cert-chain", "is not valid at 1675209600"),
        ),
        (
            "intoto-log-entry-mismatch_fail",
            ("tlog-body", "signature differs"),
        ),
        (
            "intoto-missing-inclusion-proof_fail",
            ("tlog-proof", "without inclusion proof"),
        ),
        (
            "intoto-set-outside-signing-cert-validity_fail",
            ("cert-chain", "is not valid at 1675296000"),
        ),
        // The SET time (1675209600) is inside the certificate's validity; the TSA's is not.
        (
            "intoto-tsa-timestamp-outside-cert-validity_fail",
            ("cert-chain", "is not valid at 1675296000"),
        ),
        (
            "invalid-checkpoint-signature_fail",
            ("tlog-proof", "checkpoint signature does not verify"),
        ),
        ("invalid-ct-key_fail", ("sct", "SCT from unknown CT log")),
        (
            "invalid-inclusion-proof_fail",
            ("tlog-proof", "computed root does not match"),
        ),
        (
            "managed-key-no-key_fail",
            ("cert-parse", "carries no certificate"),
        ),
        (
            "managed-key-wrong-key_fail",
            ("key-parse", "cannot use public key"),
        ),
        (
            "message-digest-mismatch_fail",
            ("subject-digest", "does not include"),
        ),
        (
            "rekor2-checkpoint-missing-log-signature_fail",
            ("tlog-proof", "no signature by the log key"),
        ),
        (
            "rekor2-checkpoint-missing-origin_fail",
            (
                "tlog-proof",
                "checkpoint text needs origin, tree size and root hash",
            ),
        ),
        (
            "rekor2-checkpoint-missing-root-hash_fail",
            (
                "tlog-proof",
                "checkpoint text needs origin, tree size and root hash",
            ),
        ),
        (
            "rekor2-checkpoint-missing-size_fail",
            (
                "tlog-proof",
                "checkpoint text needs origin, tree size and root hash",
            ),
        ),
        (
            "rekor2-checkpoint-no-matching-signature_fail",
            ("tlog-proof", "checkpoint signature does not verify"),
        ),
        (
            "rekor2-dsse-invalid-sig_fail",
            ("signature", "signature does not verify"),
        ),
        (
            "rekor2-dsse-mismatch-envelope_fail",
            ("tlog-body", "payload hash differs"),
        ),
        (
            "rekor2-dsse-mismatch-sig_fail",
            ("tlog-body", "signature differs"),
        ),
        (
            "rekor2-no-inclusion-proof_fail",
            ("tlog-proof", "without inclusion proof"),
        ),
        (
            "rekor2-no-timestamp_fail",
            ("tlog-missing", "no verified signing time"),
        ),
        (
            "rekor2-timestamp-outside-trust-root-tsa-validity_fail",
            ("timestamp", "to a trusted CA valid at"),
        ),
        (
            "rekor2-timestamp-outside-tsa-cert-validity_fail",
            ("timestamp", "is not valid at"),
        ),
        (
            "rekor2-timestamp-payload-mismatch_fail",
            ("timestamp", "message imprint differs"),
        ),
        (
            "rekor2-timestamp-untrusted-tsa-with-embedded-cert_fail",
            ("timestamp", "timestamping authority not trusted"),
        ),
        (
            "rekor2-timestamp-untrusted-tsa-without-embedded-cert_fail",
            ("timestamp", "signer certificate not found"),
        ),
        (
            "rekor2-timestamp-with-incorrect-time_fail",
            ("cert-chain", "is not valid at 1752575611"),
        ),
        (
            "set-invalid-signature_fail",
            ("tlog-set", "SET does not verify"),
        ),
        (
            "signature-mismatch_fail",
            ("signature", "signature does not verify"),
        ),
        (
            "trust-root-tlog-missing-validity-start_fail",
            ("usage", "validFor has no start"),
        ),
        (
            "wrong-hashedrekord-artifact_fail",
            ("tlog-body", "payload hash differs"),
        ),
        (
            "wrong-hashedrekord-cert-and-sig_fail",
            ("tlog-body", "signature differs"),
        ),
        (
            "wrong-hashedrekord-entry_fail",
            ("tlog-body", "payload hash differs"),
        ),
        (
            "wrong-material_fail",
            ("subject-digest", "does not include"),
        ),
    ])
}

struct Outcome {
    code: Option<i32>,
    kind: Option<String>,
    message: String,
}

/// One run of the client protocol for a case, with the artifact given as `artifact_arg`.
fn run(case: &Path, artifact_arg: &str) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagegate"));
    cmd.arg("verify-bundle")
        .arg("--bundle")
        .arg(case.join("bundle.sigstore.json"));
    let key = case.join("key.pub");
    if key.exists() {
        cmd.arg("--key").arg(key);
    } else {
        let read = |name: &str, default: &str| {
            std::fs::read_to_string(case.join(name))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| default.to_string())
        };
        cmd.arg("--certificate-identity")
            .arg(read("identity", DEFAULT_IDENTITY))
            .arg("--certificate-oidc-issuer")
            .arg(read("issuer", DEFAULT_ISSUER));
    }
    let root = case.join("trusted_root.json");
    if root.exists() {
        cmd.arg("--trusted-root").arg(root);
    }
    cmd.args(["--output", "json"]).arg(artifact_arg);
    let out = cmd.output().expect("run imagegate verify-bundle");
    let json: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    let kind = json
        .as_ref()
        .and_then(|j| j["error_kind"].as_str().map(str::to_string));
    let message = match &json {
        Some(j) => j["error"].as_str().unwrap_or_default().to_string(),
        None => String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    Outcome {
        code: out.status.code(),
        kind,
        message,
    }
}

#[test]
fn sigstore_conformance_bundle_verify_corpus() {
    let Some(root) = corpus_or_skip() else {
        return;
    };
    let expected = expected_rejections();
    let default_artifact = root.join("a.txt");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("read corpus")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let (mut valid, mut invalid, mut failures) = (0, 0, Vec::new());
    for case in &cases {
        let name = case
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let artifact = Some(case.join("artifact"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| default_artifact.clone());
        let bytes = std::fs::read(&artifact).expect("read artifact");
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        for arg in [artifact.display().to_string(), digest] {
            let got = run(case, &arg);
            let what = format!(
                "{name} ({arg}): exit {:?}, kind {:?}, {}",
                got.code, got.kind, got.message
            );
            if !name.ends_with("_fail") {
                if got.code != Some(0) {
                    failures.push(format!("valid case not verified: {what}"));
                }
                continue;
            }
            let Some((kind, phrase)) = expected.get(name.as_str()) else {
                failures.push(format!("no expected reason recorded: {what}"));
                continue;
            };
            let kind_ok = if *kind == "usage" {
                got.code == Some(2) && got.kind.is_none()
            } else {
                got.code == Some(1) && got.kind.as_deref() == Some(*kind)
            };
            if !kind_ok || !got.message.contains(phrase) {
                failures.push(format!(
                    "rejected for another reason (want {kind}, {phrase:?}): {what}"
                ));
            }
        }
        if name.ends_with("_fail") {
            invalid += 1;
        } else {
            valid += 1;
        }
    }
    for name in expected.keys() {
        if !cases.iter().any(|c| c.ends_with(name)) {
            failures.push(format!("expected case {name} is missing from the corpus"));
        }
    }
    println!("conformance corpus: {valid} valid and {invalid} invalid cases run");
    assert!(
        valid >= 21 && invalid >= 49,
        "corpus smaller than expected: {valid} valid, {invalid} invalid"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The protocol's argument rules: a malformed digest is a usage error (exit 2), never a verdict.
#[test]
fn malformed_subjects_are_usage_errors() {
    let Some(root) = corpus_or_skip() else {
        return;
    };
    let case = root.join("happy-path-v0.3");
    for bad in [
        "sha256:abc",
        "sha512:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf",
        "sha256:g0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf",
        "/nonexistent/artifact",
        "not-a-file-nor-digest",
    ] {
        let got = run(&case, bad);
        assert_eq!(got.code, Some(2), "{bad}: {}", got.message);
    }
    let with_digest_flag = |digest: &str| {
        Command::new(env!("CARGO_BIN_EXE_imagegate"))
            .args(["verify-bundle", "--bundle"])
            .arg(case.join("bundle.sigstore.json"))
            .args([
                "--certificate-identity",
                DEFAULT_IDENTITY,
                "--certificate-oidc-issuer",
                DEFAULT_ISSUER,
                "--digest",
                digest,
            ])
            .output()
            .expect("run imagegate")
    };
    assert_eq!(with_digest_flag("sha256:1234").status.code(), Some(2));
    assert_eq!(with_digest_flag("latest").status.code(), Some(2));
    // Upper-case hex is the same digest.
    let upper = "sha256:A0CFC71271D6E278E57CD332FF957C3F7043FDDA354C4CBB190A30D56EFA01BF";
    assert_eq!(run(&case, upper).code, Some(0));
    // --insecure-ignore-tlog is accepted by verify-bundle, as documented: a key-signed bundle
    // then verifies without its log entry being looked at; a keyless one still needs a time.
    let key_case = root.join("managed-key-happy-path");
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .args(["verify-bundle", "--insecure-ignore-tlog", "--bundle"])
        .arg(key_case.join("bundle.sigstore.json"))
        .arg("--key")
        .arg(key_case.join("key.pub"))
        .arg(root.join("a.txt"))
        .output()
        .expect("run imagegate");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .args([
            "verify-bundle",
            "--insecure-ignore-tlog",
            "--insecure-ignore-sct",
        ])
        .args(["--output", "json", "--bundle"])
        .arg(case.join("bundle.sigstore.json"))
        .args([
            "--certificate-identity",
            DEFAULT_IDENTITY,
            "--certificate-oidc-issuer",
            DEFAULT_ISSUER,
        ])
        .arg(root.join("a.txt"))
        .output()
        .expect("run imagegate");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON verdict");
    assert_eq!(json["error_kind"], "tlog-missing", "{json}");
}

/// CPU seconds of the calling thread.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for writes.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The CPU cost of one in-process keyless verification per kind of evidence (median thread
/// CPU of 50 runs; trust root parsed once, outside the measurement). Measures only, asserts
/// that each verifies. Run in release:
/// `cargo test --release -p imagegate --test conformance -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run in release with --ignored"]
fn keyless_verification_cpu_cost() {
    use imagegate::verify::{
        self, Authority, BundleExpectation, IdentityMatcher, SignedIdentity, Signer, TrustMaterial,
    };
    let Some(root) = corpus_or_skip() else {
        return;
    };
    let artifact = std::fs::read(root.join("a.txt")).expect("a.txt");
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&artifact)));
    for (case, what) in [
        (
            "rekor2-happy-path",
            "Rekor v2 hashedrekord 0.0.2 + checkpoint + RFC 3161 + SCT + chain",
        ),
        (
            "rekor2-dsse-happy-path",
            "Rekor v2 DSSE (hashedrekord over PAE) + RFC 3161 + SCT + chain",
        ),
        (
            "happy-path-v0.3",
            "Rekor v1 SET + inclusion proof + checkpoint + SCT + chain",
        ),
    ] {
        let dir = root.join(case);
        let trust = match std::fs::read(dir.join("trusted_root.json")) {
            Ok(bytes) => TrustMaterial::from_trusted_root_json(&bytes).expect("root"),
            Err(_) => verify::public_good::trust_material().expect("built-in root"),
        };
        let bundle = std::fs::read(dir.join("bundle.sigstore.json")).expect("bundle");
        let auth = Authority {
            name: "bench".into(),
            signer: Signer::Certificate {
                identities: vec![IdentityMatcher::exact(
                    DEFAULT_IDENTITY,
                    Some(DEFAULT_ISSUER),
                )],
                require_sct: true,
            },
            trust: std::sync::Arc::new(trust),
            require_tlog: true,
            signed_identity: SignedIdentity::Any,
        };
        let want = BundleExpectation {
            digest: &digest,
            predicate_type: None,
        };
        let mut samples: Vec<f64> = (0..50)
            .map(|_| {
                let t = thread_cpu_seconds();
                verify::verify_artifact_bundle(&bundle, &auth, &want).expect("verifies");
                thread_cpu_seconds() - t
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        println!(
            "{case}: {:.2} ms thread CPU (median of 50; min {:.2}, max {:.2}): {what}",
            samples[25] * 1e3,
            samples[0] * 1e3,
            samples[49] * 1e3
        );
    }
    let t = thread_cpu_seconds();
    for _ in 0..20 {
        verify::public_good::trust_material().expect("built-in root");
    }
    println!(
        "parsing the built-in public-good root: {:.2} ms thread CPU",
        (thread_cpu_seconds() - t) / 20.0 * 1e3
    );
}

/// A log the trusted root lists with a key imagegate cannot use is kept, not dropped: evidence
/// from it is refused with the reason and the log id (a Rekor v1 SET and a Rekor v2 checkpoint),
/// while the rest of the root stays usable.
#[test]
fn evidence_from_an_unusable_log_is_refused_with_the_reason() {
    use imagegate::verify::{
        self, Authority, BundleExpectation, FailureKind, IdentityMatcher, SignedIdentity, Signer,
        TrustMaterial,
    };
    let Some(root) = corpus_or_skip() else {
        return;
    };
    let artifact = std::fs::read(root.join("a.txt")).expect("a.txt");
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&artifact)));
    for (case, log_id) in [
        (
            "happy-path-v0.1",
            "wNI9atQGlz+VWfO6LRygH4QUfY/8W4RFwiT5i5WRgB0=",
        ),
        (
            "rekor2-happy-path",
            "8w1amZ2S5mJIQkQmPxdMuOrL/oJkvFg9MnQXmeOCXck=",
        ),
    ] {
        let dir = root.join(case);
        let root_json = std::fs::read(dir.join("trusted_root.json"))
            .unwrap_or_else(|_| imagegate::verify::public_good::TRUSTED_ROOT_JSON.to_vec());
        let mut value: serde_json::Value = serde_json::from_slice(&root_json).expect("JSON");
        let tlog = value["tlogs"]
            .as_array_mut()
            .expect("tlogs")
            .iter_mut()
            .find(|t| t["logId"]["keyId"] == log_id)
            .expect("the bundle's log is in the root");
        // A kind imagegate does not implement.
        tlog["publicKey"]["keyDetails"] = "PKIX_ECDSA_P521_SHA_512".into();
        let trust =
            TrustMaterial::from_trusted_root_json(&serde_json::to_vec(&value).expect("JSON"))
                .expect("a root with an unusable log still loads");
        assert_eq!(trust.unusable_tlogs.len(), 1, "{case}");
        let auth = Authority {
            name: "t".into(),
            signer: Signer::Certificate {
                identities: vec![IdentityMatcher::exact(
                    DEFAULT_IDENTITY,
                    Some(DEFAULT_ISSUER),
                )],
                require_sct: true,
            },
            trust: std::sync::Arc::new(trust),
            require_tlog: true,
            signed_identity: SignedIdentity::Any,
        };
        let bundle = std::fs::read(dir.join("bundle.sigstore.json")).expect("bundle");
        let want = BundleExpectation {
            digest: &digest,
            predicate_type: None,
        };
        let error = verify::verify_artifact_bundle(&bundle, &auth, &want)
            .expect_err("evidence from an unusable log");
        assert_eq!(error.kind(), FailureKind::TrustRoot, "{case}: {error}");
        let message = error.to_string();
        assert!(
            message.contains(log_id) && message.contains("PKIX_ECDSA_P521_SHA_512"),
            "{case}: {message}"
        );
    }
}
