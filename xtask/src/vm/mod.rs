//! QEMU guests for the kernel suites: Debian cloud kernels ([`fetch_kernel`]), a busybox
//! initramfs with the files under test ([`GuestSpec`]), a boot with a timeout ([`run_guest`]) and
//! the result line of a suite ([`scan_result`]).
//!
//! The development machine cannot load BPF LSM programs, so every kernel enforcement test runs
//! in a guest; everything lives under `target/vm/`.
mod e2e;
mod guest;
mod initramfs;
mod kernel;
mod systemd;

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};

pub use e2e::{cri_test, e2e_test};
pub use guest::{run_guest, GuestSpec};
pub use kernel::{fetch_kernel, Kernel};
pub use systemd::systemd_test;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KernelSeries {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
}

impl std::fmt::Display for KernelSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
        })
    }
}

/// What `cargo xtask vm-test` runs in the guest.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Suite {
    /// The kernel enforcement suite (tests/vm).
    #[default]
    Kernel,
    /// The fanotify backend's tests (daemon/tests/fanotify.rs).
    Fanotify,
    /// The daemon end to end with BPF LSM, containerd, runc and a registry in the guest.
    E2e,
    /// The CRI suite (daemon/tests/e2e_cri.rs) in the guest, the daemon on BPF LSM.
    Cri,
    /// The packaged systemd unit, run by a real systemd as the guest's PID 1.
    Systemd,
}

/// Runs `suite` in a guest booted on `series`.
pub fn run_suite(series: KernelSeries, suite: Suite) -> Result<(u32, u32)> {
    match suite {
        Suite::Kernel => test(series),
        Suite::Fanotify => fanotify_test(series),
        Suite::E2e => e2e_test(series),
        Suite::Cri => cri_test(series),
        Suite::Systemd => systemd_test(series),
    }
}

/// Runs the kernel enforcement suite (tests/vm) in a guest booted on `series`; fails unless it
/// reports at least one pass and no failure.
pub fn test(series: KernelSeries) -> Result<(u32, u32)> {
    let kernel = fetch_kernel(series)?;
    let spec = suite_guest("/usr/bin/imagegate-vm-suite")?;
    let output = run_guest(&kernel, "suite", &spec)?;
    let (passed, failed) = scan_result(&output)?;
    println!(
        "vm-test {series} ({}): {passed} passed, {failed} failed",
        kernel.release
    );
    if failed > 0 || passed == 0 {
        bail!("the kernel suite failed on {series}: {passed} passed, {failed} failed");
    }
    Ok((passed, failed))
}

/// Exec latency with the programs attached and detached, in the 6.12 guest.
pub fn bench() -> Result<()> {
    let kernel = fetch_kernel(KernelSeries::V6_12)?;
    let spec = suite_guest("/usr/bin/imagegate-vm-suite bench 5000")?;
    let output = run_guest(&kernel, "bench", &spec)?;
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("bench "))
        .collect();
    if lines.len() < 3 {
        bail!("the benchmark printed no results");
    }
    println!(
        "\nexec latency, {} guest (software emulation):",
        kernel.release
    );
    for line in lines {
        println!("  {line}");
    }
    Ok(())
}

