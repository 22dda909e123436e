//! `cargo xtask`: everything a developer or CI runs, from a fresh machine.
//!
//! `setup` installs what the build and the tests need (Debian packages, the nightly `rust-src`
//! component, bpf-linker); `test` runs every test this machine can run, VM suites included;
//! `vm-test` boots one Debian kernel in QEMU and runs a suite in it (kernel enforcement, the
//! fanotify backend, or the daemon end to end with BPF LSM);
//! `bench` runs the benchmarks; `fuzz` runs the fuzz targets at length; `demo` shows the
//! product end to end.

mod bench_verify;
mod containerd_releases;
mod daemon_bench;
mod demo;
mod fuzz;
mod package;
mod setup;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "imagegate developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install build and test prerequisites (idempotent).
    Setup,
    /// Run every test this machine can run: unit, integration and the VM suites, and the
    /// containerd suites again against containerd 2.1 (Debian sid's, fetched under target/).
    Test {
        /// Run only the suites that drive a real containerd, against this release (1.6: the
        /// system's; 1.7: Debian trixie's; 2.1: Debian sid's).
        #[arg(long, value_enum)]
        containerd: Option<containerd_releases::Release>,
    },
    /// Boot a Debian kernel in QEMU and run a suite inside it (default: kernel enforcement).
    VmTest {
        /// Kernel series: 6.1 or 6.12.
        #[arg(long)]
        kernel: vm::KernelSeries,
        /// kernel (tests/vm), fanotify (daemon/tests/fanotify.rs) or e2e (the daemon with BPF
        /// LSM, containerd, runc and a registry in the guest).
        #[arg(long, value_enum, default_value_t)]
        suite: vm::Suite,
    },
    /// Run the benchmarks: exec latency with the BPF programs attached vs detached (6.12 guest),
    /// with the fanotify backend on vs off beside a minimal responder and its restart time (this
    /// machine), signature verification against a local registry, and the daemon end to end
    /// (pull to verified, container start, 500 images).
    Bench {
        /// Run one part only.
        #[arg(long, value_enum)]
        only: Option<BenchPart>,
    },
    /// Run the fuzz targets (fuzz/, cargo-fuzz) for longer than `cargo xtask test` does.
    Fuzz {
        /// One target (default: all, one after another).
        #[arg(long)]
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// libFuzzer sanitizer: none, or address for the unsafe code paths (slower).
        #[arg(long, default_value = "none")]
        sanitizer: String,
    },
    /// The end-to-end demo.
    Demo,
    /// Build the Debian package (target/debian/imagegate_*.deb) with cargo-deb.
    Package {
        /// Then install it on this machine, run it, remove and purge it (as `test` does).
        #[arg(long)]
        test: bool,
    },
    /// Build the DaemonSet's container image as an OCI archive (default
    /// target/imagegate-image.tar): the release binary, its shared libraries and the default
    /// configuration, without an image builder.
    Image {
        /// Where to write the archive.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Regenerate docs/config.md from the daemon's settings table.
    Docs,
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Setup => setup::run(),
        Command::Test { containerd: None } => test(),
        Command::Test {
            containerd: Some(release),
        } => setup::run().and_then(|()| {
            let (passed, failed) = containerd_releases::test(release)?;
            println!("total: {passed} passed, {failed} failed");
            match failed {
                0 => Ok(()),
                _ => anyhow::bail!("{failed} tests failed against containerd {release}"),
            }
        }),
        Command::VmTest { kernel, suite } => {
            setup::run().and_then(|()| vm::run_suite(kernel, suite).map(drop))
        }
        Command::Bench { only } => setup::run().and_then(|()| bench(only)),
        Command::Fuzz {
            target,
            seconds,
            sanitizer,
        } => setup::run().and_then(|()| fuzz::long(target.as_deref(), seconds, &sanitizer)),
        Command::Demo => demo::run(),
        Command::Package { test: false } => setup::run().and_then(|()| package::run()),
        Command::Package { test: true } => setup::run().and_then(|()| match package::test()? {
            (_, 0) => Ok(()),
            (_, failed) => anyhow::bail!("{failed} package checks failed"),
        }),
        Command::Docs => docs(),
        Command::Image { out } => package::image(out),
    };
    if let Err(error) = result {
        eprintln!("xtask: {error:#}");
        std::process::exit(1);
    }
}

/// Writes docs/config.md from `imagegate config reference` (daemon/src/config.rs SETTINGS).
fn docs() -> Result<()> {
    let reference = setup::output(
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "run",
                "--quiet",
                "-p",
                "imagegate",
                "--",
                "config",
                "reference",
            ])
            .current_dir(setup::workspace_root()),
    )?;
    let path = setup::workspace_root().join("docs/config.md");
    std::fs::write(&path, reference)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Parts of `cargo xtask bench`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchPart {
    /// Exec latency with the BPF programs (6.12 guest).
    Bpf,
    /// Exec latency and restart time of the fanotify backend (this machine).
    Fanotify,
    /// Signature verification against a local registry.
    Verify,
    /// The daemon end to end: pull to verified, container start, 500 images (this machine).
    Daemon,
    /// The pull-time verifier (containerd 2.x's image verifier hook): its answer time for a
    /// known image and its cost over the daemon's verification for a new one.
    Pull,
}

