//! End to end on this machine: `imagegate daemon` (fanotify backend, since this kernel refuses
//! BPF LSM programs) watching a private containerd whose root is on its own tmpfs, real runc
//! containers started with `ctr run`:
//! a trusted image's entrypoint runs; an untrusted image's cannot execute (`operation not
//! permitted`) and an event names the image and its digest; a container of an image made of a
//! trusted base plus an untrusted top layer runs nothing, not even the base's binary; an image
//! whose layers are the trusted image's and whose config alone differs runs nothing; a retag of
//! the trusted image runs; drift is denied; audit mode reports and allows.
//!
//! Trust here comes from the policy's `accept`/`reject` scopes so that this test needs no
//! registry; signature verification has its own tests (registry.rs, testvectors.rs).
//!
//! `imagegate explain` (why a container may not run) has its own test here, on signed and
//! unsigned images in Debian's docker-registry: `ctr` containers denied and allowed, explained
//! by the daemon, and an image explained in process once the daemon is gone.

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use support::{
    containerd::PrivateContainerd,
    daemon::{self, DaemonProcess, Settings},
    explain,
    image::{self, File},
    reload,
    signed::SignedBed,
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
[[scope]]
match = "registry.test/strict/**"
require = "accept"
outside_image = "deny"
"#;

fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox").expect("busybox (apt-get install busybox-static)")
}