/// Runs the fanotify backend's tests (`daemon/tests/fanotify.rs`, the same binary as on the host)
/// in a guest: on 6.1, where overlays must be marked one by one and `choose()` must pick BPF LSM,
/// and on 6.12 booted with `bpf` left out of `lsm=`, where `choose()` must pick fanotify by
/// itself. Fails unless libtest reports at least one pass and no failure.
pub fn fanotify_test(series: KernelSeries) -> Result<(u32, u32)> {
    let kernel = fetch_kernel(series)?;
    let binary = daemon_test_binary("fanotify")?;
    let (append, expected) = match series {
        KernelSeries::V6_1 => ("", "bpf-lsm"),
        KernelSeries::V6_12 => ("lsm=capability,landlock,lockdown,yama", "fanotify"),
    };
    let spec = GuestSpec {
        files: vec![(binary, "/usr/bin/imagegate-fanotify-tests".into())],
        modules: vec!["overlay".into()],
        // For debugging a guest run: a libtest filter and a log filter, taken from the host.
        command: format!(
            "cat /sys/kernel/security/lsm; echo; \
             IMAGEGATE_EXPECT_BACKEND={expected} RUST_LOG={log} \
             /usr/bin/imagegate-fanotify-tests --test-threads=1 --nocapture {filter}",
            log = std::env::var("IMAGEGATE_GUEST_LOG").unwrap_or_else(|_| "warn".into()),
            filter = std::env::var("IMAGEGATE_GUEST_FILTER").unwrap_or_default(),
        ),
        append: append.into(),
        pid1: false,
        memory_mib: 1024,
        timeout: std::time::Duration::from_secs(900),
    };
    let output = run_guest(&kernel, "fanotify", &spec)?;
    let (passed, failed) = scan_libtest(&output)?;
    println!(
        "vm fanotify {series} ({}{}): {passed} passed, {failed} failed",
        kernel.release,
        if append.is_empty() {
            ""
        } else {
            ", bpf not in lsm="
        }
    );
    if failed > 0 || passed == 0 {
        bail!("the fanotify tests failed on {series}: {passed} passed, {failed} failed");
    }
    Ok((passed, failed))
}

