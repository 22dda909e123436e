//! The public-good trusted root through TUF (`imagegate::tuf`), against TUF repositories built
//! here with tough's repository editor (keys generated in the test) and served on 127.0.0.1 by
//! a small static file server, or read from a mirror directory with no network.
//!
//! `tuf_refresh_unchanged_cost` (ignored: a measurement, run by `cargo xtask bench --only
//! verify`) times a refresh of an unchanged repository:
//! `cargo test --release -p imagegate --test tuf -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imagegate::policy::Policy;
use imagegate::tuf::{PublicGood, TufError, TufSettings};
use imagegate::verdict::{evaluate, Outcome};
use imagegate::verify::public_good::TRUSTED_ROOT_JSON;
use imagegate::verify::{FailureKind, ImageRef};
use sha2::{Digest, Sha256};
use support::tuf_repo::{at, first_version, root, sign_root, Repo, TestKey};
use tough::schema::Root;

/// A static file server on 127.0.0.1 (GET only, one request per connection), stopped when
/// dropped; counts requests.
struct Server {
    url: String,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(dir: PathBuf) -> Server {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir = dir.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_owned();
                let file = (!path.contains("..")).then(|| dir.join(&path));
                let response = match file.and_then(|f| std::fs::read(f).ok()) {
                    Some(body) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Server {
        url,
        requests,
        task,
    }
}

fn settings(
    repository: &str,
    mirror_dir: Option<PathBuf>,
    cache: &Path,
    root: &[u8],
) -> TufSettings {
    TufSettings {
        repository: repository.to_owned(),
        mirror_dir,
        cache_dir: cache.to_path_buf(),
        bootstrap_root: root.to_vec(),
        timeout: Duration::from_secs(5),
    }
}

/// A second usable trusted root: the public-good one less its second transparency log.
fn trusted_root_v2() -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::from_slice(TRUSTED_ROOT_JSON).unwrap();
    json["tlogs"].as_array_mut().unwrap().truncate(1);
    serde_json::to_vec_pretty(&json).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Everything a repository needs for the tests: keys, the first root, version 1 published.
struct Fixture {
    _base: tempfile::TempDir,
    cache: PathBuf,
    repo: Repo,
    root_key: TestKey,
    online: TestKey,
    root1: Root,
    root1_signed: Vec<u8>,
    keys_dir: PathBuf,
}

async fn fixture() -> Fixture {
    let base = tempfile::tempdir().unwrap();
    let first = first_version(base.path(), TRUSTED_ROOT_JSON).await;
    Fixture {
        cache: base.path().join("state/tuf"),
        _base: base,
        repo: first.repo,
        root_key: first.root_key,
        online: first.online,
        root1: first.root1,
        root1_signed: first.root1_signed,
        keys_dir: first.keys_dir,
    }
}

/// Initial fetch over HTTP, then a key rotation (root v2 signed by the old and the new root
/// key, new online key) serving a new trusted root: accepted, and the rotated root persists
/// across a restart (the next client starts from the cached root, not the built-in one).
#[tokio::test]
async fn initial_fetch_then_key_rotation_is_accepted() {
    let f = fixture().await;
    let server = serve(f.repo.dir.clone()).await;
    let client = PublicGood::open(settings(&server.url, None, &f.cache, &f.root1_signed));
    assert!(matches!(
        client.current(),
        Err(TufError::Unavailable { .. })
    ));
    let state = client.refresh().await.expect("initial refresh");
    assert_eq!(state.sha256, sha256(TRUSTED_ROOT_JSON));
    assert_eq!((state.root_version, state.timestamp_version), (1, 1));
    assert_eq!(client.current().unwrap().tlogs.len(), 2);
    assert!(server.requests.load(std::sync::atomic::Ordering::SeqCst) >= 4);

    // Rotation: root key and online key both replaced.
    let root_key2 = TestKey::generate(&f.keys_dir, "root2");
    let online2 = TestKey::generate(&f.keys_dir, "online2");
    let root2 = root(2, &[&root_key2], 1, &online2);
    let root2_signed = sign_root(&root2, &[&root_key2], Some((&f.root1, &[&f.root_key]))).await;
    f.repo.add_root(2, &root2_signed);
    let v2 = trusted_root_v2();
    f.repo.publish(2, &online2, 2, at(86_400), &v2).await;
    let state = client.refresh().await.expect("refresh after rotation");
    assert_eq!(state.sha256, sha256(&v2));
    assert_eq!((state.root_version, state.timestamp_version), (2, 2));
    assert_eq!(client.current().unwrap().tlogs.len(), 1);

    // A restart: the cache serves at once, with no network.
    let restarted = PublicGood::open(settings(
        "http://127.0.0.1:9",
        None,
        &f.cache,
        &f.root1_signed,
    ));
    assert_eq!(restarted.state().unwrap().sha256, sha256(&v2));
    assert_eq!(restarted.current().unwrap().tlogs.len(), 1);
    let status = restarted.status();
    assert_eq!(status["usable"], true, "{status}");
    assert_eq!(status["root_version"], 2, "{status}");
    assert_eq!(status["sha256"], sha256(&v2), "{status}");
    // And its next refresh starts from root v2: a repository that has dropped 1.root.json and
    // 2.root.json still verifies (root v1's keys would not sign version 3's metadata).
    f.repo.publish(2, &online2, 3, at(86_400), &v2).await;
    std::fs::remove_file(f.repo.dir.join("1.root.json")).unwrap();
    let restarted = PublicGood::open(settings(&server.url, None, &f.cache, &f.root1_signed));
    let state = restarted
        .refresh()
        .await
        .expect("refresh from the cached root");
    assert_eq!((state.root_version, state.timestamp_version), (2, 3));
}

/// A rotated root signed only by the new key (not by a threshold of the old root's keys) is
/// refused: the old root and the last good trusted root stay.
#[tokio::test]
async fn a_root_not_signed_by_the_old_keys_is_refused() {
    let f = fixture().await;
    let server = serve(f.repo.dir.clone()).await;
    let client = PublicGood::open(settings(&server.url, None, &f.cache, &f.root1_signed));
    client.refresh().await.expect("initial refresh");
    let intruder = TestKey::generate(&f.keys_dir, "intruder");
    let online2 = TestKey::generate(&f.keys_dir, "online2");
    let root2 = root(2, &[&intruder], 1, &online2);
    f.repo
        .add_root(2, &sign_root(&root2, &[&intruder], None).await);
    f.repo
        .publish(2, &online2, 2, at(86_400), &trusted_root_v2())
        .await;
    let error = client
        .refresh()
        .await
        .expect_err("unsigned rotation accepted");
    assert!(matches!(error, TufError::Update { .. }), "{error}");
    assert_eq!(client.state().unwrap().sha256, sha256(TRUSTED_ROOT_JSON));
    assert_eq!(client.current().unwrap().tlogs.len(), 2);
}

/// An expired timestamp is refused; the last good root is kept until its own metadata expires,
/// then verification needing it is an error naming the expiry.
#[tokio::test]
async fn an_expired_timestamp_is_refused_and_the_last_good_root_kept_until_it_expires() {
    let f = fixture().await;
    let server = serve(f.repo.dir.clone()).await;
    let client = PublicGood::open(settings(&server.url, None, &f.cache, &f.root1_signed));
    let good = client.refresh().await.expect("initial refresh");
    f.repo
        .publish(1, &f.online, 2, at(-60), &trusted_root_v2())
        .await;
    let error = client
        .refresh()
        .await
        .expect_err("expired timestamp accepted");
    let text = imagegate::telemetry::error_chain(&error);
    assert!(text.to_lowercase().contains("expired"), "{text}");
    assert_eq!(client.state(), Some(good.clone()));
    assert_eq!(
        client.current().unwrap().tlogs.len(),
        2,
        "last good root kept"
    );
    assert!(client.last_error().is_some());
    // Once the last good root's timestamp (a day from the first refresh) has passed:
    let error = client
        .current_at(good.expires)
        .expect_err("an expired root was used");
    assert!(matches!(error, TufError::Expired { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("timestamp") && message.contains("expired at"),
        "{message}"
    );
    assert!(client.current_at(good.expires - 1).is_ok());
}

/// Older metadata versions than the ones trusted (a rollback) are refused.
#[tokio::test]
async fn a_rollback_is_refused() {
    let f = fixture().await;
    let server = serve(f.repo.dir.clone()).await;
    let client = PublicGood::open(settings(&server.url, None, &f.cache, &f.root1_signed));
    f.repo
        .publish(1, &f.online, 5, at(86_400), &trusted_root_v2())
        .await;
    let good = client.refresh().await.expect("refresh at version 5");
    assert_eq!(good.timestamp_version, 5);
    // The repository goes back to version 3 (validly signed, unexpired, a different root).
    f.repo
        .publish(1, &f.online, 3, at(86_400), TRUSTED_ROOT_JSON)
        .await;
    let error = client.refresh().await.expect_err("rollback accepted");
    let text = imagegate::telemetry::error_chain(&error);
    assert!(text.contains("version"), "{text}");
    assert_eq!(client.state().unwrap().sha256, good.sha256);
    // Also after a restart (the versions are remembered in state_dir).
    let restarted = PublicGood::open(settings(&server.url, None, &f.cache, &f.root1_signed));
    assert!(restarted.refresh().await.is_err());
    assert_eq!(restarted.state().unwrap().sha256, good.sha256);
}

/// A mirror directory (air-gapped): no URL reachable, the local copy is used.
#[tokio::test]
async fn a_mirror_directory_works_with_no_network() {
    let f = fixture().await;
    let client = PublicGood::open(settings(
        // Nothing listens there: only the mirror can answer.
        "http://127.0.0.1:9",
        Some(f.repo.dir.clone()),
        &f.cache,
        &f.root1_signed,
    ));
    let state = client.refresh().await.expect("refresh from the mirror");
    assert_eq!(state.sha256, sha256(TRUSTED_ROOT_JSON));
    assert!(state.repository.contains("mirror directory"), "{state:?}");
    assert_eq!(client.current().unwrap().tlogs.len(), 2);
    // A tampered target in the mirror is refused (hash/length checked against targets.json).
    let v2 = trusted_root_v2();
    f.repo.publish(1, &f.online, 2, at(86_400), &v2).await;
    let served = f
        .repo
        .dir
        .join(format!("targets/{}.trusted_root.json", sha256(&v2)));
    let mut tampered = std::fs::read(&served).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x20; // same length, another sha256
    std::fs::write(&served, tampered).unwrap();
    let error = client
        .refresh()
        .await
        .expect_err("tampered target accepted");
    let text = imagegate::telemetry::error_chain(&error);
    assert!(text.contains("Hash mismatch"), "{text}");
    assert_eq!(client.state().unwrap().sha256, state.sha256);
}

/// A policy trusting the public-good root, evaluated with no root available: an `error`
/// verdict (denied in enforce) whose reason says why; with the TUF client's root: the
/// signatures are checked against it (here: none found, untrusted, no error).
#[tokio::test]
async fn a_policy_naming_public_good_needs_the_tuf_root() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(
        &policy_path,
        "version = 1\n[trust.sigstore]\ntrusted_root = \"public-good\"\n\
         [default]\nrequire = \"signatures\"\n[[default.keyless]]\ntrust = \"sigstore\"\n\
         issuer = \"https://accounts.example\"\nsubject = \"someone@example.com\"\n",
    )
    .unwrap();
    let policy = Policy::load(&policy_path).expect("policy loads");
    assert!(policy.uses_public_good());
    let image = ImageRef::parse("registry.example/app:1").unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let source = imagegate::verdict::SignatureSource {
        label: "referrer:test".into(),
        signed_digest: digest.clone(),
        candidate: imagegate::verdict::Candidate::Bundle(b"{}".to_vec()),
    };

    // No client installed in this process yet.
    let verdict = evaluate(&policy, &image, &digest, std::slice::from_ref(&source));
    assert_eq!(verdict.outcome, Outcome::Error, "{verdict:?}");
    assert!(verdict
        .reasons
        .iter()
        .any(|r| r.kind == Some(FailureKind::TrustRoot)));

    // Installed, nothing fetched: still an error, saying so.
    let client = Arc::new(PublicGood::open(settings(
        "http://127.0.0.1:9",
        Some(f.repo.dir.clone()),
        &f.cache,
        &f.root1_signed,
    )));
    imagegate::tuf::install(Arc::clone(&client));
    let verdict = evaluate(&policy, &image, &digest, std::slice::from_ref(&source));
    assert_eq!(verdict.outcome, Outcome::Error);
    assert!(
        verdict
            .reasons
            .iter()
            .any(|r| r.detail.contains("none has been fetched through TUF yet")),
        "{verdict:?}"
    );

    // Fetched: the bundle is checked against the root and refused on its own merits.
    client.refresh().await.expect("refresh from the mirror");
    let verdict = evaluate(&policy, &image, &digest, std::slice::from_ref(&source));
    assert_eq!(verdict.outcome, Outcome::Untrusted, "{verdict:?}");
    assert!(verdict
        .reasons
        .iter()
        .all(|r| r.kind != Some(FailureKind::TrustRoot)));
}

/// What a policy naming the public-good root means follows the root in use: a new root TUF
/// serves, and that root's expiry, each change the policy's hash (the daemon's cached verdicts
/// of it become stale, and it re-judges) and are told to watchers; the same root again is no
/// change; a policy not naming the root keeps its hash whatever the root.
#[tokio::test]
async fn a_new_root_or_its_expiry_changes_what_a_policy_naming_it_means() {
    let f = fixture().await;
    let server = serve(f.repo.dir.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let write_policy = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        Policy::load(&path).expect("policy loads")
    };
    let naming = write_policy(
        "public-good.toml",
        "version = 1\n[trust.sigstore]\ntrusted_root = \"public-good\"\n\
         [default]\nrequire = \"signatures\"\n[[default.keyless]]\ntrust = \"sigstore\"\n\
         issuer = \"https://accounts.example\"\nsubject = \"someone@example.com\"\n",
    );
    let not_naming = write_policy(
        "reject.toml",
        "version = 1\n[default]\nrequire = \"reject\"\n",
    );
    let client = Arc::new(PublicGood::open(settings(
        &server.url,
        None,
        &f.cache,
        &f.root1_signed,
    )));
    let mut roots = client.watch_root();
    assert_eq!(*roots.borrow_and_update(), None, "nothing fetched yet");
    let unavailable = naming.under_public_good_root(None).hash;
    assert_eq!(
        not_naming.under_public_good_root(None).hash,
        not_naming.hash
    );

    let next_root = |roots: &mut tokio::sync::watch::Receiver<Option<String>>| {
        let mut roots = roots.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), roots.changed())
                .await
                .expect("no change told within 20 s")
                .unwrap();
            roots.borrow_and_update().clone()
        }
    };
    client.set_wanted(true);
    let task = tokio::spawn(Arc::clone(&client).refresh_loop(Duration::from_secs(3600)));
    let first = next_root(&mut roots).await;
    roots.mark_unchanged();
    assert_eq!(first.as_deref(), Some(sha256(TRUSTED_ROOT_JSON).as_str()));
    let first_hash = naming.under_public_good_root(first.as_deref()).hash;
    assert_ne!(first_hash, unavailable);
    assert_eq!(
        not_naming.under_public_good_root(first.as_deref()).hash,
        not_naming.hash
    );

