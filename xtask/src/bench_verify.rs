//! Benchmarks that run on this machine as ignored release tests of the daemon crate, printing
//! `bench ...` lines: verification costs against a local registry (`daemon/tests/bench.rs`)
//! and the fanotify backend's restart time and repeated host execs
//! (`daemon/tests/fanotify_bench.rs`).

use std::process::Command;

use anyhow::{bail, Result};

/// Runs the ignored test `name` of `daemon/tests/<file>.rs` in release and prints its `bench `
/// lines under `title`.
pub fn run_bench_test(file: &str, name: &str, title: &str) -> Result<()> {
    run_bench(&["--test", file], name, title)
}

/// [`run_bench_test`] for a benchmark among the library's unit tests (`name` with its module path).
pub fn run_bench_lib(name: &str, title: &str) -> Result<()> {
    run_bench(&["--lib"], name, title)
}

fn run_bench(target: &[&str], name: &str, title: &str) -> Result<()> {
    let output = crate::setup::output(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["test", "--release", "-p", "imagegate"])
            .args(target)
            .arg("--")
            .args(["--ignored", "--exact", name, "--nocapture"])
            .args(["--test-threads", "1"])
            .env("RUST_LOG", "warn")
            .current_dir(crate::setup::workspace_root()),
    )?;
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("bench "))
        .collect();
    if lines.is_empty() {
        bail!("{target:?} {name} printed no results");
    }
    println!("\n{title}:");
    for line in lines {
        println!("  {line}");
    }
    Ok(())
}

/// Cold, warm and 200-concurrent verification against a local registry, as ratios to
/// `imagegate verify` of the same image; and a TUF refresh of the public-good root from an
/// unchanged repository on 127.0.0.1 (`daemon/tests/tuf.rs`, issue target: at most 50 ms).
pub fn verification() -> Result<()> {
    let costs = run_bench_test(
        "bench",
        "verification_costs",
        "signature verification, local registry on this machine",
    );
    let tuf = run_bench_test(
        "tuf",
        "tuf_refresh_unchanged_cost",
        "TUF refresh of the public-good trusted root, unchanged repository on 127.0.0.1",
    );
    costs.and(tuf)
}

/// The fanotify backend's start (and a replacement's after a kill) to its first answered
/// decision, and the quieter measurement of repeated host execs.
pub fn fanotify() -> Result<()> {
    let restart = run_bench_test(
        "fanotify_bench",
        "restart_time",
        "fanotify backend start and restart to the first answered decision",
    );
    let repeated = run_bench_test(
        "fanotify_bench",
        "repeated_host_exec",
        "repeated host exec with the fanotify backend (ignore marks) vs off",
    );
    let lookup = run_bench_lib(
        "enforce::fanotify::resolve::tests::locate_looked_up_vs_remembered",
        "the fanotify backend's file lookup per decision, looked up vs remembered by handle",
    );
    restart.and(repeated).and(lookup)
}
