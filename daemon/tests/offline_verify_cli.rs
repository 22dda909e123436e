//! `imagegate verify-signature` and `imagegate verify-bundle` on real cosign outputs
//! (tests/fixtures/testvectors, a copy of shared/testvectors): exit 0 when verified, 1 when not,
//! 2 when the input cannot be checked.

use std::{path::PathBuf, process::Command};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/testvectors")
}

fn imagegate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .args(args)
        .output()
        .expect("run imagegate")
}

fn path(relative: &str) -> String {
    vectors().join(relative).display().to_string()
}

const LEGACY_DIGEST: &str =
    "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";

#[test]
fn verify_signature_with_a_key() {
    let dir = "legacy-key/cimage-cosign-key";
    let run = |key: &str, signature: &str, digest: &str| {
        imagegate(&[
            "verify-signature",
            "--digest",
            digest,
            "--payload",
            &path(&format!("{dir}/payload.json")),
            "--signature",
            &path(&format!("{dir}/{signature}")),
            "--key",
            &path(key),
            // This fixture was signed without a transparency log, as cosign allows with this flag.
            "--insecure-ignore-tlog",
            "--output",
            "json",
        ])
    };
    let ok = run(
        "trust/containers-image/cosign.pub",
        "signature.b64",
        LEGACY_DIGEST,
    );
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let verdict: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("JSON");
    assert_eq!(verdict["verified"], true);
    assert_eq!(verdict["digest"], LEGACY_DIGEST);

    let wrong_key = run(
        "trust/containers-image/cosign2.pub",
        "signature.b64",
        LEGACY_DIGEST,
    );
    assert_eq!(wrong_key.status.code(), Some(1), "{wrong_key:?}");
    let tampered = run(
        "trust/containers-image/cosign.pub",
        "neg-invalid-signature.b64",
        LEGACY_DIGEST,
    );
    assert_eq!(tampered.status.code(), Some(1), "{tampered:?}");
    let wrong_digest = run(
        "trust/containers-image/cosign.pub",
        "signature.b64",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    );
    assert_eq!(wrong_digest.status.code(), Some(1), "{wrong_digest:?}");
    let missing = run(
        "trust/containers-image/no-such-key.pub",
        "signature.b64",
        LEGACY_DIGEST,
    );
    assert_eq!(
        missing.status.code(),
        Some(2),
        "an unreadable key cannot be checked: {missing:?}"
    );
}

#[test]
fn verify_signature_requires_the_tlog_unless_told_otherwise() {
    let dir = "legacy-key/cimage-cosign-key";
    let out = imagegate(&[
        "verify-signature",
        "--digest",
        LEGACY_DIGEST,
        "--payload",
        &path(&format!("{dir}/payload.json")),
        "--signature",
        &path(&format!("{dir}/signature.b64")),
        "--key",
        &path("trust/containers-image/cosign.pub"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "cosign requires a log entry by default: {out:?}"
    );
}

#[test]
fn verify_bundle_with_a_keyless_identity() {
    let dir = "bundle-v03/sigstore-rs-kubewarden-controller";
    let digest = "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172";
    let run = |bundle: &str, digest: &str, identity: &str| {
        imagegate(&[
            "verify-bundle",
            "--digest",
            digest,
            "--bundle",
            &path(&format!("{dir}/{bundle}")),
            "--trusted-root",
            &path("trust/sigstore-public-good/trusted_root.json"),
            "--certificate-identity",
            identity,
            "--certificate-oidc-issuer",
            "https://token.actions.githubusercontent.com",
        ])
    };
    let identity = "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0";
    let ok = run("bundle.sigstore.json", digest, identity);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let other = run(
        "bundle.sigstore.json",
        digest,
        "https://github.com/evil/repo/.github/workflows/x.yml@refs/heads/main",
    );
    assert_eq!(other.status.code(), Some(1), "wrong identity: {other:?}");
    let wrong_digest = run(
        "bundle.sigstore.json",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        identity,
    );
    assert_eq!(wrong_digest.status.code(), Some(1), "{wrong_digest:?}");
    let two = run("neg-two-signatures.sigstore.json", digest, identity);
    assert_eq!(two.status.code(), Some(1), "{two:?}");
}
