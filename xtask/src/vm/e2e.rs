//! The daemon end to end with the BPF LSM backend, in a guest: `daemon/tests/e2e_bpf_guest.rs`,
//! and `daemon/tests/e2e_cri.rs` (containerd 1.6's CRI plugin driven as kubelet drives it), each
//! the same test binary `cargo test` builds, run inside a guest beside the release
//! `imagegate` and Debian's containerd, containerd-shim-runc-v2, ctr, runc and docker-registry,
//! all copied in with their shared libraries. The guest's `/init` already mounts cgroup2 and
//! switch_roots onto a tmpfs (runc cannot pivot_root out of an initramfs); the command brings up
//! loopback for the registry.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};

use super::{
    build_release, daemon_test_binary, fetch_kernel, preload_library, run_guest, scan_libtest,
    vm_dir, GuestSpec, KernelSeries,
};

/// A daemon integration test binary run in the guest, and which of its tests.
struct GuestTests {
    /// The guest's name (its console log is `target/vm/<series>-<label>.log`).
    label: &'static str,
    /// `daemon/tests/<binary>.rs`.
    binary: &'static str,
    tests: &'static [&'static str],
    /// Shell commands run first.
    setup: &'static str,
    /// Extra arguments and environment for the run.
    args: &'static str,
    env: &'static str,
    /// What the summary line says the run is.
    what: &'static str,
}

/// `daemon/tests/e2e_bpf_guest.rs` (its tests are ignored on the host).
const BPF_LSM: GuestTests = GuestTests {
    label: "e2e",
    binary: "e2e_bpf_guest",
    tests: &[
        "bpf_lsm_daemon_enforces_signed_images_in_guest",
        "bpf_lsm_daemon_enforces_with_containerd_root_on_btrfs_in_guest",
        "bpf_lsm_daemon_a_reused_snapshot_inode_inherits_nothing_in_guest",
    ],
    setup: "",
    args: "--ignored",
    env: "",
    what: "BPF LSM",
};

/// `daemon/tests/e2e_cri.rs`'s containerd 1.6 cases (the 2.x ones skip there), the daemon
/// choosing its backend: BPF LSM in this guest.
const CRI: GuestTests = GuestTests {
    label: "e2e-cri",
    binary: "e2e_cri",
    tests: &[
        "kubelet_runs_signed_pods_and_no_unsigned_container_runs",
        "image_id_records_are_never_judged_and_never_let_a_rejected_pod_run",
        "explain_tells_why_a_pod_is_not_running",
    ],
    // The CRI plugin copies the host's /etc/hosts and /etc/resolv.conf into a host-network pod
    // (the initramfs has neither) and names it by the host's name.
    setup: "echo '127.0.0.1 localhost' > /etc/hosts; : > /etc/resolv.conf; \
            hostname imagegate-guest;",
    args: "",
    env: "IMAGEGATE_E2E_BACKEND=auto",
    what: "CRI, BPF LSM",
};

/// The container stack, from Debian's `containerd`, `runc` and `docker-registry` packages
/// (`cargo xtask setup` installs them), at the same paths in the guest, and btrfs-progs's
/// `mkfs.btrfs` for the btrfs test and e2fsprogs's `mke2fs` for the inode-reuse test.
const CONTAINER_STACK: [&str; 7] = [
    "/usr/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/bin/ctr",
    "/usr/sbin/runc",
    "/usr/bin/docker-registry",
    "/usr/sbin/mkfs.btrfs",
    "/usr/sbin/mke2fs",
];

/// Enables every cgroup controller and keeps one child cgroup for the whole run, while the guest
/// is still idle. Creating and removing a container's cgroup otherwise flips kernel static keys
/// (the first cpuset cgroup enables `cpusets_enabled_key`, the last one gone disables it), and
/// under QEMU's software emulation the live code patching behind that once left a stale `int3`
/// that runc hit in `__alloc_pages` while making a cgroup ("Oops: int3", then a panic; most
/// likely the cpuset key, which that function tests). With the keys held on, starting and
/// stopping containers no longer patches kernel code.
const KEEP_STATIC_KEYS: &str = "for c in $(cat /sys/fs/cgroup/cgroup.controllers); do \
     echo +$c > /sys/fs/cgroup/cgroup.subtree_control; done; \
     mkdir /sys/fs/cgroup/keep-static-keys || exit 1;";

