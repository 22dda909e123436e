//! The fanotify backend against real execs on real overlay mounts (as root). The same binary runs
//! on the host (6.18) and in the 6.1 and 6.12 QEMU guests (`cargo xtask test`), one case at a
//! time, each with its own private tmpfs and a backend in a child process under a watchdog.

mod fanotify_support;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fanotify_support::{
    event_layer, exec_true, expect_eperm, expect_runs, kernel, serial, ChildConfig, Fixture,
    Responder,
};

/// The backend process the other tests start (does nothing when run directly).
#[test]
#[ignore = "the responder child process; started by the other tests"]
fn responder_process() {
    fanotify_support::child::main();
}

/// Runs the strategy probe once, as a daemon starting would (started by
/// `a_process_killed_mid_probe_leaves_no_waiting_child`; does nothing when run directly).
#[test]
#[ignore = "the probing child process; started by another test"]
fn probe_process() {
    if std::env::var_os("IMAGEGATE_PROBE_KILL_TEST").is_some() {
        let _ = imagegate::enforce::fanotify::probe::backing_file_events();
    }
}

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: the fanotify tests need root");
    }
    root
}

/// A fixture, and the backend on its scope with layer 1 verified.
fn start(config: impl FnOnce(&Fixture) -> ChildConfig, limit: Duration) -> (Fixture, Responder) {
    let fixture = Fixture::create();
    let config = config(&fixture);
    let mut responder = Responder::start(&config, limit);
    responder.set_layer(fixture.layer_id(1), "verified");
    (fixture, responder)
}

fn default(fixture: &Fixture) -> ChildConfig {
    ChildConfig::backend(&fixture.snapshots)
}

#[test]
fn unverified_layer_denied_in_enforce_and_reported_in_audit() {
    if !root() {
        return;
    }
    let _serial = serial();
    let (fixture, mut responder) = start(default, Duration::from_secs(60));
    let target = fixture.merged.join("bin/evil");
    let unverified = fixture.layer_id(2);
    expect_eperm("exec in enforce mode", exec_true(&target));
    let events = responder.events();
    assert!(!events.is_empty(), "no event for the denied exec");
    for event in &events {
        assert_eq!(event["verdict"], "denied", "{event}");
        assert_eq!(event["hook"], "exec");
        assert_eq!(event["reason"], "unverified_layer");
        assert_eq!(event["mode"], "enforce");
        assert_eq!(event_layer(event), Some(unverified), "{event}");
    }
    responder.send("mode audit");
    expect_runs("exec in audit mode", exec_true(&target));
    expect_runs("again in audit mode", exec_true(&target));
    let events = responder.events();
    assert!(
        events.len() >= 2,
        "audit mode must report every exec (never cached): {events:?}"
    );
    for event in &events {
        assert_eq!(event["verdict"], "audit", "{event}");
        assert_eq!(event["mode"], "audit");
        assert_eq!(event_layer(event), Some(unverified));
    }
}

#[test]
fn verified_layer_allowed_without_event() {
    if !root() {
        return;
    }
    let _serial = serial();
    let (fixture, mut responder) = start(default, Duration::from_secs(60));
    for _ in 0..3 {
        expect_runs(
            "exec from a verified layer",
            exec_true(&fixture.merged.join("bin/ok")),
        );
    }
    let events = responder.events();
    assert!(
        events.is_empty(),
        "verified exec produced events: {events:?}"
    );
    let stats = responder.stats();
    assert!(
        stats["events"].as_u64() >= Some(1),
        "no permission event seen: {stats}"
    );
    assert_eq!(stats["denied"], 0, "{stats}");
    // A layer file is never ignore-marked: a process of an untrusted container may ask for
    // the same inode next, and must be judged.
    expect_runs("again", exec_true(&fixture.merged.join("bin/ok")));
    assert!(
        responder.stats()["events"].as_u64() > stats["events"].as_u64(),
        "a verified layer's exec was not asked about again"
    );
    if responder.ready.contains("Backing") {
        // A host file is cached: the kernel no longer asks about this inode...
        expect_runs("host", exec_true(&fixture.host_binary));
        let host = responder.stats();
        expect_runs("host, cached", exec_true(&fixture.host_binary));
        assert_eq!(
            responder.stats()["events"],
            host["events"],
            "an ignore-marked exec was asked about"
        );
        // ...until it is written to (no FAN_MARK_IGNORED_SURV_MODIFY).
        let mut bytes = std::fs::read(&fixture.host_binary).expect("read");
        bytes.push(0);
        std::fs::write(&fixture.host_binary, bytes).expect("rewrite in place");
        expect_runs("after a write", exec_true(&fixture.host_binary));
        let after = responder.stats();
        assert!(
            after["events"].as_u64() > host["events"].as_u64(),
            "a written file kept its ignore mark: {after}"
        );
    }
}

