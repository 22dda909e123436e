//! Verdicts: policy applied to real signatures, persisted across reopen, failures expiring,
//! concurrent requests coalesced into one verification.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use imagegate::policy::{Mode, Policy};
use imagegate::verdict::{
    evaluate, Candidate, Outcome, SignatureSource, VerdictCache, VerdictKey, VerdictStore,
};
use imagegate::verify::{
    payload::SIMPLE_SIGNING_MEDIA_TYPE, FailureKind, ImageRef, LegacySignature,
};

fn tv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/testvectors")
}

fn legacy(set: &str, prefix: &str, bundle: bool) -> LegacySignature {
    let d = tv().join(set);
    LegacySignature {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
        payload: std::fs::read(d.join(format!("{prefix}payload.json"))).unwrap(),
        signature_b64: std::fs::read_to_string(d.join(format!("{prefix}signature.b64"))).unwrap(),
        bundle_json: bundle.then(|| std::fs::read_to_string(d.join("bundle.json")).unwrap()),
        ..Default::default()
    }
}

fn src(label: &str, digest: &str, sig: LegacySignature) -> SignatureSource {
    SignatureSource {
        label: label.into(),
        signed_digest: digest.into(),
        candidate: Candidate::Legacy(sig),
    }
}

const D_REKOR: &str = "sha256:0489474da8ea22426ece86ace6c1c0026ab2fd3cdfbbd62b7e94650266c37d9a";
const D_SAMPLE: &str = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";

fn example() -> Policy {
    Policy::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/policy/example.toml"),
    )
    .unwrap()
}

#[test]
fn key_and_rekor_signature_makes_the_image_trusted() {
    let p = example();
    let img = ImageRef::parse(&format!("192.168.64.2:5000/cosign-signed/key-1@{D_REKOR}")).unwrap();
    let v = evaluate(
        &p,
        &img,
        D_REKOR,
        &[src(
            "legacy:0",
            D_REKOR,
            legacy("legacy-key/cimage-cosign-key-rekor", "", true),
        )],
    );
    assert_eq!(v.outcome, Outcome::Trusted, "{v:#?}");
    assert_eq!(v.verified_digests, vec![D_REKOR.to_string()]);
    assert_eq!(
        (v.scope.as_str(), v.mode, v.threshold),
        ("192.168.64.2:5000/cosign-signed/**", Mode::Enforce, 1)
    );
    assert_eq!(v.satisfied, vec!["release-key".to_string()]);
    assert!(v.allows());
    assert_eq!(v.exit_code(), 0);
    let text = v.to_string();
    assert!(
        text.starts_with("TRUSTED: 192.168.64.2:5000/cosign-signed/key-1@sha256:0489"),
        "{text}"
    );
    assert!(text.contains("ok   legacy:0 (release-key)"), "{text}");
    // The same signature without its Rekor bundle does not meet `tlog = true`.
    let v = evaluate(
        &p,
        &img,
        D_REKOR,
        &[src(
            "legacy:0",
            D_REKOR,
            legacy("legacy-key/cimage-cosign-key-rekor", "", false),
        )],
    );
    assert_eq!(v.outcome, Outcome::Untrusted);
    assert_eq!(v.reasons[0].kind, Some(FailureKind::TlogMissing));
    assert!(!v.allows());
    assert_eq!(v.exit_code(), 1);
    assert!(
        v.to_string()
            .contains("FAIL legacy:0 (release-key): [tlog-missing]"),
        "{v}"
    );
}

fn two_key_policy(threshold: usize) -> Policy {
    let trust = tv().join("trust/containers-image");
    let text = format!(
        "version = 1\n[default]\nrequire = \"signatures\"\nthreshold = {threshold}\n[[default.keys]]\nname = \"one\"\npath = \"{}\"\n[[default.keys]]\nname = \"two\"\npath = \"{}\"\n",
        trust.join("cosign.pub").display(),
        trust.join("cosign2.pub").display()
    );
    imagegate::policy::file::parse(Path::new("/policy/two-keys.toml"), &text).unwrap()
}