/// Runs the end-to-end tests (`daemon/tests/e2e_bpf_guest.rs`) in a guest booted on `series`.
pub fn e2e_test(series: KernelSeries) -> Result<(u32, u32)> {
    guest_tests(series, &BPF_LSM)
}

/// Runs the CRI suite (`daemon/tests/e2e_cri.rs`, containerd 1.6) in a guest booted on `series`,
/// where the daemon picks BPF LSM.
pub fn cri_test(series: KernelSeries) -> Result<(u32, u32)> {
    guest_tests(series, &CRI)
}

/// Runs `run`'s tests in a guest booted on `series`; fails unless libtest reports each passed.
fn guest_tests(series: KernelSeries, run: &GuestTests) -> Result<(u32, u32)> {
    let kernel = fetch_kernel(series)?;
    let daemon = build_release()?.join("imagegate");
    let test = stripped(&daemon_test_binary(run.binary)?)?;
    let mut files = vec![
        (daemon, "/usr/bin/imagegate".to_owned()),
        (test, "/usr/bin/imagegate-e2e-tests".to_owned()),
        (preload_library()?, "/fixtures/preload.so".to_owned()),
        (
            PathBuf::from("/usr/bin/true"),
            "/fixtures/true-dyn".to_owned(),
        ),
    ];
    files.extend(
        CONTAINER_STACK
            .iter()
            .map(|path| (PathBuf::from(path), (*path).to_owned())),
    );
    // Where support::scratch_dir puts the test's files: its logs are printed if it fails.
    let scratch = crate::setup::workspace_root().join("target/test-scratch");
    let spec = GuestSpec {
        files,
        modules: vec!["overlay".into(), "loop".into(), "btrfs".into()],
        command: format!(
            "ip link set lo up || exit 1; cat /sys/kernel/security/lsm; echo; \
             {keep_keys} {setup} \
             IMAGEGATE_BIN=/usr/bin/imagegate IMAGEGATE_E2E_FIXTURES=/fixtures \
             IMAGEGATE_E2E_WAIT_SECS=30 RUST_LOG=warn {env} \
             /usr/bin/imagegate-e2e-tests {args} --exact {tests} --test-threads=1 \
             --nocapture; status=$?; \
             if [ $status -ne 0 ]; then for log in {scratch}/*/*.log {scratch}/*/*/*.log; do \
             [ -f \"$log\" ] && echo \"==> $log\" && tail -n 40 \"$log\"; done; fi; exit $status",
            scratch = scratch.display(),
            keep_keys = KEEP_STATIC_KEYS,
            tests = run.tests.join(" "),
            env = run.env,
            setup = run.setup,
            args = run.args,
        ),
        append: String::new(),
        pid1: false,
        // containerd, the registry, the daemon and the initramfs copied into a tmpfs.
        memory_mib: 3072,
        timeout: Duration::from_secs(900),
    };
    let output = run_guest(&kernel, run.label, &spec)?;
    let (passed, failed) = scan_libtest(&output)?;
    println!(
        "vm {} {series} ({}, {}): {passed} passed, {failed} failed",
        run.label, kernel.release, run.what
    );
    if failed > 0 || (passed as usize) < run.tests.len() {
        bail!(
            "{} failed on {series}: {passed} passed, {failed} failed",
            run.label
        );
    }
    Ok((passed, failed))
}

/// A copy of `binary` without debug information: a debug test binary is mostly DWARF, and the
/// guest holds its initramfs in memory more than once while it boots.
fn stripped(binary: &std::path::Path) -> Result<PathBuf> {
    let dir = vm_dir().join("e2e-bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(binary.file_name().context("test binary has no file name")?);
    crate::setup::run_command(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&out),
    )?;
    Ok(out)
}