#[test]
fn drift_denied_unless_allowed() {
    if !root() {
        return;
    }
    let _serial = serial();
    let (fixture, mut responder) = start(default, Duration::from_secs(60));
    // Written through the overlay: the bytes land in the writable (upper) layer.
    let written = fixture.merged.join("bin/written");
    std::fs::copy("/bin/true", &written).expect("write into the container");
    let upper = fixture.layer_id(3);
    expect_eperm("upper layer not in the table", exec_true(&written));
    responder.set_layer(upper, "writable");
    let _ = responder.events();
    expect_eperm("drift=deny", exec_true(&written));
    let events = responder.events();
    assert!(!events.is_empty(), "no drift event");
    for event in &events {
        assert_eq!(event["reason"], "drift", "{event}");
        assert_eq!(event_layer(event), Some(upper));
    }
    responder.send("drift allow");
    expect_runs("drift=allow", exec_true(&written));
    expect_runs("drift=allow, again", exec_true(&written));
    assert!(responder.events().is_empty(), "drift=allow produced events");
    responder.send("drift deny");
    expect_eperm(
        "drift=deny again: allowed drift is never cached",
        exec_true(&written),
    );
}

#[test]
fn out_of_scope_overlay_and_host_binaries_allowed_without_event() {
    if !root() {
        return;
    }
    let _serial = serial();
    let (fixture, mut responder) = start(default, Duration::from_secs(60));
    for _ in 0..2 {
        expect_runs(
            "overlay outside the scope",
            exec_true(&fixture.other_merged.join("bin/evil")),
        );
        expect_runs(
            "host binary on the scope's file system",
            exec_true(&fixture.host_binary),
        );
        expect_runs("host binary elsewhere", exec_true(Path::new("/bin/true")));
    }
    let events = responder.events();
    assert!(
        events.is_empty(),
        "out-of-scope execs produced events: {events:?}"
    );
}

#[test]
fn table_changes_take_effect_on_the_next_exec() {
    if !root() {
        return;
    }
    let _serial = serial();
    let (fixture, mut responder) = start(default, Duration::from_secs(60));
    let evil = fixture.merged.join("bin/evil");
    let ok = fixture.merged.join("bin/ok");
    let unverified = fixture.layer_id(2);
    let verified = fixture.layer_id(1);
    expect_eperm("before adding", exec_true(&evil));
    responder.set_layer(unverified, "verified");
    expect_runs("after adding", exec_true(&evil));
    expect_runs("after adding, again (now cached)", exec_true(&evil));
    responder.remove_layer(unverified);
    expect_eperm(
        "after removing: the cache must not let it through",
        exec_true(&evil),
    );
    // A verified layer that turns writable, then goes away.
    expect_runs("verified", exec_true(&ok));
    expect_runs("verified, cached", exec_true(&ok));
    responder.set_layer(verified, "writable");
    expect_eperm("verified layer turned writable", exec_true(&ok));
    responder.set_layer(verified, "verified");
    expect_runs("verified again", exec_true(&ok));
    responder.remove_layer(verified);
    expect_eperm("verified layer removed", exec_true(&ok));
    // A host file that becomes part of a scope... is covered by add_scope's flush; a file
    // rewritten in place loses its ignore mark (no FAN_MARK_IGNORED_SURV_MODIFY).
    expect_runs("host", exec_true(&fixture.host_binary));
    expect_runs("host, cached", exec_true(&fixture.host_binary));
    let stats = responder.stats();
    if responder.ready.contains("Backing") {
        assert!(
            stats["ignore_marks"].as_u64() >= Some(1),
            "no ignore mark for the host file: {stats}"
        );
    }
}

