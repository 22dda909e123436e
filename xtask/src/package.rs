//! The Debian package: `cargo xtask package` builds it with cargo-deb (metadata in
//! daemon/Cargo.toml); `cargo xtask test` builds it, installs it on this machine with dpkg,
//! runs the installed binary, removes and purges it, and checks what is left at each step.
//! The unit is never enabled or started here (the package does not do either, and the check
//! says so). Whatever fails, the package is purged before the test returns.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{bail, Context as _, Result};

use crate::setup::{output, workspace_root};

/// The cargo-deb release `setup` installs.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

const UNIT: &str = "/usr/lib/systemd/system/imagegate.service";
const CONFIG: &str = "/etc/imagegate/imagegate.toml";
const POLICY: &str = "/etc/imagegate/policy.toml";
const BINARY: &str = "/usr/bin/imagegate";
const STATE: &str = "/var/lib/imagegate";
/// The pull-time verifier for containerd 2.x's `bin_dir` (docs/containerd.md).
const VERIFIER: &str = "/usr/lib/imagegate/image-verifier/imagegate";

/// Builds the .deb (release profile) and returns its path.
pub fn build() -> Result<PathBuf> {
    let out_dir = workspace_root().join("target/debian");
    let stdout = output(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["deb", "-p", "imagegate", "--output"])
            .arg(&out_dir)
            .current_dir(workspace_root())
            .stderr(std::process::Stdio::inherit()),
    )
    .context("cargo deb (cargo xtask setup installs cargo-deb)")?;
    let path = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb printed no .deb path")?;
    if !path.is_file() {
        bail!(
            "cargo deb reported {} but it does not exist",
            path.display()
        );
    }
    Ok(path)
}

/// `cargo xtask package`.
pub fn run() -> Result<()> {
    let deb = build()?;
    println!("{}", deb.display());
    Ok(())
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "imagegate"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// Any trace of the package in dpkg's database (installed, or removed with conffiles left).
fn known_to_dpkg() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "imagegate"])
        .output()
        .is_ok_and(|out| {
            let status = String::from_utf8_lossy(&out.stdout);
            out.status.success() && !status.contains("not-installed")
        })
}

/// Purges the package when dropped: a failed check never leaves it installed.
struct Installation {
    marker: PathBuf,
}

impl Drop for Installation {
    fn drop(&mut self) {
        if known_to_dpkg() {
            let _ = Command::new("dpkg").args(["--purge", "imagegate"]).status();
        }
        let _ = std::fs::remove_file(&self.marker);
    }
}

fn run_out(command: &mut Command) -> Result<Output> {
    command
        .output()
        .with_context(|| format!("starting {command:?}"))
}

fn check(condition: bool, what: impl FnOnce() -> String) -> Result<()> {
    if condition {
        Ok(())
    } else {
        bail!("{}", what())
    }
}

