//! The `imagegate` binary on the host: `doctor` reports every capability, and backend commands
//! fail with a clear message when nothing is installed.

use std::process::Command;

fn imagegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imagegate"))
}

#[test]
fn doctor_reports_every_capability_as_json() {
    let output = imagegate()
        .args(["doctor", "--json"])
        .output()
        .expect("run doctor");
    assert!(output.status.success(), "doctor failed: {output:?}");
    let checks: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("doctor prints JSON");
    let names: Vec<&str> = checks
        .as_array()
        .expect("a list of checks")
        .iter()
        .map(|check| check["capability"].as_str().expect("capability name"))
        .collect();
    for expected in [
        "kernel",
        "btf",
        "btf_offsets",
        "bpf_lsm_active",
        "bpf_lsm_programs_load",
        "overlayfs",
        "fanotify_exec_permission",
        "bpf_backend_installed",
    ] {
        assert!(
            names.contains(&expected),
            "doctor lacks {expected}: {names:?}"
        );
    }
    for check in checks.as_array().expect("list") {
        assert!(
            check["ok"].is_boolean() && check["detail"].is_string(),
            "malformed check {check}"
        );
    }
    // Where the kernel exposes BTF, every offset the programs need must be found in it.
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        let offsets = checks
            .as_array()
            .expect("list")
            .iter()
            .find(|check| check["capability"] == "btf_offsets")
            .expect("btf_offsets check");
        assert_eq!(offsets["ok"], true, "offsets not found: {offsets}");
    }
}

#[test]
fn backend_commands_without_an_install_fail_clearly() {
    let pin_dir = std::env::temp_dir().join(format!("imagegate-no-pins-{}", std::process::id()));
    let output = imagegate()
        .args(["kernel", "status", "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .expect("run status");
    assert!(
        !output.status.success(),
        "status succeeded without an install"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not installed"), "unclear error: {stderr}");
}