#[test]
fn stuck_decision_is_answered_by_the_bound() {
    if !root() {
        return;
    }
    let _serial = serial();
    let stall_for = |fixture: &Fixture| {
        let layer = fixture.layer_id(2);
        ChildConfig {
            stall: Some((layer.dev, layer.ino, layer.generation, 3000)),
            ..ChildConfig::backend(&fixture.snapshots)
        }
    };
    let (fixture, mut responder) = start(stall_for, Duration::from_secs(60));
    let evil = fixture.merged.join("bin/evil");
    let started = Instant::now();
    expect_eperm("stuck decision in enforce mode", exec_true(&evil));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the bound did not answer: {took:?}"
    );
    let events = responder.events();
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "timeout" && e["verdict"] == "denied"),
        "no timeout event: {events:?}"
    );
    expect_runs(
        "other decisions go on",
        exec_true(&fixture.merged.join("bin/ok")),
    );
    responder.send("mode audit");
    let started = Instant::now();
    expect_runs("stuck decision in audit mode", exec_true(&evil));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the bound did not answer: {took:?}"
    );
    let events = responder.events();
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "timeout" && e["verdict"] == "audit"),
        "no timeout audit event: {events:?}"
    );
    eprintln!("stuck decision answered after {took:?} (bound 200 ms)");
}