#[test]
fn threshold_counts_distinct_authorities_and_reasons_cover_each_signature() {
    let img = ImageRef::parse("192.168.64.2:5000/cosign-signed-single-sample").unwrap();
    let sigs = [
        src(
            "legacy:0",
            D_SAMPLE,
            legacy("negative/cimage-mixed", "sig1.", false),
        ),
        src(
            "legacy:1",
            D_SAMPLE,
            legacy("negative/cimage-mixed", "sig2.", false),
        ),
    ];
    let v = evaluate(&two_key_policy(1), &img, D_SAMPLE, &sigs);
    assert_eq!(v.outcome, Outcome::Trusted);
    assert_eq!(v.satisfied, vec!["one".to_string()]);
    // 2 signatures x 2 authorities, each recorded; exactly one acceptance.
    assert_eq!(v.reasons.len(), 4);
    assert_eq!(v.reasons.iter().filter(|r| r.accepted).count(), 1);
    let v = evaluate(&two_key_policy(2), &img, D_SAMPLE, &sigs);
    assert_eq!(v.outcome, Outcome::Untrusted);
    assert!(v.reasons.last().unwrap().detail.contains("1 of 2"));
}

#[test]
fn missing_signatures_deny_in_enforce_and_report_in_audit() {
    let p = example();
    let img = ImageRef::parse("ghcr.io/kubewarden/kubewarden-controller:v1.34.0").unwrap();
    let v = evaluate(&p, &img, D_SAMPLE, &[]);
    assert_eq!((v.outcome, v.allows()), (Outcome::Untrusted, false));
    assert_eq!(v.reasons[0].detail, "no signatures found");
    let img = ImageRef::parse("mirror.example.com/library/busybox").unwrap();
    let v = evaluate(&p, &img, D_SAMPLE, &[]);
    assert_eq!(
        (v.outcome, v.mode, v.allows()),
        (Outcome::Untrusted, Mode::Audit, true)
    );
    let v = evaluate(&p, &ImageRef::parse("quay.io/x/y").unwrap(), D_SAMPLE, &[]);
    assert_eq!(
        (v.outcome, v.scope.as_str()),
        (Outcome::Untrusted, "default")
    );
}

#[test]
fn unusable_artifacts_are_reasons_not_crashes() {
    let img = ImageRef::parse("192.168.64.2:5000/cosign-signed-single-sample").unwrap();
    let junk = SignatureSource {
        label: "referrer:x".into(),
        signed_digest: D_SAMPLE.into(),
        candidate: Candidate::Bundle(b"{not json".to_vec()),
    };
    let v = evaluate(&two_key_policy(1), &img, D_SAMPLE, &[junk]);
    assert_eq!(v.outcome, Outcome::Untrusted);
    assert!(v
        .reasons
        .iter()
        .all(|r| r.kind == Some(FailureKind::BundleFormat) || r.authority.is_none()));
}

fn key(hash: &str) -> VerdictKey {
    VerdictKey {
        policy_hash: hash.into(),
        repository: "192.168.64.2:5000/cosign-signed-single-sample".into(),
        digest: D_SAMPLE.into(),
    }
}

fn trusted_verdict() -> imagegate::verdict::Verdict {
    let img = ImageRef::parse("192.168.64.2:5000/cosign-signed-single-sample").unwrap();
    evaluate(
        &two_key_policy(1),
        &img,
        D_SAMPLE,
        &[src(
            "legacy:1",
            D_SAMPLE,
            legacy("negative/cimage-mixed", "sig2.", false),
        )],
    )
}

