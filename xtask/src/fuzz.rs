//! The cargo-fuzz targets in `fuzz/` (libFuzzer): built with the nightly toolchain, run briefly
//! by `cargo xtask test` (each target counts as one test) and at length by `cargo xtask fuzz`.
//!
//! Everything lives under `target/fuzz/`: the build, the corpus each run grows (kept between
//! runs), the seeds each target writes from `tests/fixtures` at start, and crash artifacts.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::setup::workspace_root;

/// The targets, as `fuzz/Cargo.toml` names them.
pub const TARGETS: &[&str] = &[
    "policy_toml",
    "policy_containers",
    "legacy_signature",
    "bundle",
    "oci_manifest",
    "trusted_root",
];

/// What `fuzz/src/lib.rs` reads to write a target's seeds.
const SEEDS_ENV: &str = "IMAGEGATE_FUZZ_SEEDS";

/// Seconds per target in `cargo xtask test`.
pub const BRIEF_SECONDS: u64 = 20;

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn out_dir() -> PathBuf {
    workspace_root().join("target/fuzz")
}

/// Builds every target: release with debug assertions (cargo-fuzz's default), coverage
/// instrumentation, no sanitizer (the code under test is safe Rust; `--sanitizer address` for
/// the unsafe parts costs twice the run time and a second build).
///
/// `AYA_BUILD_SKIP=1`: the targets exercise verification, policy and discovery code, not the
/// embedded eBPF object, and aya-build would otherwise build the eBPF programs again under the
/// fuzzer's compiler flags.
pub fn build(sanitizer: &str) -> Result<()> {
    let started = Instant::now();
    crate::setup::run_command(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "build", "--sanitizer", sanitizer])
            .args(["--codegen-units", "16", "--target-dir"])
            .arg(out_dir())
            .env("AYA_BUILD_SKIP", "1")
            .current_dir(fuzz_dir()),
    )
    .context("building the fuzz targets (cargo +nightly fuzz build)")?;
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn binary(target: &str) -> PathBuf {
    out_dir()
        .join("x86_64-unknown-linux-gnu/release")
        .join(target)
}

/// Runs one target for `seconds` on its corpus (seeded from the fixtures); `Ok(true)` when
/// libFuzzer found nothing, `Ok(false)` on a crash, a panic or a broken invariant (the input is
/// kept under `target/fuzz/artifacts/<target>/`).
pub fn run(target: &str, seconds: u64) -> Result<bool> {
    let corpus = out_dir().join("corpus").join(target);
    let seeds = out_dir().join("seeds").join(target);
    let artifacts = out_dir().join("artifacts").join(target);
    for dir in [&corpus, &seeds, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let exe = binary(target);
    if !exe.is_file() {
        bail!("{} is not built", exe.display());
    }
    // The target writes its seeds at start (the test-vector cases and their encoding live in
    // fuzz/src), then runs over nothing.
    crate::setup::output(Command::new(&exe).arg("-runs=0").env(SEEDS_ENV, &seeds))
        .with_context(|| format!("writing the seeds of {target}"))?;
    let dict = fuzz_dir().join("imagegate.dict");
    let started = Instant::now();
    let out = Command::new(&exe)
        .arg(&corpus)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-dict={}", dict.display()))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // A single input must not take long or grow without bound.
        .args(["-timeout=10", "-rss_limit_mb=2048", "-max_len=65536"])
        .arg("-print_final_stats=1")
        .output()
        .with_context(|| format!("starting {}", exe.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let stats: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.starts_with("stat::number_of_executed_units")
                || line.starts_with("stat::peak_rss_mb")
                || line.contains("Done ")
        })
        .collect();
    let took = started.elapsed();
    if out.status.success() {
        println!(
            "fuzz {target}: ok after {:.0} s ({})",
            took.as_secs_f64(),
            stats.join(", ")
        );
        return Ok(true);
    }
    // libFuzzer prints the panic, the stack and the path of the saved input.
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    println!(
        "fuzz {target}: FAILED after {:.0} s ({}):",
        took.as_secs_f64(),
        out.status
    );
    for line in tail.into_iter().rev() {
        println!("  {line}");
    }
    Ok(false)
}

/// `cargo xtask test`: build, then every target for [`BRIEF_SECONDS`] (`IMAGEGATE_FUZZ_SECONDS`
/// overrides); each target is one passed or failed test. A failed build fails every target.
pub fn brief() -> (u64, u64) {
    let seconds = std::env::var("IMAGEGATE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(BRIEF_SECONDS);
    let started = Instant::now();
    if let Err(error) = build("none") {
        eprintln!("xtask: {error:#}");
        return (0, TARGETS.len() as u64);
    }
    let (mut passed, mut failed) = (0, 0);
    for target in TARGETS {
        match run(target, seconds) {
            Ok(true) => passed += 1,
            Ok(false) => failed += 1,
            Err(error) => {
                eprintln!("xtask: fuzz {target}: {error:#}");
                failed += 1;
            }
        }
    }
    println!(
        "fuzz: {passed} passed, {failed} failed in {:.0} s (build included)",
        started.elapsed().as_secs_f64()
    );
    (passed, failed)
}

/// `cargo xtask fuzz`: longer runs of one target or all.
pub fn long(target: Option<&str>, seconds: u64, sanitizer: &str) -> Result<()> {
    if let Some(target) = target {
        if !TARGETS.contains(&target) {
            bail!("no fuzz target {target}; targets: {}", TARGETS.join(", "));
        }
    }
    build(sanitizer)?;
    let mut failed = Vec::new();
    for t in TARGETS
        .iter()
        .filter(|t| target.is_none_or(|only| only == **t))
    {
        if !run(t, seconds)? {
            failed.push(*t);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!(
            "fuzz targets failed: {} (inputs under {})",
            failed.join(", "),
            out_dir().join("artifacts").display()
        )
    }
}
