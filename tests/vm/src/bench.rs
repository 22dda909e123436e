//! Exec latency with the programs attached versus detached, in the guest: `cargo xtask bench`.
//!
//! A small static binary (busybox as `true`) from a verified layer is exec'd in blocks; blocks
//! of each configuration alternate so drift of the (emulated) machine hits all alike. Reports
//! mean exec time per configuration and the ratios against the detached baseline.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use imagegate::enforce::{bpf::BpfBackend, LayerId, LayerState};

use crate::{exec_true, fixture::Fixture, PIN_DIR};

fn time_execs(target: &Path, count: u32) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..count {
        let status = exec_true(target).context("exec")?;
        anyhow::ensure!(status.success(), "exec failed: {status}");
    }
    Ok(start.elapsed())
}

/// Installs the programs; `None` layers: no scope at all (only the hooks' fixed cost).
fn install(fixture: &Fixture, extra_layers: Option<u32>) -> Result<BpfBackend> {
    let mut backend = BpfBackend::install(Path::new(PIN_DIR))?;
    let Some(extra_layers) = extra_layers else {
        return Ok(backend);
    };
    backend.add_scope(&fixture.snapshots)?;
    for layer in fixture.verified_layers() {
        backend.set_layer(layer, LayerState::Verified)?;
    }
    for i in 0..extra_layers {
        // Made-up layer identities on the scope's device: they fill the table like real ones.
        backend.set_layer(
            LayerId::new(fixture.scope.dev, 1_000_000 + u64::from(i)),
            LayerState::Verified,
        )?;
    }
    Ok(backend)
}

/// CPU time consumed by waited-for children so far (the exec and its hooks run in the child).
fn children_cpu() -> Duration {
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).map(|u| {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(
                    tv.tv_sec().unsigned_abs(),
                    tv.tv_usec().unsigned_abs() as u32 * 1000,
                )
            };
            t(u.user_time()) + t(u.system_time())
        });
    usage.unwrap_or_default()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn run(args: &[String]) -> Result<()> {
    let total: u32 = args.first().and_then(|n| n.parse().ok()).unwrap_or(5000);
    // Many short blocks, configurations interleaved within each round, so that the emulated
    // machine's drift and the host's other load fall on every configuration alike.
    let rounds: u32 = 20;
    let per_block = total / rounds;
    let warmup = 20;
    let mut fixture = Fixture::create()?;
    let target = fixture.merged.join("bin/ok");
    // (name, attached, extra layers): `None` extra layers means attached without any scope.
    let configs: [(&str, bool, Option<u32>); 4] = [
        ("detached", false, None),
        ("attached_no_scope", true, None),
        ("attached_10_layers", true, Some(8)),
        ("attached_60000_layers", true, Some(60_000)),
    ];
    let mut wall = vec![Vec::new(); configs.len()];
    let mut cpu = vec![Vec::new(); configs.len()];
    let mut judged = 0;
    for _ in 0..rounds {
        for (index, (_, attached, layers)) in configs.iter().enumerate() {
            let _ = BpfBackend::uninstall(Path::new(PIN_DIR));
            let backend = attached.then(|| install(&fixture, *layers)).transpose()?;
            if let (Some(backend), Some(_)) = (&backend, layers) {
                let count = backend.layers()?.len();
                anyhow::ensure!(count >= 10, "table has {count} layers");
            }
            time_execs(&target, warmup)?;
            let cpu_before = children_cpu();
            let elapsed = time_execs(&target, per_block)?;
            let cpu_used = children_cpu().saturating_sub(cpu_before);
            wall[index].push(elapsed.as_secs_f64() * 1e6 / f64::from(per_block));
            cpu[index].push(cpu_used.as_secs_f64() * 1e6 / f64::from(per_block));
            if let (Some(backend), Some(_)) = (&backend, layers) {
                judged += backend.stats()?.judged;
            }
        }
    }
    let _ = BpfBackend::uninstall(Path::new(PIN_DIR));
    fixture.cleanup();
    let execs = per_block * rounds;
    for (index, (name, _, _)) in configs.iter().enumerate() {
        let mean = wall[index].iter().sum::<f64>() / wall[index].len() as f64;
        let cpu_mean = cpu[index].iter().sum::<f64>() / cpu[index].len() as f64;
        println!("bench exec_{name}: {mean:.1} us/exec wall, {cpu_mean:.1} us/exec child CPU, {execs} execs");
    }
    // Per-round ratios against the baseline of the same round; the median resists outliers.
    let ratio = |a: usize, b: usize, series: &[Vec<f64>]| {
        let mut ratios: Vec<f64> = series[a]
            .iter()
            .zip(&series[b])
            .map(|(x, y)| x / y)
            .collect();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(0.0, f64::max);
        (median(&mut ratios), low, high)
    };
    for (label, a, b) in [
        ("attached_no_scope/detached", 1, 0),
        ("attached_10/detached", 2, 0),
        ("attached_60000/detached", 3, 0),
        ("attached_60000/attached_10", 3, 2),
    ] {
        let (m, low, high) = ratio(a, b, &wall);
        let (cm, _, _) = ratio(a, b, &cpu);
        println!("bench ratio {label}: wall median {m:.4} (rounds {low:.3}..{high:.3}), child CPU median {cm:.4}");
    }
    println!(
        "bench judged decisions per exec (with a scope): {:.2}",
        f64::from(u32::try_from(judged).unwrap_or(u32::MAX))
            / f64::from((warmup + per_block) * rounds * 2)
    );
    if let Ok(jit) = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable") {
        println!("bench bpf_jit_enable: {}", jit.trim());
    }
    Ok(())
}