fn settings(mode: &'static str) -> Settings<'static> {
    Settings {
        mode,
        backend: "fanotify",
        insecure: Vec::new(),
        tag: mode,
    }
}

/// Waits until `imagegate status` reports `images` judged images.
fn wait_ready(dir: &Path, images: u64, daemon_log: &Path) {
    let started = Instant::now();
    loop {
        if let Some(status) = daemon::status(dir) {
            let judged = status["images"]["trusted"].as_u64().unwrap_or(0)
                + status["images"]["untrusted"].as_u64().unwrap_or(0);
            if judged >= images {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "daemon not ready: {}",
            std::fs::read_to_string(daemon_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// containerd's root on btrfs (a loop device): the fanotify backend's marks and keys hold
/// there too (support/btrfs.rs).
#[test]
fn daemon_enforces_with_containerd_root_on_btrfs() {
    if !support::is_root() {
        eprintln!("skipping: containerd, runc, loop devices and fanotify need root");
        return;
    }
    let dir = support::scratch_dir("e2e-fanotify-btrfs");
    let log = support::btrfs::enforce_with_root_on_btrfs(&dir, "fanotify");
    assert!(log.contains("fanotify"), "{log}");
}

/// Case 9: a new snapshot that gets a removed trusted one's inode number inherits nothing.
#[test]
fn a_reused_snapshot_inode_inherits_nothing() {
    if !support::is_root() {
        eprintln!("skipping: containerd, runc, loop devices and fanotify need root");
        return;
    }
    let dir = support::scratch_dir("e2e-fanotify-inode-reuse");
    let log = support::inode_reuse::a_reused_inode_inherits_nothing(&dir, "fanotify");
    assert!(log.contains("fanotify"), "{log}");
}

#[test]
fn daemon_enforces_on_real_containers_with_fanotify() {
    if !support::is_root() {
        eprintln!("skipping: containerd, runc and fanotify need root");
        return;
    }
    let dir = support::scratch_dir("e2e-fanotify");
    let containerd = PrivateContainerd::start_on_tmpfs(&dir);
    std::fs::write(dir.join("policy.toml"), POLICY).expect("policy");

    let base = image::layer(&[File::new("bin/busybox", busybox(), 0o755)]);
    let trusted = image::image(vec![base.clone()]);
    let untrusted = image::image(vec![image::layer(&[
        File::new("bin/busybox", busybox(), 0o755),
        File::new("etc/untrusted", "x", 0o644),
    ])]);
    let mixed = image::image(vec![
        base.clone(),
        image::layer(&[File::new("bin/evil", busybox(), 0o755)]),
    ]);
    // Byte-identical layers, another entrypoint: a different manifest, judged on its own.
    let config_only =
        imagegate_testkit::image::image(vec![base], &["/bin/busybox", "echo", "tampered"]);
    assert_ne!(config_only.manifest_digest(), trusted.manifest_digest());
    let two_layers = image::image(vec![
        image::layer(&[File::new("bin/busybox", busybox(), 0o755)]),
        image::layer(&[File::new("etc/second", "2", 0o644)]),
    ]);
    for (name, img) in [
        ("registry.test/trusted/app:1", &trusted),
        ("registry.test/trusted/two:1", &two_layers),
        ("registry.test/trusted/retag:1", &trusted),
        ("registry.test/untrusted/app:1", &untrusted),
        ("registry.test/mixed/app:1", &mixed),
        ("registry.test/tampered/app:1", &config_only),
        ("registry.test/audited/app:1", &untrusted),
        ("registry.test/strict/app:1", &trusted),
    ] {
        let archive = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        image::write_archive(&archive, name, img, false);
        containerd.import("default", &archive);
    }

    // Enforce mode.
    let enforce = settings("enforce");
    let daemon = DaemonProcess::start(&dir, &enforce.write(&dir, &containerd), "enforce");
    let daemon_log = daemon.log.clone();
    wait_ready(&dir, 8, &daemon_log);
    let events_path = enforce.events(&dir);

    let out = containerd.run(
        "registry.test/trusted/app:1",
        "c-trusted",
        &["/bin/busybox", "echo", "hello"],
    );
    assert!(
        out.status.success(),
        "trusted container failed: {out:?}\n{}",
        std::fs::read_to_string(&daemon_log).unwrap_or_default()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");

    let out = containerd.run(
        "registry.test/untrusted/app:1",
        "c-untrusted",
        &["/bin/busybox", "echo", "hello"],
    );
    assert!(!out.status.success(), "untrusted container ran: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("operation not permitted"),
        "unexpected failure: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = daemon::wait_for_event(&events_path, |e| {
        e["verdict"] == "denied" && daemon::names_image(e, "registry.test/untrusted/app:1")
    });
    let owner = event["images"].as_array().expect("images")[0].clone();
    assert_eq!(
        owner["manifest_digest"],
        untrusted.manifest_digest(),
        "{event}"
    );

    // A retag of the trusted image is the same manifest: it runs.
    let out = containerd.run(
        "registry.test/trusted/retag:1",
        "c-retag",
        &["/bin/busybox", "echo", "retagged"],
    );
    assert!(
        out.status.success(),
        "retag of the trusted image failed: {out:?}"
    );

    // Trusted base, untrusted top layer: the container runs nothing, not even the base's
    // binary (a file of a layer a trusted image vouches for).
    let out = containerd.run(
        "registry.test/mixed/app:1",
        "c-mixed-base",
        &["/bin/busybox", "echo", "base ran"],
    );
    daemon::assert_denied(&out, "base binary in a container of the mixed image");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("base ran"));
    let event = daemon::wait_for_event(&events_path, |e| {
        e["reason"] == "untrusted_image" && e["container"]["id"] == "c-mixed-base"
    });
    assert_eq!(
        event["container"]["image"], "registry.test/mixed/app:1",
        "{event}"
    );
    assert_eq!(
        event["container"]["digest"],
        mixed.manifest_digest(),
        "{event}"
    );
    assert_eq!(event["container"]["trusted"], false, "{event}");
    assert_eq!(event["path"], "/bin/busybox", "{event}");
    let out = containerd.run(
        "registry.test/mixed/app:1",
        "c-mixed-top",
        &["/bin/evil", "true"],
    );
    assert!(
        !out.status.success(),
        "top-layer binary of the mixed image ran: {out:?}"
    );

    // A host process keeps the layer rule, even through an untrusted container's root (what
    // `/proc/<pid>/root/...` resolves to: an overlay of the image's layers): the mixed image's
    // own unsigned layer is denied, its signed base (a trusted image vouches for it) runs.
    host_execs_through_a_container_root(&dir, &containerd, &events_path);

    // Config-only tamper: every layer is the trusted image's, the entrypoint is not.
    let out = containerd.run("registry.test/tampered/app:1", "c-tampered", &[]);
    daemon::assert_denied(&out, "config-only tampered image");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tampered"));
    let event = daemon::wait_for_event(&events_path, |e| {
        e["reason"] == "untrusted_image" && e["container"]["id"] == "c-tampered"
    });
    assert_eq!(
        event["container"]["digest"],
        config_only.manifest_digest(),
        "{event}"
    );

    // A file outside every layer, as CRI copies an image's VOLUME content to
    // `<root>/io.containerd.grpc.v1.cri/containers/<id>/volumes/<vid>` and bind-mounts it: an
    // untrusted image's container cannot run it, a trusted one's may (outside_image = allow).
    let volume = containerd
        .root_dir()
        .join("io.containerd.grpc.v1.cri/containers/c-volume/volumes/v1");
    std::fs::create_dir_all(&volume).expect("volume dir");
    std::fs::write(volume.join("echo"), busybox()).expect("volume binary");
    std::fs::set_permissions(
        volume.join("echo"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        volume.display()
    );
    let out = containerd.run_with(
        &["--mount", &mount],
        "registry.test/untrusted/app:1",
        "c-volume",
        &["/data/echo", "volume ran"],
    );
    daemon::assert_denied(&out, "an untrusted container's VOLUME binary");
    let event = daemon::wait_for_event(&events_path, |e| {
        e["reason"] == "untrusted_image" && e["container"]["id"] == "c-volume"
    });
    assert!(
        event["layer"].is_null(),
        "a volume file is in no layer: {event}"
    );
    let out = containerd.run_with(
        &["--mount", &mount],
        "registry.test/trusted/app:1",
        "c-volume-trusted",
        &["/data/echo", "volume ran"],
    );
    assert!(
        out.status.success(),
        "a trusted container's volume binary: {out:?}"
    );
    // A trusted image whose policy scope says outside_image = "deny": its own files run, the
    // volume's binary does not.
    let out = containerd.run_with(
        &["--mount", &mount],
        "registry.test/strict/app:1",
        "c-strict",
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox echo own; /data/echo volume ran",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "own",
        "{out:?}"
    );
    let event = daemon::wait_for_event(&events_path, |e| {
        e["reason"] == "outside_image" && e["container"]["id"] == "c-strict"
    });
    assert_eq!(event["verdict"], "denied", "{event}");

    // Read-only root file systems (a view: lower layers only): judged by the top layer.
    let out = containerd.run_with(
        &["--read-only"],
        "registry.test/trusted/two:1",
        "c-ro-trusted",
        &["/bin/busybox", "echo", "read-only ran"],
    );
    assert!(
        out.status.success(),
        "a trusted read-only container: {out:?}"
    );
    let out = containerd.run_with(
        &["--read-only"],
        "registry.test/mixed/app:1",
        "c-ro-mixed",
        &["/bin/busybox", "echo", "read-only ran"],
    );
    daemon::assert_denied(&out, "the mixed image's read-only container");
    // A one-layer read-only root is a bind mount of the layer directory, not an overlay: still
    // the container of its (untrusted) image, which runs nothing, not even a volume's binary.
    let volume_denials = |path: &Path| {
        daemon::events(path)
            .into_iter()
            .filter(|e| e["reason"] == "untrusted_image" && e["layer"].is_null())
            .count()
    };
    let before = volume_denials(&events_path);
    let out = containerd.run_with(
        &["--read-only", "--mount", &mount],
        "registry.test/untrusted/app:1",
        "c-ro-volume",
        &["/data/echo", "volume ran"],
    );
    daemon::assert_denied(
        &out,
        "a one-layer read-only untrusted container's volume binary",
    );
    daemon::wait_for_event(&events_path, |_| volume_denials(&events_path) > before);

    // An audit-mode scope: its untrusted image's container runs, and each exec is reported once.
    let out = containerd.run(
        "registry.test/audited/app:1",
        "c-audited",
        &["/bin/busybox", "echo", "audited ran"],
    );
    assert!(
        out.status.success(),
        "an audit scope's container was denied: {out:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "audited ran");
    daemon::wait_for_event(&events_path, |e| e["container"]["id"] == "c-audited");
    std::thread::sleep(Duration::from_millis(300));
    let reports: Vec<_> = daemon::events(&events_path)
        .into_iter()
        .filter(|e| e["container"]["id"] == "c-audited")
        .collect();
    assert_eq!(reports.len(), 1, "one exec, one report: {reports:?}");
    assert_eq!(reports[0]["verdict"], "audit", "{}", reports[0]);
    assert_eq!(reports[0]["reason"], "untrusted_image", "{}", reports[0]);

    // Case 1, `ctr exec` into a running container of an untrusted image, once it enforces.
    let enforcing = POLICY.replace(
        "require = \"reject\"\nmode = \"audit\"\n",
        "require = \"reject\"\n",
    );
    reload::exec_is_denied_once_the_scope_enforces(
        &containerd,
        &daemon,
        &events_path,
        "registry.test/audited/app:1",
        "/bin/busybox",
        &reload::ScopeTurnsToEnforce {
            policy_path: &dir.join("policy.toml"),
            auditing: POLICY,
            enforcing: &enforcing,
        },
    );

    // Drift: a binary written into the container's writable layer cannot run.
    let out = containerd.run(
        "registry.test/trusted/app:1",
        "c-drift",
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox cp /bin/busybox /dropped && /dropped true",
        ],
    );
    assert!(!out.status.success(), "drift ran: {out:?}");
    let event = daemon::wait_for_event(&events_path, |e| e["reason"] == "drift");
    assert_eq!(event["container"]["id"], "c-drift", "{event}");
    assert_eq!(event["path"], "/dropped", "{event}");
    daemon.stop();

    // Audit mode: the untrusted image runs, and is reported.
    let audit = settings("audit");
    let daemon = DaemonProcess::start(&dir, &audit.write(&dir, &containerd), "audit");
    wait_ready(&dir, 8, &daemon.log);
    let out = containerd.run(
        "registry.test/untrusted/app:1",
        "c-audit",
        &["/bin/busybox", "echo", "hello"],
    );
    assert!(out.status.success(), "audit mode blocked: {out:?}");
    let event = daemon::wait_for_event(&audit.events(&dir), |e| e["verdict"] == "audit");
    assert_eq!(event["container"]["id"], "c-audit", "{event}");
    assert_eq!(event["path"], "/bin/busybox", "{event}");
    daemon.stop();
}

/// `imagegate explain` on `ctr` containers: an unsigned image's denied container (removed by
/// `ctr run --rm`, still explained), a signed one's, an image signed by a key the policy does
/// not trust; an unknown id; the daemon gone (a container cannot be explained, an image is
/// verified in process).
#[test]
fn explain_says_why_a_container_was_denied_and_who_signed_the_allowed_one() {
    let Some(bed) = SignedBed::start("e2e-explain") else {
        return;
    };
    let dir = bed.dir.clone();
    let signed = bed.image_on(&bed.busybox_layer(None), "signed");
    let signed_digest = bed.push("apps/signed", &signed, Some(&bed.trusted));
    let unsigned = bed.image_on(&bed.busybox_layer(Some("unsigned")), "unsigned");
    let unsigned_digest = bed.push("apps/unsigned", &unsigned, None);
    let other = bed.image_on(&bed.busybox_layer(Some("other")), "other");
    let other_digest = bed.push("apps/other-key", &other, Some(&bed.other));
    bed.write_policy("apps");
    let names = ["apps/signed", "apps/unsigned", "apps/other-key"].map(|repo| bed.name(repo));
    bed.pull_all(&names, 3);
    let settings = Settings {
        insecure: vec![bed.addr.clone()],
        ..settings("enforce")
    };
    let config = settings.write(&dir, &bed.containerd);
    let daemon = DaemonProcess::start(&dir, &config, "explain");
    daemon.wait_for_verdicts(
        &dir,
        &[
            (names[0].clone(), "trusted"),
            (names[1].clone(), "untrusted"),
            (names[2].clone(), "untrusted"),
        ],
    );
    let events = settings.events(&dir);
    let scope = format!("{}/apps/**", bed.addr);

    // The unsigned image's container: denied, removed (`ctr run --rm`), explained.
    let out = bed
        .containerd
        .run(&names[1], "c-unsigned", &["/bin/busybox", "echo", "hello"]);
    daemon::assert_denied(&out, "the unsigned image's container");
    daemon::wait_for_event(&events, |e| e["container"]["id"] == "c-unsigned");
    let json = explain::assert_unsigned_denied(
        &dir,
        "c-unsigned",
        &names[1],
        &unsigned_digest,
        &scope,
        "/bin/busybox",
    );
    assert_eq!(json["container"]["namespace"], "default", "{json}");
    assert_eq!(json["container"]["removed"], true, "{json}");

    // The signed image's container runs; its explanation names the key that accepted it and
    // where the signature was found; by a unique prefix of its id, in its namespace.
    let out = bed.containerd.ctr(&[
        "run",
        "--detach",
        &names[0],
        "c-signed",
        "/bin/busybox",
        "sleep",
        "60",
    ]);
    assert!(out.status.success(), "the signed container: {out:?}");
    explain::assert_signed(&dir, "c-signed", &names[0], &signed_digest, "trusted");
    let json = explain::json(&dir, "c-sig", &["--namespace", "default"]);
    assert_eq!(json["container"]["id"], "c-signed", "{json}");
    assert_eq!(json["container"]["enforced_trust"], "trusted", "{json}");
    assert_eq!(json["denials"], serde_json::json!([]), "{json}");

    // An image by reference: signed, but by a key the policy does not trust; rejected, why.
    let json = explain::json(&dir, &names[2], &[]);
    assert!(json["container"].is_null(), "{json}");
    let judged = &json["images"][0];
    assert_eq!(judged["namespace"], "default", "{json}");
    assert_eq!(judged["manifest_digest"], other_digest.as_str(), "{json}");
    assert_eq!(judged["verdict"], "untrusted", "{json}");
    let rejected = &judged["signatures"][0];
    assert_eq!(rejected["accepted"], false, "{json}");
    assert_eq!(rejected["found_in"], "legacy_sig_tag", "{json}");
    assert_eq!(rejected["authority"], "trusted", "{json}");
    assert_eq!(rejected["failure"], "signature", "{json}");
    let text = explain::text(&dir, &names[2]);
    assert!(
        text.contains("rejected: the signature does not verify with this authority's key"),
        "{text}"
    );
    assert!(
        text.contains("verdict: UNTRUSTED: 1 signature found, none accepted enough: 0 of 1 required authorities satisfied"),
        "{text}"
    );

    // Unknown: exit 1, said so.
    let unknown = explain::run(&dir, "no-such-container", &[]);
    assert_eq!(unknown.code, 1, "{} {}", unknown.stdout, unknown.stderr);
    assert!(
        unknown
            .stdout
            .contains("no container or image no-such-container known to the daemon"),
        "{}",
        unknown.stdout
    );
    explain::assert_socket_protocol(&dir);
    let _ = bed
        .containerd
        .ctr(&["tasks", "kill", "-s", "KILL", "c-signed"]);
    daemon.stop();

    // No daemon: a container cannot be explained (exit 2); an image is verified in process.
    let gone = explain::run(&dir, "c-unsigned", &[]);
    assert_eq!(gone.code, 2, "{} {}", gone.stdout, gone.stderr);
    assert!(gone.stdout.contains("does not answer"), "{}", gone.stdout);
    let config_arg = config.display().to_string();
    let fallback = explain::run(
        &dir,
        &names[0],
        &["--config", &config_arg, "--output", "json"],
    );
    assert_eq!(fallback.code, 0, "{} {}", fallback.stdout, fallback.stderr);
    let json = fallback.json();
    assert_eq!(json["answered_by"], "in_process", "{json}");
    assert_eq!(json["images"][0]["verdict"], "trusted", "{json}");
    assert_eq!(json["images"][0]["manifest_digest"], signed_digest.as_str());
    let fallback = explain::run(&dir, &names[0], &["--config", &config_arg]);
    assert!(
        fallback
            .stdout
            .contains("the daemon did not answer: the daemon does not answer on"),
        "{}",
        fallback.stdout
    );
    std::thread::sleep(Duration::from_millis(200));
    let _ = bed.containerd.ctr(&["tasks", "rm", "-f", "c-signed"]);
    let _ = bed.containerd.ctr(&["containers", "rm", "c-signed"]);
}

/// Case 7: a host process executing the mixed image's files through an overlay of its layers.
fn host_execs_through_a_container_root(
    dir: &Path,
    containerd: &PrivateContainerd,
    events_path: &Path,
) {
    let layer_with = |file: &str, alone: bool| {
        std::fs::read_dir(containerd.snapshots_dir())
            .expect("snapshots dir")
            .map(|entry| entry.expect("entry").path().join("fs"))
            .find(|fs| {
                fs.join(file).exists()
                    && (!alone || std::fs::read_dir(fs).map(Iterator::count).ok() == Some(1))
                    && (!alone
                        || std::fs::read_dir(fs.join("bin")).map(Iterator::count).ok() == Some(1))
            })
            .unwrap_or_else(|| panic!("no layer holds {file}"))
    };
    let evil = layer_with("bin/evil", false);
    let base = layer_with("bin/busybox", true);
    let root = dir.join("host-view");
    std::fs::create_dir_all(&root).expect("mkdir");
    let options = format!("lowerdir={}:{}", evil.display(), base.display());
    let out = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&root)
        .output()
        .expect("mount");
    assert!(out.status.success(), "mounting the view: {out:?}");
    let run = |path: &str| {
        std::process::Command::new(root.join(path))
            .args(["echo", "host ran"])
            .output()
    };
    let evil_run = run("bin/evil");
    let base_run = run("bin/busybox");
    let _ = std::process::Command::new("umount").arg(&root).status();
    match evil_run {
        Err(error) => assert_eq!(
            error.raw_os_error(),
            Some(libc::EPERM),
            "the unsigned layer's binary: {error}"
        ),
        Ok(out) => panic!("a host process ran the mixed image's unsigned layer: {out:?}"),
    }
    let event = daemon::wait_for_event(events_path, |e| {
        e["reason"] == "unverified_layer" && e["container"].is_null()
    });
    assert_eq!(event["verdict"], "denied", "{event}");
    let out = base_run.expect("the signed base's binary");
    assert!(out.status.success(), "the signed base's binary: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "host ran");
}
