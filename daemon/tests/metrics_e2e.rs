//! The metrics and health endpoints of a running `imagegate daemon` (fanotify backend) against
//! a private containerd on its own tmpfs with real runc containers, scraped over the daemon's
//! unix socket as Prometheus would: every listed family is there, and each moves when the thing
//! it counts happens (an image verified, an exec denied, a verdict from the cache on a policy
//! reload, a registry that refuses connections, layers in the table).
//!
//! The daemon runs with exactly the capability bounding set of packaging/systemd/imagegate.service
//! (via setpriv), so this also proves those capabilities are enough for the fanotify backend.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod support;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use support::{
    containerd::PrivateContainerd,
    image::{self, File},
};

/// The daemon under test, stopped by its pid when dropped.
struct DaemonProcess(Child);

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while self.0.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(5) {
                let _ = self.0.kill();
                let _ = self.0.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One HTTP/1.1 GET over the unix socket: (status code, body).
fn get(socket: &Path, path: &str) -> Option<(u16, String)> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: imagegate\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The samples of a scrape, by series (`name{labels}`).
fn scrape(socket: &Path) -> BTreeMap<String, f64> {
    let (status, body) = get(socket, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Waits until `what` holds for a scrape, returning it.
fn wait_for(
    socket: &Path,
    log: &Path,
    what: &str,
    test: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let started = Instant::now();
    loop {
        if socket.exists() {
            let samples = scrape(socket);
            if test(&samples) {
                return samples;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: never true in {samples:#?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no metrics socket: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The unit's `CapabilityBoundingSet`, as setpriv's `--bounding-set` argument.
fn unit_bounding_set() -> String {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/imagegate.service"),
    )
    .unwrap();
    let caps: Vec<String> = unit
        .lines()
        .filter_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .flat_map(|value| {
            value
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(!caps.is_empty());
    format!("-all,{}", caps.join(","))
}

#[test]
fn metrics_and_health_follow_a_running_daemon() {
    if !support::is_root() {
        eprintln!("skipping: containerd, runc and fanotify need root");
        return;
    }
    let dir = support::scratch_dir("metrics-e2e");
    let containerd = PrivateContainerd::start_on_tmpfs(&dir);
    let key = imagegate_testkit::sign::Key::generate().unwrap();
    std::fs::write(dir.join("release.pub"), key.public_pem().unwrap()).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        format!(
            "version = 1\n[default]\nrequire = \"reject\"\n\
             [[scope]]\nmatch = \"registry.test/trusted/**\"\nrequire = \"accept\"\n\
             [[scope]]\nmatch = \"127.0.0.1:1/**\"\nrequire = \"signatures\"\n\
             [[scope.keys]]\npath = \"{}\"\n",
            dir.join("release.pub").display()
        ),
    )
    .unwrap();
    let busybox = std::fs::read("/bin/busybox").expect("busybox (apt-get install busybox-static)");
    let trusted = image::image(vec![image::layer(&[File::new(
        "bin/busybox",
        busybox.clone(),
        0o755,
    )])]);
    let untrusted = image::image(vec![image::layer(&[
        File::new("bin/busybox", busybox.clone(), 0o755),
        File::new("etc/untrusted", "x", 0o644),
    ])]);
    let unreachable = image::image(vec![image::layer(&[
        File::new("bin/busybox", busybox, 0o755),
        File::new("etc/unreachable", "x", 0o644),
    ])]);
    for (name, img) in [
        ("registry.test/trusted/app:1", &trusted),
        ("registry.test/untrusted/app:1", &untrusted),
        // Its signatures live on a registry that refuses connections: a registry error.
        ("127.0.0.1:1/signed/app:1", &unreachable),
    ] {
        let archive = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        image::write_archive(&archive, name, img, false);
        containerd.import("default", &archive);
    }

    let metrics_socket = dir.join("run/metrics.sock");
    let config = dir.join("imagegate.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"enforce\"\nbackend = \"fanotify\"\npolicy = \"{policy}\"\n\
             state_dir = \"{state}\"\nstatus_socket = \"{status}\"\nmetrics_listen = \"{metrics}\"\n\
             verify_socket = \"{verify}\"\n\
             log_format = \"json\"\n\
             [containerd]\nsocket = \"{socket}\"\nroot = \"{root}\"\n\
             [registry]\ninsecure = [\"127.0.0.1:1\"]\ntimeout_seconds = 2\n",
            policy = dir.join("policy.toml").display(),
            state = dir.join("state").display(),
            status = dir.join("run/status.sock").display(),
            verify = dir.join("run/verify.sock").display(),
            metrics = metrics_socket.display(),
            socket = containerd.socket.display(),
            root = containerd.data.join("root").display(),
        ),
    )
    .unwrap();
    let log = dir.join("daemon.log");
    let child = Command::new("setpriv")
        .arg(format!("--bounding-set={}", unit_bounding_set()))
        .args(["--no-new-privs", "--"])
        .arg(env!("CARGO_BIN_EXE_imagegate"))
        .args(["daemon", "--config"])
        .arg(&config)
        .stdout(std::fs::File::create(dir.join("events.jsonl")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("setpriv (util-linux)");
    let daemon = DaemonProcess(child);

    // Ready once the first reconciliation is done; every family present.
    let started = Instant::now();
    loop {
        match get(&metrics_socket, "/readyz") {
            Some((200, _)) => break,
            Some((503, body)) => assert!(body.contains("fanotify"), "{body}"),
            Some(other) => panic!("/readyz: {other:?}"),
            None => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&metrics_socket, "/healthz").unwrap().0, 200);
    assert_eq!(get(&metrics_socket, "/nope").unwrap().0, 404);
    let before = wait_for(&metrics_socket, &log, "three images judged", |s| {
        s["imagegate_images{verdict=\"trusted\"}"] + s["imagegate_images{verdict=\"untrusted\"}"]
            >= 3.0
    });
    for family in [
        "imagegate_verifications_total{outcome=\"trusted\"}",
        "imagegate_early_verifications_total{outcome=\"trusted\"}",
        "imagegate_verification_duration_seconds_count",
        "imagegate_verification_duration_seconds_bucket{le=\"+Inf\"}",
        "imagegate_exec_decisions_total{backend=\"fanotify\",verdict=\"denied\",hook=\"exec\"}",
        "imagegate_verdict_cache_hits_total",
        "imagegate_verdict_cache_misses_total",
        "imagegate_registry_errors_total{kind=\"http\"}",
        "imagegate_layers{state=\"verified\"}",
        "imagegate_layers{state=\"writable\"}",
        "imagegate_reconciliations_total{result=\"ok\"}",
        "imagegate_backend_info{backend=\"fanotify\"}",
        "imagegate_ready",
    ] {
        assert!(
            before.contains_key(family),
            "{family} missing from {before:#?}"
        );
    }
    assert!(
        before["imagegate_verifications_total{outcome=\"trusted\"}"] >= 1.0,
        "{before:#?}"
    );
    assert!(
        before["imagegate_verifications_total{outcome=\"untrusted\"}"] >= 1.0,
        "{before:#?}"
    );
    assert!(
        before["imagegate_verifications_total{outcome=\"error\"}"] >= 1.0,
        "{before:#?}"
    );
    assert!(before["imagegate_verification_duration_seconds_count"] >= 3.0);
    assert!(
        before["imagegate_registry_errors_total{kind=\"http\"}"] >= 1.0,
        "{before:#?}"
    );
    assert!(
        before["imagegate_layers{state=\"verified\"}"] >= 1.0,
        "{before:#?}"
    );
    assert!(before["imagegate_reconciliations_total{result=\"ok\"}"] >= 1.0);
    assert_eq!(before["imagegate_ready"], 1.0);

    // An exec from an untrusted layer is denied, and counted.
    let out = containerd.run(
        "registry.test/untrusted/app:1",
        "c-untrusted",
        &["/bin/busybox", "true"],
    );
    assert!(!out.status.success(), "untrusted container ran: {out:?}");
    let denied =
        "imagegate_exec_decisions_total{backend=\"fanotify\",verdict=\"denied\",hook=\"exec\"}";
    wait_for(&metrics_socket, &log, "the denial counted", |s| {
        s[denied] > before[denied]
    });

    // A policy reload (SIGHUP) re-judges every image, from the verdict cache.
    let hits = "imagegate_verdict_cache_hits_total";
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(
        &metrics_socket,
        &log,
        "verdicts from the cache after SIGHUP",
        |s| s[hits] >= before[hits] + 2.0,
    );
    drop(daemon);
    // The metrics socket goes with the daemon.
    assert!(!metrics_socket.exists(), "metrics socket left behind");
}
