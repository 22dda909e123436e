//! The daemon's benchmarks on this machine (fanotify backend, private containerd, local
//! registry): pull-to-verified latency, container start with the daemon versus without, and
//! 500 images / 5,000 layers (memory, startup reconciliation cold and cached). They live in
//! `daemon/tests/daemon_bench.rs`; this runs them in release and prints their `bench` lines.

use anyhow::{bail, Result};

pub fn run() -> Result<()> {
    let output = crate::setup::output(
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "test",
                "--release",
                "-p",
                "imagegate",
                "--test",
                "daemon_bench",
                "--",
            ])
            .args(["--ignored", "--nocapture", "--test-threads", "1"])
            .env("RUST_LOG", "warn")
            .env("IMAGEGATE_REQUIRE_REGISTRY", "1")
            .current_dir(crate::setup::workspace_root()),
    )?;
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("bench "))
        .collect();
    if lines.len() < 8 {
        bail!("the daemon benchmarks printed too few results:\n{output}");
    }
    println!("\ndaemon end to end (fanotify backend, this machine):");
    for line in lines {
        println!("  {line}");
    }
    Ok(())
}
