//! Fault tests (issue 12), with real processes: the daemon (or `imagegate verify`), a private
//! containerd, Debian's docker-registry and hostile responders, all on 127.0.0.1.
//!
//! - a registry that answers every request just under the timeout, while signed images are
//!   pulled from another registry: their verdicts come while the slow one is still pending, and
//!   the watchdog keeps being fed;
//! - 64 idle connections against the metrics listener while the probes are polled;
//! - registries sending endless bodies, redirect loops, or closing mid-body;
//! - a corrupt `verdicts.redb` at start;
//! - 100 SIGHUPs in a row with a changing policy.
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use support::{
    daemon::{self, Settings},
    image::{self, File},
    responder::{Behaviour, Responder},
    signed::SignedBed,
};

/// A hostile registry gives `imagegate verify` an error verdict (exit 2), never trust, and the
/// process ends (the test kills it by pid after a generous bound, failing).
#[test]
fn hostile_registries_give_error_verdicts_and_end() {
    let dir = tempfile::tempdir().unwrap();
    let key = imagegate_testkit::sign::Key::generate().unwrap();
    let key_path = dir.path().join("k.pub");
    std::fs::write(&key_path, key.public_pem().unwrap()).unwrap();
    for (what, behaviour) in [
        ("endless bodies", Behaviour::Endless),
        ("redirect loops", Behaviour::RedirectLoop),
        ("closing mid-body", Behaviour::ClosesMidBody),
    ] {
        let responder = Responder::start(behaviour);
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"{}/**\"\nrequire = \"signatures\"\n[[scope.keys]]\npath = \"{}\"\n",
                responder.addr,
                key_path.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_imagegate"))
            .args(["verify", &format!("{}/app/x:1", responder.addr), "--policy"])
            .arg(&policy)
            .args(["--insecure-registry", &responder.addr, "--output", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_or_kill(&mut child, Duration::from_secs(120), what);
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(status, Some(2), "{what}: exit {status:?}: {out}");
        let verdict: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(verdict["outcome"], "error", "{what}: {verdict}");
    }
}

/// Waits for `child` up to `bound`; kills it by pid past that (and returns `None`).
fn wait_or_kill(child: &mut Child, bound: Duration, what: &str) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// systemd's side of `sd_notify`: a datagram socket the daemon writes `READY=1`/`WATCHDOG=1` to.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self { socket, path }
    }

    /// Messages received so far (waiting up to 200 ms for the first).
    fn drain(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0_u8; 256];
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

/// Starts the daemon as systemd would with a 2 s watchdog (pings every second), logging to
/// `dir/daemon-TAG.log`; waits for its status socket.
fn start_daemon(dir: &Path, config: &Path, tag: &str, notify: &Notify) -> Child {
    let log = dir.join(format!("daemon-{tag}.log"));
    let _ = std::fs::remove_file(dir.join("status.sock"));
    let child = Command::new(daemon::imagegate_bin())
        .args(["daemon", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::fs::File::create(log.with_extension("stdout")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = child;
    let started = Instant::now();
    while daemon::status(dir).is_none() {
        if let Some(exit) = child.try_wait().unwrap() {
            panic!(
                "daemon exited ({exit}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "daemon not up: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// SIGTERM by pid, then wait (SIGKILL by pid after 10 s).
fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_of(dir: &Path, tag: &str) -> String {
    std::fs::read_to_string(dir.join(format!("daemon-{tag}.log"))).unwrap_or_default()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `status` until `done` holds (bounded).
fn wait_status(
    dir: &Path,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if let Some(status) = daemon::status(dir) {
            if done(&status) {
                return status;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: {:?}",
            daemon::status(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pending_names(status: &serde_json::Value) -> Vec<String> {
    status["pending"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|e| e["image"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// One image answered slowly by its registry holds only itself: signed images pulled from the
/// other registry are judged while it is pending, the watchdog keeps being fed, and 64 idle
/// connections against the metrics listener leave the probes (on their own listener) at 200.
/// Before issue 12 the slow image's verification ran in the event loop: no other event was
/// handled, no watchdog ping sent, until it ended.
#[test]
fn a_slow_registry_holds_neither_other_verdicts_nor_the_watchdog_nor_the_probes() {
    let Some(bed) = SignedBed::start("faults-slow") else {
        return;
    };
    let dir = bed.dir.clone();
    // Every answer 1.9 s after the request, with requests timing out at 2 s.
    let slow = Responder::start(Behaviour::Slow(Duration::from_millis(1900)));
    let key = dir.join("trusted.pub");
    bed.write_policy("fault");
    let mut policy = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    policy.push_str(&format!(
        "[[scope]]\nmatch = \"{}/**\"\nrequire = \"signatures\"\n[[scope.keys]]\npath = \"{}\"\n",
        slow.addr,
        key.display()
    ));
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    let settings = Settings {
        mode: "enforce",
        backend: "fanotify",
        insecure: vec![bed.addr.clone(), slow.addr.clone()],
        tag: "slow",
    };
    let config = settings.write(&dir, &bed.containerd);
    let (metrics_port, health_port) = (free_port(), free_port());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("timeout_seconds = 5", "timeout_seconds = 2\nverify_deadline_seconds = 3600")
        .replace(
            "[containerd]",
            &format!(
                "metrics_listen = \"127.0.0.1:{metrics_port}\"\nhealth_listen = \"127.0.0.1:{health_port}\"\n[containerd]"
            ),
        );
    std::fs::write(&config, text).unwrap();
    let notify = Notify::bind(&dir);
    let mut daemon = start_daemon(&dir, &config, "slow", &notify);

    // The slow registry's image, imported (its record appears; its verification begins).
    let slow_name = format!("{}/slow/app:v1", slow.addr);
    let archive = dir.join("slow.tar");
    image::write_archive(
        &archive,
        &slow_name,
        &image::image(vec![image::layer(&[File::new("slow/marker", "s", 0o644)])]),
        false,
    );
    bed.containerd.import("default", &archive);
    wait_status(&dir, "the slow image pending", |s| {
        pending_names(s).contains(&slow_name)
    });
    let _ = notify.drain();

    // 64 idle connections against the metrics listener, held throughout.
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(("127.0.0.1", metrics_port)).unwrap())
        .collect();

    // Signed images from the other registry: judged while the slow one is still pending.
    let mut expected = Vec::new();
    for index in 0..3 {
        let repo = format!("fault/signed-{index}");
        let image = bed.image_on(&bed.busybox_layer(None), &format!("s{index}"));
        bed.push(&repo, &image, Some(&bed.trusted));
        let name = bed.name(&repo);
        bed.pull(&name);
        expected.push((name, "trusted"));
    }
    let status = daemon::assert_outcomes(
        &dir,
        &expected,
        Duration::from_secs(60),
        &log_of(&dir, "slow"),
    );
    assert!(
        pending_names(&status).contains(&slow_name),
        "the signed images were judged while the slow one was pending: {status}"
    );
    assert_ne!(
        daemon::outcome(&status, &slow_name).as_deref(),
        Some("trusted")
    );
    // The probes, on their own listener, answer 200 while the idle connections are held.
    for _ in 0..10 {
        for path in ["/healthz", "/readyz"] {
            let mut probe = TcpStream::connect(("127.0.0.1", health_port)).unwrap();
            write!(probe, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut answer = String::new();
            probe.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        }
    }
    drop(idle);
    // The watchdog was fed meanwhile (pings every second from the event loop).
    let mut pings = 0;
    let started = Instant::now();
    while pings < 2 {
        pings += notify
            .drain()
            .iter()
            .filter(|m| m.contains("WATCHDOG=1"))
            .count();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no watchdog pings while the slow image was pending"
        );
    }
    let status = daemon::status(&dir).unwrap();
    assert!(
        pending_names(&status).contains(&slow_name),
        "still pending (the watchdog pings came during it): {status}"
    );
    stop(&mut daemon);
    // With fanotify, the stop log does not claim that the kernel goes on enforcing.
    let log = log_of(&dir, "slow");
    assert!(
        log.contains("nothing is enforced until the daemon runs again"),
        "{log}"
    );
    assert!(!log.contains("the kernel keeps enforcing"), "{log}");
}

/// A corrupt `verdicts.redb` at start: the daemon starts (it did not before: the store would
/// not open, or redb panicked on a truncated file), sets the file aside, and judges every image
/// again: the signed image trusted from the registry, the unsigned one untrusted.
#[test]
fn a_corrupt_verdict_store_is_set_aside_and_nothing_is_allowed_by_it() {
    let Some(bed) = SignedBed::start("faults-redb") else {
        return;
    };
    let dir = bed.dir.clone();
    bed.write_policy("redb");
    let signed = bed.image_on(&bed.busybox_layer(None), "signed");
    let unsigned = bed.image_on(&bed.busybox_layer(None), "unsigned");
    bed.push("redb/signed", &signed, Some(&bed.trusted));
    bed.push("redb/unsigned", &unsigned, None);
    bed.pull(&bed.name("redb/signed"));
    bed.pull(&bed.name("redb/unsigned"));
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(dir.join("state/verdicts.redb"), vec![0x42_u8; 32 * 1024]).unwrap();
    let settings = Settings {
        mode: "enforce",
        backend: "fanotify",
        insecure: vec![bed.addr.clone()],
        tag: "redb",
    };
    let config = settings.write(&dir, &bed.containerd);
    let notify = Notify::bind(&dir);
    let mut daemon = start_daemon(&dir, &config, "redb", &notify);
    daemon::assert_outcomes(
        &dir,
        &[
            (bed.name("redb/signed"), "trusted"),
            (bed.name("redb/unsigned"), "untrusted"),
        ],
        Duration::from_secs(60),
        &log_of(&dir, "redb"),
    );
    let log = log_of(&dir, "redb");
    assert!(log.contains("set aside"), "{log}");
    let aside = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("verdicts.redb.corrupt-")
        });
    assert!(aside, "the corrupt file is kept aside");
    stop(&mut daemon);
}

/// 100 SIGHUPs in a row, the policy changing between two versions each time: the daemon stays
/// up, keeps feeding the watchdog, and ends with the last policy's table.
#[test]
fn a_hundred_reloads_in_a_row_end_with_the_last_policy() {
    let Some(bed) = SignedBed::start("faults-hup") else {
        return;
    };
    let dir = bed.dir.clone();
    bed.write_policy("hup");
    let trusting = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    let rejecting = "version = 1\n[default]\nrequire = \"reject\"\n";
    let image = bed.image_on(&bed.busybox_layer(None), "hup");
    bed.push("hup/signed", &image, Some(&bed.trusted));
    let name = bed.name("hup/signed");
    bed.pull(&name);
    let settings = Settings {
        mode: "enforce",
        backend: "fanotify",
        insecure: vec![bed.addr.clone()],
        tag: "hup",
    };
    let config = settings.write(&dir, &bed.containerd);
    let notify = Notify::bind(&dir);
    let mut daemon = start_daemon(&dir, &config, "hup", &notify);
    daemon::assert_outcomes(
        &dir,
        &[(name.clone(), "trusted")],
        Duration::from_secs(60),
        &log_of(&dir, "hup"),
    );
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    for round in 0..100 {
        let text = if round % 2 == 0 {
            rejecting
        } else {
            trusting.as_str()
        };
        std::fs::write(dir.join("policy.toml"), text).unwrap();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    }
    // The last policy (round 99) trusts the image.
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is up");
    let _ = notify.drain();
    // Now a last change to the rejecting policy: the image's verdict follows.
    std::fs::write(dir.join("policy.toml"), rejecting).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_status(&dir, "the last policy's verdict", |s| {
        daemon::outcome(s, &name).as_deref() == Some("untrusted")
    });
    let status = daemon::status(&dir).unwrap();
    assert_eq!(status["layers"]["verified_or_audit"], 0, "{status}");
    let mut pings = 0;
    let started = Instant::now();
    while pings < 1 {
        pings += notify
            .drain()
            .iter()
            .filter(|m| m.contains("WATCHDOG=1"))
            .count();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no watchdog ping"
        );
    }
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is up");
    stop(&mut daemon);
}
