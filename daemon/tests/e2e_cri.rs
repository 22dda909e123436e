//! Kubernetes' path end to end on this machine: containerd's CRI plugin (a private containerd,
//! its root on its own tmpfs; the system's 1.6, or 2.1 under `cargo xtask test`, each with its
//! own configuration layout) driven through the CRI API as kubelet drives it, in namespace
//! `k8s.io`, with `imagegate daemon` enforcing on the fanotify backend (and, in the 6.12 guest
//! with `cargo xtask vm-test --kernel 6.12 --suite cri`, on BPF LSM). Images are pushed to
//! Debian's docker-registry on 127.0.0.1 and signed there (cosign's `.sig` format, a fresh
//! ECDSA key the policy trusts); the pod sandbox (`pause`) image is one of them, signed and
//! trusted like the rest. Pods use the host's network (no CNI), as `hostNetwork: true` pods do.
//!
//! Kubelet's calls: `PullImage` (which returns the image id), `RunPodSandbox`,
//! `CreateContainer` from the image id and `StartContainer` for an init container and an app
//! container, `ExecSync` (a probe), a restart (a new container, attempt 1), `RemoveContainer`,
//! `StopPodSandbox` / `RemovePodSandbox`, and `RemoveImage` (image garbage collection).
//!
//! On containerd 2.x, CRI pulls go through the transfer service and its image verifier hook: with
//! imagegate's verifier installed, `PullImage` and `RunPodSandbox`'s pull of the sandbox image
//! fail with imagegate's reason, unless the CRI plugin pulls in the client
//! (`use_local_image_pull`, or a setting the transfer service lacks), where the kernel still
//! denies. Those tests skip on 1.x.
//!
//! The CRI plugin names every image it pulls three times: `REPO:TAG`, `REPO@DIGEST` and the
//! image id `sha256:<config digest>`. The last is not a reference and must never be judged as
//! one (it would read `docker.io/library/sha256:...`).
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod support;

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use imagegate_testkit::image::{self, File, Image};
use serde_json::{json, Value};
use support::{
    cri::{Cri, Pod},
    daemon::{self, DaemonProcess, Settings},
    explain,
    signed::SignedBed,
};

/// The sandbox image's repository (the CRI config's `sandbox_image` is `ADDR/k8s/pause:v1`).
const PAUSE: &str = "k8s/pause";
/// CRI `ContainerState` values.
const CONTAINER_RUNNING: i32 = 1;
const CONTAINER_EXITED: i32 = 2;

/// The fanotify backend on this machine; `IMAGEGATE_E2E_BACKEND=auto` in the 6.12 guest, where
/// the daemon picks BPF LSM (`cargo xtask vm-test --kernel 6.12 --suite cri`).
fn settings() -> Settings<'static> {
    let backend = match std::env::var("IMAGEGATE_E2E_BACKEND").as_deref() {
        Ok("auto") => "auto",
        Ok("bpf-lsm") => "bpf-lsm",
        _ => "fanotify",
    };
    Settings {
        mode: "enforce",
        backend,
        insecure: Vec::new(),
        tag: "cri",
    }
}

/// A pause image: busybox sleeping (kill by the CRI plugin's SIGKILL at StopPodSandbox).
fn pause_image(bed: &SignedBed, marker: &str) -> Image {
    image::image(
        vec![bed.busybox_layer(Some(marker))],
        &["/bin/busybox", "sleep", "2147483647"],
    )
}

/// An app image of one layer of its own running `entrypoint`.
fn app_image(bed: &SignedBed, marker: &str, entrypoint: &[&str]) -> Image {
    image::image(vec![bed.busybox_layer(Some(marker))], entrypoint)
}

/// An image whose entrypoint lies under a declared `VOLUME` (`/data/busybox`): the CRI
/// plugin copies the image's `/data` into a volume outside the snapshots and mounts it there.
fn volume_image(marker: &str) -> Image {
    let layer = image::layer(&[
        File::new(
            "data/busybox",
            std::fs::read("/bin/busybox").unwrap(),
            0o755,
        ),
        File::new(&format!("etc/{marker}"), marker, 0o644),
    ])
    .unwrap();
    image::image_with_config(
        vec![layer],
        json!({"Entrypoint": ["/data/busybox", "echo", "volume ran"], "Volumes": {"/data": {}}}),
    )
}

/// The policy: `ADDR/k8s/**` and `ADDR/apps/**` need the trusted key's signature; everything
/// else is rejected (enforce).
fn write_signed_policy(bed: &SignedBed) {
    let key = bed.dir.join("trusted.pub");
    std::fs::write(&key, bed.trusted.public_pem().unwrap()).unwrap();
    let scope = |prefix: &str| {
        format!(
            "[[scope]]\nmatch = \"{addr}/{prefix}/**\"\nrequire = \"signatures\"\n\
             [[scope.keys]]\nname = \"trusted\"\npath = \"{key}\"\n",
            addr = bed.addr,
            key = key.display()
        )
    };
    std::fs::write(
        bed.dir.join("policy.toml"),
        format!(
            "version = 1\n[default]\nrequire = \"reject\"\n{}{}",
            scope("k8s"),
            scope("apps")
        ),
    )
    .unwrap();
}

