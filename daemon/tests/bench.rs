//! Verification costs, run by `cargo xtask bench` (`--only verify` runs this alone):
//! `cargo test --release -p imagegate --test bench -- --ignored --exact verification_costs --nocapture`.
//!
//! A real registry (Debian's `docker-registry` on 127.0.0.1) holds an image signed by testkit's
//! cosign legacy signer (key-based), the keyless bundle image of tests/fixtures/generated, and 200
//! more key-signed images. The baseline is `imagegate verify` of the same image (a process, no
//! verdict cache), measured in the same run, interleaved round by round with the in-process
//! figures, so every figure is also given as a ratio to it:
//!
//! - cold: `discover::verify_image` with no cache (registry round trips included), and the
//!   signature check alone (`verify_legacy` / `verify_bundle`, the CPU excluding network);
//! - warm: `discover::verify_digest` answered from the verdict cache (and the bare lookup);
//! - 200 distinct images verified concurrently: all trusted, wall time, peak RSS growth.
//!
//! Figures only: nothing here asserts a time (the machine is shared); correctness is asserted
//! (every verdict trusted).

#![allow(clippy::unwrap_used)] // a benchmark: a panic is a failure with its message

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use imagegate::discover::{verify_digest, verify_image, DiscoveryConfig, RegistryClient};
use imagegate::oci::host_platform;
use imagegate::policy::{Policy, Requirement};
use imagegate::verdict::{Outcome, VerdictCache, VerdictKey, VerdictStore};
use imagegate::verify::{
    payload::SIMPLE_SIGNING_MEDIA_TYPE, verify_bundle, verify_legacy, Authority, BundleExpectation,
    Expectation, ImageRef, LegacySignature,
};
use imagegate_testkit::{
    image::{image, layer, File},
    registry::{Client, LocalRegistry, REGISTRY_BIN},
    sign::{sign_legacy, Key},
};
use serde_json::Value;

/// Images verified concurrently.
const CONCURRENT: usize = 200;

fn gen_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/generated")
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU seconds (user + system) of this process (`RUSAGE_SELF`) or its waited-for children.
fn cpu_seconds(who: libc::c_int) -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: usage is valid for writes; getrusage fills it.
    unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
    // SAFETY: zero-initialised and filled by getrusage.
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
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

/// `VmRSS` or `VmHWM` of this process, in KiB.
fn memory_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

/// Pushes every blob and manifest of the generated registry fixture (gen.py), byte for byte.
fn push_generated(client: &Client) {
    let pushes: Vec<Value> =
        serde_json::from_slice(&std::fs::read(gen_dir().join("registry/pushes.json")).unwrap())
            .unwrap();
    for p in pushes {
        let repo = p["repo"].as_str().unwrap();
        let digest = p["digest"].as_str().unwrap();
        let data = std::fs::read(gen_dir().join("registry/blobs").join(&digest[7..])).unwrap();
        if p["kind"] == "blob" {
            client.push_blob(repo, &data).unwrap();
        } else {
            client
                .push_manifest(
                    repo,
                    p["reference"].as_str().unwrap(),
                    p["media_type"].as_str().unwrap(),
                    &data,
                )
                .unwrap();
        }
    }
}

/// Pushes a one-layer image whose file holds `seed`, signs it, and returns its digest.
fn push_signed(client: &Client, key: &Key, addr: &str, repo: &str, seed: &str) -> String {
    let layer = layer(&[File::new(
        "bin/app",
        format!("#!/bin/sh\n# {seed}\n"),
        0o755,
    )])
    .unwrap();
    let img = image(vec![layer], &["/bin/app"]);
    let digest = client.push_image(repo, "v1", &img).unwrap();
    sign_legacy(client, key, addr, repo, &digest).unwrap();
    digest
}

struct Setup {
    _dir: tempfile::TempDir,
    registry: LocalRegistry,
    policy_path: PathBuf,
    policy: Arc<Policy>,
    keyed: String,
    keyed_digest: String,
    keyed_signature: LegacySignature,
    keyless: String,
    many: Vec<String>,
}

