//! Signed images end to end on this machine: Debian's docker-registry on 127.0.0.1, images
//! pushed and signed there in cosign's legacy `.sig` format with fresh ECDSA P-256 keys
//! (imagegate-testkit's signer), pulled with `ctr images pull --plain-http` into a private
//! containerd on its own tmpfs, and `imagegate daemon` (fanotify backend) deciding from the
//! signatures: the image signed by the policy's key runs; an unsigned one, one signed by a key
//! the policy does not trust, and the top layer of an unsigned image built on the signed one
//! cannot execute, each with a decision event naming the image and its digest.
//! The same flow, narrated, is `cargo xtask demo`.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod support;

use std::{
    path::Path,
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use imagegate_testkit::{
    image::{self, File, Image},
    registry::{self, LocalRegistry},
    sign::{self, Key},
};
use serde_json::Value;
use support::{containerd::PrivateContainerd, daemon};

/// The first denial naming `name`, waited for up to 10 s.
fn denial_for(path: &Path, name: &str) -> Value {
    daemon::wait_for_event(path, |e| {
        e["verdict"] == "denied" && daemon::names_image(e, name)
    })
}

/// The daemon under test, stopped by its pid when dropped.
struct DaemonProcess(Option<Child>);

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            registry::stop_child(child, Duration::from_secs(5));
        }
    }
}

fn outcome(status: &Value, name: &str) -> Option<String> {
    status["verdicts"]
        .as_array()?
        .iter()
        .find(|v| v["image"] == name)
        .and_then(|v| v["outcome"].as_str().map(str::to_owned))
}

