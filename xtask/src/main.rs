//! `cargo xtask`: everything a developer or CI runs, from a fresh machine.
//!
//! `setup` installs what the build and the tests need (Debian packages, the nightly `rust-src`
//! component, bpf-linker); `test` runs every test this machine can run, VM suites included;
//! `vm-test` boots one Debian kernel in QEMU and runs a suite in it (kernel enforcement, the
//! fanotify backend, or the daemon end to end with BPF LSM);
//! `bench` runs the benchmarks; `demo` shows the product end to end.

mod demo;
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
    /// Run every test this machine can run: unit, integration and the VM suites.
    Test,
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
    /// and with the fanotify backend on vs off beside a minimal responder (this machine).
    Bench,
    /// The end-to-end demo.
    Demo,
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Setup => setup::run(),
        Command::Test => test(),
        Command::VmTest { kernel, suite } => {
            setup::run().and_then(|()| vm::run_suite(kernel, suite).map(drop))
        }
        Command::Bench => setup::run().and_then(|()| {
            let bpf = vm::bench();
            let fanotify = vm::fanotify_bench();
            bpf.and(fanotify)
        }),
        Command::Demo => demo::run(),
    };
    if let Err(error) = result {
        eprintln!("xtask: {error:#}");
        std::process::exit(1);
    }
}

fn test() -> Result<()> {
    setup::run()?;
    // The registry tests skip without docker-registry; here it is installed, so a skip is a failure.
    std::env::set_var("IMAGEGATE_REQUIRE_REGISTRY", "1");
    let (mut passed, mut failed_count) =
        setup::cargo_test(&["test", "--workspace", "--exclude", "imagegate-ebpf"])?;
    let mut failed = Vec::new();
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
    if failed.is_empty() {
        // One closing line over every suite: host tests and all guests.
        println!("total: {passed} passed, {failed_count} failed");
        Ok(())
    } else {
        anyhow::bail!("VM suites failed on: {}", failed.join(", "))
    }
}