fn setup() -> Setup {
    assert!(
        Path::new(REGISTRY_BIN).exists(),
        "{REGISTRY_BIN} is missing: cargo xtask setup installs docker-registry"
    );
    let dir = tempfile::tempdir().unwrap();
    let registry = LocalRegistry::start(&dir.path().join("registry")).unwrap();
    let addr = registry.addr.clone();
    let client = Client::new(&addr).unwrap();
    push_generated(&client);
    let key = Key::generate().unwrap();
    let keyed_digest = push_signed(&client, &key, &addr, "bench/keyed", "keyed");
    let payload = imagegate_testkit::sign::payload(&format!("{addr}/bench/keyed"), &keyed_digest);
    let keyed_signature = LegacySignature {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
        signature_b64: key.sign_b64(&payload),
        payload,
        ..Default::default()
    };
    let many: Vec<String> = (0..CONCURRENT)
        .map(|i| {
            let repo = format!("bench/many{i}");
            push_signed(&client, &key, &addr, &repo, &repo);
            format!("{addr}/{repo}:v1")
        })
        .collect();
    let key_path = dir.path().join("release.pub");
    std::fs::write(&key_path, key.public_pem().unwrap()).unwrap();
    let images: Value =
        serde_json::from_slice(&std::fs::read(gen_dir().join("registry/images.json")).unwrap())
            .unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(
        &policy_path,
        format!(
            r#"version = 1
[trust.test]
trusted_root = "{root}"
[default]
require = "reject"
[[scope]]
match = "{addr}/bench/**"
require = "signatures"
[[scope.keys]]
name = "release-key"
path = "{key}"
[[scope]]
match = "{addr}/app/**"
require = "signatures"
[[scope.keyless]]
name = "ci-identity"
trust = "test"
issuer = "https://issuer.imagegate.test"
subject = "dev@imagegate.test"
"#,
            root = gen_dir().join("trust/trusted_root.json").display(),
            key = key_path.display(),
        ),
    )
    .unwrap();
    let policy = Arc::new(Policy::load(&policy_path).unwrap());
    Setup {
        keyed: format!("{addr}/bench/keyed:v1"),
        keyless: format!(
            "{addr}/{}:{}",
            images["bundle"]["repo"].as_str().unwrap(),
            images["bundle"]["tag"].as_str().unwrap()
        ),
        _dir: dir,
        registry,
        policy_path,
        policy,
        keyed_digest,
        keyed_signature,
        many,
    }
}

fn client(addr: &str) -> RegistryClient {
    RegistryClient::new(DiscoveryConfig {
        insecure_registries: vec![addr.to_owned()],
        ..DiscoveryConfig::default()
    })
    .unwrap()
}

/// The first authority of the rule for `reference`.
fn authority(policy: &Policy, reference: &str) -> Authority {
    match &policy
        .rule_for(&ImageRef::parse(reference).unwrap())
        .requirement
    {
        Requirement::Signatures { authorities, .. } => authorities[0].clone(),
        other => panic!("{reference}: {other:?}"),
    }
}

/// One `imagegate verify` process: (wall seconds, child CPU seconds).
fn cli_verify(setup: &Setup, reference: &str) -> (f64, f64) {
    let cpu = cpu_seconds(libc::RUSAGE_CHILDREN);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .args(["verify", "--policy"])
        .arg(&setup.policy_path)
        .args(["--insecure-registry", &setup.registry.addr, reference])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let wall = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "imagegate verify {reference}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    (wall, cpu_seconds(libc::RUSAGE_CHILDREN) - cpu)
}

/// `count` cold in-process verifications: (wall seconds, CPU seconds) per image.
fn cold(
    rt: &tokio::runtime::Runtime,
    client: &RegistryClient,
    policy: &Policy,
    reference: &str,
    count: usize,
) -> (f64, f64) {
    let cpu = cpu_seconds(libc::RUSAGE_SELF);
    let started = Instant::now();
    for _ in 0..count {
        let verdict = rt.block_on(verify_image(
            client,
            policy,
            None,
            reference,
            &host_platform(),
        ));
        assert_eq!(verdict.outcome, Outcome::Trusted, "{reference}: {verdict}");
    }
    (
        started.elapsed().as_secs_f64() / count as f64,
        (cpu_seconds(libc::RUSAGE_SELF) - cpu) / count as f64,
    )
}