/// Builds the integration test `daemon/tests/<name>.rs` (dev profile, as `cargo test` does) and
/// returns the path of its executable, from cargo's JSON messages.
fn daemon_test_binary(name: &str) -> Result<PathBuf> {
    let messages = crate::setup::output(
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["test", "-p", "imagegate", "--test", name, "--no-run"])
            .arg("--message-format=json")
            .current_dir(crate::setup::workspace_root()),
    )?;
    let target = format!(r#""name":"{name}""#);
    messages
        .lines()
        .filter(|line| line.contains(&target) && line.contains(r#""test":true"#))
        .find_map(|line| {
            let rest = &line[line.find(r#""executable":""#)? + r#""executable":""#.len()..];
            Some(PathBuf::from(&rest[..rest.find('"')?]))
        })
        .with_context(|| format!("cargo reported no executable for daemon/tests/{name}.rs"))
}

/// `(passed, failed)` of the last libtest `test result:` line, requiring `/init`'s exit line (a
/// guest that crashed or hung has none) and a failure count when the command failed.
pub fn scan_libtest(output: &str) -> Result<(u32, u32)> {
    let status: i32 = output
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(initramfs::EXIT_MARKER))
        .context("the guest never reported its command's exit status (crash or panic?)")?
        .trim()
        .parse()
        .context("bad exit status line")?;
    let line = output
        .lines()
        .rev()
        .find(|line| line.contains("test result:"))
        .context("the guest printed no libtest \"test result:\" line")?;
    let count = |word: &str| -> Option<u32> {
        line.split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
    };
    let passed = count(" passed").context("no passed count")?;
    let failed = count(" failed").context("no failed count")?;
    if status != 0 && failed == 0 {
        bail!("the guest command exited with status {status} after {passed} passed, 0 failed");
    }
    Ok((passed, failed))
}

/// Exec latency with the fanotify backend on versus off on this machine, beside a minimal
/// allow-all responder measured in the same run (`daemon/tests/fanotify_bench.rs`, release).
/// Runs on the host: fanotify needs no guest, and the marks cover a private tmpfs only.
pub fn fanotify_bench() -> Result<()> {
    crate::bench_verify::run_bench_test(
        "fanotify_bench",
        "exec_latency",
        "exec latency, fanotify backend on this machine",
    )
}

/// Builds the daemon and the suite (release), the LD_PRELOAD fixture library, and a guest that
/// holds them with a dynamically linked host binary for the interpreter case.
fn suite_guest(command: &str) -> Result<GuestSpec> {
    let release = build_release()?;
    Ok(GuestSpec {
        files: vec![
            (release.join("imagegate"), "/usr/bin/imagegate".into()),
            (
                release.join("imagegate-vm-suite"),
                "/usr/bin/imagegate-vm-suite".into(),
            ),
            (preload_library()?, "/fixtures/preload.so".into()),
            (PathBuf::from("/usr/bin/true"), "/fixtures/true-dyn".into()),
            // Case 17's btrfs (btrfs-progs, installed by `cargo xtask setup`).
            (
                PathBuf::from("/usr/sbin/mkfs.btrfs"),
                "/usr/sbin/mkfs.btrfs".into(),
            ),
        ],
        modules: vec!["overlay".into(), "loop".into(), "btrfs".into()],
        command: command.into(),
        append: String::new(),
        pid1: false,
        memory_mib: 2048,
        timeout: std::time::Duration::from_secs(900),
    })
}

/// Builds the daemon and the kernel suite (release) and returns `target/release`. Always both
/// packages together, so every guest reuses one build: switching to `imagegate` alone rebuilt
/// much of the release tree (6 minutes on the 2-core machine).
fn build_release() -> Result<PathBuf> {
    crate::setup::cargo(&[
        "build",
        "--release",
        "-p",
        "imagegate",
        "-p",
        "imagegate-vm-tests",
    ])?;
    Ok(crate::setup::workspace_root().join("target/release"))
}

/// Compiles `tests/vm/fixtures/preload.c`, a library whose constructor prints `PRELOADED`.
fn preload_library() -> Result<PathBuf> {
    let fixtures = vm_dir().join("fixtures");
    std::fs::create_dir_all(&fixtures)?;
    let preload = fixtures.join("preload.so");
    let source = crate::setup::workspace_root().join("tests/vm/fixtures/preload.c");
    crate::setup::run_command(
        std::process::Command::new("gcc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&preload)
            .arg(&source),
    )?;
    Ok(preload)
}

/// Where kernels, downloads, initramfs archives and console logs live.
fn vm_dir() -> PathBuf {
    crate::setup::workspace_root().join("target/vm")
}

/// The (passed, failed) counts of the last `N passed, M failed[, K skipped]` line of a guest's
/// console output. Fails if there is none, if `/init` never reported the command's exit status
/// (the guest crashed or hung), or if the command failed without reporting a failure.
pub fn scan_result(output: &str) -> Result<(u32, u32)> {
    let status = output
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(initramfs::EXIT_MARKER))
        .context("the guest never reported its command's exit status (crash or panic?)")?;
    let status: i32 = status
        .trim()
        .parse()
        .with_context(|| format!("bad {} line: {status:?}", initramfs::EXIT_MARKER))?;
    let (passed, failed) = output
        .lines()
        .rev()
        .find_map(counts)
        .context("the guest printed no \"N passed, M failed\" line")?;
    if status != 0 && failed == 0 {
        bail!("the guest command exited with status {status} after {passed} passed, 0 failed");
    }
    Ok((passed, failed))
}

/// Parses `[prefix ]N passed, M failed[, K skipped]`.
fn counts(line: &str) -> Option<(u32, u32)> {
    let line = line.trim();
    let line = match line.rsplit_once(", ") {
        Some((rest, skipped))
            if skipped
                .strip_suffix(" skipped")
                .is_some_and(|k| k.parse::<u32>().is_ok()) =>
        {
            rest
        }
        _ => line,
    };
    let (passed, failed) = line.rsplit_once(", ")?;
    let failed = failed.strip_suffix(" failed")?.parse().ok()?;
    let passed = passed.strip_suffix(" passed")?;
    let passed = passed.rsplit([' ', ':', '\t']).next()?.parse().ok()?;
    Some((passed, failed))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn scans_the_last_result_line() -> Result<()> {
        let output =
            "1 passed, 1 failed\nsuite: 7 passed, 0 failed, 2 skipped\nIMAGEGATE-GUEST-EXIT 0\n";
        assert_eq!(scan_result(output)?, (7, 0));
        assert_eq!(
            scan_result("3 passed, 2 failed\nIMAGEGATE-GUEST-EXIT 1")?,
            (3, 2)
        );
        assert!(scan_result("3 passed, 0 failed\n").is_err(), "no exit line");
        assert!(scan_result("3 passed, 0 failed\nIMAGEGATE-GUEST-EXIT 1\n").is_err());
        assert!(
            scan_result("IMAGEGATE-GUEST-EXIT 0\n").is_err(),
            "no result line"
        );
        assert!(scan_result("x passed, 0 failed\nIMAGEGATE-GUEST-EXIT 0\n").is_err());
        Ok(())
    }

    #[test]
    fn scans_libtest_results() -> Result<()> {
        let output = "test a ... ok\ntest result: ok. 9 passed; 0 failed; 1 ignored; 0 measured\nIMAGEGATE-GUEST-EXIT 0\n";
        assert_eq!(scan_libtest(output)?, (9, 0));
        let failed =
            "test result: FAILED. 8 passed; 2 failed; 1 ignored\nIMAGEGATE-GUEST-EXIT 101\n";
        assert_eq!(scan_libtest(failed)?, (8, 2));
        assert!(
            scan_libtest("test result: ok. 9 passed; 0 failed;\n").is_err(),
            "no exit line"
        );
        assert!(
            scan_libtest("IMAGEGATE-GUEST-EXIT 101\n").is_err(),
            "no result line"
        );
        Ok(())
    }

    #[test]
    fn counts_tolerates_skips_and_prefixes() {
        assert_eq!(counts("1 passed, 0 failed"), Some((1, 0)));
        assert_eq!(counts("  12 passed, 3 failed, 4 skipped\r"), Some((12, 3)));
        assert_eq!(counts("result: 5 passed, 1 failed"), Some((5, 1)));
        assert_eq!(counts("passed, failed"), None);
        assert_eq!(counts("1 passed, 0 failed, many skipped"), None);
    }

    /// Boots both Debian kernels with the overlay module and checks that BPF LSM is active.
    /// Needs apt access and takes about a minute: `cargo test -p xtask -- --ignored --nocapture`.
    #[test]
    #[ignore = "downloads kernels and boots QEMU guests"]
    fn boots_6_12_and_6_1_guest() -> Result<()> {
        for series in [KernelSeries::V6_12, KernelSeries::V6_1] {
            let kernel = fetch_kernel(series)?;
            let spec = GuestSpec {
                // A dynamically linked host program, to prove its libraries come along.
                files: vec![(PathBuf::from("/usr/bin/stat"), "/opt/host/stat".into())],
                modules: vec!["overlay".into()],
                // BPF LSM active, the root a tmpfs (not the initramfs rootfs), an overlay with
                // its upper dir on that root mounts, and the host program runs.
                command: "cat /sys/kernel/security/lsm; echo; grep ' / ' /proc/mounts; \
                          mkdir -p /o/l /o/u /o/w /o/m && /opt/host/stat --version | head -n 1 && \
                          grep -q '^tmpfs / tmpfs' /proc/mounts && \
                          mount -t overlay -o lowerdir=/o/l,upperdir=/o/u,workdir=/o/w o /o/m && \
                          grep -q bpf /sys/kernel/security/lsm && echo '1 passed, 0 failed'"
                    .into(),
                timeout: Duration::from_secs(120),
                ..GuestSpec::default()
            };
            let started = Instant::now();
            let output = run_guest(&kernel, "smoke", &spec)?;
            eprintln!(
                "{series} ({}): {:.1} s",
                kernel.release,
                started.elapsed().as_secs_f64()
            );
            assert_eq!(scan_result(&output)?, (1, 0), "{series}");
        }
        Ok(())
    }

    /// The fanotify guests alone: `cargo test -p xtask fanotify_guests -- --ignored --nocapture`.
    #[test]
    #[ignore = "downloads kernels and boots QEMU guests"]
    fn fanotify_guests() -> Result<()> {
        let only = std::env::var("IMAGEGATE_GUEST_KERNEL").ok();
        for series in [KernelSeries::V6_1, KernelSeries::V6_12] {
            if only
                .as_deref()
                .is_none_or(|only| only == series.to_string())
            {
                fanotify_test(series)?;
            }
        }
        Ok(())
    }

    /// A guest that outlives its timeout is killed and reported.
    #[test]
    #[ignore = "downloads a kernel and boots a QEMU guest"]
    fn kills_a_guest_at_its_timeout() -> Result<()> {
        let kernel = fetch_kernel(KernelSeries::V6_1)?;
        let spec = GuestSpec {
            command: "sleep 600".into(),
            timeout: Duration::from_secs(15),
            ..GuestSpec::default()
        };
        let error = run_guest(&kernel, "timeout", &spec)
            .err()
            .context("the guest did not time out")?;
        assert!(format!("{error:#}").contains("timed out"), "{error:#}");
        Ok(())
    }
}
