//! Exec latency with the fanotify backend on versus off, beside the same ratio for a minimal
//! allow-all responder (the floor of a fanotify round trip on this machine), all measured in one
//! run with the configurations interleaved round by round. `cargo xtask bench` runs it:
//! `cargo test --release -p imagegate --test fanotify_bench -- --ignored --exact exec_latency --nocapture`.
//!
//! Binaries: a host binary (on the marked file system, outside the scope) and a binary from a
//! verified layer through the container overlay. Backend configurations: with ignore marks (what
//! runs: repeated execs of an allowed inode are not asked about again) and without (every exec
//! is decided: the cost of a first exec).

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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Off,
    Floor,
    Backend,
    BackendUncached,
}

impl Config {
    const ALL: [Self; 4] = [Self::Off, Self::Floor, Self::Backend, Self::BackendUncached];

    const fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Floor => "floor",
            Self::Backend => "backend",
            Self::BackendUncached => "backend_first_exec",
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
    let (mut answered, mut answer_micros, mut answer_max) = (0.0, 0.0, 0.0f64);
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
                Config::Backend | Config::BackendUncached => Some(Responder::start(
                    &ChildConfig {
                        ignore_marks: *config == Config::Backend,
                        ..ChildConfig::backend(&fixture.snapshots)
                    },
                    Duration::from_secs(120),
                )),
            };
            if let (Some(responder), Config::Backend | Config::BackendUncached) =
                (responder.as_mut(), config)
            {
                responder.set_layer(verified, "verified");
            }
            for offset in 0..binaries.len() {
                let binary = (round + offset) % binaries.len();
                let path = &binaries[binary].1;
                time_execs(path, 10);
                results[index][binary].push(time_execs(path, per_block));
            }
            if let (Some(responder), Config::Backend | Config::BackendUncached) =
                (responder.as_mut(), config)
            {
                let stats = responder.stats();
                let execs = f64::from(per_block + 10) * binaries.len() as f64;
                let per_exec = stats["events"].as_f64().unwrap_or(0.0) / execs;
                if *config == Config::Backend {
                    cached_events_per_exec.push(per_exec);
                } else {
                    events_per_exec.push(per_exec);
                    answered += stats["events"].as_f64().unwrap_or(0.0);
                    answer_micros += stats["answer_micros_total"].as_f64().unwrap_or(0.0);
                    answer_max = answer_max.max(stats["answer_micros_max"].as_f64().unwrap_or(0.0));
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
    println!(
        "bench backend decision time (event read to answer written), every exec decided: mean {:.1} us, max {:.0} us over {answered} events",
        answer_micros / answered.max(1.0),
        answer_max
    );
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
