//! Exec latency with the fanotify backend on versus off, beside the same ratio for a minimal
//! allow-all responder (the floor of a fanotify round trip on this machine), all measured in one
//! run with the configurations interleaved round by round. `cargo xtask bench` runs it:
//! `cargo test --release -p imagegate --test fanotify_bench -- --ignored --exact exec_latency --nocapture`.
//!
//! Binaries: a host binary (on the marked file system, outside the scope) and a binary from a
//! verified layer through the container overlay. Backend configurations: with ignore marks (what
//! runs: repeated execs of an allowed inode are not asked about again) and without (every exec
//! is decided: the cost of a first exec), the latter once more with every event handed from the
//! reading thread to a worker (what the reader deciding lone events itself saves).

mod fanotify_support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use fanotify_support::{exec_true, ChildConfig, Fixture, Responder};

#[test]
#[ignore = "the responder child process; started by the benchmark"]
fn responder_process() {
    fanotify_support::child::main();
}

fn time_execs(path: &Path, count: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..count {
        let status = exec_true(path).expect("exec");
        assert!(status.success(), "exec of {} failed", path.display());
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(count)
}

fn median(values: Vec<f64>) -> f64 {
    quantile(values, 0.5)
}

fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let at = ((values.len() - 1) as f64 * q).round() as usize;
    values[at]
}

/// Decision times summed over rounds.
#[derive(Clone, Copy, Default)]
struct Answers {
    events: f64,
    micros: f64,
    max: f64,
    inline: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Off,
    Floor,
    Backend,
    BackendUncached,
    /// Every exec decided, each handed from the reading thread to a worker (the design before
    /// the reader decided lone events itself): the hand-off's cost, in the same run.
    BackendHandoff,
}

impl Config {
    const ALL: [Self; 5] = [
        Self::Off,
        Self::Floor,
        Self::Backend,
        Self::BackendUncached,
        Self::BackendHandoff,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Floor => "floor",
            Self::Backend => "backend",
            Self::BackendUncached => "backend_first_exec",
            Self::BackendHandoff => "first_exec_handed_off",
        }
    }
}

