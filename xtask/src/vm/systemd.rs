//! The packaged systemd unit under a real systemd, in a guest: Debian's `systemd` becomes PID 1
//! and boots into `imagegate-check.target`, whose service (`tests/vm/systemd/check.sh`) drives
//! `packaging/systemd/imagegate.service` with `systemctl`: start (`Type=notify`), the sandbox the
//! unit declares, enforcement, restart after a kill, the watchdog, reload and stop. It runs
//! twice: with the BPF LSM backend, and with `bpf` left out of the kernel's LSM list, where the
//! daemon must choose fanotify. The unit, config and policy are installed at the paths the
//! Debian package uses, and containerd runs at its default root and socket, so the unit runs
//! unchanged.
//!
//! The development machine's PID 1 is not systemd, so this guest is the only place the unit
//! really runs.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};

use super::{build_release, fetch_kernel, run_guest, scan_result, GuestSpec, KernelSeries};

/// Where the check's units and script live in the guest (units: systemd's vendor directory).
const UNIT_DIR: &str = "/usr/lib/systemd/system";

/// journald, so the daemon's stdout (decision events and logs) goes where it goes on a host.
const JOURNALD: [&str; 3] = [
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
];

/// Debian's synchronisation targets, which every unit with default dependencies requires
/// (`sysinit.target`, `basic.target`, `shutdown.target`) or orders itself against; copied
/// without their `.wants` directories, so nothing else starts.
const TARGETS: [&str; 10] = [
    "sysinit.target",
    "basic.target",
    "shutdown.target",
    "local-fs.target",
    "local-fs-pre.target",
    "swap.target",
    "sockets.target",
    "timers.target",
    "paths.target",
    "slices.target",
];

/// The two ways the unit runs: the kernel's own LSM list (with `bpf`, so the daemon picks BPF
/// LSM), and `bpf` left out of `lsm=` (the daemon must pick fanotify). (guest name, extra
/// kernel command line, backend the check expects).
const BACKENDS: [(&str, &str, &str); 2] = [
    ("systemd", "", "bpf-lsm"),
    (
        "systemd-fanotify",
        "lsm=capability,landlock,lockdown,yama",
        "fanotify",
    ),
];

/// Runs the unit check in guests booted on `series`, once per backend; the sum of both.
pub fn systemd_test(series: KernelSeries) -> Result<(u32, u32)> {
    let kernel = fetch_kernel(series)?;
    let (mut passed, mut failed) = (0, 0);
    for (name, lsm, backend) in BACKENDS {
        let (p, f) = check_unit(series, &kernel, name, lsm, backend)?;
        (passed, failed) = (passed + p, failed + f);
    }
    Ok((passed, failed))
}

/// One guest: the unit check with the daemon expected to choose `backend`.
fn check_unit(
    series: KernelSeries,
    kernel: &super::Kernel,
    name: &str,
    lsm: &str,
    backend: &str,
) -> Result<(u32, u32)> {
    let root = crate::setup::workspace_root();
    let daemon = build_release()?.join("imagegate");
    let host = |path: &str| (PathBuf::from(path), path.to_owned());
    let mut files = vec![
        (daemon, "/usr/bin/imagegate".to_owned()),
        host("/lib/systemd/systemd"),
        host("/bin/systemctl"),
        host("/lib/systemd/systemd-journald"),
        host("/bin/journalctl"),
        host("/usr/bin/containerd"),
        (
            root.join("packaging/systemd/imagegate.service"),
            format!("{UNIT_DIR}/imagegate.service"),
        ),
        (
            root.join("packaging/config/imagegate.toml"),
            "/etc/imagegate/imagegate.toml".to_owned(),
        ),
        (
            root.join("packaging/config/policy.toml"),
            "/etc/imagegate/policy.toml".to_owned(),
        ),
        (
            root.join("tests/vm/systemd/imagegate-check.target"),
            format!("{UNIT_DIR}/imagegate-check.target"),
        ),
        (
            root.join("tests/vm/systemd/imagegate-check.service"),
            format!("{UNIT_DIR}/imagegate-check.service"),
        ),
        (
            root.join("tests/vm/systemd/check.sh"),
            "/usr/lib/imagegate-check/check.sh".to_owned(),
        ),
    ];
    files.extend(
        TARGETS
            .iter()
            .chain(&JOURNALD)
            .map(|unit| host(&format!("{UNIT_DIR}/{unit}"))),
    );
    let spec = GuestSpec {
        files,
        modules: vec!["overlay".into()],
        // What an installed system has and the initramfs lacks; then systemd takes over PID 1.
        command: "mkdir -p /var/lib /var/log /var/tmp /etc/systemd/system /root; \
                  exec /lib/systemd/systemd"
            .into(),
        pid1: true,
        // systemd's own notices (a unit that fails to start, and why) on the console; the check
        // prints there too, and the daemon's journal when a check fails.
        append: format!(
            "systemd.unit=imagegate-check.target systemd.show_status=0 \
             systemd.log_target=console systemd.log_level=notice \
             imagegate.expect_backend={backend} {lsm}"
        ),
        memory_mib: 2048,
        timeout: Duration::from_secs(600),
    };
    let output = run_guest(kernel, name, &spec)?;
    let (passed, failed) = scan_result(&output)?;
    println!(
        "vm systemd {series} ({}, packaged unit under systemd, {backend}): {passed} passed, \
         {failed} failed",
        kernel.release
    );
    if failed > 0 || passed == 0 {
        bail!("the unit check ({backend}) failed on {series}: {passed} passed, {failed} failed");
    }
    Ok((passed, failed))
}
