//! Builds the eBPF programs (ebpf/programs) with aya-build and leaves the object in OUT_DIR, so
//! the `imagegate` binary embeds them and building the daemon never needs a manual step.
//! Needs the nightly toolchain with `rust-src` and `bpf-linker` on PATH: `cargo xtask setup`
//! installs both (and `cargo xtask test`/`demo` run it first).

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let metadata_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("daemon crate has no parent directory"))?
        .join("ebpf/programs");
    let root = metadata_root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        // Work on userspace code without the BPF toolchain: embed an empty object; the BPF
        // backend then reports that this build carries no programs.
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR unset")?);
        std::fs::write(out.join("imagegate"), b"")?;
        return Ok(());
    }
    if which("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` (it builds bpf-linker against the nightly toolchain's LLVM)"
        ));
    }
    println!("cargo:rerun-if-changed=../ebpf/common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "imagegate-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs (ebpf/programs)")
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}