#[test]
#[ignore = "benchmark: cargo xtask bench"]
fn exec_latency() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let rounds: usize = std::env::var("IMAGEGATE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let per_block: u32 = std::env::var("IMAGEGATE_BENCH_EXECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let fixture = Fixture::create();
    let verified = fixture.layer_id(1);
    let binaries = [
        ("host", fixture.host_binary.clone()),
        ("container", fixture.merged.join("bin/ok")),
    ];
    // [config][binary] -> per-round mean µs per exec.
    let mut results = vec![vec![Vec::new(); binaries.len()]; Config::ALL.len()];
    let mut events_per_exec = Vec::new();
    let mut cached_events_per_exec = Vec::new();
    // Every exec decided: [by the reader where it can, always handed to a worker].
    let mut answers = [Answers::default(); 2];
    for round in 0..rounds {
        // Rotate the order each round, so no configuration always runs right after another.
        for step in 0..Config::ALL.len() {
            let index = (round + step) % Config::ALL.len();
            let config = &Config::ALL[index];
            let mut responder = match config {
                Config::Off => None,
                Config::Floor => Some(Responder::start(
                    &ChildConfig {
                        kind: "floor".into(),
                        ..ChildConfig::backend(&fixture.snapshots)
                    },
                    Duration::from_secs(120),
                )),
                Config::Backend | Config::BackendUncached | Config::BackendHandoff => {
                    Some(Responder::start(
                        &ChildConfig {
                            ignore_marks: *config == Config::Backend,
                            hand_off: *config == Config::BackendHandoff,
                            ..ChildConfig::backend(&fixture.snapshots)
                        },
                        Duration::from_secs(120),
                    ))
                }
            };
            if let (
                Some(responder),
                Config::Backend | Config::BackendUncached | Config::BackendHandoff,
            ) = (responder.as_mut(), config)
            {
                responder.set_layer(verified, "verified");
            }
            for offset in 0..binaries.len() {
                let binary = (round + offset) % binaries.len();
                let path = &binaries[binary].1;
                time_execs(path, 10);
                results[index][binary].push(time_execs(path, per_block));
            }
            if let (
                Some(responder),
                Config::Backend | Config::BackendUncached | Config::BackendHandoff,
            ) = (responder.as_mut(), config)
            {
                let stats = responder.stats();
                let execs = f64::from(per_block + 10) * binaries.len() as f64;
                let per_exec = stats["events"].as_f64().unwrap_or(0.0) / execs;
                let field = |name: &str| stats[name].as_f64().unwrap_or(0.0);
                if *config == Config::Backend {
                    cached_events_per_exec.push(per_exec);
                } else {
                    let answers = &mut answers[usize::from(*config == Config::BackendHandoff)];
                    answers.events += field("events");
                    answers.micros += field("answer_micros_total");
                    answers.max = answers.max.max(field("answer_micros_max"));
                    answers.inline += field("decided_inline");
                    if *config == Config::BackendUncached {
                        events_per_exec.push(per_exec);
                    }
                }
                assert_eq!(stats["denied"], 0, "benchmark execs were denied: {stats}");
            }
        }
    }
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    println!();
    println!("bench fanotify on {kernel}: {rounds} rounds x {per_block} execs per configuration and binary, interleaved");
    for (binary, (name, _)) in binaries.iter().enumerate() {
        for (index, config) in Config::ALL.iter().enumerate() {
            println!(
                "bench {name} exec {:<19} {:8.1} us (median of rounds)",
                config.name(),
                median(results[index][binary].clone())
            );
        }
        // Per-round ratios against the same round's `off`; medians resist the shared machine.
        let ratios = |index: usize| -> Vec<f64> {
            results[index][binary]
                .iter()
                .zip(&results[0][binary])
                .map(|(on, off)| on / off)
                .collect()
        };
        let ratio = |index: usize| median(ratios(index));
        let floor = ratio(1);
        for index in 2..Config::ALL.len() {
            let on = ratio(index);
            let spread = (quantile(ratios(index), 0.25), quantile(ratios(index), 0.75));
            let vs_floor = if floor > 1.0 {
                (on - 1.0) / (floor - 1.0)
            } else {
                f64::NAN
            };
            println!(
                "bench ratio {name} {}/off {on:.3} (rounds p25..p75 {:.3}..{:.3})  floor/off {floor:.3}  added latency vs the floor's {vs_floor:.2}x",
                Config::ALL[index].name(),
                spread.0,
                spread.1,
            );
        }
    }
    for (answers, how) in answers
        .iter()
        .zip(["decided by the reader", "handed to a worker"])
    {
        println!(
            "bench backend decision time (event read to answer written), every exec decided, {how}: mean {:.1} us, max {:.0} us over {} events, {:.0}% decided by the reader",
            answers.micros / answers.events.max(1.0),
            answers.max,
            answers.events,
            100.0 * answers.inline / answers.events.max(1.0)
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench load average during the run (other work on the machine skews every number): {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "bench permission events per exec: {:.3} with ignore marks, {:.2} without",
        median(cached_events_per_exec),
        median(events_per_exec)
    );
}

/// CPU seconds (user + system) of the children this process has waited for.
fn children_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: usage is valid for writes; getrusage fills it.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    // SAFETY: zero-initialised and filled by getrusage.
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Mean of the values left after dropping `trim` of them at each end.
fn trimmed_mean(mut values: Vec<f64>, trim: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let cut = (values.len() as f64 * trim).floor() as usize;
    let kept = &values[cut..values.len() - cut];
    kept.iter().sum::<f64>() / kept.len() as f64
}

/// The "repeated host execs add at most 1%", measured more quietly than `exec_latency`:
/// `off`, an `idle` child process (started the same way as the backend, no fanotify group: what
/// the mere presence of a freshly started process costs on this machine) and the backend with
/// ignore marks, many short rounds in rotating order (so drift in the machine's load hits all
/// alike). Besides wall time, the CPU time of the exec'd children (what an exec costs in the
/// kernel, without the waits other load adds). Per-round ratios to `off` are summarised by their
/// median and their 10%-trimmed mean.
#[test]
#[ignore = "benchmark: cargo xtask bench --only fanotify"]
fn repeated_host_exec() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let rounds: usize = std::env::var("IMAGEGATE_BENCH_HOST_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let per_block: u32 = 100;
    let fixture = Fixture::create();
    let host = fixture.host_binary.clone();
    const NAMES: [&str; 3] = ["off", "idle", "backend"];
    // [config] -> per-round (wall, child CPU) in us per exec.
    let mut blocks: Vec<Vec<(f64, f64)>> = vec![Vec::new(); NAMES.len()];
    let mut events = 0.0;
    for round in 0..rounds {
        for step in 0..NAMES.len() {
            let config = (round + step) % NAMES.len();
            let mut responder = match config {
                0 => None,
                1 => Some(ChildConfig {
                    kind: "idle".into(),
                    ..ChildConfig::backend(&fixture.snapshots)
                }),
                _ => Some(ChildConfig::backend(&fixture.snapshots)),
            }
            .map(|child| Responder::start(&child, Duration::from_secs(120)));
            time_execs(&host, 10);
            let before = children_cpu_seconds();
            let per_exec = time_execs(&host, per_block);
            let cpu_per_exec = (children_cpu_seconds() - before) * 1e6 / f64::from(per_block);
            blocks[config].push((per_exec, cpu_per_exec));
            if let (Some(responder), 2) = (responder.as_mut(), config) {
                let stats = responder.stats();
                events += stats["events"].as_f64().unwrap_or(0.0);
                assert_eq!(stats["denied"], 0, "host execs were denied: {stats}");
            }
        }
    }
    let execs = rounds as f64 * f64::from(per_block + 10);
    println!();
    println!(
        "bench repeated host exec: {rounds} rounds x {per_block} execs per configuration, order rotating; ratios per round"
    );
    for (what, pick) in [("wall", 0usize), ("child CPU", 1)] {
        let value = |config: usize, round: usize| {
            let (wall, cpu) = blocks[config][round];
            if pick == 0 {
                wall
            } else {
                cpu
            }
        };
        // backend/idle separates the backend from the mere presence of a second process.
        for (config, base) in [(1usize, 0usize), (2, 0), (2, 1)] {
            let ratios: Vec<f64> = (0..rounds)
                .map(|round| value(config, round) / value(base, round))
                .collect();
            let mean = |c: usize| (0..rounds).map(|r| value(c, r)).sum::<f64>() / rounds as f64;
            println!(
                "bench repeated host exec {what} {}/{}: median {:.4}, 10%-trimmed mean {:.4}, rounds p25..p75 {:.3}..{:.3} (means {:.1} vs {:.1} us)",
                NAMES[config],
                NAMES[base],
                median(ratios.clone()),
                trimmed_mean(ratios.clone(), 0.1),
                quantile(ratios.clone(), 0.25),
                quantile(ratios, 0.75),
                mean(config),
                mean(base),
            );
        }
    }
    println!(
        "bench repeated host exec permission events per exec with the backend on: {:.4}",
        events / execs
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench repeated host exec load average: {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
}

/// Runs `evil` (a file of an unverified layer) until the exec is denied; returns how long that
/// took from `since` and how many execs ran before.
fn until_denied(evil: &Path, since: Instant) -> (Duration, u32) {
    let mut ran = 0;
    loop {
        match exec_true(evil) {
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => {
                return (since.elapsed(), ran)
            }
            Ok(status) if status.success() => ran += 1,
            other => panic!("exec of {}: {other:?}", evil.display()),
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "the backend never started enforcing"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// "Restartable in well under a second": from starting the backend process to its first
/// answered decision (an exec of an unverified file denied), and from killing it to a new
/// process denying again. The process is this test binary re-run as the responder: start-up,
/// the strategy probe, the group, the scope's mark.
#[test]
#[ignore = "benchmark: cargo xtask bench --only fanotify"]
fn restart_time() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let rounds: usize = std::env::var("IMAGEGATE_BENCH_RESTART_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let fixture = Fixture::create();
    let evil = fixture.merged.join("bin/evil");
    let config = ChildConfig::backend(&fixture.snapshots);
    let (mut start, mut restart, mut gap_execs, mut probe_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut strategy = String::new();
    for _ in 0..rounds {
        let since = Instant::now();
        let mut responder = Responder::spawn(&config, Duration::from_secs(120));
        let (took, _) = until_denied(&evil, since);
        start.push(took.as_secs_f64() * 1e3);
        responder.wait_ready();
        strategy.clone_from(&responder.ready);
        if let Some(ms) = responder
            .ready
            .rsplit_once('(')
            .and_then(|(_, rest)| rest.strip_suffix(" ms))"))
            .and_then(|ms| ms.parse::<f64>().ok())
        {
            probe_ms.push(ms);
        }
        let since = Instant::now();
        responder.kill();
        let mut replacement = Responder::spawn(&config, Duration::from_secs(120));
        let (took, ran) = until_denied(&evil, since);
        restart.push(took.as_secs_f64() * 1e3);
        gap_execs.push(f64::from(ran));
        replacement.wait_ready();
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!();
    println!("bench fanotify restart: {rounds} rounds, backend process = {strategy}");
    println!(
        "bench fanotify start to first answered decision: median {:.1} ms, max {:.1} ms",
        median(start.clone()),
        max(&start)
    );
    println!(
        "bench fanotify kill to a new process denying: median {:.1} ms, max {:.1} ms; unverified execs that ran in the gap: median {:.0}, max {:.0}",
        median(restart.clone()),
        max(&restart),
        median(gap_execs.clone()),
        max(&gap_execs)
    );
    if !probe_ms.is_empty() {
        println!(
            "bench fanotify strategy probe within the start: median {:.0} ms, max {:.0} ms",
            median(probe_ms.clone()),
            max(&probe_ms)
        );
    }
}
