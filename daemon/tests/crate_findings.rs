//! One test per line of shared/docs/sigstore-crate-findings.md: what the `sigstore` crate got
//! right must stay right here, and each of its holes must be closed. Cases live in
//! tests/fixtures/testvectors (real cosign output) and tests/fixtures/generated (gen.py).
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod common;

use common::{case_value, run_case, run_value};
use imagegate::verify::{
    payload::SimpleSigning, FailureKind, ImageRef, SignedIdentity, VerifyError,
};

fn pass(set: &str, name: &str) {
    if let Err(e) = run_case(set, name) {
        panic!("{set}::{name} rejected: {e}");
    }
}

fn fail(set: &str, name: &str, kind: FailureKind) -> VerifyError {
    match run_case(set, name) {
        Ok(()) => panic!("{set}::{name} accepted"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{set}::{name}: {e}");
            e
        }
    }
}

// ---- Accepted, correctly ----

#[test]
fn accepts_legacy_key_signatures_p256_p384_rsa_ed25519() {
    for c in [
        "p256-sha256",
        "p384-sha384",
        "rsa2048-pkcs1v15",
        "rsa3072-pkcs1v15",
        "ed25519",
        "second-of-two-keys",
    ] {
        pass("legacy-keys", c);
    }
    pass("legacy-key/cimage-cosign-key", "valid");
    pass("byo-pki/cimage-pki", "valid"); // RSA-4096 certificate, base64 wrapped at 76 columns
}

#[test]
fn accepts_legacy_keyless_with_email_and_uri_sans() {
    pass("keyless/cimage-fulcio-rekor", "valid");
    pass("legacy-keyless", "email-issuer-v1-only");
    pass("legacy-keyless", "uri-san-github-workflow");
}

#[test]
fn accepts_bundle_v03_keyless() {
    pass("bundle-v03/sigstore-rs-kubewarden-controller", "valid");
    pass("bundles", "dsse-keyless");
    pass("bundles", "message-signature-keyless");
}

// ---- Rejected, correctly ----

#[test]
fn rejects_wrong_key_digest_claim_and_tampered_payload() {
    fail(
        "legacy-key/cimage-cosign-key",
        "wrong-key",
        FailureKind::Signature,
    );
    fail(
        "legacy-key/cimage-cosign-key",
        "wrong-image-digest",
        FailureKind::ManifestDigest,
    );
    fail("legacy-keys", "tampered-payload", FailureKind::Signature);
}

#[test]
fn rejects_bad_set_set_by_other_key_and_unknown_log() {
    fail(
        "legacy-key/cimage-cosign-key-rekor",
        "invalid-set",
        FailureKind::TlogSet,
    );
    fail(
        "rekor-set/sigstore-rs-rekord-set",
        "signed-by-other-key",
        FailureKind::TlogSet,
    );
    fail(
        "rekor-set/sigstore-rs-rekord-set",
        "unknown-log-id",
        FailureKind::TlogKeyUnknown,
    );
}

#[test]
fn rejects_certificate_expired_at_integrated_time() {
    fail(
        "legacy-keyless",
        "expired-at-integrated-time",
        FailureKind::CertChain,
    );
}

#[test]
fn rejects_chain_to_rogue_ca_with_the_same_name() {
    fail(
        "legacy-keyless",
        "rogue-ca-same-name",
        FailureKind::CertChain,
    );
}

#[test]
fn rejects_every_bundle_format_proof_and_checkpoint_defect() {
    let b = "bundle-v03/sigstore-rs-kubewarden-controller";
    for c in ["payload-type", "zero-signatures", "two-signatures"] {
        fail(b, c, FailureKind::BundleFormat);
    }
    // Re-serialised upstream mutations: rejected (their signature no longer covers them).
    assert!(run_case(b, "statement-type").is_err());
    assert!(run_case(b, "predicate-type").is_err());
    fail(
        "bundles",
        "dsse-attestation-predicate",
        FailureKind::BundleFormat,
    );
    fail(
        "bundles",
        "dsse-and-message-signature",
        FailureKind::BundleFormat,
    );
    fail("bundles", "unknown-media-type", FailureKind::BundleFormat);
    for c in [
        "inclusion-proof-wrong-hash",
        "inclusion-proof-wrong-index",
        "inclusion-proof-missing",
        "checkpoint-signed-by-other-key",
        "checkpoint-other-root",
    ] {
        fail("bundles", c, FailureKind::TlogProof);
    }
    fail("bundles", "set-over-other-time", FailureKind::TlogSet);
}