fn bench(only: Option<BenchPart>) -> Result<()> {
    let wanted = |part| only.is_none_or(|only| only == part);
    let mut results = Vec::new();
    if wanted(BenchPart::Bpf) {
        results.push(vm::bench());
    }
    if wanted(BenchPart::Fanotify) {
        results.push(vm::fanotify_bench());
        results.push(bench_verify::fanotify());
    }
    if wanted(BenchPart::Verify) {
        results.push(bench_verify::verification());
    }
    if wanted(BenchPart::Daemon) {
        results.push(daemon_bench::run());
    }
    if wanted(BenchPart::Pull) {
        std::env::set_var("IMAGEGATE_REQUIRE_REGISTRY", "1");
        results.push(bench_verify::run_bench_test(
            "containerd_verifier",
            "pull_verifier_answer_time",
            "pull-time verifier: answer for a known image, and over the daemon's verification of a new one",
        ));
    }
    results.into_iter().collect()
}

fn test() -> Result<()> {
    setup::run()?;
    // The registry tests skip without docker-registry; here it is installed, so a skip is a failure.
    std::env::set_var("IMAGEGATE_REQUIRE_REGISTRY", "1");
    // The sigstore-conformance corpus (shared/ beside the workspace, as in CI) must be there:
    // its tests skip only when run by hand without it.
    std::env::set_var("IMAGEGATE_REQUIRE_CONFORMANCE", "1");
    let (mut passed, mut failed_count) =
        setup::cargo_test(&["test", "--workspace", "--exclude", "imagegate-ebpf"])?;
    let mut failed = Vec::new();
    // The Debian package: built, installed, run, removed and purged on this machine.
    match package::test() {
        Ok((p, f)) => {
            (passed, failed_count) = (passed + p, failed_count + f);
            if f > 0 {
                failed.push("package".to_owned());
            }
        }
        Err(error) => {
            eprintln!("xtask: package test: {error:#}");
            failed.push("package".to_owned());
        }
    }
    // The suites that drive a real containerd, again against containerd 2.1 (the run above
    // used the system's 1.6): config version 3, transfer-service pulls, the image verifier hook.
    match containerd_releases::test(containerd_releases::Release::V2_1) {
        Ok((p, f)) => {
            (passed, failed_count) = (passed + p, failed_count + f);
            if f > 0 {
                failed.push("containerd 2.1".to_owned());
            }
        }
        Err(error) => {
            eprintln!("xtask: containerd 2.1: {error:#}");
            failed.push("containerd 2.1".to_owned());
        }
    }
    // The fuzz targets, briefly: each is one test.
    let (p, f) = fuzz::brief();
    (passed, failed_count) = (passed + p, failed_count + f);
    if f > 0 {
        failed.push("fuzz".to_owned());
    }
    for kernel in [vm::KernelSeries::V6_1, vm::KernelSeries::V6_12] {
        match vm::test(kernel) {
            Ok((p, f)) => {
                (passed, failed_count) = (passed + u64::from(p), failed_count + u64::from(f))
            }
            Err(error) => {
                eprintln!("xtask: vm-test {kernel}: {error:#}");
                failed.push(kernel.to_string());
            }
        }
        match vm::fanotify_test(kernel) {
            Ok((p, f)) => {
                (passed, failed_count) = (passed + u64::from(p), failed_count + u64::from(f))
            }
            Err(error) => {
                eprintln!("xtask: fanotify guest {kernel}: {error:#}");
                failed.push(format!("{kernel} (fanotify)"));
            }
        }
    }
    // The daemon end to end with BPF LSM: containerd, runc and the registry inside the guest.
    match vm::e2e_test(vm::KernelSeries::V6_12) {
        Ok((p, f)) => (passed, failed_count) = (passed + u64::from(p), failed_count + u64::from(f)),
        Err(error) => {
            eprintln!("xtask: e2e guest 6.12: {error:#}");
            failed.push("6.12 (e2e)".into());
        }
    }
    // Kubernetes' path (CRI, containerd 1.6) with BPF LSM: containerd's CRI plugin in the guest.
    match vm::cri_test(vm::KernelSeries::V6_12) {
        Ok((p, f)) => (passed, failed_count) = (passed + u64::from(p), failed_count + u64::from(f)),
        Err(error) => {
            eprintln!("xtask: CRI guest 6.12: {error:#}");
            failed.push("6.12 (cri)".into());
        }
    }
    // The packaged unit under a real systemd (PID 1 here is not systemd).
    match vm::systemd_test(vm::KernelSeries::V6_12) {
        Ok((p, f)) => (passed, failed_count) = (passed + u64::from(p), failed_count + u64::from(f)),
        Err(error) => {
            eprintln!("xtask: systemd guest 6.12: {error:#}");
            failed.push("6.12 (systemd)".into());
        }
    }
    if failed.is_empty() {
        // One closing line over every suite: host tests and all guests.
        println!("total: {passed} passed, {failed_count} failed");
        Ok(())
    } else {
        println!("total: {passed} passed, {failed_count} failed");
        anyhow::bail!("failed: {}", failed.join(", "))
    }
}
