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

use std::{path::Path, time::Duration};

use imagegate_testkit::image::{self, Image};
use serde_json::Value;
use support::{
    daemon::{self, assert_denied, DaemonProcess, Settings},
    signed::SignedBed,
};

/// The first denial naming `name`, waited for up to 10 s.
fn denial_for(path: &Path, name: &str) -> Value {
    daemon::wait_for_event(path, |e| {
        e["verdict"] == "denied" && daemon::names_image(e, name)
    })
}

/// The denial is a container of an untrusted image (not drift) and names `image` with
/// `digest`, as the container's and the file's layer's, and the path the container saw.
fn assert_event(event: &Value, name: &str, image: &Image, path: &str) {
    assert_eq!(event["reason"], "untrusted_image", "{event}");
    assert_eq!(event["container"]["image"], name, "{event}");
    assert_eq!(
        event["container"]["digest"],
        image.manifest_digest(),
        "{event}"
    );
    let owner = event["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"]["name"] == name)
        .unwrap();
    assert_eq!(owner["manifest_digest"], image.manifest_digest(), "{event}");
    assert_eq!(event["path"], path, "{event}");
}

#[test]
fn signed_images_run_and_unsigned_or_untrusted_ones_cannot() {
    let Some(bed) = SignedBed::start("e2e-signed") else {
        return;
    };
    let dir = bed.dir.clone();

    // Images: a shared busybox base; each image judged on its own gets a distinct layer.
    let hello = ["/bin/busybox", "echo", "hello"];
    let base = bed.busybox_layer(None);
    let signed = image::image(vec![base.clone()], &hello);
    let unsigned = image::image(vec![bed.busybox_layer(Some("unsigned"))], &hello);
    let untrusted = image::image(vec![bed.busybox_layer(Some("untrusted"))], &hello);
    let top = ["/usr/local/bin/busybox", "echo", "top"];
    let mixed = image::image(vec![base, bed.busybox_at("usr/local/bin/busybox")], &top);
    let signed_digest = bed.push("e2e/signed", &signed, Some(&bed.trusted));
    bed.push("e2e/unsigned", &unsigned, None);
    bed.push("e2e/untrusted-key", &untrusted, Some(&bed.other));
    bed.push("e2e/mixed", &mixed, None);
    bed.write_policy("e2e");

    let settings = Settings {
        mode: "enforce",
        backend: "fanotify",
        insecure: vec![bed.addr.clone()],
        tag: "enforce",
    };
    let config = settings.write(&dir, &bed.containerd);
    let daemon = DaemonProcess::start(&dir, &config, "enforce");

    // Pulled while the daemon runs: verified on pull, from the registry's signatures.
    let expected: Vec<(String, &str)> = [
        ("e2e/signed", "trusted"),
        ("e2e/unsigned", "untrusted"),
        ("e2e/untrusted-key", "untrusted"),
        ("e2e/mixed", "untrusted"),
    ]
    .iter()
    .map(|(repo, outcome)| (bed.name(repo), *outcome))
    .collect();
    for (name, _) in &expected {
        bed.pull(name);
    }
    daemon::assert_outcomes(&dir, &expected, Duration::from_secs(30), &daemon.log_text());
    // The content-store watch saw the manifest land and verified it before the image existed.
    let early = daemon.log_text().lines().any(|line| {
        line.contains("verified early") && line.contains(&signed_digest) && line.contains("Trusted")
    });
    assert!(
        early,
        "no early verification of {signed_digest}: {}",
        daemon.log_text()
    );
    let status = daemon::status(&dir).unwrap();
    assert_eq!(status["backend"], "fanotify", "{status}");
    assert_eq!(status["mode"], "enforce", "{status}");
    assert_eq!(status["last_errors"], serde_json::json!([]), "{status}");
    // Status names what vouched for the signed image: the digest whose signature was accepted,
    // and that signature (where it was found, its authority).
    let signed_name = bed.name("e2e/signed");
    let verdict = status["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .find(|v| v["image"] == signed_name.as_str())
        .unwrap_or_else(|| panic!("no verdict for {signed_name}: {status}"));
    assert_eq!(verdict["digest"], signed_digest.as_str(), "{verdict}");
    assert_eq!(
        verdict["signed_digests"],
        serde_json::json!([signed_digest]),
        "{verdict}"
    );
    let signatures = verdict["signatures"].as_array().expect("signatures");
    assert!(
        !signatures.is_empty()
            && signatures[0]["signature"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
        "{verdict}"
    );
    let events_path = settings.events(&dir);
    let containerd = &bed.containerd;

    // 1. Signed by the trusted key: the entrypoint runs.
    let out = containerd.run(&bed.name("e2e/signed"), "c-signed", &[]);
    assert!(
        out.status.success(),
        "signed image failed: {out:?}\n{}",
        daemon.log_text()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");

    // 2. Unsigned, and signed by a key the policy does not trust: the entrypoint cannot execute.
    for (repo, id, image) in [
        ("e2e/unsigned", "c-unsigned", &unsigned),
        ("e2e/untrusted-key", "c-untrusted", &untrusted),
    ] {
        let name = bed.name(repo);
        let out = containerd.run(&name, id, &[]);
        assert_denied(&out, repo);
        let event = denial_for(&events_path, &name);
        assert_event(&event, &name, image, "/bin/busybox");
        assert_eq!(event["container"]["id"], id, "{event}");
    }

    // 2b. Two containers of the same unsigned image at once, both denied and gone before their
    // events are written: each event still names its own container, from the cgroup id the
    // backend reports with the decision (noted when containerd created each task).
    let name = bed.name("e2e/unsigned");
    let twins = ["c-twin-a", "c-twin-b"];
    for out in containerd.run_together(&name, &twins) {
        assert_denied(&out, "a twin of the unsigned image");
    }
    let mut pids = Vec::new();
    for id in twins {
        let event = daemon::wait_for_event(&events_path, |e| {
            e["verdict"] == "denied" && e["container"]["id"] == id
        });
        assert!(daemon::names_image(&event, &name), "{event}");
        assert!(
            event["cgroup_id"].as_u64().is_some_and(|c| c > 0),
            "{event}"
        );
        pids.push(event["tgid"].clone());
    }
    assert_ne!(pids[0], pids[1], "two processes, two events");

    // 3. Signed base + unsigned top layer: the top layer's binary cannot execute (and is an
    // unverified layer, not drift: unpacking commits the layer in place), nor can the base's.
    let name = bed.name("e2e/mixed");
    let out = containerd.run(&name, "c-mixed-top", &[]);
    assert_denied(&out, "top layer of the mixed image");
    assert_event(
        &denial_for(&events_path, &name),
        &name,
        &mixed,
        "/usr/local/bin/busybox",
    );
    // The container of the unsigned image runs nothing, not even the signed base's binary.
    let out = containerd.run(&name, "c-mixed-base", &["/bin/busybox", "echo", "base"]);
    assert_denied(&out, "base binary in a container of the mixed image");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("base"),
        "{out:?}"
    );
    let event = support::daemon::wait_for_event(&events_path, |e| {
        e["reason"] == "untrusted_image" && e["container"]["id"] == "c-mixed-base"
    });
    assert_eq!(event["container"]["image"], name.as_str(), "{event}");
    assert_eq!(
        event["container"]["digest"],
        mixed.manifest_digest(),
        "{event}"
    );
    daemon.stop();
}
