//! The daemon's life across restarts and load, end to end on this machine (fanotify backend,
//! private containerd on a tmpfs, Debian's docker-registry on 127.0.0.1, cosign legacy
//! signatures from imagegate-testkit's signer):
//!
//! - restart (issue case 6): stop the daemon, pull more images, take the registry down, start
//!   the daemon again: images verified before still run from their persisted verdicts (the
//!   registry is gone, so nothing was re-verified), and the images pulled while it was down are
//!   reconciled at startup and denied (they cannot be verified: fail closed);
//! - load (case 7): 50 images pulled concurrently each get the right verdict, and the layer table
//!   holds exactly the trusted images' layers.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod support;

use std::time::{Duration, Instant};

use imagegate_testkit::image;
use support::{
    daemon::{self, assert_denied, DaemonProcess, Settings},
    signed::SignedBed,
};

fn settings(bed: &SignedBed, tag: &'static str) -> Settings<'static> {
    Settings {
        mode: "enforce",
        backend: "fanotify",
        insecure: vec![bed.addr.clone()],
        tag,
    }
}

#[test]
fn verdicts_survive_a_restart_without_the_registry_and_images_pulled_meanwhile_are_enforced() {
    let Some(mut bed) = SignedBed::start("e2e-restart") else {
        return;
    };
    let dir = bed.dir.clone();
    let hello = ["/bin/busybox", "echo", "hello"];
    let layer = |marker: &str| bed.busybox_layer(Some(marker));
    let before = image::image(vec![layer("before")], &hello);
    let unsigned = image::image(vec![layer("unsigned")], &hello);
    let meanwhile_signed = image::image(vec![layer("meanwhile-signed")], &hello);
    let meanwhile_unsigned = image::image(vec![layer("meanwhile-unsigned")], &hello);
    bed.push("life/before", &before, Some(&bed.trusted));
    bed.push("life/unsigned", &unsigned, None);
    let meanwhile_digest = bed.push(
        "life/meanwhile-signed",
        &meanwhile_signed,
        Some(&bed.trusted),
    );
    bed.push("life/meanwhile-unsigned", &meanwhile_unsigned, None);
    bed.write_policy("life");

    // First run: two images verified on pull.
    let first = settings(&bed, "first");
    let daemon = DaemonProcess::start(&dir, &first.write(&dir, &bed.containerd), "first");
    bed.pull(&bed.name("life/before"));
    bed.pull(&bed.name("life/unsigned"));
    daemon::assert_outcomes(
        &dir,
        &[
            (bed.name("life/before"), "trusted"),
            (bed.name("life/unsigned"), "untrusted"),
        ],
        Duration::from_secs(30),
        &daemon.log_text(),
    );
    daemon.stop();

    // While it is down: two more pulls, then the registry goes away.
    bed.pull(&bed.name("life/meanwhile-signed"));
    bed.pull(&bed.name("life/meanwhile-unsigned"));
    bed.registry.stop();

    // Second run, registry down.
    let second = settings(&bed, "second");
    let daemon = DaemonProcess::start(&dir, &second.write(&dir, &bed.containerd), "second");
    let status = daemon::status(&dir).unwrap();
    let outcome = |repo: &str| daemon::outcome(&status, &bed.name(repo));
    // Startup reconciliation judged all four before the status socket answered.
    assert_eq!(
        outcome("life/before").as_deref(),
        Some("trusted"),
        "{status}"
    );
    for repo in [
        "life/unsigned",
        "life/meanwhile-signed",
        "life/meanwhile-unsigned",
    ] {
        let got = outcome(repo);
        assert!(
            matches!(got.as_deref(), Some("untrusted" | "error")),
            "{repo}: {got:?} in {status}"
        );
    }

    let out = bed
        .containerd
        .run(&bed.name("life/before"), "c-before", &[]);
    assert!(
        out.status.success(),
        "image verified before the restart failed: {out:?}\n{}",
        daemon.log_text()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");

    let events = second.events(&dir);
    for (repo, id) in [
        ("life/meanwhile-signed", "c-meanwhile-signed"),
        ("life/meanwhile-unsigned", "c-meanwhile-unsigned"),
        ("life/unsigned", "c-unsigned"),
    ] {
        let out = bed.containerd.run(&bed.name(repo), id, &[]);
        assert_denied(&out, repo);
        let name = bed.name(repo);
        daemon::wait_for_event(&events, |e| {
            e["verdict"] == "denied" && daemon::names_image(e, &name)
        });
    }
    // The signed image pulled meanwhile is named with the digest containerd holds.
    let event = daemon::wait_for_event(&events, |e| {
        daemon::names_image(e, &bed.name("life/meanwhile-signed"))
    });
    assert_eq!(
        event["images"][0]["manifest_digest"], meanwhile_digest,
        "{event}"
    );
    daemon.stop();
}

#[test]
fn fifty_images_pulled_concurrently_each_get_the_right_verdict() {
    let Some(bed) = SignedBed::start("e2e-fifty") else {
        return;
    };
    let dir = bed.dir.clone();
    const IMAGES: usize = 50;
    let base = bed.busybox_layer(None);
    // Every image: the shared busybox base plus a small layer of its own. Even ones are signed
    // by the trusted key; of the odd ones, half are unsigned, half signed by an untrusted key.
    let mut expected = Vec::new();
    for i in 0..IMAGES {
        let img = bed.image_on(&base, &format!("image-{i}"));
        let repo = format!("many/img-{i:02}");
        let (key, outcome) = match i % 4 {
            0 | 2 => (Some(&bed.trusted), "trusted"),
            1 => (None, "untrusted"),
            _ => (Some(&bed.other), "untrusted"),
        };
        bed.push(&repo, &img, key);
        expected.push((bed.name(&repo), outcome));
    }
    bed.write_policy("many");
    let settings = settings(&bed, "fifty");
    let daemon = DaemonProcess::start(&dir, &settings.write(&dir, &bed.containerd), "fifty");

    // All 50 pulls at once, each its own ctr process.
    let names: Vec<String> = expected.iter().map(|(name, _)| name.clone()).collect();
    bed.pull_all(&names, IMAGES);
    let started = Instant::now();
    daemon::assert_outcomes(
        &dir,
        &expected,
        Duration::from_secs(120),
        &daemon.log_text(),
    );
    eprintln!(
        "all {IMAGES} verdicts {:?} after the last pull",
        started.elapsed()
    );

    // The table holds exactly the base and the 25 trusted images' own layers.
    let trusted = expected.iter().filter(|(_, o)| *o == "trusted").count();
    let started = Instant::now();
    loop {
        let status = daemon::status(&dir).unwrap();
        if status["layers"]["verified_or_audit"] == trusted + 1 {
            assert_eq!(status["images"]["trusted"], trusted, "{status}");
            assert_eq!(status["images"]["untrusted"], IMAGES - trusted, "{status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "layers not all located: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = bed.containerd.run(&expected[0].0, "c-trusted", &[]);
    assert!(out.status.success(), "trusted image failed: {out:?}");
    // The base is verified (trusted images hold it), so an untrusted image's binary from the
    // base runs too: only layers no trusted image holds are denied. Its own layer has no
    // binary; drift and top-layer denials are covered by e2e_signed and e2e_fanotify.
    daemon.stop();
}