fn assert_denied(out: &Output, what: &str) {
    assert!(!out.status.success(), "{what} ran: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("operation not permitted"),
        "{what} failed otherwise: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The denial names `image` with `digest`, for an unverified layer (not drift).
fn assert_event(event: &Value, name: &str, image: &Image) {
    assert_eq!(event["reason"], "unverified_layer", "{event}");
    let owner = event["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"]["name"] == name)
        .unwrap();
    assert_eq!(owner["manifest_digest"], image.manifest_digest(), "{event}");
}

#[test]
fn signed_images_run_and_unsigned_or_untrusted_ones_cannot() {
    if !support::is_root() {
        eprintln!("skipping: containerd, runc and fanotify need root");
        return;
    }
    if !Path::new(registry::REGISTRY_BIN).exists() {
        assert!(
            std::env::var_os("IMAGEGATE_REQUIRE_REGISTRY").is_none(),
            "IMAGEGATE_REQUIRE_REGISTRY is set but {} is missing",
            registry::REGISTRY_BIN
        );
        eprintln!("SKIPPED: {} not installed", registry::REGISTRY_BIN);
        return;
    }
    let dir = support::scratch_dir("e2e-signed");
    let containerd = PrivateContainerd::start_on_tmpfs(&dir);
    let registry = LocalRegistry::start(&dir.join("registry")).unwrap();
    let addr = registry.addr.clone();

    // Images: a shared busybox base; each image judged on its own gets a distinct layer.
    let busybox = std::fs::read("/bin/busybox").expect("busybox (apt-get install busybox-static)");
    let base = image::layer(&[File::new("bin/busybox", busybox.clone(), 0o755)]).unwrap();
    let own = |marker: &str| {
        image::layer(&[
            File::new("bin/busybox", busybox.clone(), 0o755),
            File::new(&format!("etc/{marker}"), marker, 0o644),
        ])
        .unwrap()
    };
    let hello = ["/bin/busybox", "echo", "hello"];
    let signed = image::image(vec![base.clone()], &hello);
    let unsigned = image::image(vec![own("unsigned")], &hello);
    let untrusted = image::image(vec![own("untrusted")], &hello);
    let top = ["/usr/local/bin/busybox", "echo", "top"];
    let mixed = image::image(
        vec![
            base,
            image::layer(&[File::new("usr/local/bin/busybox", busybox, 0o755)]).unwrap(),
        ],
        &top,
    );

    let trusted_key = Key::generate().unwrap();
    let other_key = Key::generate().unwrap();
    let client = registry::Client::new(&addr).unwrap();
    let name = |repo: &str| format!("{addr}/{repo}:v1");
    for (repo, img, key) in [
        ("e2e/signed", &signed, Some(&trusted_key)),
        ("e2e/unsigned", &unsigned, None),
        ("e2e/untrusted-key", &untrusted, Some(&other_key)),
        ("e2e/mixed", &mixed, None),
    ] {
        let digest = client.push_image(repo, "v1", img).unwrap();
        if let Some(key) = key {
            sign::sign_legacy(&client, key, &addr, repo, &digest).unwrap();
        }
    }

    std::fs::write(dir.join("trusted.pub"), trusted_key.public_pem().unwrap()).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        format!(
            "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"{addr}/e2e/**\"\n\
             require = \"signatures\"\n[[scope.keys]]\nname = \"trusted\"\npath = \"{}\"\n",
            dir.join("trusted.pub").display()
        ),
    )
    .unwrap();
    let config = dir.join("imagegate.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"enforce\"\ndrift = \"deny\"\nbackend = \"fanotify\"\npolicy = \"{policy}\"\n\
             state_dir = \"{state}\"\nevent_log = \"{events}\"\nstatus_socket = \"{status}\"\n\
             [containerd]\nsocket = \"{socket}\"\nroot = \"{root}\"\n\
             [registry]\ninsecure = [\"{addr}\"]\ntimeout_seconds = 5\n",
            policy = dir.join("policy.toml").display(),
            state = dir.join("state").display(),
            events = dir.join("events.jsonl").display(),
            status = dir.join("status.sock").display(),
            socket = containerd.socket.display(),
            root = containerd.data.join("root").display(),
        ),
    )
    .unwrap();
    let log = dir.join("daemon.log");
    let _daemon = DaemonProcess(Some(
        Command::new(env!("CARGO_BIN_EXE_imagegate"))
            .args(["daemon", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(dir.join("daemon.stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start imagegate daemon"),
    ));
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = Instant::now();
    while daemon::status(&dir).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "daemon not up: {}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Pulled while the daemon runs: verified on pull, from the registry's signatures.
    for repo in [
        "e2e/signed",
        "e2e/unsigned",
        "e2e/untrusted-key",
        "e2e/mixed",
    ] {
        let out = containerd.ctr(&["images", "pull", "--plain-http", &name(repo)]);
        assert!(out.status.success(), "pull {repo}: {out:?}");
    }
    let expected = [
        ("e2e/signed", "trusted"),
        ("e2e/unsigned", "untrusted"),
        ("e2e/untrusted-key", "untrusted"),
        ("e2e/mixed", "untrusted"),
    ];
    let started = Instant::now();
    loop {
        let now = daemon::status(&dir).unwrap_or(Value::Null);
        let outcomes: Vec<Option<String>> = expected
            .iter()
            .map(|(repo, _)| outcome(&now, &name(repo)))
            .collect();
        if outcomes.iter().all(Option::is_some) {
            for ((repo, want), got) in expected.iter().zip(&outcomes) {
                assert_eq!(got.as_deref(), Some(*want), "{repo}: {now}");
            }
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "verdicts missing: {now}\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let events_path = dir.join("events.jsonl");

    // 1. Signed by the trusted key: the entrypoint runs.
    let out = containerd.run(&name("e2e/signed"), "c-signed", &[]);
    assert!(
        out.status.success(),
        "signed image failed: {out:?}\n{}",
        daemon_log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");

    // 2. Unsigned, and signed by a key the policy does not trust: the entrypoint cannot execute.
    let out = containerd.run(&name("e2e/unsigned"), "c-unsigned", &[]);
    assert_denied(&out, "unsigned image");
    assert_event(
        &denial_for(&events_path, &name("e2e/unsigned")),
        &name("e2e/unsigned"),
        &unsigned,
    );

    let out = containerd.run(&name("e2e/untrusted-key"), "c-untrusted", &[]);
    assert_denied(&out, "image signed by an untrusted key");
    assert_event(
        &denial_for(&events_path, &name("e2e/untrusted-key")),
        &name("e2e/untrusted-key"),
        &untrusted,
    );

    // 3. Signed base + unsigned top layer: the top layer's binary cannot execute (and is an
    // unverified layer, not drift: unpacking commits the layer in place), the base's can.
    let out = containerd.run(&name("e2e/mixed"), "c-mixed-top", &[]);
    assert_denied(&out, "top layer of the mixed image");
    assert_event(
        &denial_for(&events_path, &name("e2e/mixed")),
        &name("e2e/mixed"),
        &mixed,
    );
    let out = containerd.run(
        &name("e2e/mixed"),
        "c-mixed-base",
        &["/bin/busybox", "echo", "base"],
    );
    assert!(
        out.status.success(),
        "base binary of the mixed image failed: {out:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "base");
}