/// Builds, installs, exercises, removes and purges the package; `(passed, failed)` checks.
pub fn test() -> Result<(u64, u64)> {
    let deb = build()?;
    let marker = workspace_root().join("target/debian/installed-by-xtask-test");
    if known_to_dpkg() {
        if marker.exists() {
            eprintln!("xtask: purging the imagegate package a previous test run left installed");
            crate::setup::run_command(Command::new("dpkg").args(["--purge", "imagegate"]))?;
        } else {
            bail!(
                "an imagegate package this test did not install is on this machine; \
                 the package test would replace it (dpkg --purge imagegate first)"
            );
        }
    }
    let state_existed = Path::new(STATE).exists();
    let scratch = workspace_root().join("target/debian/test");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;

    let mut results: Vec<(&str, Result<()>)> = Vec::new();
    results.push(("contents_and_conffiles", contents(&deb)));

    std::fs::write(&marker, b"")?;
    let guard = Installation { marker };
    let install = run_out(
        Command::new("dpkg")
            .arg("-i")
            .arg(&deb)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .and_then(|out| {
        check(out.status.success() && installed(), || {
            format!("dpkg -i failed: {}", String::from_utf8_lossy(&out.stderr))
        })
    });
    let install_ok = install.is_ok();
    results.push(("dpkg_install", install));
    if install_ok {
        results.push(("installed_files_and_unit_not_enabled", installed_files()));
        results.push(("installed_unit_verifies", unit_verifies()));
        results.push(("installed_doctor_runs", doctor()));
        results.push(("installed_pull_verifier_answers", pull_verifier(&scratch)));
        results.push((
            "installed_config_check_accepts_the_defaults",
            config_check_ok(),
        ));
        results.push((
            "installed_config_check_rejects_a_typo",
            config_check_typo(&scratch),
        ));
        results.push((
            "remove_keeps_conffiles_purge_removes_all",
            remove_and_purge(state_existed),
        ));
    }
    drop(guard);
    results.push((
        "nothing_left_after_purge",
        check(
            !known_to_dpkg() && !Path::new(BINARY).exists() && !Path::new(UNIT).exists(),
            || "the package or its files are still there after the purge".into(),
        ),
    ));

    let (mut passed, mut failed) = (0, 0);
    for (name, result) in &results {
        match result {
            Ok(()) => {
                println!("test package::{name} ... ok");
                passed += 1;
            }
            Err(error) => {
                println!("test package::{name} ... FAILED: {error:#}");
                failed += 1;
            }
        }
    }
    println!("package: {passed} passed, {failed} failed");
    Ok((passed, failed))
}

fn contents(deb: &Path) -> Result<()> {
    let listing = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    for path in [
        BINARY,
        UNIT,
        CONFIG,
        POLICY,
        VERIFIER,
        "/usr/share/doc/imagegate/config.md",
        "/usr/share/doc/imagegate/containerd.md",
    ] {
        check(listing.contains(&format!(".{path}")), || {
            format!("{path} not in the package:\n{listing}")
        })?;
    }
    let dir = tempfile_dir("control")?;
    crate::setup::run_command(Command::new("dpkg-deb").arg("--control").arg(deb).arg(&dir))?;
    let conffiles = std::fs::read_to_string(dir.join("conffiles"))?;
    for path in [CONFIG, POLICY] {
        check(conffiles.lines().any(|l| l.trim() == path), || {
            format!("{path} is not a conffile: {conffiles}")
        })?;
    }
    let postinst = std::fs::read_to_string(dir.join("postinst")).unwrap_or_default();
    check(!postinst.contains("deb-systemd-invoke start"), || {
        "the package must not start the daemon before the policy is reviewed".into()
    })?;
    Ok(())
}

fn tempfile_dir(name: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("target/debian/test").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().context("parent")?)?;
    Ok(dir)
}

fn installed_files() -> Result<()> {
    for path in [BINARY, UNIT, CONFIG, POLICY, VERIFIER] {
        check(Path::new(path).is_file(), || {
            format!("{path} not installed")
        })?;
    }
    for wants in [
        "/etc/systemd/system/multi-user.target.wants/imagegate.service",
        "/etc/systemd/system/kubelet.service.wants/imagegate.service",
    ] {
        check(!Path::new(wants).exists(), || {
            format!("{wants}: the unit must not be enabled by installing the package")
        })?;
    }
    Ok(())
}

fn unit_verifies() -> Result<()> {
    let out = run_out(Command::new("systemd-analyze").args(["verify", UNIT]))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check(
        out.status.success() && !stderr.contains("imagegate.service"),
        || format!("systemd-analyze verify {UNIT}: {stderr}"),
    )
}