    // The same root once more (a new timestamp only): no change.
    f.repo
        .publish(1, &f.online, 2, at(86_400), TRUSTED_ROOT_JSON)
        .await;
    client.refresh().await.expect("refresh of the same root");
    assert!(
        !roots.has_changed().unwrap(),
        "an unchanged root was told as a change"
    );

    // A new root, fetched when asked (SIGHUP asks): told, and the policy means something else.
    let v2 = trusted_root_v2();
    f.repo.publish(1, &f.online, 3, at(86_400), &v2).await;
    client.refresh_soon();
    let second = next_root(&mut roots).await;
    roots.mark_unchanged();
    assert_eq!(second.as_deref(), Some(sha256(&v2).as_str()));
    let second_hash = naming.under_public_good_root(second.as_deref()).hash;
    assert!(second_hash != first_hash && second_hash != unavailable);

    // The root in use expires (its timestamp, 3 s from now): told with no refresh asked for,
    // and the policy is back to "no usable root", whose verdicts are errors.
    f.repo.publish(1, &f.online, 4, at(3), &v2).await;
    client
        .refresh()
        .await
        .expect("refresh of a soon-expiring timestamp");
    assert!(!roots.has_changed().unwrap());
    let expired = next_root(&mut roots).await;
    assert_eq!(expired, None, "an expired root was still told as usable");
    assert_eq!(naming.under_public_good_root(None).hash, unavailable);
    task.abort();
}

