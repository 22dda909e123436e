//! TUF repositories built in tests with tough's repository editor (Ed25519 keys generated here):
//! the root chain, and targets/snapshot/timestamp serving a `trusted_root.json`. Used by the TUF
//! client's tests and by daemon tests that keep a public-good root current from a mirror dir.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use tough::editor::signed::{PathExists, SignedRole};
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root};
use tough::sign::Sign as _;

/// A signing key: its PKCS#8 file (what tough's `LocalKeySource` reads), TUF key and id.
pub struct TestKey {
    path: PathBuf,
    pub tuf: tough::schema::key::Key,
    pub id: Decoded<Hex>,
}

impl TestKey {
    pub fn generate(dir: &Path, name: &str) -> TestKey {
        let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("generate an Ed25519 key");
        let path = dir.join(format!("{name}.pk8"));
        std::fs::write(&path, pkcs8.as_ref()).expect("write the key");
        let tuf = tough::sign::parse_keypair(pkcs8.as_ref())
            .expect("tough reads the key")
            .tuf_key();
        let id = tuf.key_id().expect("key id");
        TestKey { path, tuf, id }
    }

    fn source(&self) -> Box<dyn KeySource> {
        Box::new(LocalKeySource {
            path: self.path.clone(),
        })
    }
}

pub fn at(seconds_from_now: i64) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds_from_now)
}

/// Root metadata: `root_keys` (threshold `threshold`) for the root role, `online` for targets,
/// snapshot and timestamp.
pub fn root(version: u64, root_keys: &[&TestKey], threshold: u64, online: &TestKey) -> Root {
    let mut keys = HashMap::new();
    for k in root_keys.iter().chain([&online]) {
        keys.insert(k.id.clone(), k.tuf.clone());
    }
    let role = |ks: &[&TestKey], threshold: u64| RoleKeys {
        keyids: ks.iter().map(|k| k.id.clone()).collect(),
        threshold: NonZeroU64::new(threshold).unwrap(),
        _extra: HashMap::new(),
    };
    let mut roles = HashMap::new();
    roles.insert(RoleType::Root, role(root_keys, threshold));
    for r in [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp] {
        roles.insert(r, role(&[online], 1));
    }
    Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: true,
        version: NonZeroU64::new(version).unwrap(),
        expires: at(365 * 86_400),
        keys,
        roles,
        _extra: HashMap::new(),
    }
}

/// Signed root metadata bytes: signed by `new_keys` under `root` itself and, for a rotation,
/// also by `old_keys` under the previous root (`old`).
pub async fn sign_root(
    root: &Root,
    new_keys: &[&TestKey],
    old: Option<(&Root, &[&TestKey])>,
) -> Vec<u8> {
    let rng = SystemRandom::new();
    let sources = |ks: &[&TestKey]| ks.iter().map(|k| k.source()).collect::<Vec<_>>();
    let mut signed = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(root.clone()),
        &sources(new_keys),
        &rng,
    )
    .await
    .expect("sign the root");
    if let Some((old_root, old_keys)) = old {
        let by_old = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(old_root.clone()),
            &sources(old_keys),
            &rng,
        )
        .await
        .expect("sign the root with the old keys");
        signed = signed
            .add_old_signatures(by_old.signed().signatures.clone())
            .expect("cross-signed root");
    }
    signed.buffer().clone()
}

/// A TUF repository on disk: metadata at the top, targets under `targets/`.
pub struct Repo {
    pub dir: PathBuf,
    scratch: PathBuf,
}

impl Repo {
    pub fn new(base: &Path) -> Repo {
        let dir = base.join("repo");
        let scratch = base.join("scratch");
        std::fs::create_dir_all(dir.join("targets")).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        Repo { dir, scratch }
    }

    /// Publish `N.root.json` (the root chain).
    pub fn add_root(&self, version: u64, signed: &[u8]) {
        std::fs::write(self.dir.join(format!("{version}.root.json")), signed).unwrap();
    }

    /// Publish targets, snapshot and timestamp of `version`, signed by `online` under the root
    /// `root_version`, with `trusted_root` as the target `trusted_root.json`.
    pub async fn publish(
        &self,
        root_version: u64,
        online: &TestKey,
        version: u64,
        timestamp_expires: jiff::Timestamp,
        trusted_root: &[u8],
    ) {
        let root_path = self.dir.join(format!("{root_version}.root.json"));
        let input = self.scratch.join(format!("v{version}"));
        std::fs::create_dir_all(&input).unwrap();
        let target = input.join("trusted_root.json");
        std::fs::write(&target, trusted_root).unwrap();
        let mut editor = RepositoryEditor::new(&root_path).await.expect("editor");
        let v = NonZeroU64::new(version).unwrap();
        editor
            .targets_version(v)
            .unwrap()
            .targets_expires(at(30 * 86_400))
            .unwrap()
            .snapshot_version(v)
            .snapshot_expires(at(30 * 86_400))
            .timestamp_version(v)
            .timestamp_expires(timestamp_expires);
        editor.add_target_path(&target).await.expect("add target");
        let signed = editor.sign(&[online.source()]).await.expect("sign");
        signed.write(&self.dir).await.expect("write metadata");
        signed
            .copy_targets(&input, self.dir.join("targets"), PathExists::Replace)
            .await
            .expect("copy targets");
    }
}

/// A repository at `base/repo` with root version 1 (one root key, one online key under
/// `base/keys`) and version 1 of its metadata serving `trusted_root` for a day.
pub struct FirstVersion {
    pub repo: Repo,
    pub root_key: TestKey,
    pub online: TestKey,
    pub root1: Root,
    pub root1_signed: Vec<u8>,
    pub keys_dir: PathBuf,
}

pub async fn first_version(base: &Path, trusted_root: &[u8]) -> FirstVersion {
    let keys_dir = base.join("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    let root_key = TestKey::generate(&keys_dir, "root1");
    let online = TestKey::generate(&keys_dir, "online1");
    let root1 = root(1, &[&root_key], 1, &online);
    let root1_signed = sign_root(&root1, &[&root_key], None).await;
    let repo = Repo::new(base);
    repo.add_root(1, &root1_signed);
    repo.publish(1, &online, 1, at(86_400), trusted_root).await;
    FirstVersion {
        repo,
        root_key,
        online,
        root1,
        root1_signed,
        keys_dir,
    }
}