/// Median (wall, thread CPU) seconds of `f` over `count` calls.
fn timed(count: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let (started, cpu_before) = (Instant::now(), thread_cpu_seconds());
        f();
        wall.push(started.elapsed().as_secs_f64());
        cpu.push(thread_cpu_seconds() - cpu_before);
    }
    (median(wall), median(cpu))
}

fn us(seconds: f64) -> String {
    if seconds < 10e-6 {
        format!("{:.2} us", seconds * 1e6)
    } else if seconds < 10e-3 {
        format!("{:.0} us", seconds * 1e6)
    } else {
        format!("{:.1} ms", seconds * 1e3)
    }
}

#[test]
#[ignore = "benchmark: cargo xtask bench --only verify"]
fn verification_costs() {
    let rounds = env_or("IMAGEGATE_BENCH_VERIFY_ROUNDS", 10);
    let per_round = env_or("IMAGEGATE_BENCH_VERIFY_PER_ROUND", 5);
    let setup = setup();
    let addr = setup.registry.addr.clone();
    let client = Arc::new(client(&addr));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Baseline and cold figures, interleaved round by round.
    let (mut base_k, mut base_k_cpu, mut base_l, mut base_l_cpu) = (vec![], vec![], vec![], vec![]);
    let (mut cold_k, mut cold_k_cpu, mut cold_l, mut cold_l_cpu) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (wall, cpu) = cli_verify(&setup, &setup.keyed);
        base_k.push(wall);
        base_k_cpu.push(cpu);
        let (wall, cpu) = cli_verify(&setup, &setup.keyless);
        base_l.push(wall);
        base_l_cpu.push(cpu);
        let (wall, cpu) = cold(&rt, &client, &setup.policy, &setup.keyed, per_round);
        cold_k.push(wall);
        cold_k_cpu.push(cpu);
        let (wall, cpu) = cold(&rt, &client, &setup.policy, &setup.keyless, per_round);
        cold_l.push(wall);
        cold_l_cpu.push(cpu);
    }
    let (base_k, base_l) = (median(base_k), median(base_l));

    // The signature checks alone: CPU excluding network.
    let keyed_auth = authority(&setup.policy, &setup.keyed);
    let want = Expectation {
        digest: &setup.keyed_digest,
        image: None,
    };
    let check_k = timed(300, || {
        verify_legacy(&setup.keyed_signature, &keyed_auth, &want).unwrap();
    });
    let keyless_auth = authority(&setup.policy, &setup.keyless);
    let bundles = gen_dir().join("bundles");
    let cases: Value =
        serde_json::from_slice(&std::fs::read(bundles.join("expected.json")).unwrap()).unwrap();
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dsse-keyless")
        .unwrap();
    let bundle = std::fs::read(bundles.join(case["bundle"].as_str().unwrap())).unwrap();
    let bundle_want = BundleExpectation {
        digest: case["expected_digest"].as_str().unwrap(),
        predicate_type: None,
    };
    let check_l = timed(100, || {
        verify_bundle(&bundle, &keyless_auth, &bundle_want).unwrap();
    });

    // Warm: the daemon's path (verify_digest with the persistent cache), then the bare lookup.
    let store_dir = tempfile::tempdir().unwrap();
    let cache = VerdictCache::new(Some(
        VerdictStore::open(&store_dir.path().join("verdicts.redb")).unwrap(),
    ));
    let image = ImageRef::parse(&setup.keyed).unwrap();
    let first = rt.block_on(verify_digest(
        &client,
        &setup.policy,
        Some(&cache),
        &image,
        &setup.keyed_digest,
        None,
    ));
    assert_eq!(first.outcome, Outcome::Trusted, "{first}");
    let warm_count = 20_000;
    let (started, cpu_before) = (Instant::now(), thread_cpu_seconds());
    for _ in 0..warm_count {
        let v = rt.block_on(verify_digest(
            &client,
            &setup.policy,
            Some(&cache),
            &image,
            &setup.keyed_digest,
            None,
        ));
        assert_eq!(v.outcome, Outcome::Trusted);
    }
    let warm = started.elapsed().as_secs_f64() / f64::from(warm_count);
    let warm_cpu = (thread_cpu_seconds() - cpu_before) / f64::from(warm_count);
    let key = VerdictKey {
        policy_hash: setup.policy.hash.clone(),
        repository: image.name(),
        digest: setup.keyed_digest.clone(),
    };
    let cpu_before = thread_cpu_seconds();
    for _ in 0..100_000 {
        assert!(cache.lookup(&key).is_some());
    }
    let lookup = (thread_cpu_seconds() - cpu_before) / 100_000.0;

    // 200 distinct images at once, on a multi-threaded runtime as the daemon runs, with a client
    // of its own: a pooled connection belongs to the runtime that opened it, and the first
    // runtime is not being driven any more.
    let multi = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = Arc::new(self::client(&addr));
    let rss_before = memory_kib("VmRSS");
    // Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let started = Instant::now();
    let outcomes = multi.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for reference in setup.many.clone() {
            let (client, policy) = (Arc::clone(&client), Arc::clone(&setup.policy));
            set.spawn(async move {
                verify_image(&client, &policy, None, &reference, &host_platform()).await
            });
        }
        let mut outcomes = Vec::new();
        while let Some(verdict) = set.join_next().await {
            outcomes.push(verdict.unwrap());
        }
        outcomes
    });
    let concurrent = started.elapsed().as_secs_f64();
    let peak = memory_kib("VmHWM");
    let not_trusted: Vec<String> = outcomes
        .iter()
        .filter(|v| v.outcome != Outcome::Trusted)
        .map(ToString::to_string)
        .collect();

    let ratio = |value: f64, base: f64| value / base;
    println!();
    println!(
        "bench verify: registry on {addr}, {rounds} rounds x ({per_round} in-process + 1 `imagegate verify`) per image kind, interleaved"
    );
    println!(
        "bench verify baseline `imagegate verify` (process, no cache): key-based {} (child CPU {}), keyless {} (child CPU {})",
        us(base_k),
        us(median(base_k_cpu)),
        us(base_l),
        us(median(base_l_cpu))
    );
    let (cold_k, cold_l) = (median(cold_k), median(cold_l));
    println!(
        "bench verify cold key-based: {} per image, CPU {} (ratio to baseline {:.3})",
        us(cold_k),
        us(median(cold_k_cpu)),
        ratio(cold_k, base_k)
    );
    println!(
        "bench verify cold keyless: {} per image, CPU {} (ratio to baseline {:.3})",
        us(cold_l),
        us(median(cold_l_cpu)),
        ratio(cold_l, base_l)
    );
    println!(
        "bench verify signature check alone (no network), thread CPU: key-based {} (target < 2 ms; ratio {:.4}), keyless bundle {} (ratio {:.4}); wall {} and {}",
        us(check_k.1),
        ratio(check_k.1, base_k),
        us(check_l.1),
        ratio(check_l.1, base_l),
        us(check_k.0),
        us(check_l.0)
    );
    println!(
        "bench verify warm (cached verdict via verify_digest): {} per image, thread CPU {} (target < 10 us; ratio {:.6}); bare cache lookup CPU {}",
        us(warm),
        us(warm_cpu),
        ratio(warm, base_k),
        us(lookup)
    );
    println!(
        "bench verify {CONCURRENT} distinct images concurrently: {} not trusted, {:.2} s in all, {} per image (ratio {:.3}), peak RSS +{:.1} MiB (from {:.1} MiB)",
        not_trusted.len(),
        concurrent,
        us(concurrent / CONCURRENT as f64),
        ratio(concurrent / CONCURRENT as f64, base_k),
        peak.saturating_sub(rss_before) as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench verify load average: {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    drop(multi);
    assert_eq!(outcomes.len(), CONCURRENT);
    assert!(
        not_trusted.is_empty(),
        "{} of {CONCURRENT} concurrent verifications were not trusted: {}",
        not_trusted.len(),
        not_trusted.join("\n")
    );
}
