//! The daemon's bookkeeping against a real (private) containerd: reconcile judges every image by
//! the policy and mirrors the trusted images' layers into the backend; containerd events (image
//! create and delete, container snapshots) keep it true; a layer shared with a trusted image
//! stays verified when another image goes.
//!
//! The backend here records what it is told: the kernel backends cannot load on this machine's
//! kernel (BPF LSM) or arrive with their own issue (fanotify); they are tested in their suites.

mod support;

use std::{sync::Arc, time::Duration};

use imagegate::{
    catalog::Containerd,
    daemon::{Daemon, Verifier},
    discover::{DiscoveryConfig, RegistryClient},
    enforce::{ContainerTrust, LayerId, LayerState},
    verdict::VerdictCache,
};
use support::{
    containerd::PrivateContainerd,
    image::{self, File},
    recording::{id_of_dir_with, RecordingBackend},
};

const POLICY: &str = r#"version = 1
[default]
require = "reject"
[[scope]]
match = "registry.test/trusted/**"
require = "accept"
[[scope]]
match = "registry.test/audited/**"
require = "reject"
mode = "audit"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_and_events_keep_the_backend_table_true() {
    if !support::is_root() {
        eprintln!("skipping: containerd needs root");
        return;
    }
    let dir = support::scratch_dir("daemon");
    let containerd = PrivateContainerd::start(&dir);
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, POLICY).expect("policy");

    let shared = image::layer(&[File::new("shared/marker", "base", 0o644)]);
    let import = |name: &str, layers: Vec<Vec<u8>>| {
        let archive = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        image::write_archive(&archive, name, &image::image(layers), false);
        containerd.import("default", &archive);
    };
    import(
        "registry.test/trusted/a:1",
        vec![
            shared.clone(),
            image::layer(&[File::new("a/marker", "a", 0o644)]),
        ],
    );
    import(
        "registry.test/untrusted/b:1",
        vec![
            shared.clone(),
            image::layer(&[File::new("b/marker", "b", 0o644)]),
        ],
    );
    import(
        "registry.test/audited/c:1",
        vec![image::layer(&[File::new("c/marker", "c", 0o644)])],
    );

    let (verifier, client) = verifier_and_client(&containerd, &policy_path).await;
    let mut events = client.events();
    // What a backend kept from an earlier run (pinned BPF maps survive the daemon): a layer of
    // an image deleted meanwhile, and a container's writable layer that is gone.
    let stale_verified = LayerId::new(999, 1);
    let stale_writable = LayerId::new(999, 2);
    let mut backend = RecordingBackend::default();
    backend.layers.insert(stale_verified, LayerState::Verified);
    backend.layers.insert(stale_writable, LayerState::Writable);
    let mut daemon = Daemon::new(backend, verifier, client);
    // Its first step (containerd only) already drops what no listed image contains, before
    // the verifications, which may wait on registries for a whole deadline.
    let rebuild = daemon.begin_rebuild().await.expect("catalogue");
    assert!(
        !daemon.backend.layers.contains_key(&stale_verified),
        "a layer no listed image contains is removed before the verifications"
    );
    let rebuilt = daemon.verify_rebuild(rebuild).await;
    daemon.finish_rebuild(rebuilt).await.expect("swap");
    assert!(
        !daemon.backend.layers.contains_key(&stale_verified)
            && !daemon.backend.layers.contains_key(&stale_writable),
        "reconcile leaves the backend holding exactly what the new table vouches for"
    );

    let shared_id = id_of_dir_with(&containerd, "shared/marker");
    let a_id = id_of_dir_with(&containerd, "a/marker");
    let b_id = id_of_dir_with(&containerd, "b/marker");
    let c_id = id_of_dir_with(&containerd, "c/marker");
    let state = |daemon: &Daemon<RecordingBackend>, id| daemon.backend.layers.get(&id).copied();
    assert_eq!(
        state(&daemon, shared_id),
        Some(LayerState::Verified),
        "the trusted image vouches for the shared layer"
    );
    assert_eq!(state(&daemon, a_id), Some(LayerState::Verified));
    assert_eq!(
        state(&daemon, b_id),
        None,
        "a rejected image's own layer stays unknown (denied)"
    );
    assert_eq!(
        state(&daemon, c_id),
        Some(LayerState::Audit),
        "an audit scope's rejected image is audit-only"
    );

    // A container's writable layer, then the trusted image's deletion, arrive as events.
    let out = containerd.ctr(&[
        "snapshots",
        "prepare",
        "container-1",
        &daemon_chain_top(&daemon, "registry.test/trusted/a:1"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = containerd.ctr(&["images", "rm", "registry.test/trusted/a:1"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state(&daemon, a_id).is_some()
        || !daemon
            .writable
            .contains_key(&("default".into(), "container-1".into()))
    {
        handle_next(&mut daemon, &mut events, deadline).await;
    }
    assert_eq!(
        state(&daemon, shared_id),
        None,
        "no trusted image holds the shared layer any more"
    );
    let (writable, _) = daemon.writable[&("default".to_owned(), "container-1".to_owned())];
    assert_eq!(state(&daemon, writable), Some(LayerState::Writable));
    assert_eq!(state(&daemon, c_id), Some(LayerState::Audit));

    let out = containerd.ctr(&["snapshots", "rm", "container-1"]);
    assert!(out.status.success(), "{out:?}");
    while daemon
        .writable
        .contains_key(&("default".into(), "container-1".into()))
    {
        handle_next(&mut daemon, &mut events, deadline).await;
    }
    assert_eq!(
        state(&daemon, writable),
        None,
        "a removed container's writable layer is forgotten"
    );

    // A layer's committed snapshot removed while its image stays: the image no longer vouches
    // for a directory that is gone.
    let c_chain = daemon_chain_top(&daemon, "registry.test/audited/c:1");
    let out = containerd.ctr(&["snapshots", "rm", &c_chain]);
    assert!(out.status.success(), "{out:?}");
    while state(&daemon, c_id).is_some() {
        handle_next(&mut daemon, &mut events, deadline).await;
    }
    assert!(
        daemon
            .table
            .images()
            .any(|(key, entry)| key.name == "registry.test/audited/c:1" && entry.layers.is_empty()),
        "the image stays known, with no layer on disk"
    );
}

/// The test policy's verifier (no registry, no persisted verdicts) and a connection to
/// `containerd`.
async fn verifier_and_client(
    containerd: &PrivateContainerd,
    policy_path: &std::path::Path,
) -> (Verifier, Containerd) {
    let verifier = Verifier {
        policy: Arc::new(imagegate::policy::Policy::load(policy_path).expect("policy")),
        client: Arc::new(RegistryClient::new(DiscoveryConfig::default()).expect("client")),
        cache: Arc::new(VerdictCache::new(None)),
    };
    let client = Containerd::connect(&containerd.socket)
        .await
        .expect("connect");
    (verifier, client)
}

/// Feeds the next containerd event to the daemon, failing at `deadline`.
async fn handle_next(
    daemon: &mut Daemon<RecordingBackend>,
    events: &mut tokio::sync::mpsc::Receiver<containerd_client::types::Envelope>,
    deadline: tokio::time::Instant,
) {
    let envelope = tokio::time::timeout_at(deadline, events.recv())
        .await
        .expect("events within 10 s")
        .expect("event stream open");
    daemon.handle_event(&envelope).await.expect("handle event");
    // Verification runs in tasks of its own; the event loop records verdicts as they come.
    daemon.settle().await.expect("verdicts recorded");
}

/// The top chainID of an image the daemon knows.
fn daemon_chain_top(daemon: &Daemon<RecordingBackend>, name: &str) -> String {
    daemon
        .table
        .images()
        .find(|(key, _)| key.name == name)
        .and_then(|(_, entry)| entry.layers.last().map(|(chain_id, _)| chain_id.clone()))
        .expect("image known with layers")
}

/// Fail closed: a trusted image whose record can no longer be catalogued (here its config is
/// gone from the content store) stops vouching for its layers at once, is listed as waiting
/// for a retry, and vouches again once a retry catalogues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_cannot_be_catalogued_vouches_for_nothing_until_a_retry_succeeds() {
    if !support::is_root() {
        eprintln!("skipping: containerd needs root");
        return;
    }
    let dir = support::scratch_dir("daemon-uncatalogued");
    let containerd = PrivateContainerd::start(&dir);
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, POLICY).expect("policy");
    let name = "registry.test/trusted/retry:1";
    let image = image::image(vec![image::layer(&[File::new("r/marker", "r", 0o644)])]);
    let archive = dir.join("retry.tar");
    image::write_archive(&archive, name, &image, false);
    containerd.import("default", &archive);
    let chain = imagegate::oci::chain_ids(&image.diff_ids);
    // Its unpacked layer stays while the config is gone (as for content being re-fetched).
    let out = containerd.ctr(&["snapshots", "label", &chain[0], "containerd.io/gc.root=t"]);
    assert!(out.status.success(), "{out:?}");

    let (verifier, client) = verifier_and_client(&containerd, &policy_path).await;
    let mut daemon = Daemon::new(RecordingBackend::default(), verifier, client);
    daemon.reconcile().await.expect("reconcile");
    let layer = id_of_dir_with(&containerd, "r/marker");
    assert_eq!(
        daemon.backend.layers.get(&layer),
        Some(&LayerState::Verified)
    );
    assert_eq!(daemon.records(), (1, 1));

    let config = image::digest(&image.config);
    let out = containerd.ctr(&["content", "rm", &config]);
    assert!(out.status.success(), "{out:?}");
    // What an /images/update event would do.
    daemon
        .refresh_image("default", name)
        .await
        .expect("a record that cannot be catalogued is no error of the daemon");
    daemon.settle().await.expect("settle");
    assert_eq!(
        daemon.backend.layers.get(&layer),
        None,
        "an uncatalogued record vouches for nothing"
    );
    assert_eq!(daemon.records(), (0, 1));
    let key = imagegate::daemon::table::ImageKey {
        namespace: "default".into(),
        name: name.into(),
    };
    assert_eq!(daemon.uncatalogued[&key].attempts, 1);
    let status = daemon.status();
    assert_eq!(
        status["records"]["uncatalogued"][0]["image"], name,
        "{status}"
    );
    // Not due yet: nothing is retried.
    let due = daemon.next_retry().expect("a retry is scheduled");
    daemon.retry_uncatalogued().await.expect("retry");
    daemon.settle().await.expect("settle");
    assert_eq!(daemon.uncatalogued[&key].attempts, 1);
    // Due, still failing: the attempt is counted and the next one is later.
    tokio::time::sleep_until(due).await;
    daemon.retry_uncatalogued().await.expect("retry");
    daemon.settle().await.expect("settle");
    assert_eq!(daemon.uncatalogued[&key].attempts, 2);
    assert!(daemon.next_retry().expect("rescheduled") > due);

    // From a file, not a pipe: containerd resumes an ingest where the removed blob's data
    // still lies (until its garbage collection), and `ctr` then seeks its input.
    let config_file = dir.join("config.json");
    std::fs::write(&config_file, &image.config).expect("write config");
    let out = support::containerd::ctr_command()
        .arg("--address")
        .arg(&containerd.socket)
        .args(["content", "ingest", "--expected-digest", &config, "config"])
        .stdin(std::fs::File::open(&config_file).expect("config file"))
        .output()
        .expect("ctr");
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep_until(daemon.next_retry().expect("scheduled")).await;
    daemon.retry_uncatalogued().await.expect("retry");
    daemon.settle().await.expect("settle");
    assert!(daemon.uncatalogued.is_empty());
    assert_eq!(daemon.records(), (1, 1));
    assert_eq!(
        daemon.backend.layers.get(&layer),
        Some(&LayerState::Verified),
        "catalogued again, it vouches again"
    );
}

/// The container is the unit of trust: each container's root (its writable snapshot) is
/// recorded with its image's verdict, from events and at reconcile, and follows the image
/// (deleting a trusted image makes its container untrusted); what the backend held from an
/// earlier run is mirrored exactly, including a trusted entry for a container that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_judged_by_their_image() {
    if !support::is_root() {
        eprintln!("skipping: containerd needs root");
        return;
    }
    let dir = support::scratch_dir("daemon-containers");
    let containerd = PrivateContainerd::start(&dir);
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, POLICY).expect("policy");
    let shared = image::layer(&[File::new("shared/marker", "base", 0o644)]);
    for (name, layers) in [
        ("registry.test/trusted/a:1", vec![shared.clone()]),
        (
            "registry.test/untrusted/b:1",
            vec![shared.clone(), image::layer(&[File::new("b", "b", 0o644)])],
        ),
        (
            "registry.test/audited/c:1",
            vec![image::layer(&[File::new("c", "c", 0o644)])],
        ),
    ] {
        let archive = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        image::write_archive(&archive, name, &image::image(layers), false);
        containerd.import("default", &archive);
    }
    // One container before the daemon starts.
    let out = containerd.ctr(&["containers", "create", "registry.test/untrusted/b:1", "c-b"]);
    assert!(out.status.success(), "{out:?}");

    let (verifier, client) = verifier_and_client(&containerd, &policy_path).await;
    let mut events = client.events();
    let gone = LayerId::new(999, 3);
    let mut backend = RecordingBackend::default();
    backend
        .containers
        .insert(gone, ContainerTrust::Trusted.into());
    let mut daemon = Daemon::new(backend, verifier, client);
    daemon.reconcile().await.expect("reconcile");
    let root_of = |daemon: &Daemon<RecordingBackend>, id: &str| {
        daemon
            .writable
            .get(&("default".to_owned(), id.to_owned()))
            .map(|(root, _)| *root)
    };
    let b_root = root_of(&daemon, "c-b").expect("c-b's writable snapshot is known");
    assert_eq!(
        daemon.backend.containers.get(&b_root).map(|s| s.trust),
        Some(ContainerTrust::Untrusted),
        "a container of an untrusted image sharing a trusted layer is untrusted"
    );
    assert!(
        !daemon.backend.containers.contains_key(&gone),
        "a trusted entry for a container that is gone is removed"
    );

    for (image, id) in [
        ("registry.test/trusted/a:1", "c-a"),
        ("registry.test/audited/c:1", "c-c"),
    ] {
        let out = containerd.ctr(&["containers", "create", image, id]);
        assert!(out.status.success(), "{out:?}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let trust = |daemon: &Daemon<RecordingBackend>, id: &str| {
        root_of(daemon, id).and_then(|root| daemon.backend.containers.get(&root).map(|s| s.trust))
    };
    while trust(&daemon, "c-a").is_none() || trust(&daemon, "c-c").is_none() {
        handle_next(&mut daemon, &mut events, deadline).await;
    }
    assert_eq!(trust(&daemon, "c-a"), Some(ContainerTrust::Trusted));
    assert_eq!(
        trust(&daemon, "c-c"),
        Some(ContainerTrust::Audit),
        "an audit scope's untrusted image makes an audit container"
    );
    let status = daemon.status();
    let listed = status["container_verdicts"]
        .as_array()
        .expect("container list");
    assert!(
        listed
            .iter()
            .any(|c| c["id"] == "c-a" && c["trust"] == "trusted"),
        "status lists containers with their trust: {status}"
    );

    // The trusted image goes: its container is no longer vouched for.
    let out = containerd.ctr(&["images", "rm", "registry.test/trusted/a:1"]);
    assert!(out.status.success(), "{out:?}");
    while trust(&daemon, "c-a") == Some(ContainerTrust::Trusted) {
        handle_next(&mut daemon, &mut events, deadline).await;
    }
    assert_eq!(trust(&daemon, "c-a"), Some(ContainerTrust::Untrusted));

    // A deleted container is forgotten.
    let a_root = root_of(&daemon, "c-a").expect("root");
    let out = containerd.ctr(&["containers", "rm", "c-a"]);
    assert!(out.status.success(), "{out:?}");
    while daemon.backend.containers.contains_key(&a_root) {
        handle_next(&mut daemon, &mut events, deadline).await;
    }
    for id in ["c-b", "c-c"] {
        let _ = containerd.ctr(&["containers", "rm", id]);
    }
}
