//! Signature discovery against a real registry: Debian's `docker-registry` (distribution 2.8,
//! no referrers API) started on a free 127.0.0.1 port, holding images and signatures made by
//! tests/fixtures/generated/gen.py in the legacy `.sig` tag, the referrers-tag fallback (with
//! GHCR-style `application/vnd.oci.empty.v1+json` entries and an SBOM next to the bundle) and on
//! a multi-arch index. Plus unreachable and hanging registries. Network: 127.0.0.1 only.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imagegate::discover::{verify_digest, verify_image, DiscoveryConfig, RegistryClient};
use imagegate::oci::{platform, Platform};
use imagegate::policy::{file, Policy};
use imagegate::verdict::{Outcome, Verdict, VerdictCache, VerdictStore};
use imagegate::verify::{FailureKind, ImageRef};
use serde_json::Value;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

fn gen_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/generated")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A docker-registry process on 127.0.0.1, stopped (by its pid) when dropped.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_registry() -> Option<Registry> {
    if !Path::new(REGISTRY_BIN).exists() {
        assert!(
            std::env::var_os("IMAGEGATE_REQUIRE_REGISTRY").is_none(),
            "IMAGEGATE_REQUIRE_REGISTRY is set but {REGISTRY_BIN} is missing (apt-get install docker-registry)"
        );
        eprintln!("SKIPPED: {REGISTRY_BIN} not installed (apt-get install docker-registry)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(REGISTRY_BIN)
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg = Registry {
        child,
        addr,
        _dir: dir,
    };
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("http://{}/v2/", reg.addr)).send().await {
            if r.status().is_success() {
                return Some(reg);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("docker-registry did not start on {}", reg.addr);
}

/// Push every blob and manifest of the generated registry fixture, byte for byte.
async fn push_all(addr: &str) {
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let pushes: Vec<Value> =
        serde_json::from_slice(&std::fs::read(gen_dir().join("registry/pushes.json")).unwrap())
            .unwrap();
    for p in pushes {
        let repo = p["repo"].as_str().unwrap();
        let digest = p["digest"].as_str().unwrap();
        let data = std::fs::read(gen_dir().join("registry/blobs").join(&digest[7..])).unwrap();
        if p["kind"] == "blob" {
            let r = http
                .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202, "start upload");
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            let loc = if loc.starts_with("http") {
                loc
            } else {
                format!("{base}{loc}")
            };
            let sep = if loc.contains('?') { '&' } else { '?' };
            let r = http
                .put(format!("{loc}{sep}digest={digest}"))
                .body(data)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201, "blob {digest}");
        } else {
            let r = http
                .put(format!(
                    "{base}/v2/{repo}/manifests/{}",
                    p["reference"].as_str().unwrap()
                ))
                .header("content-type", p["media_type"].as_str().unwrap())
                .body(data)
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status().as_u16(),
                201,
                "manifest {digest}: {}",
                r.text().await.unwrap_or_default()
            );
        }
    }
}

fn policy(addr: &str) -> Policy {
    let g = gen_dir();
    let text = format!(
        r#"version = 1
[trust.test]
trusted_root = "{tr}"
[default]
require = "reject"
[[scope]]
match = "{addr}/app/**"
require = "signatures"
[[scope.keys]]
name = "release-key"
path = "{key}"
[[scope.keyless]]
name = "ci-identity"
trust = "test"
issuer = "https://issuer.imagegate.test"
subject = "dev@imagegate.test"
[[scope]]
match = "{addr}/open/**"
require = "accept"
[[scope]]
match = "{addr}/app/elsewhere"
require = "signatures"
signature_repository = "{addr}/sigs/store"
[[scope.keys]]
path = "{key}"
"#,
        tr = g.join("trust/trusted_root.json").display(),
        key = g.join("registry/key.pub").display(),
    );
    file::parse(Path::new("/registry-test/policy.toml"), &text).unwrap()
}

