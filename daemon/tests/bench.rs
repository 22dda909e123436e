//! Cost figures against the issue's targets (key-based verification under 2 ms of CPU per image,
//! warm verdict lookup under 10 µs). Ignored by default because debug builds are not
//! representative: `AYA_BUILD_SKIP=1 cargo test -p imagegate --release --test bench -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use imagegate::verdict::{Outcome, Verdict, VerdictCache, VerdictKey};
use imagegate::verify::{
    payload::SIMPLE_SIGNING_MEDIA_TYPE, Authority, Expectation, LegacySignature, PublicKey,
    SignedIdentity, Signer, TrustedKey,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore]
fn bench_key_based_verification_and_warm_lookup() {
    let base = common::roots()[0].join("legacy-key/cimage-cosign-key");
    let key = PublicKey::from_pem(
        &std::fs::read_to_string(common::roots()[0].join("trust/containers-image/cosign.pub"))
            .unwrap(),
    )
    .unwrap();
    let auth = Authority {
        name: "k".into(),
        signer: Signer::Keys(vec![TrustedKey::new(key)]),
        trust: Arc::default(),
        require_tlog: false,
        signed_identity: SignedIdentity::Any,
    };
    let sig = LegacySignature {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
        payload: std::fs::read(base.join("payload.json")).unwrap(),
        signature_b64: std::fs::read_to_string(base.join("signature.b64")).unwrap(),
        ..Default::default()
    };
    let want = Expectation {
        digest: "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00",
        image: None,
    };
    let mut t = Vec::new();
    for _ in 0..300 {
        let s = Instant::now();
        imagegate::verify::verify_legacy(&sig, &auth, &want).unwrap();
        t.push(s.elapsed());
    }
    let key_based = median(t);

    let (dir, case) = common::case_value("bundle-v03/sigstore-rs-kubewarden-controller", "valid");
    let mut t = Vec::new();
    for _ in 0..50 {
        let s = Instant::now();
        common::run_value(&dir, &case).unwrap();
        t.push(s.elapsed());
    }
    let keyless_bundle = median(t);

    let cache = VerdictCache::new(None);
    let key = VerdictKey {
        policy_hash: "p".into(),
        repository: "r".into(),
        digest: want.digest.into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let verdict = Verdict::error(
        "r",
        want.digest,
        "default",
        Default::default(),
        "p",
        None,
        String::new(),
    );
    let verdict = Verdict {
        outcome: Outcome::Trusted,
        ..verdict
    };
    rt.block_on(cache.get_or_verify(key.clone(), || async { verdict.clone() }));
    let s = Instant::now();
    for _ in 0..100_000 {
        assert!(cache.lookup(&key).is_some());
    }
    let warm = s.elapsed() / 100_000;
    println!("key-based legacy verification: {key_based:?} (median of 300)");
    println!("keyless bundle v0.3 verification incl. trust-root parse, chain, SCT, SET, proof: {keyless_bundle:?} (median of 50)");
    println!("warm verdict lookup: {warm:?} (mean of 100000)");
    assert!(
        key_based < Duration::from_millis(2),
        "key-based verification {key_based:?} over 2 ms"
    );
    assert!(
        warm < Duration::from_micros(10),
        "warm lookup {warm:?} over 10 µs"
    );
}
