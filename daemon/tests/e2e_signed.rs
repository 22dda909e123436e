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

use std::path::Path;

use imagegate_testkit::{
    image::{self, File},
    registry::{self, LocalRegistry},
    sign::{self, Key},
};
use support::{
    containerd::PrivateContainerd,
    daemon::{self, assert_denied, assert_names_image, DaemonProcess},
};

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
    let config = daemon::write_config(&dir, &containerd, "enforce", "fanotify", Some(&addr));
    let daemon = DaemonProcess::start(&config, &dir.join("daemon.log"));
    daemon.wait_up(&dir);

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
    let expected: Vec<(String, &str)> = [
        ("e2e/signed", "trusted"),
        ("e2e/unsigned", "untrusted"),
        ("e2e/untrusted-key", "untrusted"),
        ("e2e/mixed", "untrusted"),
    ]
    .into_iter()
    .map(|(repo, outcome)| (name(repo), outcome))
    .collect();
    daemon.wait_for_verdicts(&dir, &expected);
    let events_path = daemon::events_path(&dir, "enforce");

    // 1. Signed by the trusted key: the entrypoint runs.
    let out = containerd.run(&name("e2e/signed"), "c-signed", &[]);
    assert!(
        out.status.success(),
        "signed image failed: {out:?}\n{}",
        daemon.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");

    // 2. Unsigned, and signed by a key the policy does not trust: the entrypoint cannot execute.
    let out = containerd.run(&name("e2e/unsigned"), "c-unsigned", &[]);
    assert_denied(&out, "unsigned image");
    assert_names_image(
        &daemon::verdict_for(&events_path, "denied", &name("e2e/unsigned")),
        &name("e2e/unsigned"),
        &unsigned.manifest_digest(),
    );

    let out = containerd.run(&name("e2e/untrusted-key"), "c-untrusted", &[]);
    assert_denied(&out, "image signed by an untrusted key");
    assert_names_image(
        &daemon::verdict_for(&events_path, "denied", &name("e2e/untrusted-key")),
        &name("e2e/untrusted-key"),
        &untrusted.manifest_digest(),
    );

    // 3. Signed base + unsigned top layer: the top layer's binary cannot execute (and is an
    // unverified layer, not drift: unpacking commits the layer in place), the base's can.
    let out = containerd.run(&name("e2e/mixed"), "c-mixed-top", &[]);
    assert_denied(&out, "top layer of the mixed image");
    assert_names_image(
        &daemon::verdict_for(&events_path, "denied", &name("e2e/mixed")),
        &name("e2e/mixed"),
        &mixed.manifest_digest(),
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