fn policy_without_elsewhere(addr: &str) -> Policy {
    let g = gen_dir();
    let text = format!(
        "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"{addr}/app/**\"\nrequire = \"signatures\"\n[[scope.keys]]\npath = \"{}\"\n",
        g.join("registry/key.pub").display()
    );
    file::parse(Path::new("/registry-test/policy2.toml"), &text).unwrap()
}

fn client(addr: &str, f: impl FnOnce(&mut DiscoveryConfig)) -> RegistryClient {
    let mut cfg = DiscoveryConfig {
        insecure_registries: vec![addr.to_string()],
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    f(&mut cfg);
    RegistryClient::new(cfg).unwrap()
}

fn images() -> Value {
    serde_json::from_slice(&std::fs::read(gen_dir().join("registry/images.json")).unwrap()).unwrap()
}

fn amd64() -> Platform {
    platform("linux", "amd64", None)
}

fn show(v: &Verdict) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_discovery_end_to_end() {
    let Some(reg) = start_registry().await else {
        return;
    };
    push_all(&reg.addr).await;
    let addr = reg.addr.clone();
    let p = policy(&addr);
    let c = client(&addr, |_| {});
    let im = images();
    let r = |name: &str| {
        format!(
            "{addr}/{}:{}",
            im[name]["repo"].as_str().unwrap(),
            im[name]["tag"].as_str().unwrap()
        )
    };
    let digest = |name: &str| im[name]["digest"].as_str().unwrap().to_string();

    // Legacy `.sig` tag, key-based.
    let v = verify_image(&c, &p, None, &r("legacy"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Trusted, "{}", show(&v));
    assert_eq!(
        (v.digest.clone(), v.verified_digests.clone()),
        (digest("legacy"), vec![digest("legacy")])
    );
    assert_eq!(v.satisfied, vec!["release-key".to_string()]);
    assert!(v
        .reasons
        .iter()
        .any(|x| x.accepted && x.signature.starts_with("legacy:")));

    // Bundle v0.3 behind the referrers-tag fallback, entries typed as the empty config.
    let v = verify_image(&c, &p, None, &r("bundle"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Trusted, "{}", show(&v));
    assert_eq!(v.satisfied, vec!["ci-identity".to_string()]);
    assert!(v
        .reasons
        .iter()
        .any(|x| x.accepted && x.signature.starts_with("referrers-tag:")));
    // The SBOM next to it is reported, not mistaken for a signature.
    assert!(v
        .reasons
        .iter()
        .any(|x| x.kind == Some(FailureKind::MediaType) && x.detail.contains("spdx")));

    // No signatures anywhere.
    let v = verify_image(&c, &p, None, &r("unsigned"), &amd64()).await;
    assert_eq!(
        (v.outcome, v.allows()),
        (Outcome::Untrusted, false),
        "{}",
        show(&v)
    );
    assert!(v.reasons.iter().any(|x| x.detail == "no signatures found"));

    // Signed, but by a key the policy does not trust.
    let v = verify_image(&c, &p, None, &r("wrong-key"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Untrusted, "{}", show(&v));
    assert!(v
        .reasons
        .iter()
        .any(|x| x.kind == Some(FailureKind::Signature)));

    // Multi-arch: only the index is signed. Accepted (configurable), recording the index digest.
    let v = verify_image(&c, &p, None, &r("multi"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Trusted, "{}", show(&v));
    assert_eq!(v.digest, digest("multi"));
    assert_eq!(
        v.verified_digests,
        vec![im["multi"]["index_digest"].as_str().unwrap().to_string()]
    );
    let strict = client(&addr, |c| c.accept_index_signatures = false);
    let v = verify_image(&strict, &p, None, &r("multi"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Untrusted, "{}", show(&v));
    let arm = platform("linux", "arm64", None);
    let v = verify_image(&c, &p, None, &r("multi"), &arm).await;
    assert_eq!(v.digest, im["multi"]["arm64_digest"].as_str().unwrap());
    let riscv = platform("linux", "riscv64", None);
    let v = verify_image(&c, &p, None, &r("multi"), &riscv).await;
    assert_eq!(v.outcome, Outcome::Error, "{}", show(&v));

    // Per scope, whose signatures count for an image reached through an index (issue 12):
    // `platform` refuses the index-only signature, `index` takes it; a single-arch image is not
    // reached through an index and keeps its own manifest's signatures under `index`.
    let with = |setting: &str| {
        let text = format!(
            "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"{addr}/app/**\"\nrequire = \"signatures\"\nsigned_manifest = \"{setting}\"\n[[scope.keys]]\npath = \"{}\"\n",
            gen_dir().join("registry/key.pub").display()
        );
        file::parse(Path::new("/registry-test/multi.toml"), &text).unwrap()
    };
    let v = verify_image(&c, &with("platform"), None, &r("multi"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Untrusted, "{}", show(&v));
    let v = verify_image(&c, &with("index"), None, &r("multi"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Trusted, "{}", show(&v));
    let v = verify_image(&c, &with("either"), None, &r("multi"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Trusted, "{}", show(&v));
    let v = verify_image(&c, &with("index"), None, &r("legacy"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Trusted, "{}", show(&v));
    // The daemon path: with `index`, a platform manifest's own signatures do not count when it
    // came through an index (here one of another repository: nothing vouches).
    let multi_ref = ImageRef::parse(&r("legacy")).unwrap();
    let index_digest = im["multi"]["index_digest"].as_str().unwrap();
    let v = verify_digest(
        &c,
        &with("index"),
        None,
        &multi_ref,
        &digest("legacy"),
        Some(index_digest),
    )
    .await;
    assert_ne!(v.outcome, Outcome::Trusted, "{}", show(&v));
    let v = verify_digest(
        &c,
        &with("either"),
        None,
        &multi_ref,
        &digest("legacy"),
        Some(index_digest),
    )
    .await;
    assert_eq!(v.outcome, Outcome::Trusted, "{}", show(&v));

    // The daemon path: containerd names the platform manifest and its index. A wrong pairing
    // (an index that does not list the manifest) does not lend its signature.
    let multi = ImageRef::parse(&r("multi")).unwrap();
    let index = im["multi"]["index_digest"].as_str().unwrap();
    let v = verify_digest(&c, &p, None, &multi, &digest("multi"), Some(index)).await;
    assert_eq!(v.outcome, Outcome::Trusted, "{}", show(&v));
    let v = verify_digest(&c, &p, None, &multi, &digest("legacy"), Some(index)).await;
    assert_eq!(v.outcome, Outcome::Untrusted, "{}", show(&v));
    assert!(
        v.reasons.iter().any(|x| x.detail.contains("does not list")),
        "{}",
        show(&v)
    );

    // An oversized signature layer is refused with a reason, the rest still judged.
    let v = verify_image(&c, &p, None, &r("oversized"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Untrusted, "{}", show(&v));
    assert!(
        v.reasons
            .iter()
            .any(|x| x.kind == Some(FailureKind::Artifact) && x.detail.contains("limit")),
        "{}",
        show(&v)
    );

    // Signatures kept in another repository (cosign's COSIGN_REPOSITORY), set per scope.
    let v = verify_image(&c, &p, None, &r("elsewhere"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Trusted, "{}", show(&v));
    let v = verify_image(
        &c,
        &policy_without_elsewhere(&addr),
        None,
        &r("elsewhere"),
        &amd64(),
    )
    .await;
    assert_eq!(v.outcome, Outcome::Untrusted, "{}", show(&v));

    // Bounded requests per image.
    let tight = client(&addr, |c| c.max_requests = 2);
    let v = verify_image(&tight, &p, None, &r("bundle"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Error, "{}", show(&v));
    assert!(v.reasons.iter().any(|x| x.detail.contains("more than 2")));

    // Digest references, and a digest the registry serves under another content: refused.
    let by_digest = format!("{addr}/app/legacy@{}", digest("legacy"));
    assert_eq!(
        verify_image(&c, &p, None, &by_digest, &amd64())
            .await
            .outcome,
        Outcome::Trusted
    );
    let wrong = format!("{addr}/app/legacy@{}", digest("unsigned"));
    assert_eq!(
        verify_image(&c, &p, None, &wrong, &amd64()).await.outcome,
        Outcome::Error
    );

    // accept/reject scopes need no registry at all.
    assert_eq!(
        verify_image(&c, &p, None, &format!("{addr}/open/x:1"), &amd64())
            .await
            .outcome,
        Outcome::Trusted
    );
    assert_eq!(
        verify_image(&c, &p, None, "quay.io/x/y:1", &amd64())
            .await
            .outcome,
        Outcome::Untrusted
    );
    assert_eq!(
        verify_image(&c, &p, None, "Not A Reference", &amd64())
            .await
            .outcome,
        Outcome::Error
    );

    // A verdict reached before a registry outage survives it (and a daemon restart).
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("verdicts.redb");
    let image = ImageRef::parse(&r("legacy")).unwrap();
    {
        let cache = VerdictCache::new(Some(VerdictStore::open(&db).unwrap()));
        let v = verify_digest(&c, &p, Some(&cache), &image, &digest("legacy"), None).await;
        assert_eq!(v.outcome, Outcome::Trusted);
    }
    drop(reg);
    let cache = VerdictCache::new(Some(VerdictStore::open(&db).unwrap()));
    let v = verify_digest(&c, &p, Some(&cache), &image, &digest("legacy"), None).await;
    assert_eq!(v.outcome, Outcome::Trusted, "{}", show(&v));
    // ...while an image not verified before is an error (fail closed), not an allow.
    let other = ImageRef::parse(&r("unsigned")).unwrap();
    let v = verify_digest(&c, &p, Some(&cache), &other, &digest("unsigned"), None).await;
    assert_eq!(
        (v.outcome, v.allows()),
        (Outcome::Error, false),
        "{}",
        show(&v)
    );
}

#[tokio::test]
async fn unreachable_registry_gives_an_error_verdict() {
    let addr = format!("127.0.0.1:{}", free_port());
    let p = policy(&addr);
    let v = verify_image(
        &client(&addr, |_| {}),
        &p,
        None,
        &format!("{addr}/app/x:1"),
        &amd64(),
    )
    .await;
    assert_eq!(
        (v.outcome, v.allows()),
        (Outcome::Error, false),
        "{}",
        show(&v)
    );
}

#[tokio::test]
async fn hanging_registry_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock); // accept, never answer
        }
    });
    let p = policy(&addr);
    let c = client(&addr, |c| c.request_timeout = Duration::from_millis(500));
    let started = std::time::Instant::now();
    let v = verify_image(&c, &p, None, &format!("{addr}/app/x:1"), &amd64()).await;
    assert_eq!(v.outcome, Outcome::Error, "{}", show(&v));
    assert!(
        v.reasons.iter().any(|x| x.detail.contains("timed out")),
        "{}",
        show(&v)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    server.abort();
}

/// `imagegate verify` on the command line: exit 0 for a trusted image, 1 for an unsigned one and
/// one signed by a key the policy does not name; `--json` prints the verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_command_reports_verdicts_with_exit_codes() {
    let Some(reg) = start_registry().await else {
        return;
    };
    push_all(&reg.addr).await;
    let addr = reg.addr.clone();
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(
        &policy_path,
        format!(
            "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"{addr}/app/**\"\nrequire = \"signatures\"\n[[scope.keys]]\npath = \"{}\"\n",
            gen_dir().join("registry/key.pub").display()
        ),
    )
    .unwrap();
    let im = images();
    let reference = |name: &str| {
        format!(
            "{addr}/{}:{}",
            im[name]["repo"].as_str().unwrap(),
            im[name]["tag"].as_str().unwrap()
        )
    };
    let run = |name: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_imagegate"))
            .args([
                "verify",
                "--output",
                "json",
                "--insecure-registry",
                &addr,
                "--policy",
            ])
            .arg(&policy_path)
            .arg(reference(name))
            .output()
            .unwrap()
    };
    let signed = run("legacy");
    assert_eq!(signed.status.code(), Some(0), "{signed:?}");
    let verdict: Value = serde_json::from_slice(&signed.stdout).expect("JSON verdict");
    assert_eq!(verdict["digest"], im["legacy"]["digest"]);
    for name in ["unsigned", "wrong-key"] {
        let out = run(name);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
    }
}
