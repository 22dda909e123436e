//! The DaemonSet's container image (`cargo xtask image`; built here the same way, by
//! imagegate-testkit's `daemon_image`) run by a real containerd and runc the way the DaemonSet
//! runs it: privileged, in the host's PID namespace, the node's paths bound in at the same
//! places. From inside its container the daemon must judge what the node's containerd pulls and
//! deny the unsigned image's entrypoint, and the image's own tools must work (`config check` of
//! the default configuration baked in, `doctor`).
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod support;

use std::{path::Path, time::Duration};

use imagegate_testkit::{daemon_image, image};
use support::{
    daemon::{self, assert_denied, Settings},
    signed::SignedBed,
};

const CONTAINER: &str = "imagegate-daemonset";

/// Kills and removes the daemon's container however the test ends: a daemon left running
/// would keep its fanotify marks on the test's file system.
struct Stopper<'a>(&'a support::containerd::PrivateContainerd);

impl Drop for Stopper<'_> {
    fn drop(&mut self) {
        for args in [
            &["tasks", "kill", "--signal", "SIGKILL", CONTAINER][..],
            &["tasks", "delete", "--force", CONTAINER],
            &["containers", "rm", CONTAINER],
        ] {
            let _ = self.0.ctr_in("imagegate-system", args);
        }
    }
}

#[test]
fn daemonset_image_runs_the_daemon_and_it_enforces() {
    let Some(bed) = SignedBed::start("daemon-image") else {
        return;
    };
    let dir = bed.dir.clone();
    let containerd = &bed.containerd;

    // The image, imported where the node's images live (in its own namespace, as a DaemonSet's
    // image would be in k8s.io).
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config");
    let image = daemon_image::build(Path::new(env!("CARGO_BIN_EXE_imagegate")), &packaging)
        .expect("build the daemon image");
    let archive = dir.join("imagegate-image.tar");
    daemon_image::write(&archive, &image).expect("write the image archive");
    containerd.import("imagegate-system", &archive);

    // Its own tools, on the configuration it ships.
    let tool = |args: &[&str]| {
        let id = format!("imagegate-tool-{}", args[0]);
        let mut command = vec!["run", "--rm", daemon_image::NAME, &id, "/usr/bin/imagegate"];
        command.extend_from_slice(args);
        let out = containerd.ctr_in("imagegate-system", &command);
        let _ = containerd.ctr_in("imagegate-system", &["containers", "rm", &id]);
        out
    };
    let out = tool(&["config", "check", "/etc/imagegate/imagegate.toml"]);
    assert!(out.status.success(), "config check in the image: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imagegate.toml: ok"),
        "{out:?}"
    );
    let out = tool(&["doctor"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("enforcement_backend  "),
        "doctor in the image: {out:?}"
    );

    // The node: a signed and an unsigned image in the registry, a policy, a config (the
    // ConfigMap's part) naming the node's containerd.
    let hello = ["/bin/busybox", "echo", "hello"];
    let signed = image::image(vec![bed.busybox_layer(None)], &hello);
    let unsigned = image::image(vec![bed.busybox_layer(Some("unsigned"))], &hello);
    bed.push("ds/signed", &signed, Some(&bed.trusted));
    bed.push("ds/unsigned", &unsigned, None);
    bed.write_policy("ds");
    let settings = Settings {
        mode: "enforce",
        backend: "auto",
        insecure: vec![bed.addr.clone()],
        tag: "daemonset",
    };
    let config = settings.write(&dir, containerd);

    // The DaemonSet's pod, as far as ctr can say it: privileged, host network (the registry is
    // on the node's loopback here), and the node's paths at the same places (containerd's root
    // and socket, state, the config). Not the host PID namespace (`hostPID: true`): runc on
    // this machine fails to join it ("can't get final child's PID from pipe"), so events here
    // lack the command and cgroup of the node's processes and name the container by its image.
    let dir_text = dir.to_str().unwrap();
    let bind = format!("type=bind,src={dir_text},dst={dir_text},options=rbind:rw");
    let log = dir.join("daemonset.log");
    let log_uri = format!("file://{}", log.display());
    let config_text = config.to_str().unwrap();
    let out = containerd.ctr_in(
        "imagegate-system",
        &[
            "run",
            "-d",
            "--privileged",
            "--net-host",
            "--mount",
            &bind,
            "--log-uri",
            &log_uri,
            daemon_image::NAME,
            CONTAINER,
            "/usr/bin/imagegate",
            "daemon",
            "--config",
            config_text,
        ],
    );
    let _stopper = Stopper(containerd);
    assert!(out.status.success(), "ctr run -d the daemon: {out:?}");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let expected = [
        (bed.name("ds/signed"), "trusted"),
        (bed.name("ds/unsigned"), "untrusted"),
    ];
    for (name, _) in &expected {
        bed.pull(name);
    }
    let expected: Vec<(String, &str)> = expected.iter().map(|(n, o)| (n.clone(), *o)).collect();
    daemon::assert_outcomes(&dir, &expected, Duration::from_secs(60), &log_text());
    let status = daemon::status(&dir).unwrap();
    assert_eq!(status["mode"], "enforce", "{status}");

    let out = containerd.run(&bed.name("ds/signed"), "c-ds-signed", &[]);
    assert!(out.status.success(), "signed: {out:?}\n{}", log_text());
    let out = containerd.run(&bed.name("ds/unsigned"), "c-ds-unsigned", &[]);
    assert_denied(&out, "the unsigned image, with the daemon in a container");
    let event = daemon::wait_for_event(&settings.events(&dir), |e| {
        e["verdict"] == "denied" && daemon::names_image(e, &bed.name("ds/unsigned"))
    });
    assert_eq!(event["container"]["id"], "c-ds-unsigned", "{event}");

    // Stopped as the kubelet would: SIGTERM, then the task and container removed.
    let stop = |args: &[&str]| containerd.ctr_in("imagegate-system", args);
    let out = stop(&["tasks", "kill", "--signal", "SIGTERM", CONTAINER]);
    assert!(out.status.success(), "SIGTERM: {out:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&stop(&["tasks", "ls"]).stdout)
        .lines()
        .any(|line| line.starts_with(CONTAINER) && line.contains("STOPPED"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not stop on SIGTERM: {}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&["tasks", "delete", CONTAINER]);
    stop(&["containers", "rm", CONTAINER]);
    assert!(
        log_text().contains("stopping"),
        "no orderly stop in the log: {}",
        log_text()
    );
}