/// The reader thread decides a lone event itself (no hand-off to a worker). When that decision
/// stalls, the events queued behind it must still be read and decided, by the standby thread
/// and the workers, well within the bound, and the stalled one answered by the bound. Without
/// the standby, the `ok` execs below would wait for the whole stall (5 s).
#[test]
fn a_decision_stalled_in_the_reader_holds_up_no_other_event() {
    if !root() {
        return;
    }
    let _serial = serial();
    let bound = Duration::from_millis(1000);
    let stall = Duration::from_secs(5);
    let (fixture, mut responder) = start(
        |fixture| {
            let layer = fixture.layer_id(2);
            ChildConfig {
                bound_ms: u64::try_from(bound.as_millis()).expect("bound"),
                stall: Some((
                    layer.dev,
                    layer.ino,
                    layer.generation,
                    u64::try_from(stall.as_millis()).expect("stall"),
                )),
                ..ChildConfig::backend(&fixture.snapshots)
            }
        },
        Duration::from_secs(60),
    );
    let ok = fixture.merged.join("bin/ok");
    // Decided by the reader: a lone event on an idle group.
    expect_runs("a lone exec", exec_true(&ok));
    let before = responder.stats();
    assert!(
        before["decided_inline"].as_u64() >= Some(1),
        "the reader decided nothing itself: {before}"
    );
    let evil = fixture.merged.join("bin/evil");
    let stalled = std::thread::spawn(move || {
        let started = Instant::now();
        let result = exec_true(&evil);
        (result, started.elapsed())
    });
    // Until the reader has taken the stalled exec's event.
    let waiting = Instant::now();
    while responder.stats()["events"].as_u64() <= before["events"].as_u64() {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the stalled exec never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    for round in 0..5 {
        expect_runs(
            &format!("exec {round} behind a stalled decision"),
            exec_true(&ok),
        );
    }
    let behind = started.elapsed();
    assert!(
        behind < bound,
        "execs queued behind a decision stalled in the reader waited {behind:?} (bound {bound:?})"
    );
    let (result, took) = stalled.join().expect("stalled exec thread");
    expect_eperm("the stalled decision in enforce mode", result);
    assert!(
        took < stall - Duration::from_secs(1),
        "the stalled decision was not answered by the bound: {took:?}"
    );
    let stats = responder.stats();
    assert!(
        stats["takeovers"].as_u64() >= Some(1),
        "the standby never read for the stalled reader: {stats}"
    );
    assert!(
        responder
            .events()
            .iter()
            .any(|e| e["reason"] == "timeout" && e["verdict"] == "denied"),
        "no timeout event for the stalled decision"
    );
    eprintln!(
        "5 execs behind a decision stalled in the reader took {behind:?}; the stalled one answered after {took:?} (bound {bound:?})"
    );
}

#[test]
fn parallel_execs_see_no_wrong_verdict_and_no_hang() {
    if !root() {
        return;
    }
    let _serial = serial();
    let seconds: u64 = std::env::var("IMAGEGATE_FANOTIFY_PARALLEL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let (fixture, mut responder) = start(default, Duration::from_secs(seconds + 60));
    let cases: Arc<Vec<(std::path::PathBuf, bool)>> = Arc::new(vec![
        (fixture.merged.join("bin/ok"), true),
        (fixture.merged.join("bin/evil"), false),
        (fixture.host_binary.clone(), true),
        (fixture.other_merged.join("bin/evil"), true),
        (Path::new("/bin/true").to_owned(), true),
    ]);
    let wrong = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..8)
        .map(|index| {
            let (cases, wrong, total, slowest, stop) = (
                Arc::clone(&cases),
                Arc::clone(&wrong),
                Arc::clone(&total),
                Arc::clone(&slowest),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut turn = index;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    let (path, allowed) = &cases[turn % cases.len()];
                    turn += 1;
                    let started = Instant::now();
                    let result = exec_true(path);
                    let micros = started.elapsed().as_micros() as u64;
                    slowest.fetch_max(micros, Ordering::Relaxed);
                    total.fetch_add(1, Ordering::Relaxed);
                    let ran = matches!(&result, Ok(status) if status.success());
                    let denied = matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EPERM));
                    if (*allowed && !ran) || (!*allowed && !denied) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                        eprintln!("wrong verdict for {}: {result:?}", path.display());
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("exec thread");
    }
    let stats = responder.stats();
    let total = total.load(Ordering::Relaxed);
    let slowest = Duration::from_micros(slowest.load(Ordering::Relaxed));
    eprintln!(
        "parallel: {total} execs by 8 threads in {seconds} s, slowest {slowest:?}, backend {stats}"
    );
    assert!(
        !responder.watchdog_fired(),
        "the watchdog had to kill the backend"
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong verdicts");
    assert!(total > 8, "too few execs: {total}");
    // A decision that misses the bound under load is answered by the mode (deny in enforce):
    // harmless for the unverified file, a wrong verdict (counted above) for any other.
    if stats["timeouts"] != 0 {
        eprintln!("parallel: {} decisions hit the bound", stats["timeouts"]);
    }
}

#[test]
fn choose_picks_a_working_backend() {
    let choice = imagegate::enforce::choose().expect("some backend works here");
    eprintln!("choose: {choice:?}");
    if let Ok(expected) = std::env::var("IMAGEGATE_EXPECT_BACKEND") {
        assert_eq!(choice.backend.as_str(), expected, "{choice:?}");
    }
}

/// The strategy probe (an exec through a scratch overlay, watched by a file system mark on its
/// lower file system) agrees with what the kernel is known to do: backing-file events from 6.5
/// (this machine's 6.18 and the 6.12 guest), none on 6.1. It runs under a bound of its own; the
/// thread here is a second guard, and the probe must leave no mount behind.
#[test]
fn strategy_probe_matches_the_kernel() {
    use imagegate::enforce::fanotify::{probe, Strategy};
    if !root() {
        return;
    }
    let _serial = serial();
    // What a daemon killed while probing leaves: a probe tmpfs named after a pid that is gone.
    let base = Some(std::path::PathBuf::from("/run/imagegate"))
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait");
    let leftover = base.join(format!("imagegate-probe-{dead}-0"));
    std::fs::create_dir_all(&leftover).expect("leftover dir");
    nix::mount::mount(
        Some("tmpfs"),
        &leftover,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .expect("leftover tmpfs");
    let (done, result) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(probe::backing_file_events().map_err(|e| e.to_string()));
    });
    let seen = result
        .recv_timeout(Duration::from_secs(30))
        .expect("the probe did not return")
        .expect("the probe runs here (root, overlayfs, fanotify)");
    let took = started.elapsed();
    let expected = probe::by_version(kernel()) == Strategy::Backing;
    eprintln!(
        "strategy probe on {:?}: backing-file events {seen} (expected {expected}) in {took:?}",
        kernel()
    );
    assert_eq!(
        seen, expected,
        "the probe disagrees with the kernel version"
    );
    // Its own mounts: other processes (daemons under test) may be probing at the same time.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let own = format!("imagegate-probe-{}-", std::process::id());
    assert!(
        !mounts.contains(&own),
        "the probe left a mount behind:\n{mounts}"
    );
    assert!(
        !mounts.contains(&format!("imagegate-probe-{dead}-")) && !leftover.exists(),
        "the probe did not remove a dead process's leftover:\n{mounts}"
    );
    let choice = probe::choose_strategy();
    assert!(choice.how.starts_with("probe:"), "{choice:?}");
    assert_eq!(choice.strategy == Strategy::Backing, expected, "{choice:?}");
}

#[test]
fn daemon_death_allows_pending_and_future_execs() {
    if !root() {
        return;
    }
    let _serial = serial();
    let (fixture, mut responder) = start(default, Duration::from_secs(60));
    let evil = fixture.merged.join("bin/evil");
    expect_eperm("while the backend runs", exec_true(&evil));
    responder.kill();
    expect_runs("after the backend died (documented gap)", exec_true(&evil));
}

/// Kernels before 6.5 see container execs only once the overlay is marked; this measures the
/// window between a mount and its mark, then shows that a runtime exec (runc, as containerd runs
/// it after mounting the rootfs) closes it. From 6.5 the file system mark sees the backing file:
/// no window at all.
#[test]
fn new_overlay_mark_window() {
    if !root() {
        return;
    }
    let _serial = serial();
    let with_runtime = |fixture: &Fixture| ChildConfig {
        runtimes: vec![fixture.runtime.display().to_string()],
        ..ChildConfig::backend(&fixture.snapshots)
    };
    let (mut fixture, responder) = start(with_runtime, Duration::from_secs(120));
    let rounds = 20u32;
    for through_runtime in [false, true] {
        let mut ran_before_mark = 0;
        let mut latencies = Vec::new();
        for round in 0..rounds {
            let upper = 100 + round + if through_runtime { rounds } else { 0 };
            fixture.make_layer(upper);
            let target = fixture.root.join(format!("rootfs/new{upper}"));
            fixture.overlay(&target, &[2, 1], upper);
            let mounted = Instant::now();
            if through_runtime {
                expect_runs("the runtime stand-in", exec_true(&fixture.runtime));
            }
            let evil = target.join("bin/evil");
            let mut first = true;
            loop {
                if exec_true(&evil).is_err() {
                    latencies.push(mounted.elapsed());
                    break;
                }
                if first {
                    ran_before_mark += 1;
                    eprintln!(
                        "round {round}: an exec {:?} after the mount ran",
                        mounted.elapsed()
                    );
                    first = false;
                }
                assert!(
                    mounted.elapsed() < Duration::from_secs(3),
                    "the new overlay was never marked"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            fixture.unmount(&target);
        }
        latencies.sort();
        let median = latencies[latencies.len() / 2];
        let max = latencies[latencies.len() - 1];
        eprintln!(
            "mark window on {:?} ({}, {}): {ran_before_mark}/{rounds} first execs after the mount ran; \
             denied after median {median:?}, max {max:?}",
            kernel(),
            responder.ready,
            if through_runtime { "runtime exec first" } else { "exec right after mount" },
        );
        if through_runtime || responder.ready.contains("Backing") {
            assert_eq!(ran_before_mark, 0, "an exec beat the mark");
        }
    }
}

/// A process killed while its strategy probe's exec waits for the probe's answer leaves no
/// child behind: the exec's child does not hold the probe's group, so the group closes with
/// the process and the kernel lets the exec go on. (A child that held it waited forever, with
/// every descriptor it had inherited, the verdict store's lock among them, so a restarted
/// daemon could not open its store.)
#[test]
fn a_process_killed_mid_probe_leaves_no_waiting_child() {
    if !root() {
        return;
    }
    let _serial = serial();
    let tag = format!("IMAGEGATE_PROBE_KILL_TEST={}", std::process::id());
    let (key, value) = tag.split_once('=').expect("tag");
    // The probing process is killed while its probe's exec waits for the probe's answer.
    // Its children, from /proc/<pid>/task/*/children (cheap enough to poll in the short
    // window under emulation); the exec's child carries the probe thread's name until its exec
    // completes.
    let has_child = |pid: u32| {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().any(|task| {
            std::fs::read_to_string(task.path().join("children")).is_ok_and(|children| {
                children.split_whitespace().any(|child| {
                    std::fs::read_to_string(format!("/proc/{child}/comm"))
                        .is_ok_and(|comm| comm.starts_with("fanotify-probe"))
                })
            })
        })
    };
    let mut caught = 0;
    for _ in 0..40 {
        if caught >= 3 {
            break;
        }
        // This test binary, probing (the guests have no imagegate binary, only the tests).
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--ignored", "--exact", "probe_process", "--nocapture"])
            .env(key, value)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run the probing child");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10)
            && child.try_wait().ok().flatten().is_none()
        {
            if has_child(child.id()) {
                caught += 1;
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(caught > 0, "never caught the probe's exec");
    let tagged = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| name.parse::<u32>().is_ok())
            })
            .filter(|entry| {
                std::fs::read(entry.path().join("environ")).is_ok_and(|environ| {
                    environ.split(|b| *b == 0).any(|var| var == tag.as_bytes())
                })
            })
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tagged().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tagged(), Vec::<String>::new(), "processes left waiting");
}