// ---- Accepted, wrongly, by the crate: closed here ----

#[test]
fn keyless_signature_must_verify_with_the_certificate_key_legacy() {
    for c in [
        "signed-by-other-key",
        "corrupted-signature",
        "tampered-payload",
    ] {
        fail("legacy-keyless", c, FailureKind::Signature);
    }
}

#[test]
fn keyless_signature_must_verify_with_the_certificate_key_bundle() {
    for c in [
        "dsse-signed-by-other-key",
        "dsse-corrupted-signature",
        "dsse-tampered-payload",
    ] {
        fail("bundles", c, FailureKind::Signature);
    }
}

#[test]
fn rekor_entry_body_must_match_signature_payload_and_signer() {
    fail(
        "legacy-key/cimage-cosign-key-rekor",
        "set-for-other-signature",
        FailureKind::TlogBody,
    );
    for c in [
        "tlog-body-other-signature",
        "tlog-body-other-payload",
        "tlog-body-other-certificate",
    ] {
        fail("legacy-keyless", c, FailureKind::TlogBody);
    }
}

#[test]
fn missing_or_invalid_sct_is_rejected_when_required() {
    for c in ["sct-missing", "sct-invalid", "sct-unknown-log"] {
        fail("legacy-keyless", c, FailureKind::Sct);
    }
    // A real 2023 public-good Fulcio certificate's SCT verifies against trusted_root.json.
    let (dir, mut case) = case_value("keyless/cimage-fulcio-rekor", "valid-with-trusted_root");
    case["check_sct"] = true.into();
    run_value(&dir, &case).expect("real SCT verifies");
    // Without the CT log key, requiring an SCT fails closed.
    let (dir, mut case) = case_value("keyless/cimage-fulcio-rekor", "valid");
    case["check_sct"] = true.into();
    assert_eq!(run_value(&dir, &case).unwrap_err().kind(), FailureKind::Sct);
}

#[test]
fn critical_type_of_the_payload_is_checked() {
    fail(
        "legacy-keys",
        "critical-type-wrong",
        FailureKind::PayloadFormat,
    );
}

#[test]
fn docker_reference_is_checked_when_the_scope_binds_it() {
    let payload =
        std::fs::read(common::roots()[0].join("legacy-key/cimage-cosign-key/payload.json"))
            .unwrap();
    let claims = SimpleSigning::parse(&payload).unwrap();
    let digest = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";
    let same = ImageRef::parse(&format!(
        "192.168.64.2:5000/cosign-signed-single-sample@{digest}"
    ))
    .unwrap();
    let other = ImageRef::parse(&format!("192.168.64.2:5000/other@{digest}")).unwrap();
    SignedIdentity::MatchRepository
        .check(&claims.docker_reference, &same)
        .unwrap();
    SignedIdentity::MatchRepoDigestOrExact
        .check(&claims.docker_reference, &same)
        .unwrap();
    assert_eq!(
        SignedIdentity::MatchRepository
            .check(&claims.docker_reference, &other)
            .unwrap_err()
            .kind(),
        FailureKind::DockerReference
    );
    // cosign's own behaviour (no binding) stays available as the default.
    SignedIdentity::Any
        .check(&claims.docker_reference, &other)
        .unwrap();
    // A mirror: pulled from mirror.test, signed as 192.168.64.2:5000.
    let mirrored =
        ImageRef::parse(&format!("mirror.test/cosign-signed-single-sample@{digest}")).unwrap();
    let remap = SignedIdentity::Remap {
        prefix: "mirror.test".into(),
        signed_prefix: "192.168.64.2:5000".into(),
    };
    remap.check(&claims.docker_reference, &mirrored).unwrap();
    // A tagged reference must match exactly under matchRepoDigestOrExact (the skopeo payload has a tag).
    let skopeo = std::fs::read(
        common::roots()[0].join("legacy-key/cimage-skopeo-key-with-tag/payload.json"),
    )
    .unwrap();
    let claims = SimpleSigning::parse(&skopeo).unwrap();
    let tagged = ImageRef::parse("192.168.64.2:5000/skopeo-signed:tag").unwrap();
    let retagged = ImageRef::parse("192.168.64.2:5000/skopeo-signed:other").unwrap();
    SignedIdentity::MatchRepoDigestOrExact
        .check(&claims.docker_reference, &tagged)
        .unwrap();
    assert!(SignedIdentity::MatchRepoDigestOrExact
        .check(&claims.docker_reference, &retagged)
        .is_err());
}