fn doctor() -> Result<()> {
    let out = run_out(Command::new(BINARY).arg("doctor"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(out.status.success() && stdout.contains("fanotify"), || {
        format!(
            "imagegate doctor: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The installed verifier, called as containerd 2.x calls it, with no daemon running: it judges
/// in process with the installed configuration and example policy (`[default]` in audit,
/// `reject`): admitted, and reported as the audit verdict; with a policy that rejects in
/// enforce mode (through `IMAGEGATE_CONFIG`), refused with the verdict's reason. `doctor` says
/// whether containerd's pulls reach it.
fn pull_verifier(scratch: &Path) -> Result<()> {
    let digest = format!("sha256:{}", "a".repeat(64));
    let call = |config: Option<&Path>| {
        let mut command = Command::new(VERIFIER);
        command
            .args(["-name", "registry.example/app:1", "-digest", &digest])
            .args([
                "-stdin-media-type",
                "application/vnd.oci.descriptor.v1+json",
            ])
            .stdin(std::process::Stdio::null());
        if let Some(config) = config {
            command.env("IMAGEGATE_CONFIG", config);
        }
        run_out(&mut command)
    };
    let out = call(None)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success()
            && stdout.contains("imagegate admitted the pull")
            && stdout.contains("audit"),
        || format!("{VERIFIER} with the installed configuration: {out:?}"),
    )?;
    let policy = scratch.join("enforce-policy.toml");
    std::fs::write(&policy, "version = 1\n[default]\nrequire = \"reject\"\n")?;
    let config = scratch.join("enforce.toml");
    std::fs::write(
        &config,
        format!(
            "policy = \"{}\"\nverify_socket = \"{}\"\n",
            policy.display(),
            scratch.join("none.sock").display()
        ),
    )?;
    let out = call(Some(&config))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.code() == Some(1)
            && stdout.starts_with("imagegate refused the pull: UNTRUSTED registry.example/app:1"),
        || format!("{VERIFIER} under a rejecting policy: {out:?}"),
    )?;
    let out = run_out(Command::new(BINARY).arg("doctor"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        stdout.lines().any(|line| line.starts_with("pull_verifier")),
        || format!("imagegate doctor does not report pull_verifier:\n{stdout}"),
    )
}

fn config_check_ok() -> Result<()> {
    let out = run_out(Command::new(BINARY).args(["config", "check", CONFIG]))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success()
            && stdout.contains(&format!("{CONFIG}: ok"))
            && stdout.contains(&format!("{POLICY}: ok")),
        || {
            format!(
                "imagegate config check {CONFIG}: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        },
    )
}

fn config_check_typo(scratch: &Path) -> Result<()> {
    let text = std::fs::read_to_string(CONFIG)?;
    let line = text
        .lines()
        .position(|l| l.starts_with("mode = "))
        .context("no mode line in the installed config")?
        + 1;
    let broken = scratch.join("typo.toml");
    std::fs::write(
        &broken,
        text.replacen("mode = \"enforce\"", "mode = \"enforse\"", 1),
    )?;
    let out = run_out(Command::new(BINARY).arg("config").arg("check").arg(&broken))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:{line}: mode: ", broken.display());
    check(
        out.status.code() == Some(2) && stderr.contains(&expected),
        || {
            format!(
                "expected exit 2 and {expected:?}; got {}: {stderr}",
                out.status
            )
        },
    )
}

fn remove_and_purge(state_existed: bool) -> Result<()> {
    // The daemon's state, as a run would leave it (only when this machine had none).
    if !state_existed {
        std::fs::create_dir_all(STATE)?;
        std::fs::write(Path::new(STATE).join("verdicts.redb"), b"state")?;
    }
    crate::setup::run_command(Command::new("dpkg").args(["-r", "imagegate"]))?;
    check(
        !Path::new(BINARY).exists() && !Path::new(UNIT).exists(),
        || "dpkg -r left the binary or the unit".into(),
    )?;
    check(
        Path::new(CONFIG).exists() && Path::new(POLICY).exists(),
        || "dpkg -r must keep the configuration (conffiles) for a reinstall".into(),
    )?;
    crate::setup::run_command(Command::new("dpkg").args(["--purge", "imagegate"]))?;
    check(!Path::new("/etc/imagegate").exists(), || {
        "dpkg --purge left /etc/imagegate".into()
    })?;
    if !state_existed {
        check(!Path::new(STATE).exists(), || {
            format!("dpkg --purge left {STATE}")
        })?;
    }
    Ok(())
}

/// `cargo xtask image`: the release binary in imagegate-testkit's daemon image, written as an
/// OCI archive (`ctr images import`, `podman load`, `skopeo copy oci-archive:...`).
pub fn image(out: Option<std::path::PathBuf>) -> Result<()> {
    let root = crate::setup::workspace_root();
    crate::setup::cargo(&["build", "--release", "-p", "imagegate"])?;
    let image = imagegate_testkit::daemon_image::build(
        &root.join("target/release/imagegate"),
        &root.join("packaging/config"),
    )?;
    let out = out.unwrap_or_else(|| root.join("target/imagegate-image.tar"));
    imagegate_testkit::daemon_image::write(&out, &image)?;
    println!(
        "{} ({}, manifest {})\n\
         load it: ctr -n k8s.io images import {0}\n\
         push it: skopeo copy oci-archive:{0} docker://REGISTRY/imagegate:0.1.0",
        out.display(),
        imagegate_testkit::daemon_image::NAME,
        image.manifest_digest()
    );
    Ok(())
}
