//! The event loop never waits on a registry, and a reload swaps its table in at once (issue 12),
//! against a real (private) containerd with a recording backend:
//!
//! - an image from a registry that never answers is pending (not trusted) while another image's
//!   verdict is recorded; past the verification deadline it gets an `error` verdict and a retry;
//! - a reload to a policy that rejects an image revokes its layer in the swap; a reload whose
//!   rebuild fails (here: a policy replaced again meanwhile, and containerd gone) keeps the old
//!   table whole;
//! - a reload that drops a key revokes the images signed only with it at once, before the new
//!   table is computed (real signatures, Debian's docker-registry on 127.0.0.1).

mod support;

use std::{
    io::Read as _,
    net::TcpListener,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use imagegate::{
    catalog::Containerd,
    daemon::{table::ImageKey, verifying::VerifyLimits, Daemon, Verifier},
    discover::{DiscoveryConfig, RegistryClient},
    enforce::{LayerId, LayerState},
    verdict::{Outcome, VerdictCache},
};
use support::{
    containerd::PrivateContainerd,
    image::{self, File},
    recording::{id_of_dir_with, RecordingBackend},
    signed::SignedBed,
};

/// A registry that accepts connections and never answers, until dropped.
struct SilentRegistry {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentRegistry {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
                // Read what was sent so the client's writes never block; answer nothing.
                for stream in &mut held {
                    let _ = stream.set_nonblocking(true);
                    let mut sink = [0u8; 4096];
                    let _ = stream.read(&mut sink);
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn policy_with_key(dir: &Path, silent: u16, trusted_scope: &str) -> String {
    let key = imagegate_testkit::sign::Key::generate().expect("key");
    let key_path = dir.join("cosign.pub");
    std::fs::write(&key_path, key.public_pem().expect("pem")).expect("key file");
    format!(
        "version = 1\n[default]\nrequire = \"reject\"\n\
         [[scope]]\nmatch = \"127.0.0.1:{silent}/**\"\nrequire = \"signatures\"\n\
         [[scope.keys]]\npath = \"{}\"\n\
         [[scope]]\nmatch = \"{trusted_scope}\"\nrequire = \"accept\"\n",
        key_path.display()
    )
}

fn verifier(policy_path: &Path, silent: u16, request_timeout: Duration) -> Verifier {
    let config = DiscoveryConfig {
        request_timeout,
        insecure_registries: vec![format!("127.0.0.1:{silent}")],
        ..DiscoveryConfig::default()
    };
    Verifier {
        policy: Arc::new(imagegate::policy::Policy::load(policy_path).expect("policy")),
        client: Arc::new(RegistryClient::new(config).expect("client")),
        cache: Arc::new(VerdictCache::new(None)),
    }
}

fn import(containerd: &PrivateContainerd, dir: &Path, name: &str, marker: &str) {
    let archive = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
    let layer = image::layer(&[File::new(marker, name, 0o644)]);
    image::write_archive(&archive, name, &image::image(vec![layer]), false);
    containerd.import("default", &archive);
}

/// Before issue 12, `refresh_image` verified inside the call: an image from a registry that
/// never answers held the caller (the event loop) for the whole request timeout, many times
/// over, and nothing else was judged meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_registry_holds_only_its_own_images() {
    if !support::is_root() {
        eprintln!("skipping: containerd needs root");
        return;
    }
    let dir = support::scratch_dir("daemon-isolation");
    let containerd = PrivateContainerd::start(&dir);
    let silent = SilentRegistry::start();
    let slow_name = format!("127.0.0.1:{}/slow/app:1", silent.port);
    let fast_name = "registry.test/trusted/fast:1";
    import(&containerd, &dir, &slow_name, "slow/marker");
    import(&containerd, &dir, fast_name, "fast/marker");
    let policy_path = dir.join("policy.toml");
    std::fs::write(
        &policy_path,
        policy_with_key(&dir, silent.port, "registry.test/trusted/**"),
    )
    .expect("policy");
    let slow_layer = id_of_dir_with(&containerd, "slow/marker");
    let fast_layer = id_of_dir_with(&containerd, "fast/marker");
    let slow_key = ImageKey {
        namespace: "default".into(),
        name: slow_name.clone(),
    };

    // Requests and deadline far beyond the test: the silent registry's image stays pending.
    let client = Containerd::connect(&containerd.socket)
        .await
        .expect("connect");
    let mut daemon = Daemon::new(
        RecordingBackend::default(),
        verifier(&policy_path, silent.port, Duration::from_secs(3600)),
        client,
    );
    daemon.set_verify_limits(VerifyLimits {
        deadline: Duration::from_secs(3600),
        ..VerifyLimits::default()
    });
    // Returns at once: the verification runs in its own task (this call used to wait for the
    // registry). The bound only keeps a regression from hanging the suite.
    tokio::time::timeout(
        Duration::from_secs(120),
        daemon.refresh_image("default", &slow_name),
    )
    .await
    .expect("refresh_image does not wait for the registry")
    .expect("refresh");
    daemon
        .refresh_image("default", fast_name)
        .await
        .expect("refresh");
    let done = daemon.next_verified().await;
    daemon.complete(done).expect("record");
    assert_eq!(
        daemon.backend.layers.get(&fast_layer),
        Some(&LayerState::Verified),
        "the other image's verdict is recorded while the silent registry's image waits"
    );
    assert_eq!(
        daemon.backend.layers.get(&slow_layer),
        None,
        "pending is not trusted"
    );
    let pending: Vec<ImageKey> = daemon.pending().into_iter().map(|(key, _)| key).collect();
    assert_eq!(pending, vec![slow_key.clone()]);
    let status = daemon.status();
    assert_eq!(
        status["pending"][0]["image"],
        slow_name.as_str(),
        "{status}"
    );
    drop(daemon);

    // A short deadline: the image gets an `error` verdict and a retry, never trust.
    let client = Containerd::connect(&containerd.socket)
        .await
        .expect("connect");
    let mut daemon = Daemon::new(
        RecordingBackend::default(),
        verifier(&policy_path, silent.port, Duration::from_secs(3600)),
        client,
    );
    daemon.set_verify_limits(VerifyLimits {
        deadline: Duration::from_secs(1),
        ..VerifyLimits::default()
    });
    daemon.reconcile().await.expect("reconcile");
    assert_eq!(daemon.verdicts[&slow_key].outcome, Outcome::Error);
    assert!(
        daemon.verdicts[&slow_key].reasons[0]
            .detail
            .contains("did not finish within"),
        "{:?}",
        daemon.verdicts[&slow_key]
    );
    assert_eq!(daemon.backend.layers.get(&slow_layer), None);
    assert_eq!(
        daemon.backend.layers.get(&fast_layer),
        Some(&LayerState::Verified)
    );
    let retry = daemon.next_retry().expect("a retry is scheduled");
    tokio::time::sleep_until(retry).await;
    daemon.retry_uncatalogued().await.expect("retry");
    daemon.settle().await.expect("settle");
    assert_eq!(daemon.verdicts[&slow_key].outcome, Outcome::Error);
    assert_eq!(daemon.backend.layers.get(&slow_layer), None);
    assert!(
        daemon.next_retry().expect("retried again") > retry,
        "back-off"
    );
}

/// Before issue 12 a reload emptied the table and judged every image again in place: a failure
/// midway left it empty (or half built), and a layer the new policy rejects stayed verified
/// until its image's turn came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_its_table_in_at_once_or_keeps_the_old_one() {
    if !support::is_root() {
        eprintln!("skipping: containerd needs root");
        return;
    }
    let dir = support::scratch_dir("daemon-reload");
    let containerd = PrivateContainerd::start(&dir);
    import(&containerd, &dir, "registry.test/team/a:1", "a/marker");
    import(&containerd, &dir, "registry.test/other/b:1", "b/marker");
    let a = id_of_dir_with(&containerd, "a/marker");
    let b = id_of_dir_with(&containerd, "b/marker");
    std::fs::write(
        dir.join("never.pub"),
        imagegate_testkit::sign::Key::generate()
            .expect("key")
            .public_pem()
            .expect("pem"),
    )
    .expect("key");
    // Scopes accepted, anything else rejected; a scope ending in `!` requires a signature no
    // image here has (untrusted only once verified, not outright).
    let policy = |scopes: &[&str]| {
        let mut text = String::from("version = 1\n[default]\nrequire = \"reject\"\n");
        for scope in scopes {
            match scope.strip_suffix('!') {
                Some(scope) => text.push_str(&format!(
                    "[[scope]]\nmatch = \"{scope}\"\nrequire = \"signatures\"\n[[scope.keys]]\npath = \"{}\"\n",
                    dir.join("never.pub").display()
                )),
                None => text.push_str(&format!(
                    "[[scope]]\nmatch = \"{scope}\"\nrequire = \"accept\"\n"
                )),
            }
        }
        let path = dir.join(format!(
            "{}.toml",
            scopes.join("+").replace(['/', '*', '!'], "_")
        ));
        std::fs::write(&path, text).expect("policy");
        Arc::new(imagegate::policy::Policy::load(&path).expect("policy"))
    };
    let client = Containerd::connect(&containerd.socket)
        .await
        .expect("connect");
    let mut daemon = Daemon::new(
        RecordingBackend::default(),
        Verifier {
            policy: policy(&["registry.test/team/**"]),
            client: Arc::new(RegistryClient::new(DiscoveryConfig::default()).expect("client")),
            cache: Arc::new(VerdictCache::new(None)),
        },
        client,
    );
    daemon.reconcile().await.expect("reconcile");
    assert_eq!(daemon.backend.layers.get(&a), Some(&LayerState::Verified));
    assert_eq!(daemon.backend.layers.get(&b), None);

    // A rebuild under a policy replaced before it is swapped in is refused: the old table
    // stays whole (never emptied, never half built).
    daemon
        .replace_policy(policy(&["registry.test/team/**", "registry.test/other/**"]))
        .await;
    let rebuild = daemon.begin_rebuild().await.expect("catalogue");
    let rebuilt = daemon.verify_rebuild(rebuild).await;
    daemon
        .replace_policy(policy(&["registry.test/team/**", "registry.test/third/**"]))
        .await;
    let stale = daemon.finish_rebuild(rebuilt).await;
    assert!(
        matches!(stale, Err(imagegate::daemon::DaemonError::Stale)),
        "{stale:?}"
    );
    assert_eq!(daemon.backend.layers.get(&a), Some(&LayerState::Verified));
    assert_eq!(
        daemon.backend.layers.get(&b),
        None,
        "trusted only by a swap"
    );
    assert_eq!(daemon.table.images().count(), 2);

    // Revokes first: a policy under which `team` needs a verification leaves it to the swap;
    // one that rejects it outright revokes it at once, before any rebuild.
    daemon
        .replace_policy(policy(&["registry.test/team/**!", "registry.test/x/**"]))
        .await;
    assert_eq!(
        daemon.backend.layers.get(&a),
        Some(&LayerState::Verified),
        "judged by the rebuild, not outright"
    );
    daemon
        .replace_policy(policy(&["registry.test/other/**"]))
        .await;
    assert_eq!(
        daemon.backend.layers.get(&a),
        None,
        "rejected outright: revoked at once"
    );
    assert_eq!(
        daemon.backend.layers.get(&b),
        None,
        "trusted only by a swap"
    );

    // containerd gone between the catalogue and the swap: the old table stays (revocation
    // included).
    let rebuild = daemon.begin_rebuild().await.expect("catalogue");
    let rebuilt = daemon.verify_rebuild(rebuild).await;
    drop(containerd);
    assert!(daemon.finish_rebuild(rebuilt).await.is_err());
    assert_eq!(daemon.backend.layers.get(&a), None);
    assert_eq!(daemon.backend.layers.get(&b), None);
    assert_eq!(daemon.table.images().count(), 2);
}

/// A reload to a policy that rejects an image revokes its layer in the swap, and trusts what
/// the new policy accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_revokes_what_the_new_policy_rejects() {
    if !support::is_root() {
        eprintln!("skipping: containerd needs root");
        return;
    }
    let dir = support::scratch_dir("daemon-revoke");
    let containerd = PrivateContainerd::start(&dir);
    import(&containerd, &dir, "registry.test/team/a:1", "a/marker");
    import(&containerd, &dir, "registry.test/other/b:1", "b/marker");
    let a = id_of_dir_with(&containerd, "a/marker");
    let b = id_of_dir_with(&containerd, "b/marker");
    let policy = |scope: &str| {
        let path = dir.join(format!("{}.toml", scope.replace(['/', '*'], "_")));
        std::fs::write(
            &path,
            format!("version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"{scope}\"\nrequire = \"accept\"\n"),
        )
        .expect("policy");
        Arc::new(imagegate::policy::Policy::load(&path).expect("policy"))
    };
    let client = Containerd::connect(&containerd.socket)
        .await
        .expect("connect");
    let mut daemon = Daemon::new(
        RecordingBackend::default(),
        Verifier {
            policy: policy("registry.test/team/**"),
            client: Arc::new(RegistryClient::new(DiscoveryConfig::default()).expect("client")),
            cache: Arc::new(VerdictCache::new(None)),
        },
        client,
    );
    daemon.reconcile().await.expect("reconcile");
    for round in 0..10 {
        let (trusted, other) = if round % 2 == 0 { (b, a) } else { (a, b) };
        let scope = if round % 2 == 0 {
            "registry.test/other/**"
        } else {
            "registry.test/team/**"
        };
        daemon.set_policy(policy(scope)).await.expect("reload");
        assert_eq!(
            daemon.backend.layers.get(&trusted),
            Some(&LayerState::Verified),
            "round {round}"
        );
        assert_eq!(
            daemon.backend.layers.get(&other),
            None,
            "round {round}: revoked"
        );
        assert_eq!(daemon.table.images().count(), 2);
    }
}

/// Before, a reload that dropped a key left the images signed only with it verified until the
/// whole re-verification was swapped in (registry round trips, up to one deadline). Now they
/// stop vouching as the policy is replaced, before any rebuild: pending (`error`) until the
/// rebuild judges them untrusted. Images signed with a key the new policy keeps stay verified
/// throughout.
#[test]
fn a_reload_that_drops_a_key_revokes_its_images_before_the_rebuild() {
    let Some(bed) = SignedBed::start("daemon-drop-key") else {
        return;
    };
    let base = bed.busybox_layer(None);
    let kept = bed.name("drop/kept");
    let dropped = bed.name("drop/dropped");
    bed.push(
        "drop/kept",
        &bed.image_on(&base, "kept-marker"),
        Some(&bed.trusted),
    );
    bed.push(
        "drop/dropped",
        &bed.image_on(&base, "dropped-marker"),
        Some(&bed.other),
    );
    bed.pull(&kept);
    bed.pull(&dropped);
    let kept_layer = id_of_dir_with(&bed.containerd, "etc/kept-marker");
    let dropped_layer = id_of_dir_with(&bed.containerd, "etc/dropped-marker");
    let base_layer = id_of_dir_with(&bed.containerd, "bin/busybox");
    let write_key = |name: &str, key: &imagegate_testkit::sign::Key| {
        let path = bed.dir.join(format!("{name}.pub"));
        std::fs::write(&path, key.public_pem().expect("pem")).expect("key file");
        path
    };
    let (trusted, other) = (
        write_key("trusted", &bed.trusted),
        write_key("other", &bed.other),
    );
    let policy = |name: &str, keys: &[&Path]| {
        let mut text = format!(
            "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"{}/drop/**\"\nrequire = \"signatures\"\n",
            bed.addr
        );
        for key in keys {
            text.push_str(&format!("[[scope.keys]]\npath = \"{}\"\n", key.display()));
        }
        let path = bed.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("policy");
        Arc::new(imagegate::policy::Policy::load(&path).expect("policy"))
    };
    // The test bed's registry client blocks: the bed is set up before the runtime starts.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = RegistryClient::new(DiscoveryConfig {
            insecure_registries: vec![bed.addr.clone()],
            ..DiscoveryConfig::default()
        })
        .expect("client");
        let mut daemon = Daemon::new(
            RecordingBackend::default(),
            Verifier {
                policy: policy("both", &[&trusted, &other]),
                client: Arc::new(client),
                cache: Arc::new(VerdictCache::new(None)),
            },
            Containerd::connect(&bed.containerd.socket)
                .await
                .expect("connect"),
        );
        daemon.reconcile().await.expect("reconcile");
        for layer in [&kept_layer, &dropped_layer, &base_layer] {
            assert_eq!(
                daemon.backend.layers.get(layer),
                Some(&LayerState::Verified)
            );
        }
        let outcome = |daemon: &Daemon<RecordingBackend>, name: &str| {
            daemon.verdicts[&ImageKey {
                namespace: "default".into(),
                name: name.into(),
            }]
                .outcome
        };

        // The key `other` is dropped: its image stops vouching now, before any rebuild.
        daemon
            .replace_policy(policy("trusted-only", &[&trusted]))
            .await;
        assert_eq!(
            daemon.backend.layers.get(&dropped_layer),
            None,
            "revoked as the policy is replaced"
        );
        assert_eq!(
            outcome(&daemon, &dropped),
            Outcome::Error,
            "pending until judged"
        );
        assert_eq!(
            daemon.backend.layers.get(&kept_layer),
            Some(&LayerState::Verified)
        );
        assert_eq!(
            daemon.backend.layers.get(&base_layer),
            Some(&LayerState::Verified),
            "still vouched for by the image signed with the kept key"
        );

        // The rebuild judges it: signed, but by a key the policy does not trust.
        daemon.reconcile().await.expect("reconcile");
        assert_eq!(outcome(&daemon, &dropped), Outcome::Untrusted);
        assert_eq!(outcome(&daemon, &kept), Outcome::Trusted);
        assert_eq!(daemon.backend.layers.get(&dropped_layer), None);
        assert_eq!(
            daemon.backend.layers.get(&kept_layer),
            Some(&LayerState::Verified)
        );

        // Adding a key back revokes nothing; the rebuild trusts the image again.
        daemon
            .replace_policy(policy("both-again", &[&trusted, &other]))
            .await;
        assert_eq!(
            daemon.backend.layers.get(&kept_layer),
            Some(&LayerState::Verified)
        );
        daemon.reconcile().await.expect("reconcile");
        assert_eq!(
            daemon.backend.layers.get(&dropped_layer),
            Some(&LayerState::Verified)
        );
    });
}

/// Before issue 12 a full backend table (BPF LSM's 131,072 layers) failed every reconcile: the
/// daemon never became ready. Now the layers that do not fit stay unverified (denied), the
/// daemon says it is degraded, and a deletion makes room for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_layer_table_degrades_and_deletions_make_room() {
    if !support::is_root() {
        eprintln!("skipping: containerd needs root");
        return;
    }
    let dir = support::scratch_dir("daemon-full");
    let containerd = PrivateContainerd::start(&dir);
    let names = [
        "registry.test/team/a:1",
        "registry.test/team/b:1",
        "registry.test/team/c:1",
    ];
    for (index, name) in names.iter().enumerate() {
        import(&containerd, &dir, name, &format!("m{index}/marker"));
    }
    let layers: Vec<LayerId> = (0..names.len())
        .map(|index| id_of_dir_with(&containerd, &format!("m{index}/marker")))
        .collect();
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"registry.test/team/**\"\nrequire = \"accept\"\n",
    )
    .expect("policy");
    let client = Containerd::connect(&containerd.socket)
        .await
        .expect("connect");
    let mut daemon = Daemon::new(
        RecordingBackend {
            capacity: Some(1),
            ..RecordingBackend::default()
        },
        Verifier {
            policy: Arc::new(imagegate::policy::Policy::load(&path).expect("policy")),
            client: Arc::new(RegistryClient::new(DiscoveryConfig::default()).expect("client")),
            cache: Arc::new(VerdictCache::new(None)),
        },
        client,
    );
    daemon
        .reconcile()
        .await
        .expect("a full table does not fail the reconcile");
    assert_eq!(daemon.backend.layers.len(), 1);
    assert_eq!(daemon.refused_layers(), 2);
    let status = daemon.status();
    assert_eq!(status["degraded"]["layer_table_full"], true, "{status}");
    assert_eq!(status["degraded"]["refused_layers"], 2, "{status}");
    assert!(imagegate::metrics::global()
        .render()
        .contains("imagegate_layer_table_full 1"));
    // Every image is judged trusted; only the table's room is short.
    assert_eq!(daemon.verdicts.len(), 3);

    // Deleting the image whose layer is in the table makes room for one that was refused.
    let held = *daemon.backend.layers.keys().next().expect("one layer held");
    let index = layers
        .iter()
        .position(|l| *l == held)
        .expect("a known layer");
    let out = containerd.ctr(&["images", "rm", names[index]]);
    assert!(out.status.success(), "{out:?}");
    daemon
        .refresh_image("default", names[index])
        .await
        .expect("refresh");
    daemon.settle().await.expect("settle");
    assert_eq!(daemon.backend.layers.len(), 1);
    assert!(!daemon.backend.layers.contains_key(&held));
    assert_eq!(daemon.refused_layers(), 1);
    assert_eq!(
        daemon.backend.layers.values().next(),
        Some(&LayerState::Verified)
    );
}

/// A reconciliation swaps its table in within one deadline even when a registry's queue is
/// longer than that (one slot, three images that never get an answer): every image left is an
/// `error` verdict with a retry, none trusted, and the other registry's image is trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_registry_queue_does_not_hold_the_swap() {
    if !support::is_root() {
        eprintln!("skipping: containerd needs root");
        return;
    }
    let dir = support::scratch_dir("daemon-queue");
    let containerd = PrivateContainerd::start(&dir);
    let silent = SilentRegistry::start();
    let slow: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}/slow/app{i}:1", silent.port))
        .collect();
    for (i, name) in slow.iter().enumerate() {
        import(&containerd, &dir, name, &format!("slow{i}/marker"));
    }
    import(
        &containerd,
        &dir,
        "registry.test/trusted/fast:1",
        "fast/marker",
    );
    let policy_path = dir.join("policy.toml");
    std::fs::write(
        &policy_path,
        policy_with_key(&dir, silent.port, "registry.test/trusted/**"),
    )
    .expect("policy");
    let client = Containerd::connect(&containerd.socket)
        .await
        .expect("connect");
    let mut daemon = Daemon::new(
        RecordingBackend::default(),
        verifier(&policy_path, silent.port, Duration::from_secs(3600)),
        client,
    );
    daemon.set_verify_limits(VerifyLimits {
        deadline: Duration::from_secs(1),
        per_registry: 1,
        ..VerifyLimits::default()
    });
    daemon.reconcile().await.expect("reconcile");
    for name in &slow {
        let key = ImageKey {
            namespace: "default".into(),
            name: name.clone(),
        };
        assert_eq!(daemon.verdicts[&key].outcome, Outcome::Error, "{name}");
        let status = daemon.status();
        assert!(
            status["verification_retries"]
                .as_array()
                .expect("retries")
                .iter()
                .any(|r| r["image"] == name.as_str()),
            "{name}: {status}"
        );
    }
    assert_eq!(
        daemon
            .backend
            .layers
            .get(&id_of_dir_with(&containerd, "fast/marker")),
        Some(&LayerState::Verified)
    );
    for i in 0..3 {
        assert_eq!(
            daemon
                .backend
                .layers
                .get(&id_of_dir_with(&containerd, &format!("slow{i}/marker"))),
            None
        );
    }
}