/// Starts the daemon (enforce, fanotify, the bed's registry over plain HTTP) and connects a
/// CRI client: the daemon, its event log and the client.
fn start_signed(bed: &SignedBed) -> (DaemonProcess, std::path::PathBuf, Cri) {
    let settings = Settings {
        insecure: vec![bed.addr.clone()],
        ..settings()
    };
    let config = settings.write(&bed.dir, &bed.containerd);
    let daemon = DaemonProcess::start(&bed.dir, &config, "cri");
    let cri = Cri::connect(&bed.containerd.socket, &bed.dir.join("logs"));
    (daemon, settings.events(&bed.dir), cri)
}

/// Names of containerd's image records in `k8s.io`.
fn records(bed: &SignedBed) -> BTreeSet<String> {
    let out = bed.containerd.ctr_in("k8s.io", &["images", "ls", "-q"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn is_image_id(name: &str) -> bool {
    name.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64)
}

/// Waits until the daemon's judged images are exactly containerd's named records in `k8s.io`,
/// each with a verdict (none pending), and its image-id count is containerd's; asserts no
/// image id was judged. Returns the status.
fn wait_table_exact(bed: &SignedBed, daemon: &DaemonProcess) -> Value {
    let started = Instant::now();
    loop {
        let all = records(bed);
        let named: BTreeSet<String> = all.iter().filter(|n| !is_image_id(n)).cloned().collect();
        let ids = all.len() - named.len();
        let status = daemon::status(&bed.dir).unwrap_or(Value::Null);
        let judged: BTreeSet<String> = status["verdicts"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter(|v| v["namespace"] == "k8s.io")
                    .filter_map(|v| v["image"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !judged
                .iter()
                .any(|name| name.contains("sha256:") && !name.contains('@')),
            "an image id was judged: {status}"
        );
        assert!(
            !judged.iter().any(|name| name.starts_with("docker.io/")),
            "{status}"
        );
        if judged == named
            && status["records"]["image_ids"] == ids
            && status["pending"] == json!([])
            && status["records"]["uncatalogued"] == json!([])
        {
            return status;
        }
        assert!(
            started.elapsed() < 3 * daemon::wait_limit(),
            "the daemon's table is not containerd's: records {all:?}, status {status}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pulls through CRI, returning the image id, and waits for the daemon's verdict on the name.
fn pull(cri: &mut Cri, bed: &SignedBed, repo: &str, outcome: &str) -> String {
    let name = bed.name(repo);
    let id = cri
        .pull(&name)
        .unwrap_or_else(|e| panic!("PullImage {name}: {e}"));
    assert!(is_image_id(&id), "PullImage returns the image id: {id}");
    daemon::assert_outcomes(&bed.dir, &[(name, outcome)], 3 * daemon::wait_limit(), "");
    id
}

/// Create and start container `name` of `pod` from image id `id` (as kubelet: from the id).
fn run_container(
    cri: &mut Cri,
    pod: &Pod,
    name: &str,
    attempt: u32,
    id: &str,
    image: &str,
) -> (String, Result<(), containerd_client::tonic::Status>) {
    let container = cri
        .create(pod, name, attempt, id, image, &[])
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
    let started = cri.start(&container);
    (container, started)
}

/// Asserts container `id` never ran its entrypoint: start failed or it exited non-zero with
/// the kernel's refusal in its log; returns its status. `output` must not be in the log.
fn assert_container_denied(
    cri: &mut Cri,
    pod: &Pod,
    name: &str,
    container: &str,
    started: &Result<(), containerd_client::tonic::Status>,
    output: &str,
) -> k8s_cri::v1::ContainerStatus {
    let status = cri.wait_exited(container);
    let log = cri.log(pod, name, 0);
    eprintln!("denied {name}: start {started:?}, status {status:?}, log {log:?}");
    assert_ne!(status.exit_code, 0, "{status:?}");
    assert!(!log.contains(output), "{name} ran: {log}");
    let message = match started {
        Err(error) => error.message().to_owned(),
        Ok(()) => format!("{} {log}", status.message),
    };
    assert!(
        message.to_lowercase().contains("operation not permitted"),
        "{name}: not the kernel's refusal: {message} / {status:?}"
    );
    status
}

/// The decision event of a container: reason `untrusted_image`, denied, naming the pod, the
/// container (CRI labels), its image and manifest digest.
fn assert_cri_event(
    path: &Path,
    container: &str,
    pod: &Pod,
    name: &str,
    image: &str,
    digest: &str,
) {
    let event = daemon::wait_for_event(path, |e| e["container"]["id"] == container);
    assert_eq!(event["verdict"], "denied", "{event}");
    assert_eq!(event["reason"], "untrusted_image", "{event}");
    assert_eq!(event["container"]["namespace"], "k8s.io", "{event}");
    assert_eq!(event["container"]["pod"], pod.name.as_str(), "{event}");
    assert_eq!(
        event["container"]["pod_namespace"],
        pod.namespace.as_str(),
        "{event}"
    );
    assert_eq!(event["container"]["name"], name, "{event}");
    assert_eq!(event["container"]["image"], image, "{event}");
    assert_eq!(event["container"]["digest"], digest, "{event}");
    assert_eq!(event["container"]["trusted"], false, "{event}");
}

/// An untrusted image as kubelet refers to it.
struct Untrusted<'a> {
    /// The image id `PullImage` returned: containers are created from it.
    id: &'a str,
    /// Its name (`ADDR/REPO:v1`).
    name: &'a str,
    /// Its manifest digest.
    digest: &'a str,
}

/// Creates and starts container `name` (attempt 0) of `pod` from `image` as kubelet does, and
/// asserts it runs nothing ([`assert_container_denied`]) and that its decision event names the
/// pod, the container, the image and its digest ([`assert_cri_event`]). Returns the container
/// id and its status.
fn assert_runs_nothing(
    cri: &mut Cri,
    events: &Path,
    pod: &Pod,
    name: &str,
    image: &Untrusted,
    output: &str,
) -> (String, k8s_cri::v1::ContainerStatus) {
    let (container, start) = run_container(cri, pod, name, 0, image.id, image.name);
    let status = assert_container_denied(cri, pod, name, &container, &start, output);
    assert_cri_event(events, &container, pod, name, image.name, image.digest);
    (container, status)
}

#[test]
fn kubelet_runs_signed_pods_and_no_unsigned_container_runs() {
    let Some(bed) = SignedBed::start_cri("e2e-cri", PAUSE) else {
        return;
    };
    let dir = bed.dir.clone();
    let pause = pause_image(&bed, "pause");
    bed.push(PAUSE, &pause, Some(&bed.trusted));
    let app = app_image(&bed, "app", &["/bin/busybox", "sleep", "600"]);
    bed.push("apps/app", &app, Some(&bed.trusted));
    let init = app_image(&bed, "init", &["/bin/busybox", "echo", "init done"]);
    bed.push("apps/init", &init, Some(&bed.trusted));
    let unsigned = app_image(&bed, "unsigned", &["/bin/busybox", "echo", "unsigned ran"]);
    let unsigned_digest = bed.push("apps/unsigned", &unsigned, None);
    let volume_signed = volume_image("volume-signed");
    bed.push("apps/volume-signed", &volume_signed, Some(&bed.trusted));
    let volume_unsigned = volume_image("volume-unsigned");
    let volume_unsigned_digest = bed.push("apps/volume-unsigned", &volume_unsigned, None);
    write_signed_policy(&bed);
    let (daemon, events, mut cri) = start_signed(&bed);

    // a. A signed pod: its sandbox (pulled by RunPodSandbox), an init container, the app;
    // a probe (ExecSync) of a base binary; a restart.
    let app_id = pull(&mut cri, &bed, "apps/app", "trusted");
    let init_id = pull(&mut cri, &bed, "apps/init", "trusted");
    // The sandbox image is pulled (and judged) before the first pod, as nodes pre-pull it: a
    // pause image RunPodSandbox pulls itself starts before its verification ends, and is
    // denied meanwhile (fail closed; kubelet then recreates the sandbox).
    pull(&mut cri, &bed, PAUSE, "trusted");
    let pod = cri.run_pod("default", "signed");
    let (init_container, start) =
        run_container(&mut cri, &pod, "init", 0, &init_id, &bed.name("apps/init"));
    start.unwrap();
    let status = cri.wait_exited(&init_container);
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert!(cri.log(&pod, "init", 0).contains("init done"), "{status:?}");
    let (main, start) = run_container(&mut cri, &pod, "main", 0, &app_id, &bed.name("apps/app"));
    start.unwrap();
    assert_eq!(cri.status(&main).state, CONTAINER_RUNNING);
    let probe = cri
        .exec_sync(&main, &["/bin/busybox", "echo", "probe ok"])
        .unwrap();
    assert_eq!(probe.exit_code, 0, "{probe:?}");
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "probe ok");
    // The container was created from the image id; the CRI plugin recorded the image's name,
    // and the daemon judges the container by it.
    let status = daemon::status(&dir).unwrap();
    let verdict = status["container_verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == main.as_str())
        .unwrap_or_else(|| panic!("no verdict for {main}: {status}"))
        .clone();
    assert_eq!(verdict["trust"], "trusted", "{verdict}");
    // A restart, as kubelet restarts: the container is stopped, a new one (attempt 1) created
    // from the image id and started, the old one removed.
    cri.remove(&main).unwrap();
    let (restarted, start) =
        run_container(&mut cri, &pod, "main", 1, &app_id, &bed.name("apps/app"));
    start.unwrap();
    let probe = cri
        .exec_sync(&restarted, &["/bin/busybox", "true"])
        .unwrap();
    assert_eq!(probe.exit_code, 0, "{probe:?}");
    // A trusted image's VOLUME content (copied by the CRI plugin) runs: outside_image allows.
    let volume_signed_id = pull(&mut cri, &bed, "apps/volume-signed", "trusted");
    let (volume_ok, start) = run_container(
        &mut cri,
        &pod,
        "volume-ok",
        0,
        &volume_signed_id,
        &bed.name("apps/volume-signed"),
    );
    start.unwrap();
    let status = cri.wait_exited(&volume_ok);
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert!(cri.log(&pod, "volume-ok", 0).contains("volume ran"));
    assert!(
        daemon::events(&events).is_empty(),
        "the signed pod was refused something: {:?}",
        daemon::events(&events)
    );
    cri.remove(&restarted).unwrap();
    cri.remove_pod(&pod).unwrap();

    // b. An unsigned image: its container never runs; ContainerStatus and the container's log
    // carry the runtime's error; the event names pod, container, image and digest.
    let unsigned_id = pull(&mut cri, &bed, "apps/unsigned", "untrusted");
    let pod = cri.run_pod("default", "unsigned");
    let unsigned_name = bed.name("apps/unsigned");
    let image = Untrusted {
        id: &unsigned_id,
        name: &unsigned_name,
        digest: &unsigned_digest,
    };
    let (_, status) = assert_runs_nothing(&mut cri, &events, &pod, "main", &image, "unsigned ran");
    assert_eq!(status.state, CONTAINER_EXITED, "{status:?}");
    assert_eq!(status.reason, "Error", "{status:?}");
    // A probe into it runs nothing either.
    cri.remove_pod(&pod).unwrap();

    // c. An unsigned image whose entrypoint lies under a VOLUME, which the CRI plugin copies
    // outside the snapshots: denied all the same.
    let volume_id = pull(&mut cri, &bed, "apps/volume-unsigned", "untrusted");
    let pod = cri.run_pod("default", "volume");
    let volume_name = bed.name("apps/volume-unsigned");
    let image = Untrusted {
        id: &volume_id,
        name: &volume_name,
        digest: &volume_unsigned_digest,
    };
    let (container, _) = assert_runs_nothing(&mut cri, &events, &pod, "main", &image, "volume ran");
    let event = daemon::wait_for_event(&events, |e| e["container"]["id"] == container.as_str());
    assert!(event["layer"].is_null(), "the file is in no layer: {event}");
    cri.remove_pod(&pod).unwrap();

    // f. Image garbage collection and a re-pull keep the table exactly containerd's.
    let status = wait_table_exact(&bed, &daemon);
    // Two names each (tag and digest): pause, app, init, volume-signed; unsigned,
    // volume-unsigned.
    assert_eq!(status["images"]["trusted"], 8, "{status}");
    assert_eq!(status["images"]["untrusted"], 4, "{status}");
    cri.remove_image(&unsigned_id).unwrap();
    assert!(!records(&bed).iter().any(|r| r.contains("apps/unsigned")));
    let status = wait_table_exact(&bed, &daemon);
    assert_eq!(status["images"]["untrusted"], 2, "{status}");
    let again = pull(&mut cri, &bed, "apps/unsigned", "untrusted");
    assert_eq!(again, unsigned_id);
    let status = wait_table_exact(&bed, &daemon);
    assert_eq!(status["images"]["untrusted"], 4, "{status}");
    cri.remove_image(&app_id).unwrap();
    let status = wait_table_exact(&bed, &daemon);
    assert_eq!(status["images"]["trusted"], 6, "{status}");

    // e. An untrusted sandbox image: the pause image replaced in the registry by an unsigned
    // one, the node's copy collected; RunPodSandbox pulls it and its pause process is denied.
    let pause_id = cri
        .image_id(&bed.name(PAUSE))
        .expect("the pause image's id");
    cri.remove_image(&pause_id).unwrap();
    let bad_pause = pause_image(&bed, "pause-unsigned");
    let bad_digest = bed.push(PAUSE, &bad_pause, None);
    let (pod, run) = cri.try_run_pod("default", "bad-sandbox");
    eprintln!("RunPodSandbox of an unsigned pause: {run:?}");
    let event = daemon::wait_for_event(&events, |e| {
        e["container"]["image"] == bed.name(PAUSE).as_str()
    });
    assert_eq!(event["verdict"], "denied", "{event}");
    assert_eq!(event["reason"], "untrusted_image", "{event}");
    assert_eq!(event["container"]["pod"], "bad-sandbox", "{event}");
    let status = daemon::assert_outcomes(
        &dir,
        &[(bed.name(PAUSE), "untrusted")],
        3 * daemon::wait_limit(),
        &daemon.log_text(),
    );
    let verdict = status["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["image"] == bed.name(PAUSE).as_str())
        .unwrap()
        .clone();
    assert_eq!(verdict["digest"], bad_digest.as_str(), "{verdict}");
    match run {
        Err(error) => {
            assert!(
                error.message().contains("operation not permitted"),
                "RunPodSandbox failed otherwise: {error}"
            );
            let _ = cri.remove_pod(&pod);
        }
        Ok(()) => {
            // Started, but its pause process was refused: the sandbox is not ready once the
            // CRI plugin has handled the task's exit.
            let started = Instant::now();
            while cri.pod_ready(&pod) {
                assert!(
                    started.elapsed() < daemon::wait_limit(),
                    "the sandbox of an unsigned pause image stays ready"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            cri.remove_pod(&pod).unwrap();
        }
    }
    daemon.stop();
}

/// Why is my pod not running? `imagegate explain` on CRI containers created from image ids, as
/// kubelet creates them: the unsigned image's denied container names its pod, image, digest,
/// scope, verdict and the denial; crictl's short id finds it; the signed pod's running
/// container names the key that accepted its image; the image id explains the named images it
/// resolves to.
#[test]
fn explain_tells_why_a_pod_is_not_running() {
    let Some(bed) = SignedBed::start_cri("e2e-cri-explain", PAUSE) else {
        return;
    };
    let dir = bed.dir.clone();
    bed.push(PAUSE, &pause_image(&bed, "pause"), Some(&bed.trusted));
    let app = app_image(&bed, "app", &["/bin/busybox", "sleep", "600"]);
    let app_digest = bed.push("apps/app", &app, Some(&bed.trusted));
    let unsigned = app_image(&bed, "unsigned", &["/bin/busybox", "echo", "unsigned ran"]);
    let unsigned_digest = bed.push("apps/unsigned", &unsigned, None);
    write_signed_policy(&bed);
    let (daemon, events, mut cri) = start_signed(&bed);
    pull(&mut cri, &bed, PAUSE, "trusted");
    let app_id = pull(&mut cri, &bed, "apps/app", "trusted");
    let unsigned_id = pull(&mut cri, &bed, "apps/unsigned", "untrusted");

    // The pod that does not run.
    let pod = cri.run_pod("default", "web");
    let (container, start) = run_container(
        &mut cri,
        &pod,
        "main",
        0,
        &unsigned_id,
        &bed.name("apps/unsigned"),
    );
    assert_container_denied(&mut cri, &pod, "main", &container, &start, "unsigned ran");
    daemon::wait_for_event(&events, |e| e["container"]["id"] == container.as_str());
    let json = explain::assert_unsigned_denied(
        &dir,
        &container,
        &bed.name("apps/unsigned"),
        &unsigned_digest,
        &format!("{}/apps/**", bed.addr),
        "/bin/busybox",
    );
    assert_eq!(json["container"]["namespace"], "k8s.io", "{json}");
    assert_eq!(json["container"]["pod"], "web", "{json}");
    assert_eq!(json["container"]["pod_namespace"], "default", "{json}");
    assert_eq!(json["container"]["name"], "main", "{json}");
    let text = explain::text(&dir, &container);
    assert!(
        text.contains("  pod default/web, container main\n"),
        "{text}"
    );
    // crictl's short id, in kubelet's namespace.
    let json = explain::json(&dir, &container[..13], &["--namespace", "k8s.io"]);
    assert_eq!(json["container"]["id"], container.as_str(), "{json}");
    cri.remove_pod(&pod).unwrap();

    // A signed pod's running container, created from the image id.
    let pod = cri.run_pod("default", "signed");
    let (main, start) = run_container(&mut cri, &pod, "main", 0, &app_id, &bed.name("apps/app"));
    start.unwrap();
    explain::assert_signed(&dir, &main, &bed.name("apps/app"), &app_digest, "trusted");
    let json = explain::json(&dir, &main, &[]);
    assert_eq!(json["container"]["enforced_trust"], "trusted", "{json}");
    // The image id: the named images it resolves to (tag and digest names), each trusted.
    let json = explain::json(&dir, &app_id, &[]);
    let images = json["images"].as_array().unwrap();
    assert!(
        images
            .iter()
            .any(|i| i["reference"] == bed.name("apps/app").as_str()),
        "{json}"
    );
    assert!(
        images
            .iter()
            .all(|i| i["manifest_digest"] == app_digest.as_str() && i["verdict"] == "trusted"),
        "{json}"
    );
    cri.remove_pod(&pod).unwrap();
    daemon.stop();
}

/// A local HTTP proxy that only counts who comes: the daemon's proxy for every registry but
/// the test's own (`NO_PROXY`), so a request to any other registry (docker.io for an image id
/// taken for a reference) is caught here, on 127.0.0.1, and never leaves the machine.
struct ProxyTrap {
    addr: String,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicUsize>,
}

impl ProxyTrap {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicUsize::new(0));
        let (seen, stopped) = (Arc::clone(&requests), Arc::clone(&stop));
        std::thread::spawn(move || {
            while stopped.load(Ordering::Relaxed) == 0 {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut head = [0u8; 512];
                        let n = stream.read(&mut head).unwrap_or(0);
                        seen.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head[..n]).into_owned());
                        let _ = stream
                            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            addr,
            requests,
            stop,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ProxyTrap {
    fn drop(&mut self) {
        self.stop.store(1, Ordering::Relaxed);
    }
}

/// The snapshot directory (`snapshots/<n>/fs`) holding `etc/MARKER`.
fn layer_dir_with(bed: &SignedBed, marker: &str) -> std::path::PathBuf {
    let snapshots = bed
        .containerd
        .root_dir()
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    std::fs::read_dir(&snapshots)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("fs"))
        .find(|fs| fs.join("etc").join(marker).exists())
        .unwrap_or_else(|| panic!("no layer holds etc/{marker}"))
}

#[test]
fn image_id_records_are_never_judged_and_never_let_a_rejected_pod_run() {
    let Some(bed) = SignedBed::start_cri("e2e-cri-ids", PAUSE) else {
        return;
    };
    let dir = bed.dir.clone();
    let pause = pause_image(&bed, "pause");
    bed.push(PAUSE, &pause, Some(&bed.trusted));
    let x = app_image(&bed, "x", &["/bin/busybox", "echo", "x ran"]);
    let x_digest = bed.push("rejected/x", &x, None);
    let y = app_image(&bed, "y", &["/bin/busybox", "echo", "y ran"]);
    let y_digest = bed.push("rejected/y", &y, None);
    // [default] audits (the shipped default); an enforce scope rejects X and Y.
    let key = dir.join("trusted.pub");
    std::fs::write(&key, bed.trusted.public_pem().unwrap()).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        format!(
            "version = 1\n[default]\nrequire = \"reject\"\nmode = \"audit\"\n\
             [[scope]]\nmatch = \"{addr}/rejected/**\"\nrequire = \"reject\"\nmode = \"enforce\"\n\
             [[scope]]\nmatch = \"{addr}/k8s/**\"\nrequire = \"signatures\"\n\
             [[scope.keys]]\nname = \"trusted\"\npath = \"{key}\"\n",
            addr = bed.addr,
            key = key.display()
        ),
    )
    .unwrap();
    let mut cri = Cri::connect(&bed.containerd.socket, &dir.join("logs"));
    // X pulled before the daemon starts; the pause image too.
    let x_id = cri.pull(&bed.name("rejected/x")).unwrap();
    cri.pull(&bed.name(PAUSE)).unwrap();
    assert!(records(&bed).contains(&x_id), "{:?}", records(&bed));

    let trap = ProxyTrap::start();
    let proxy = format!("http://{}", trap.addr);
    let env = [
        ("HTTPS_PROXY", proxy.as_str()),
        ("HTTP_PROXY", proxy.as_str()),
        ("ALL_PROXY", proxy.as_str()),
        ("NO_PROXY", "127.0.0.1,localhost"),
    ];
    let settings = Settings {
        insecure: vec![bed.addr.clone()],
        ..settings()
    };
    let config = settings.write(&dir, &bed.containerd);
    let events = settings.events(&dir);
    let daemon = DaemonProcess::start_with_env(&dir, &config, "cri", &env);
    wait_table_exact(&bed, &daemon);
    // Y pulled while the daemon runs.
    let y_id = pull(&mut cri, &bed, "rejected/y", "untrusted");
    let status = wait_table_exact(&bed, &daemon);
    assert_eq!(status["records"]["image_ids"], 3, "{status}");

    for (repo, id, digest, output) in [
        ("rejected/x", &x_id, &x_digest, "x ran"),
        ("rejected/y", &y_id, &y_digest, "y ran"),
    ] {
        let pod_name = repo.replace('/', "-");
        let pod = cri.run_pod("default", &pod_name);
        let name = bed.name(repo);
        let image = Untrusted {
            id,
            name: &name,
            digest,
        };
        assert_runs_nothing(&mut cri, &events, &pod, "main", &image, output);
        cri.remove_pod(&pod).unwrap();
    }
    // The image id never made X's layer audit-only: a host process cannot run it either.
    let busybox = layer_dir_with(&bed, "x").join("bin/busybox");
    let out = std::process::Command::new(&busybox).arg("true").output();
    match out {
        Err(error) => assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}"),
        Ok(out) => panic!("X's layer ran on the host: {out:?}"),
    }
    let event = daemon::wait_for_event(&events, |e| e["reason"] == "unverified_layer");
    assert_eq!(event["verdict"], "denied", "{event}");

    // A restart: every record catalogued, no view snapshot left behind, X still denied.
    daemon.stop();
    let daemon = DaemonProcess::start_with_env(&dir, &config, "cri", &env);
    let status = wait_table_exact(&bed, &daemon);
    assert_eq!(status["records"]["image_ids"], 3, "{status}");
    let out = bed.containerd.ctr_in("k8s.io", &["snapshots", "ls"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("imagegate-view-"),
        "view snapshots left: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let pod = cri.run_pod("default", "x-again");
    let (container, start) =
        run_container(&mut cri, &pod, "main", 0, &x_id, &bed.name("rejected/x"));
    assert_container_denied(&mut cri, &pod, "main", &container, &start, "x ran");
    cri.remove_pod(&pod).unwrap();
    assert!(
        !daemon.log_text().contains("docker.io"),
        "the daemon went for docker.io: {}",
        daemon.log_text()
    );
    daemon.stop();
    assert_eq!(
        trap.requests(),
        Vec::<String>::new(),
        "the daemon asked a registry no pod named"
    );
}

/// imagegate on a CRI bed of containerd 2.x with its verifier hook.
struct Gated {
    daemon: DaemonProcess,
    /// The daemon's event log.
    events: std::path::PathBuf,
    cri: Cri,
    /// `imagegate doctor`'s `pull_verifier` line, read before the daemon started.
    doctor: String,
}

/// Writes the signed policy, puts the verifier into containerd's `bin_dir` (the packaged
/// script's shape, `imagegate containerd-verifier --config ...`), asks `imagegate doctor`
/// whether pulls reach it, starts the daemon (enforce, fanotify) and connects a CRI client.
fn start_gated(bed: &SignedBed) -> Gated {
    write_signed_policy(bed);
    let settings = Settings {
        insecure: vec![bed.addr.clone()],
        ..settings()
    };
    let config = settings.write(&bed.dir, &bed.containerd);
    bed.install_verifier(&config);
    let doctor = bed.doctor_pull_verifier();
    Gated {
        daemon: DaemonProcess::start(&bed.dir, &config, "cri"),
        events: settings.events(&bed.dir),
        cri: Cri::connect(&bed.containerd.socket, &bed.dir.join("logs")),
        doctor,
    }
}

/// containerd 2.x's CRI plugin pulls through the transfer service, whose image verifier hook
/// asks imagegate first (issue 13, item 3, through CRI): with the verifier in the private
/// containerd's `bin_dir` (the packaged script's shape), kubelet's `PullImage` of an unsigned
/// image fails with imagegate's reason in the gRPC status message (what kubelet reports as
/// `ErrImagePull`) and leaves no image record; `RunPodSandbox`, whose unsigned sandbox image is
/// not on the node, fails the same way at its pull; signed images are pulled, and their pod
/// and container run. An unsigned image imported with `ctr images import` (no verifier on that
/// path) is still denied by the kernel when kubelet creates a container from it. On 1.x, which
/// has no verifier hook, it skips.
#[test]
fn containerd_2_refuses_untrusted_cri_pulls_with_imagegates_reason() {
    if support::containerd::major_version() < 2 {
        eprintln!(
            "SKIPPED: containerd {} has no image verifier hook (cargo xtask test --containerd 2.1)",
            support::containerd::major_version()
        );
        return;
    }
    let Some(bed) = SignedBed::start_cri("e2e-cri-verifier", PAUSE) else {
        return;
    };
    let dir = bed.dir.clone();
    // The registry's pause image is unsigned at first, and the node does not have it.
    let bad_pause = pause_image(&bed, "pause-unsigned");
    let bad_pause_digest = bed.push(PAUSE, &bad_pause, None);
    let app = app_image(&bed, "app", &["/bin/busybox", "sleep", "600"]);
    bed.push("apps/app", &app, Some(&bed.trusted));
    let unsigned = app_image(&bed, "unsigned", &["/bin/busybox", "echo", "unsigned ran"]);
    let unsigned_digest = bed.push("apps/unsigned", &unsigned, None);
    // Never in the registry: only imported.
    let imported = app_image(&bed, "imported", &["/bin/busybox", "echo", "imported ran"]);
    let Gated {
        daemon,
        events,
        mut cri,
        doctor,
    } = start_gated(&bed);
    assert!(
        doctor.contains(" yes ") && doctor.contains("CRI PullImage and sandbox images"),
        "{doctor}"
    );

    // PullImage of an unsigned image: refused before anything is fetched, with the verdict.
    let unsigned_name = bed.name("apps/unsigned");
    let error = cri
        .pull(&unsigned_name)
        .expect_err("the unsigned image was pulled");
    eprintln!("PullImage of an unsigned image: {error:?}");
    let message = error.message();
    assert!(
        message.starts_with(&format!(
            "failed to pull and unpack image \"{unsigned_name}\": "
        )),
        "{message}"
    );
    support::signed::assert_pull_refused(message, &unsigned_name, &unsigned_digest);
    assert!(
        message.contains(&format!(
            "UNTRUSTED {unsigned_name} under scope \"{}/apps/**\" (enforce)",
            bed.addr
        )),
        "{message}"
    );
    assert!(cri.image_id(&unsigned_name).is_none());
    assert!(!records(&bed).iter().any(|r| r.contains("apps/unsigned")));

    // RunPodSandbox must pull the (unsigned) sandbox image: refused at that pull, no sandbox.
    let pause_name = bed.name(PAUSE);
    let (pod, run) = cri.try_run_pod("default", "refused-sandbox");
    let error = run.expect_err("a sandbox of an unsigned pause image was created");
    eprintln!("RunPodSandbox with an unsigned sandbox image to pull: {error:?}");
    let message = error.message();
    assert!(
        message.contains(&format!("failed to pull image \"{pause_name}\": ")),
        "{message}"
    );
    support::signed::assert_pull_refused(message, &pause_name, &bad_pause_digest);
    assert!(pod.sandbox.is_empty());
    assert!(cri.image_id(&pause_name).is_none());

    // Signed: pulled, and the pod and its container run.
    let pause = pause_image(&bed, "pause");
    bed.push(PAUSE, &pause, Some(&bed.trusted));
    let app_id = pull(&mut cri, &bed, "apps/app", "trusted");
    pull(&mut cri, &bed, PAUSE, "trusted");
    let pod = cri.run_pod("default", "signed");
    let (main, start) = run_container(&mut cri, &pod, "main", 0, &app_id, &bed.name("apps/app"));
    start.unwrap();
    let probe = cri
        .exec_sync(&main, &["/bin/busybox", "echo", "probe ok"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "probe ok");

    // Imported (`ctr images import`: no verifier on that path) into CRI's namespace: the CRI
    // plugin knows it, and the kernel denies the container kubelet creates from it.
    let imported_name = bed.name("apps/imported");
    let archive = dir.join("imported.tar");
    support::image::write_archive(&archive, &imported_name, &imported, false);
    bed.containerd.import("k8s.io", &archive);
    daemon.wait_for_verdicts(&dir, &[(imported_name.clone(), "untrusted")]);
    let imported_id = cri
        .image_id(&imported_name)
        .expect("the CRI plugin knows the imported image");
    let image = Untrusted {
        id: &imported_id,
        name: &imported_name,
        digest: &imported.manifest_digest(),
    };
    assert_runs_nothing(&mut cri, &events, &pod, "imported", &image, "imported ran");
    cri.remove_pod(&pod).unwrap();

    // Every gated pull was the daemon's answer; the import never reached the verifier.
    let log = daemon.log_text();
    for (message, name) in [
        ("pull refused", &unsigned_name),
        ("pull refused", &pause_name),
        ("pull admitted", &bed.name("apps/app")),
        ("pull admitted", &pause_name),
    ] {
        assert!(
            log.lines()
                .any(|line| line.contains(message) && line.contains(name.as_str())),
            "no {message:?} for {name} in the daemon's log:\n{log}"
        );
    }
    assert!(
        !log.lines()
            .any(|line| line.contains("pull") && line.contains("apps/imported")),
        "the import reached the verifier:\n{log}"
    );
    daemon.stop();
}

/// containerd 2.x's CRI plugin pulls in the client, without the image verifier hook, when told
/// to (`use_local_image_pull = true`) and when an image setting the transfer service lacks is
/// set (here `max_concurrent_downloads` other than 3; containerd logs that it falls back). With
/// the verifier installed all the same: `imagegate doctor` says CRI pulls are not gated,
/// `PullImage` of an unsigned image succeeds without asking the verifier, and the kernel denies
/// the container kubelet creates from it.
#[test]
fn containerd_2_cri_local_pulls_skip_the_verifier_and_the_kernel_still_denies() {
    if support::containerd::major_version() < 2 {
        eprintln!("SKIPPED: containerd 1.x has no image verifier hook");
        return;
    }
    for (setting, fallback) in [
        ("use_local_image_pull = true\n", false),
        ("max_concurrent_downloads = 10\n", true),
    ] {
        let Some(bed) = SignedBed::start_cri_with("e2e-cri-local-pull", PAUSE, setting) else {
            return;
        };
        let dir = bed.dir.clone();
        let pause = pause_image(&bed, "pause");
        bed.push(PAUSE, &pause, Some(&bed.trusted));
        let unsigned = app_image(&bed, "unsigned", &["/bin/busybox", "echo", "unsigned ran"]);
        let unsigned_digest = bed.push("apps/unsigned", &unsigned, None);
        let Gated {
            daemon,
            events,
            mut cri,
            doctor,
        } = start_gated(&bed);
        assert!(
            doctor.contains(" no ") && doctor.contains("but CRI pulls (kubelet) do not"),
            "{setting}: {doctor}"
        );
        let unsigned_id = pull(&mut cri, &bed, "apps/unsigned", "untrusted");
        pull(&mut cri, &bed, PAUSE, "trusted");
        let log = std::fs::read_to_string(dir.join("containerd.log")).unwrap();
        assert_eq!(
            log.contains("Falling back to local image pull mode"),
            fallback,
            "{setting}: {log}"
        );
        let pod = cri.run_pod("default", "local-pull");
        let unsigned_name = bed.name("apps/unsigned");
        let image = Untrusted {
            id: &unsigned_id,
            name: &unsigned_name,
            digest: &unsigned_digest,
        };
        assert_runs_nothing(&mut cri, &events, &pod, "main", &image, "unsigned ran");
        cri.remove_pod(&pod).unwrap();
        let log = daemon.log_text();
        assert!(
            !log.contains("pull refused") && !log.contains("pull admitted"),
            "{setting}: a CRI pull reached the verifier:\n{log}"
        );
        daemon.stop();
    }
}
