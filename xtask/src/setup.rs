//! Installs what the build and tests need, idempotently: Debian packages, the nightly `rust-src`
//! component and bpf-linker built against the nightly toolchain's own libLLVM.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Debian packages the build and the tests use.
const DEBIAN_PACKAGES: &[&str] = &[
    "qemu-system-x86", // VM suites (software emulation)
    "busybox-static",  // the guests' userland
    "cpio",            // initramfs archives
    "xz-utils",        // compressed kernel modules
    "kmod",
    "gcc", // test fixtures (a shared library for LD_PRELOAD tests)
    "g++", // libFuzzer, which the fuzz targets (fuzz/) link, is C++
    "protobuf-compiler",
    "containerd",
    "runc",
    "docker-registry",
    "systemd",                // systemd-analyze verify (the unit's test)
    "libcap2-bin",            // capsh (the unit's capability names)
    "debian-archive-keyring", // the other suites' containerd (xtask/src/containerd_releases.rs)
    "btrfs-progs",            // containerd roots on btrfs (mkfs.btrfs; the guests get it too)
    "e2fsprogs",              // a journaled ext4 for the inode-reuse case (mke2fs; guests too)
    "python3-cryptography",   // the test-time Rekor v2 signer (tests/signer/) and gen.py
];

/// The cargo-fuzz release `cargo xtask fuzz`/`test` drive (fuzz/).
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// The bpf-linker release that builds against LLVM 22 (the nightly's LLVM).
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    debian_packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    cargo_fuzz()?;
    Ok(())
}

/// cargo-deb, which builds the Debian package (`cargo xtask package`), from crates.io.
fn cargo_deb() -> Result<()> {
    let version = crate::package::CARGO_DEB_VERSION;
    if output(Command::new("cargo").args(["deb", "--version"]))
        .is_ok_and(|out| out.split_whitespace().any(|word| word == version))
    {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-deb {version}");
    run_command(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-deb",
        "--version",
        version,
    ]))
}

/// cargo-fuzz from crates.io, once (it lands in ~/.cargo/bin beside bpf-linker).
fn cargo_fuzz() -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"]))
        .is_ok_and(|version| version.contains(CARGO_FUZZ_VERSION))
    {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    run_command(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Runs `cargo ARGS` in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
                })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run_command(Command::new("apt-get").args(["update", "-q"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rust_src() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    if Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        return Ok(());
    }
    run_command(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> Result<()> {
    // bpf-linker loads the nightly's libLLVM at run time; `rustup run nightly` puts it on the
    // library path, as aya-build does when it links the programs.
    if output(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"]))
        .is_ok_and(|version| version.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    // bpf-linker links against LLVM; use the nightly toolchain's own libLLVM so the LLVM that
    // rustc emits bitcode with and the one that links it agree. The feature must name its major.
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = verbose
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .context("rustc +nightly -vV names no LLVM version")?
        .to_owned();
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let prefix = workspace_root().join("target/tools/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {}",
        libllvm.display()
    );
    run_command(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
}

/// Runs `cargo test ARGS` in the workspace root, echoing its output, and returns the summed
/// `N passed; M failed` of every test binary it ran.
pub fn cargo_test(args: &[&str]) -> Result<(u64, u64)> {
    cargo_test_with_env(args, &[])
}

/// [`cargo_test`] with environment variables set for the tests.
pub fn cargo_test_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<(u64, u64)> {
    use std::io::BufRead as _;
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = result_counts(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok((passed, failed))
}

/// `(passed, failed)` of a libtest `test result: ok. N passed; M failed; ...` line.
fn result_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(word)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    Some((count(" passed"), count(" failed")))
}

/// Runs a command, failing with its name when it fails.
pub fn run_command(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its standard output.
pub fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_libtest_result_lines() {
        let line = "test result: ok. 38 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.39s";
        assert_eq!(super::result_counts(line), Some((38, 2)));
        assert_eq!(
            super::result_counts("test result: FAILED. 0 passed; 1 failed; 0 ignored"),
            Some((0, 1))
        );
        assert_eq!(super::result_counts("running 3 tests"), None);
    }
}