/// The refresher fetches nothing while no policy names the root, at once when one starts to,
/// and nothing more once none does.
#[tokio::test]
async fn the_refresher_fetches_only_while_wanted() {
    use std::sync::atomic::Ordering;
    let f = fixture().await;
    let server = serve(f.repo.dir.clone()).await;
    let client = Arc::new(PublicGood::open(settings(
        &server.url,
        None,
        &f.cache,
        &f.root1_signed,
    )));
    let task = tokio::spawn(Arc::clone(&client).refresh_loop(Duration::from_millis(100)));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        0,
        "fetched unwanted"
    );
    assert!(client.state().is_none());
    client.set_wanted(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.state().is_none() {
        assert!(Instant::now() < deadline, "no refresh once wanted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.state().unwrap().sha256, sha256(TRUSTED_ROOT_JSON));
    client.set_wanted(false);
    // A refresh under way when it stopped being wanted may still finish.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = server.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        after,
        "fetched unwanted"
    );
    task.abort();
}

/// A refresh of an unchanged repository over 127.0.0.1 (issue target: at most 50 ms).
#[tokio::test]
#[ignore = "a measurement: run with --ignored --nocapture (release build)"]
async fn tuf_refresh_unchanged_cost() {
    let f = fixture().await;
    let server = serve(f.repo.dir.clone()).await;
    let client = PublicGood::open(settings(&server.url, None, &f.cache, &f.root1_signed));
    client.refresh().await.expect("initial refresh");
    let rounds = 50;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        client.refresh().await.expect("refresh");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!();
    println!(
        "bench tuf refresh of an unchanged repository over 127.0.0.1: median {:.2} ms, p90 {:.2} ms, max {:.2} ms ({rounds} rounds)",
        times[rounds / 2],
        times[rounds * 9 / 10],
        times[rounds - 1]
    );
}