#[test]
fn verdicts_survive_reopening_the_store_and_failures_expire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verdicts.redb");
    let v = trusted_verdict();
    assert_eq!(v.outcome, Outcome::Trusted);
    {
        let store = VerdictStore::open(&path).unwrap();
        store.put(&key("p1"), &v).unwrap();
    }
    let store = VerdictStore::open(&path).unwrap();
    assert_eq!(
        store.get(&key("p1"), v.decided_at + 86_400).unwrap(),
        Some(v.clone()),
        "trusted verdicts do not expire"
    );
    assert_eq!(
        store.get(&key("p2"), v.decided_at).unwrap(),
        None,
        "another policy hash is a miss"
    );
    let mut failed = v.clone();
    failed.outcome = Outcome::Untrusted;
    store.put(&key("p3"), &failed).unwrap();
    assert!(store
        .get(&key("p3"), failed.decided_at + 1)
        .unwrap()
        .is_some());
    assert!(
        store
            .get(&key("p3"), failed.decided_at + 3600)
            .unwrap()
            .is_none(),
        "failures are cached briefly"
    );
    assert_eq!(store.prune("p1", v.decided_at + 3600).unwrap(), 1);
    assert!(store.get(&key("p1"), v.decided_at).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_digest_verify_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(VerdictCache::new(Some(
        VerdictStore::open(&dir.path().join("v.redb")).unwrap(),
    )));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_verify(key("p"), || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    trusted_verdict()
                })
                .await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    // Warm: served from the cache without verifying again.
    let again = cache
        .get_or_verify(key("p"), || async { panic!("must not verify again") })
        .await;
    assert_eq!(again, results[0]);
    // And from disk after a restart.
    drop(cache);
    let cache = VerdictCache::new(Some(
        VerdictStore::open(&dir.path().join("v.redb")).unwrap(),
    ));
    assert_eq!(cache.lookup(&key("p")), Some(results[0].clone()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_policy_change_forgets_the_verdicts_of_other_policies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.redb");
    let cache = VerdictCache::new(Some(VerdictStore::open(&path).unwrap()));
    for policy in ["old", "new"] {
        let verdict = cache
            .get_or_verify(key(policy), || async { trusted_verdict() })
            .await;
        assert_eq!(verdict.outcome, Outcome::Trusted);
    }
    assert_eq!(cache.keep_only_policy("new").await, 1);
    assert_eq!(cache.lookup(&key("old")), None, "gone from memory and disk");
    assert!(
        cache.lookup(&key("new")).is_some(),
        "the policy in force keeps its own"
    );
    drop(cache);
    let store = VerdictStore::open(&path).unwrap();
    let later = trusted_verdict().decided_at + 1;
    assert!(store.get(&key("old"), later).unwrap().is_none());
    assert!(store.get(&key("new"), later).unwrap().is_some());
}

/// A corrupt or truncated `verdicts.redb` at start: `open` fails with a clear error (before,
/// the daemon could not start at all); `open_or_set_aside` moves it aside and starts empty, so
/// no verdict (trusted or not) comes from the unreadable file. A database another process holds
/// is not corruption and is not set aside.
#[test]
fn a_corrupt_or_truncated_store_is_set_aside_and_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let v = trusted_verdict();
    // A real store with a trusted verdict, then truncated to half; and one of garbage.
    let real = dir.path().join("truncated.redb");
    {
        let store = VerdictStore::open(&real).unwrap();
        store.put(&key("p1"), &v).unwrap();
    }
    let len = std::fs::metadata(&real).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&real)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0x5a_u8; 64 * 1024]).unwrap();
    for path in [&real, &garbage] {
        let error = VerdictStore::open(path)
            .err()
            .expect("a corrupt file does not open");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "the error names the file: {error}"
        );
        let (store, aside) = VerdictStore::open_or_set_aside(path).unwrap();
        let aside = aside.expect("set aside");
        assert!(aside.exists(), "{}", aside.display());
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains(".corrupt-"));
        assert_eq!(
            store.get(&key("p1"), v.decided_at).unwrap(),
            None,
            "nothing comes from the unreadable file"
        );
    }
    // Held open by another handle: refused as in use, not set aside.
    let held = dir.path().join("held.redb");
    let _holder = VerdictStore::open(&held).unwrap();
    let error = VerdictStore::open_or_set_aside(&held)
        .err()
        .expect("in use");
    assert!(error.to_string().contains("in use"), "{error}");
    assert!(held.exists());
}
