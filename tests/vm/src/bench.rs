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
            LayerId {
                dev: fixture.scope.dev,
                ino: 1_000_000 + u64::from(i),
            },
            LayerState::Verified,
        )?;
    }
    Ok(backend)
}

pub fn run(args: &[String]) -> Result<()> {
    let total: u32 = args.first().and_then(|n| n.parse().ok()).unwrap_or(5000);
    let rounds = 5;
    let per_block = total / rounds;
    let mut fixture = Fixture::create()?;
    let target = fixture.merged.join("bin/ok");
    let configs: [(&str, Option<u32>); 3] = [
        ("detached", None),
        ("attached_10_layers", Some(8)),
        ("attached_60000_layers", Some(60_000)),
    ];
    let mut totals = [Duration::ZERO; 3];
    time_execs(&target, 50)?; // warm-up
    for _ in 0..rounds {
        for (index, (_, attached, layers)) in configs.iter().enumerate() {
            let _ = BpfBackend::uninstall(Path::new(PIN_DIR));
            let backend = attached.then(|| install(&fixture, *layers)).transpose()?;
            if let (Some(backend), Some(_)) = (&backend, layers) {
                let count = backend.layers()?.len();
                anyhow::ensure!(count >= 10, "table has {count} layers");
            }
            totals[index] += time_execs(&target, per_block)?;
            if let (Some(backend), Some(_)) = (&backend, layers) {
                judged += backend.stats()?.judged;
            }
        }
    }
    let _ = BpfBackend::uninstall(Path::new(PIN_DIR));
    fixture.cleanup();
    let execs = f64::from(per_block * rounds);
    let mean_us: Vec<f64> = totals
        .iter()
        .map(|t| t.as_secs_f64() * 1e6 / execs)
        .collect();
    for ((name, _), mean) in configs.iter().zip(&mean_us) {
        println!("bench exec_{name}: {mean:.1} us/exec over {execs} execs");
    }
    println!(
        "bench ratio attached_10/detached: {:.4}",
        mean_us[1] / mean_us[0]
    );
    println!(
        "bench ratio attached_60000/detached: {:.4}",
        mean_us[2] / mean_us[0]
    );
    println!(
        "bench ratio attached_60000/attached_10: {:.4}",
        mean_us[2] / mean_us[1]
    );
    Ok(())
}