// ---- Rejected, wrongly, by the crate: accepted here ----

#[test]
fn ed25519ph_signatures_are_accepted() {
    pass("legacy-keys", "ed25519ph");
    fail(
        "legacy-keys",
        "ed25519ph-other-message",
        FailureKind::Signature,
    );
}

#[test]
fn p384_keys_with_sha256_digests_are_accepted_like_cosign() {
    pass("legacy-keys", "p384-sha256-cosign-default");
    pass("legacy-keys", "p384-sha512-configured");
    // An explicit digest algorithm is honoured exactly.
    fail(
        "legacy-keys",
        "p384-sha384-but-sha256-configured",
        FailureKind::Signature,
    );
}

#[test]
fn fulcio_certificates_with_only_the_new_issuer_oid_are_accepted() {
    pass("legacy-keyless", "email-issuer-v2-only");
    fail(
        "legacy-keyless",
        "issuer-extensions-disagree",
        FailureKind::CertParse,
    );
}

#[test]
fn key_based_bundles_are_accepted() {
    pass("bundles", "dsse-key-based");
    pass("bundles", "dsse-key-based-p384-sha256");
    pass("bundles", "dsse-key-based-p384-sha384");
    fail("bundles", "key-based-wrong-key", FailureKind::Signature);
}

// ---- Beyond the findings: identity rules a user relies on ----

#[test]
fn identity_regexes_are_anchored_and_extensions_checked() {
    fail(
        "legacy-keyless",
        "unanchored-regex-prefix-attack",
        FailureKind::Identity,
    );
    fail(
        "legacy-keyless",
        "uri-san-wrong-repository-extension",
        FailureKind::Identity,
    );
}

// ---- The detached (command-line) entry points follow cosign's defaults ----

#[test]
fn detached_signature_requires_tlog_unless_ignored() {
    use imagegate::verify::detached::{
        verify_detached_signature, DetachedSignature, DetachedSigner,
    };
    let base = common::roots()[0].join("legacy-key/cimage-cosign-key");
    let key = std::fs::read_to_string(common::roots()[0].join("trust/containers-image/cosign.pub"))
        .unwrap();
    let mut d = DetachedSignature {
        digest: "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00".into(),
        payload: std::fs::read(base.join("payload.json")).unwrap(),
        signature_b64: std::fs::read_to_string(base.join("signature.b64")).unwrap(),
        certificate_pem: None,
        chain_pem: None,
        rekor_bundle: None,
        signer: DetachedSigner::Key(key),
        trust: Default::default(),
        insecure_ignore_tlog: false,
        insecure_ignore_sct: false,
    };
    assert_eq!(
        verify_detached_signature(&d).unwrap_err().kind(),
        FailureKind::TlogMissing
    );
    d.insecure_ignore_tlog = true;
    verify_detached_signature(&d).unwrap();
    d.digest = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        verify_detached_signature(&d).unwrap_err().kind(),
        FailureKind::ManifestDigest
    );
}

// ---- Not present in the crate: RFC 3161 timestamps ----

#[test]
fn rfc3161_timestamps_are_verified_when_a_tsa_is_trusted() {
    pass("bundles", "tsa-and-set");
    // The timestamp alone gives the signing time when the bundle has no SET.
    pass("bundles", "tsa-only-no-set");
    fail("bundles", "no-set-no-tsa", FailureKind::TlogMissing);
    for c in [
        "tsa-over-other-signature",
        "tsa-corrupted-signature",
        "tsa-untrusted-authority",
        "tsa-garbage",
    ] {
        fail("bundles", c, FailureKind::Timestamp);
    }
    fail(
        "bundles",
        "tsa-time-outside-certificate",
        FailureKind::CertChain,
    );
    // Legacy `dev.sigstore.cosign/rfc3161timestamp` annotations, over the raw signature.
    pass("legacy-keyless", "tsa-annotation-and-set");
    pass("legacy-keyless", "tsa-annotation-only-no-tlog");
    fail(
        "legacy-keyless",
        "tsa-annotation-over-other-signature",
        FailureKind::Timestamp,
    );
    fail(
        "legacy-keyless",
        "tsa-annotation-outside-validity",
        FailureKind::CertChain,
    );
}
